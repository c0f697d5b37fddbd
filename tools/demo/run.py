"""The demo: a simulated trading kernel capturing through the real pipeline, then the proof.

What :func:`run_demo` does, in order:

1. **Capture.** A seeded :class:`~ringtape.tools.demo.session.TradingSession` (quotes and
   trades for a few instruments, a strategy sending orders and receiving fills) drives a real
   :class:`~ringtape.EventStore`: its writer process, its data-marker sidecar (every
   market-data class on, one instrument high-fidelity), its shared-memory rings. Market data goes to
   ``observe_data``; every bus message is appended and applied to the live
   :class:`~ringtape.capture.cache.ReferenceCache`; every ``anchor_interval_s`` the cache is
   snapshotted and anchored. One append in ``sample_every`` is timed with ``perf_counter_ns``, and
   ``durable_seq()`` is polled after every message so each timed entry is stamped when it
   becomes durable (the durable lag).
2. **Seal**, then **verify** the run (``ringtape.storage.check.verify.verify_path``).
3. **Replay** it into a fresh cache through a second ``EventStore`` configured with
   ``replay_from_run_id`` and compare with the live cache (replay parity).

The loop runs as fast as the simulated kernel can go: the entry rate it reports is bounded by
the simulation and the cache in this process, not by the store.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import psutil

from ringtape import (
    DataMarkerConfig,
    Environment,
    EventStore,
    EventStoreConfig,
    EventStoreError,
    RegisteredComponents,
    RunIdentity,
)
from ringtape.capture.anchors import DURABLE, AnchorRecord
from ringtape.capture.cache import ReferenceCache
from ringtape.storage.check.verify import VerifyReport, verify_path
from ringtape.storage.format.entry import Entry
from ringtape.tools.arguments import DEFAULT_DEMO_DIR
from ringtape.tools.common import choose_jobs
from ringtape.tools.demo.session import INSTRUMENTS, BusMessage, MarketData, TradingSession
from ringtape.tools.verify_pool import scanner

# Every demo run belongs to this instance, so that a base directory holds its demo history.
DEMO_INSTANCE: Final = uuid.UUID("0d3e5c1a-7b2f-4e8a-9c6d-1f2e3a4b5c6d")
DEFAULT_BASE_DIR: Final = DEFAULT_DEMO_DIR
STRATEGY: Final = "MeanRevert-001"
# Ticks generated between two looks at the clock (and two progress reports).
_CHUNK: Final = 256
_DRAIN_LIMIT_NS: Final = 2_000_000_000

ProgressFn = Callable[[float, int], None]  # (seconds elapsed, entries appended)


@dataclass(frozen=True)
class DemoOptions:
    base_dir: Path
    seconds: float = 10.0
    seed: int = 7
    anchor_interval_s: float = 2.0
    sample_every: int = 8
    jobs: int | None = None  # verify's worker processes (None: by the run's size)
    high_fidelity: str = INSTRUMENTS[0]


@dataclass(frozen=True)
class Percentiles:
    """Percentiles of a sample, in ns."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    p99_9: float | None
    max: float | None

    @classmethod
    def of(cls, samples: list[int]) -> Percentiles:
        if not samples:
            return cls(0, None, None, None, None, None)
        a = np.asarray(samples, dtype=np.float64)
        p50, p90, p99, p999 = (float(x) for x in np.percentile(a, [50, 90, 99, 99.9]))
        return cls(len(samples), p50, p90, p99, p999, float(a.max()))


@dataclass
class Capture:
    """What the capture loop measured."""

    seconds: float = 0.0
    bus_messages: int = 0
    market_data: int = 0
    anchors: int = 0
    anchor_ns: list[int] = field(default_factory=list)  # each anchor() call, on this thread
    append_ns: list[int] = field(default_factory=list)
    durable_lag_ns: list[int] = field(default_factory=list)
    not_durable_at_end: int = 0  # timed entries still not durable when the loop stopped
    interrupted: bool = False
    halted: str | None = None
    # CPU used meanwhile by processes other than this one and its children, in cores: above
    # ~0.2 on a small machine the latency figures are pessimistic.
    other_cores: float | None = None


@dataclass
class DemoResult:
    """Everything the summary shows; ``ok`` is verify intact and replay parity."""

    base_dir: str
    instance_id: str
    run_id: str
    run_dir: str
    options: DemoOptions
    capture: Capture
    entries: int  # the run's high watermark (RunStarted .. RunEnded)
    marker_records: int
    raw_bytes: int
    segment_bytes: int
    disk_bytes: int
    verify: VerifyReport
    verify_seconds: float
    verify_jobs: int
    replay_ok: bool
    replay_detail: str
    anchor_records: list[AnchorRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verify.ok and self.replay_ok and self.capture.halted is None

    @property
    def compression_ratio(self) -> float | None:
        return self.raw_bytes / self.segment_bytes if self.segment_bytes else None

    @property
    def blob_bytes(self) -> tuple[int, int]:
        """Snapshot bytes anchored and blob bytes written, over the anchors that completed."""
        done = [r for r in self.anchor_records if r.state == DURABLE]
        return sum(r.size for r in done), sum(r.stored_bytes for r in done)

    @property
    def blob_ratio(self) -> float | None:
        raw, stored = self.blob_bytes
        return raw / stored if stored else None

    @property
    def entries_per_s(self) -> float:
        return self.entries / self.capture.seconds if self.capture.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        cap = self.capture
        return {
            "ok": self.ok,
            "base_dir": self.base_dir,
            "instance_id": self.instance_id,
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "seconds": round(cap.seconds, 3),
            "interrupted": cap.interrupted,
            "halted": cap.halted,
            "other_processes_cores": None if cap.other_cores is None else round(cap.other_cores, 2),
            "entries": self.entries,
            "entries_per_s": round(self.entries_per_s, 1),
            "bus_messages": cap.bus_messages,
            "market_data_observed": cap.market_data,
            "marker_records": self.marker_records,
            "anchors": cap.anchors,
            "anchor_states": {
                state: sum(r.state == state for r in self.anchor_records)
                for state in sorted({r.state for r in self.anchor_records})
            },
            "anchor_call_ns": Percentiles.of(cap.anchor_ns).__dict__,
            "blob_raw_bytes": self.blob_bytes[0],
            "blob_stored_bytes": self.blob_bytes[1],
            "blob_ratio": None if self.blob_ratio is None else round(self.blob_ratio, 2),
            "append_latency_ns": Percentiles.of(cap.append_ns).__dict__,
            "append_sampled_one_in": self.options.sample_every,
            "durable_lag_ns": Percentiles.of(cap.durable_lag_ns).__dict__,
            "timed_not_durable_at_end": cap.not_durable_at_end,
            "raw_bytes": self.raw_bytes,
            "segment_bytes": self.segment_bytes,
            "disk_bytes": self.disk_bytes,
            "compression_ratio": None
            if self.compression_ratio is None
            else round(self.compression_ratio, 3),
            "verify": self.verify.to_dict(),
            "verify_seconds": round(self.verify_seconds, 3),
            "verify_jobs": self.verify_jobs,
            "replay_parity": self.replay_ok,
            "replay_detail": self.replay_detail,
        }


def demo_config(options: DemoOptions, replay_from: str | None = None) -> EventStoreConfig:
    return EventStoreConfig(
        base_dir=str(options.base_dir),
        identity=RunIdentity(feature_flags=["demo"], seed=options.seed),
        replay_from_run_id=replay_from,
        data_markers=DataMarkerConfig(high_fidelity=[options.high_fidelity]),
    )


def _components() -> RegisteredComponents:
    return RegisteredComponents(
        strategies={STRATEGY: "ringtape.tools.demo.session.TradingSession"},
        subscriptions=[f"data.quotes.{i}" for i in INSTRUMENTS]
        + [f"data.trades.{i}" for i in INSTRUMENTS],
        endpoints=["RiskEngine.execute", "ExecEngine.execute"],
    )


def capture_session(
    store: EventStore,
    session: TradingSession,
    live: ReferenceCache,
    options: DemoOptions,
    progress: ProgressFn | None,
) -> Capture:
    """The kernel loop: feed the session through the open ``store`` for ``options.seconds``."""
    out = Capture()
    anchor = store.snapshot_anchorer()
    observe = store.observe_data  # bound to the marker lane while the run is open
    append = store.append
    durable_seq = store.durable_seq
    clock = time.perf_counter_ns
    pending: deque[tuple[int, int]] = deque()  # (seq, when appended) of the timed appends
    every = options.sample_every
    calls = 0
    load = _MachineLoad()
    start = clock()
    deadline = start + int(options.seconds * 1e9)
    interval = int(options.anchor_interval_s * 1e9)
    next_anchor = start + interval
    now = start
    try:
        while now < deadline:
            for msg in session.messages(_CHUNK):
                if type(msg) is MarketData:
                    observe(msg.data_class, msg.instrument_id, msg.ts_event, msg.ts_init)
                    out.market_data += 1
                else:
                    assert isinstance(msg, BusMessage)
                    calls += 1
                    if calls % every:
                        seq = append(
                            msg.topic,
                            msg.payload,
                            payload_type=msg.payload_type,
                            ts_init=msg.ts_init,
                        )
                    else:
                        t0 = clock()
                        seq = append(
                            msg.topic,
                            msg.payload,
                            payload_type=msg.payload_type,
                            ts_init=msg.ts_init,
                        )
                        t1 = clock()
                        out.append_ns.append(t1 - t0)
                        pending.append((seq, t1))
                    live.apply(
                        Entry(
                            seq, msg.ts_init, msg.ts_init, msg.topic, msg.payload_type, msg.payload
                        )
                    )
                if pending:
                    durable = durable_seq()
                    if pending[0][0] <= durable:
                        _stamp(pending, durable, clock(), out.durable_lag_ns)
            now = clock()
            if anchor is not None and now >= next_anchor:
                snapshot = live.snapshot()  # no append between the snapshot and the anchor
                t0 = clock()
                anchor(snapshot)
                out.anchor_ns.append(clock() - t0)
                out.anchors += 1
                next_anchor = now + interval
            if progress is not None:
                progress((now - start) / 1e9, calls)
    except KeyboardInterrupt:
        out.interrupted = True
        now = clock()
    except EventStoreError as exc:
        out.halted = str(store.halt_reason() or exc)
        now = clock()
    out.seconds = (now - start) / 1e9
    out.other_cores = load.other_cores()
    out.bus_messages = calls
    if out.halted is None:
        _drain(pending, durable_seq, out.durable_lag_ns)
    out.not_durable_at_end = len(pending)
    return out


def _drain(
    pending: deque[tuple[int, int]], durable_seq: Callable[[], int], lags: list[int]
) -> None:
    """Stamp the timed entries still in flight when the loop stopped (bounded wait)."""
    limit = time.perf_counter_ns() + _DRAIN_LIMIT_NS
    while pending and time.perf_counter_ns() < limit:
        _stamp(pending, durable_seq(), time.perf_counter_ns(), lags)
        time.sleep(0.0001)


class _MachineLoad:
    """CPU the rest of the machine used since construction (this process tree excluded)."""

    def __init__(self) -> None:
        me = psutil.Process()
        self._procs = [me, *me.children(recursive=True)]
        self._wall = time.monotonic()
        self._busy = self._machine_busy()
        self._own = self._own_busy()

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def _own_busy(self) -> float:
        total = 0.0
        for p in self._procs:
            try:
                c = p.cpu_times()
            except psutil.Error:
                continue
            total += c.user + c.system
        return total

    def other_cores(self) -> float | None:
        wall = time.monotonic() - self._wall
        if wall <= 0:
            return None
        other = (self._machine_busy() - self._busy) - (self._own_busy() - self._own)
        return max(0.0, other / wall)


def _stamp(pending: deque[tuple[int, int]], durable: int, now: int, lags: list[int]) -> None:
    while pending and pending[0][0] <= durable:
        lags.append(now - pending.popleft()[1])


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def replay_parity(options: DemoOptions, run_id: str, live: ReferenceCache) -> tuple[bool, str]:
    """Replay the sealed run into a fresh cache through a second store; compare with ``live``."""
    store = EventStore(demo_config(options, replay_from=run_id), instance_id=DEMO_INSTANCE)
    replayed = ReferenceCache()
    try:
        store.restore_parent_cache(DEMO_INSTANCE, replayed)
    except EventStoreError as exc:
        return False, f"replay failed: {exc}"
    result = store.last_replay
    how = "no replay"
    if result is not None:
        start = "from seq 1" if result.anchor is None else f"anchor at seq {result.anchor.seq}"
        how = f"{start} + {result.applied:,} entries"
    state = live.state()
    counts = ", ".join(f"{len(v)} {k}" for k, v in state.items())
    if replayed == live:
        return True, f"{how}; {counts} equal"
    differ = [k for k in state if getattr(replayed, k) != state[k]]
    return False, f"{how}; differs in {', '.join(differ) or 'state'}"


@dataclass(frozen=True)
class CapturedRun:
    """A sealed demo run (step 1): where it is, what the loop measured, the live cache."""

    run_dir: Path
    run_id: str
    capture: Capture
    live: ReferenceCache
    anchor_records: list[AnchorRecord]


def capture_demo_run(options: DemoOptions, progress: ProgressFn | None = None) -> CapturedRun:
    """Step 1 and the seal: one demo run captured into ``options.base_dir``."""
    if options.seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {options.seconds}")
    options.base_dir.mkdir(parents=True, exist_ok=True)
    # The session's clock is the kernel's: what the store stamps itself (RunStarted, anchors,
    # RunEnded) stays in step with the messages' ts_init.
    session = TradingSession(options.seed, start_ns=time.time_ns())
    store = EventStore(demo_config(options), instance_id=DEMO_INSTANCE, clock=session)
    live = ReferenceCache()
    try:
        store.open(DEMO_INSTANCE, _components(), Environment.SANDBOX)
        run_dir, run_id = store.run_dir(), store.run_id()
        assert run_dir is not None and run_id is not None
        cap = capture_session(store, session, live, options, progress)
    finally:
        # Seals the run (a halted store is released, its run left for recovery) and ends the
        # children started ahead for a next run: there is none.
        store.close()
    return CapturedRun(run_dir, run_id, cap, live, store.anchors())


def run_demo(options: DemoOptions, progress: ProgressFn | None = None) -> DemoResult:
    """Capture, seal, verify and replay one demo run (see the module docstring)."""
    captured = capture_demo_run(options, progress)
    run_dir, run_id, cap, live = captured.run_dir, captured.run_id, captured.capture, captured.live
    started = time.perf_counter()
    jobs = choose_jobs(run_dir, options.jobs)
    report = verify_path(run_dir, scan=scanner(jobs))
    verify_s = time.perf_counter() - started
    summary = report.runs[0] if report.runs else None
    if cap.halted is None:
        ok, detail = replay_parity(options, run_id, live)
    else:
        ok, detail = False, f"not replayed: the store halted ({cap.halted})"
    return DemoResult(
        base_dir=os.fspath(options.base_dir),
        instance_id=str(DEMO_INSTANCE),
        run_id=run_id,
        run_dir=str(run_dir),
        options=options,
        capture=cap,
        entries=0 if summary is None or summary.last_seq is None else summary.last_seq,
        marker_records=0 if summary is None else summary.markers,
        raw_bytes=0 if summary is None else summary.raw_bytes,
        segment_bytes=sum(p.stat().st_size for p in run_dir.glob("*.seg")),
        disk_bytes=_dir_bytes(run_dir),
        verify=report,
        verify_seconds=verify_s,
        verify_jobs=jobs,
        replay_ok=ok,
        replay_detail=detail,
        anchor_records=captured.anchor_records,
    )
