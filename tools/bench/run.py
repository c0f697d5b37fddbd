"""ringtape bench: the store side by side with multiprocessing.Queue, faster_fifo.Queue and a
bare shared-memory ring (the floor: tools/bench_baselines.py), in one run; JSON out.

Every channel moves the same messages to another process: a fixed-seed pool of topics and
JSON-like payloads of 128–256 bytes. ringtape gets ``(topic, payload, ts_init)``; the queues get
the tuple ``(topic, ts_init, payload)``; the bare ring packs the same three fields.

Sections of the JSON (a ``target`` and a ``met`` wherever the design gives a target):

``append_latency``
    Each call timed with ``perf_counter_ns`` around it, at a paced 100k calls/s (busy-wait to
    the next slot; a slot missed by more than one period is counted in ``late_slots`` and the
    schedule restarts from now, so there is never a catch-up burst). ``timer_overhead`` is the
    same measurement around an empty function of the same call shape: subtract it to get the
    call alone. ringtape runs with its writer (and its data-marker sidecar, when the store has
    one), once with ``ts_init`` passed by the caller (the kernel's normal case) and once with
    the store's clock.
``producer_cpu``
    CPU time (user + system, every thread: ``getrusage(RUSAGE_SELF)``) of the producing process
    per entry, over unpaced runs small enough that nothing waits for space, measured until the
    consumer has taken everything (so the feeder thread of ``multiprocessing.Queue`` is
    counted). ``loop_overhead`` is the same loop around an empty function.
``durable_throughput``
    N entries as fast as possible, timed until ``durable_seq()`` reaches the last one (zstd,
    xxh3, write and ``fdatasync`` included); for the baselines until the consumer process has
    received all N (no disk).
``append_to_durable``
    At a paced 10k/s with the default config: between appends ``durable_seq()`` is polled and
    every entry it covers is stamped with the time it became visible.
``idle_cpu``
    CPU of the store's child processes (writer, sidecar) over an idle window after ``open``.
``compression``
    Raw entry bytes against the bytes the segment files grew by, over the throughput run.

Temporary runs live under ``./.bench-tmp/`` (so ``fdatasync`` reaches the real disk) and are
removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import numpy as np
import psutil

from ringtape.capture.config import (
    DataMarkerConfig,
    Environment,
    EventStoreConfig,
    RegisteredComponents,
)
from ringtape.capture.ring import RingGeometry
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.storage.format.entry import ENTRY_HEADER_SIZE
from ringtape.tools.arguments import BENCH_SEED, bench_arguments
from ringtape.tools.bench.baselines import (
    SHAPE_MESSAGE,
    SHAPE_RECORD,
    BareRingBaseline,
    Baseline,
    FasterFifoBaseline,
    QueueBaseline,
)
from ringtape.tools.demo.session import BusMessage, TradingSession

SCHEMA: Final = "ringtape-bench/1"
SHAPE_RECORD_CLOCK: Final = "record_clock"  # send(topic, payload): the store's own clock

LATENCY_RATE: Final = 100_000
DURABLE_RATE: Final = 10_000
POOL_SIZE: Final = 4096  # a power of two: the loops index it with a mask
PAYLOAD_MIN: Final = 128
PAYLOAD_MAX: Final = 256
THROUGHPUT_CAPACITY: Final = 65_536
# The queues' buffers match the byte budget of ringtape's ring at THROUGHPUT_CAPACITY.
CHANNEL_BYTES: Final = RingGeometry.for_capacity(THROUGHPUT_CAPACITY).ring_bytes

TARGET_APPEND_NS: Final = {"p50_ns": 1_000, "p99_ns": 3_000, "p99_9_ns": 15_000}
TARGET_CPU_US_PER_ENTRY: Final = 1.5
TARGET_DURABLE_PER_S: Final = 1_000_000
TARGET_DURABLE_SLACK_NS: Final = 2_000_000  # p99 append-to-durable <= max_batch_latency + this
TARGET_IDLE_PERCENT: Final = 2.0

BASELINE_NAMES: Final = ("mp_queue", "faster_fifo", "bare_ring")
SECTIONS: Final = (
    "append_latency",
    "producer_cpu",
    "durable_throughput",
    "append_to_durable",
    "idle_cpu",
    "compression",
)

_TOPICS: Final = (
    "data.quotes.BINANCE.BTCUSDT-PERP",
    "data.quotes.BINANCE.ETHUSDT-PERP",
    "data.trades.BINANCE.BTCUSDT-PERP",
    "data.book.deltas.BINANCE.BTCUSDT-PERP",
    "events.order.S-001",
    "events.position.S-001",
    "commands.trading.S-001",
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """What to run: ``quick`` is a smoke run; ``seconds`` scales every duration and count."""

    quick: bool = False
    seconds: float = 1.0
    seed: int = BENCH_SEED
    work_dir: Path | None = None  # default: ./.bench-tmp
    progress: bool = True  # one line per step on stderr

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"seconds: must be > 0, got {self.seconds}")


@dataclass(frozen=True)
class _Plan:
    latency_s: float  # per channel and mode
    overhead_s: float  # per timer-overhead shape
    cpu_entries: int
    cpu_repeats: int
    throughput_entries: int
    durable_s: float
    idle_s: float
    settle_s: float

    @classmethod
    def from_options(cls, options: BenchOptions) -> _Plan:
        s = options.seconds
        if options.quick:
            return cls(
                latency_s=0.1 * s,
                overhead_s=0.05 * s,
                cpu_entries=max(1000, int(5000 * s)),
                cpu_repeats=2,
                throughput_entries=max(1000, int(20_000 * s)),
                durable_s=0.5 * s,
                idle_s=1.0 * s,
                settle_s=0.2,
            )
        return cls(
            latency_s=2.0 * s,
            overhead_s=1.0 * s,
            cpu_entries=max(1000, int(50_000 * s)),
            cpu_repeats=5,
            throughput_entries=max(1000, int(1_000_000 * s)),
            durable_s=5.0 * s,
            idle_s=5.0 * s,
            settle_s=0.5,
        )


# -- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Messages:
    items: list[tuple[str, bytes]]  # POOL_SIZE (topic, payload) pairs
    record_bytes: list[int]  # the ringtape entry record each one becomes

    def raw_bytes(self, start: int, count: int) -> int:
        """Record bytes of ``count`` consecutive sends starting at pool index ``start``."""
        laps, rest = divmod(count, POOL_SIZE)
        total = laps * sum(self.record_bytes)
        for i in range(start, start + rest):
            total += self.record_bytes[i % POOL_SIZE]
        return total

    def describe(self) -> dict[str, Any]:
        sizes = [len(p) for _, p in self.items]
        return {
            "pool": POOL_SIZE,
            "payload_bytes_min": min(sizes),
            "payload_bytes_max": max(sizes),
            "payload_bytes_mean": sum(sizes) / len(sizes),
            "record_bytes_mean": sum(self.record_bytes) / len(self.record_bytes),
            "topics": list(_TOPICS),
            "content": "JSON-like text of synthetic bus messages (random field values)",
        }


def _field(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return f'"price":"{rng.uniform(20_000, 70_000):.2f}"'
    if kind == 1:
        return f'"size":"{rng.uniform(0, 5):.4f}"'
    if kind == 2:
        return f'"ts_event":{1_700_000_000_000_000_000 + rng.randrange(10**15)}'
    if kind == 3:
        return f'"side":"{rng.choice(("BUY", "SELL"))}"'
    return f'"id":"{rng.getrandbits(64):016x}"'


def _make_messages(seed: int) -> _Messages:
    rng = random.Random(seed)
    items = []
    for _ in range(POOL_SIZE):
        topic = rng.choice(_TOPICS)
        size = rng.randint(PAYLOAD_MIN, PAYLOAD_MAX)
        text = '{"type":"' + topic.split(".")[1] + '"'
        while len(text) < size:
            text += "," + _field(rng)
        items.append((topic, text.encode()[:size]))
    records = [ENTRY_HEADER_SIZE + len(t.encode()) + len(p) for t, p in items]
    return _Messages(items, records)


# -- measuring ---------------------------------------------------------------------------------


def _empty_record(topic: str, payload: bytes, *, ts_init: int | None = None) -> None:
    return None


def _empty_message(message: object) -> None:
    return None


@dataclass
class _Paced:
    latencies_ns: list[int]
    late_slots: int
    seconds: float

    def report(self, rate: int) -> dict[str, Any]:
        out = _stats(self.latencies_ns)
        out["rate_per_s"] = rate
        out["achieved_rate_per_s"] = len(self.latencies_ns) / self.seconds
        out["late_slots"] = self.late_slots
        return out


def _paced(
    send: Callable[..., object], shape: str, items: list[tuple[str, bytes]], rate: int, count: int
) -> _Paced:
    """Call ``send`` ``count`` times at ``rate``/s, timing each call alone."""
    pc = time.perf_counter_ns
    clock = time.time_ns
    period = 1_000_000_000 // rate
    mask = len(items) - 1
    lat = [0] * count
    late = 0
    record = shape == SHAPE_RECORD
    own_clock = shape == SHAPE_RECORD_CLOCK
    gc.collect()
    start = t_next = pc()
    for i in range(count):
        t_next += period
        now = pc()
        while now < t_next:
            now = pc()
        if now - t_next > period:
            late += 1
            t_next = now
        topic, payload = items[i & mask]
        ts = clock()
        if record:
            t0 = pc()
            send(topic, payload, ts_init=ts)
            t1 = pc()
        elif own_clock:
            t0 = pc()
            send(topic, payload)
            t1 = pc()
        else:
            message = (topic, ts, payload)
            t0 = pc()
            send(message)
            t1 = pc()
        lat[i] = t1 - t0
    return _Paced(lat, late, (pc() - start) / 1e9)


def _unpaced(
    send: Callable[..., object], shape: str, items: list[tuple[str, bytes]], count: int, start: int
) -> None:
    """Call ``send`` ``count`` times as fast as possible (pool index from ``start``)."""
    mask = len(items) - 1
    ts0 = time.time_ns()
    if shape == SHAPE_MESSAGE:
        for i in range(start, start + count):
            topic, payload = items[i & mask]
            send((topic, ts0 + i, payload))
    else:
        for i in range(start, start + count):
            topic, payload = items[i & mask]
            send(topic, payload, ts_init=ts0 + i)


def _stats(samples: Sequence[int]) -> dict[str, Any]:
    a = np.asarray(samples, dtype=np.int64)
    p50, p90, p99, p999 = (float(x) for x in np.percentile(a, [50, 90, 99, 99.9]))
    return {
        "count": len(a),
        "mean_ns": float(a.mean()),
        "min_ns": int(a.min()),
        "p50_ns": p50,
        "p90_ns": p90,
        "p99_ns": p99,
        "p99_9_ns": p999,
        "max_ns": int(a.max()),
    }


def _judge(stats: dict[str, Any], targets: Mapping[str, float]) -> dict[str, Any]:
    """Add ``target`` and ``met`` (all targets), with each one in ``met_detail``."""
    detail = {k: bool(stats[k] <= v) for k, v in targets.items()}
    stats["target"] = dict(targets)
    stats["met"] = all(detail.values())
    stats["met_detail"] = detail
    return stats


def _judge_value(
    report: dict[str, Any], key: str, target: float, *, at_least: bool = False
) -> dict[str, Any]:
    """Add ``target`` and ``met`` for one figure (``at_least``: higher is better)."""
    value = report[key]
    report["target"] = {key: target}
    report["met"] = bool(value >= target if at_least else value <= target)
    return report


def _wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:.0f} s")
        time.sleep(0.0002)


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _process_cpu(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


# -- channels ----------------------------------------------------------------------------------


@dataclass
class _Channel:
    """One producer-consumer pair as the loops drive it.

    ``progress()`` counts what the consumer side has finished (ringtape: the durable seq;
    baselines: messages received); ``target`` is what it reaches once everything sent is done.
    """

    name: str
    send: Callable[..., object]
    shape: str
    progress: Callable[[], int]
    target: int
    items: list[tuple[str, bytes]]
    consumers: list[psutil.Process] = field(default_factory=list)
    sent: int = 0  # pool index of the next unpaced push

    def push(self, count: int) -> None:
        _unpaced(self.send, self.shape, self.items, count, self.sent)
        self.sent += count
        self.target += count

    def drain(self, timeout: float = 120.0) -> None:
        _wait_until(lambda: self.progress() >= self.target, timeout, f"{self.name} drain")

    def expect(self, count: int) -> None:
        """``count`` more were sent by someone else (a timed loop); wait for them too."""
        self.target += count
        self.drain()

    def warm(self) -> None:
        """One pass over the pool (struct caches, feeder threads), then drain."""
        self.push(POOL_SIZE)
        self.drain()


@dataclass
class _OpenStore:
    store: EventStore
    children: list[psutil.Process]  # the processes open() started: writer, sidecar
    sidecar_running: bool

    def channel(self, items: list[tuple[str, bytes]]) -> _Channel:
        store = self.store

        def progress() -> int:
            if store.is_halted():
                raise RuntimeError(f"the store halted: {store.halt_reason()}")
            return store.durable_seq()

        return _Channel("ringtape", store.append, SHAPE_RECORD, progress, 1, items, self.children)


def _sidecar_supported() -> bool:
    return hasattr(EventStore, "observe_data")


def _config(base: Path, **overrides: Any) -> EventStoreConfig:
    markers = DataMarkerConfig() if _sidecar_supported() else None
    return EventStoreConfig(base_dir=str(base), data_markers=markers, **overrides)


def _describe_config(config: EventStoreConfig) -> dict[str, Any]:
    return {
        "channel_capacity": config.channel_capacity,
        "max_batch_entries": config.max_batch_entries,
        "max_batch_latency_ms": config.max_batch_latency.total_seconds() * 1e3,
        "halt_threshold_ms": config.halt_threshold.total_seconds() * 1e3,
        "data_markers": config.data_markers is not None,
    }


@contextlib.contextmanager
def _open_store(config: EventStoreConfig) -> Iterator[_OpenStore]:
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    store = EventStore(config)
    try:
        store.open(uuid.uuid4(), RegisteredComponents(), Environment.LIVE)
        children = [p for p in me.children() if p.pid not in before]
        writer = store.writer_pid()
        yield _OpenStore(store, children, any(p.pid != writer for p in children))
    finally:
        store.seal()


@contextlib.contextmanager
def _baseline(make: Callable[[], Baseline], items: list[tuple[str, bytes]]) -> Iterator[_Channel]:
    b = make()
    try:
        pid = b.consumer_pid()
        consumers = [psutil.Process(pid)] if pid is not None else []
        yield _Channel(b.name, b.send, b.shape, b.received, 0, items, consumers)
    finally:
        b.stop()


def _baseline_makers() -> list[Callable[[], Baseline]]:
    return [
        QueueBaseline,
        lambda: FasterFifoBaseline(CHANNEL_BYTES),
        lambda: BareRingBaseline(CHANNEL_BYTES),
    ]


# -- sections ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """What every section needs: the plan, the run's temporary directory, the messages."""

    plan: _Plan
    tmp: Path
    messages: _Messages
    log: Log

    @property
    def items(self) -> list[tuple[str, bytes]]:
        return self.messages.items


def _section_append_latency(run: _Run) -> dict[str, Any]:
    items = run.items
    count = max(1000, int(run.plan.latency_s * LATENCY_RATE))
    overhead_count = max(1000, int(run.plan.overhead_s * LATENCY_RATE))

    def paced(
        send: Callable[..., object], shape: str, n: int = count, consumers: Sequence[Any] = ()
    ) -> dict[str, Any]:
        cpu0 = _process_cpu(consumers)
        result = _paced(send, shape, items, LATENCY_RATE, n)
        report = result.report(LATENCY_RATE)
        if consumers:
            used = _process_cpu(consumers) - cpu0
            report["consumer_cpu_percent_of_core"] = used / result.seconds * 100
        return report

    run.log(f"append latency: timer overhead ({overhead_count} empty calls per shape)")
    overhead = {
        "record_call": paced(_empty_record, SHAPE_RECORD, overhead_count),
        "message_call": paced(_empty_message, SHAPE_MESSAGE, overhead_count),
    }
    config = _config(run.tmp / "latency")
    run.log(f"append latency: ringtape ({count} appends per mode at {LATENCY_RATE}/s)")
    with _open_store(config) as opened:
        channel = opened.channel(items)
        channel.warm()
        passed = paced(opened.store.append, SHAPE_RECORD, consumers=channel.consumers)
        channel.expect(count)
        own_clock = paced(opened.store.append, SHAPE_RECORD_CLOCK, consumers=channel.consumers)
        channel.expect(count)
    ringtape: dict[str, Any] = {
        "config": _describe_config(config),
        "sidecar_supported": _sidecar_supported(),
        "sidecar_running": opened.sidecar_running,
        "ts_init_passed": _judge(passed, TARGET_APPEND_NS),
        "default_clock": _judge(own_clock, TARGET_APPEND_NS),
    }
    baselines: dict[str, Any] = {}
    for make in _baseline_makers():
        with _baseline(make, items) as channel:
            run.log(f"append latency: {channel.name}")
            channel.warm()
            baselines[channel.name] = paced(
                channel.send, channel.shape, consumers=channel.consumers
            )
            channel.expect(count)
    ratios = {
        mode: {
            name: {k: _ratio(ringtape[mode][k], b[k]) for k in TARGET_APPEND_NS}
            for name, b in baselines.items()
        }
        for mode in ("ts_init_passed", "default_clock")
    }
    return {
        "method": "perf_counter_ns around each call; paced by busy-wait on perf_counter_ns",
        "rate_per_s": LATENCY_RATE,
        "calls_per_measurement": count,
        "timer_overhead": overhead,
        "ringtape": ringtape,
        "baselines": baselines,
        "ratios_ringtape_over_baseline": ratios,
    }


@dataclass(frozen=True)
class _Unpaced:
    entries: int
    send_s: float
    seconds: float
    producer_cpu_s: float
    consumer_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.entries / self.seconds

    def throughput_report(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "seconds": self.seconds,
            "send_seconds": self.send_s,
            "entries_per_s": self.per_s,
            "producer_cpu_us_per_entry": self.producer_cpu_s / self.entries * 1e6,
            "consumer_cpu_us_per_entry": self.consumer_cpu_s / self.entries * 1e6,
        }


def _drive(channel: _Channel, count: int) -> _Unpaced:
    """Send ``count`` unpaced and wait until the consumer side has finished them."""
    gc.collect()
    consumer0 = _process_cpu(channel.consumers)
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter_ns()
    channel.push(count)
    t1 = time.perf_counter_ns()
    channel.drain(timeout=60.0 + count / 10_000)
    t2 = time.perf_counter_ns()
    cpu1 = _cpu_seconds()
    consumer1 = _process_cpu(channel.consumers)
    return _Unpaced(count, (t1 - t0) / 1e9, (t2 - t0) / 1e9, cpu1 - cpu0, consumer1 - consumer0)


def _cpu_report(runs: list[_Unpaced]) -> dict[str, Any]:
    per = [r.producer_cpu_s / r.entries * 1e6 for r in runs]
    consumer = [r.consumer_cpu_s / r.entries * 1e6 for r in runs]
    return {
        "us_per_entry": float(np.median(per)),
        "us_per_entry_min": min(per),
        "us_per_entry_runs": per,
        "consumer_us_per_entry": float(np.median(consumer)),
    }


def _session_items(count: int) -> list[tuple[str, bytes]]:
    """``count`` bus messages of a seeded trading session, as (topic, payload)."""
    out: list[tuple[str, bytes]] = []
    for message in TradingSession(seed=11).messages(count):
        if isinstance(message, BusMessage):
            out.append((message.topic, message.payload))
            if len(out) == count:
                break
    return out


def _segment_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.glob("events-*.seg"))


def _section_unpaced(run: _Run) -> dict[str, Any]:
    """Producer CPU, durable throughput and compression, one channel at a time."""
    n, reps, big = run.plan.cpu_entries, run.plan.cpu_repeats, run.plan.throughput_entries
    loop_overhead = {}
    for shape, fn in ((SHAPE_RECORD, _empty_record), (SHAPE_MESSAGE, _empty_message)):
        # Nothing consumes: progress() is always past the target.
        loop = _Channel("loop", fn, shape, lambda: sys.maxsize, 0, run.items)
        loop_overhead[f"{shape}_call"] = _cpu_report([_drive(loop, n) for _ in range(reps)])

    config = _config(run.tmp / "throughput", channel_capacity=THROUGHPUT_CAPACITY)
    run.log(f"cpu + throughput: ringtape ({reps} x {n} entries, then {big})")
    with _open_store(config) as opened:
        channel = opened.channel(run.items)
        channel.warm()
        cpu_runs = [_drive(channel, n) for _ in range(reps)]
        run_dir = opened.store.run_dir()
        assert run_dir is not None
        stored0 = _segment_bytes(run_dir)
        first = channel.sent
        fast = _drive(channel, big)
        stored = _segment_bytes(run_dir) - stored0
    raw = run.messages.raw_bytes(first, big)
    # The same run over a realistic trading stream (orders, fills, positions as JSON), whose
    # compressibility, not the synthetic payloads' entropy, sets the writer's zstd cost.
    session_items = _session_items(POOL_SIZE)
    run.log(f"throughput: ringtape on the trading-session stream ({big})")
    with _open_store(_config(run.tmp / "session", channel_capacity=THROUGHPUT_CAPACITY)) as opened:
        channel = opened.channel(session_items)
        channel.warm()
        session_run = _drive(channel, big)
    ringtape_cpu = _judge_value(_cpu_report(cpu_runs), "us_per_entry", TARGET_CPU_US_PER_ENTRY)
    ringtape_throughput = _judge_value(
        fast.throughput_report(), "entries_per_s", TARGET_DURABLE_PER_S, at_least=True
    )

    cpu_baselines: dict[str, Any] = {}
    throughput_baselines: dict[str, Any] = {}
    for make in _baseline_makers():
        with _baseline(make, run.items) as channel:
            run.log(f"cpu + throughput: {channel.name}")
            channel.warm()
            cpu_baselines[channel.name] = _cpu_report([_drive(channel, n) for _ in range(reps)])
            throughput_baselines[channel.name] = _drive(channel, big).throughput_report()

    cpu = {
        "method": "getrusage(RUSAGE_SELF) user+system, every thread, over unpaced runs that fit"
        " the channel, until the consumer has everything; median of the runs",
        "entries_per_run": n,
        "runs": reps,
        "loop_overhead": loop_overhead,
        "ringtape": ringtape_cpu,
        "baselines": cpu_baselines,
        "ratios_ringtape_over_baseline": {
            k: _ratio(ringtape_cpu["us_per_entry"], v["us_per_entry"])
            for k, v in cpu_baselines.items()
        },
    }
    throughput = {
        "method": "ringtape: first append until durable_seq() == last seq (fdatasync included);"
        " baselines: first send until the consumer process has received all (no disk)",
        "config": _describe_config(config),
        "baseline_buffer_bytes": CHANNEL_BYTES,
        "ringtape": ringtape_throughput,
        "ringtape_session_stream": {
            **_judge_value(
                session_run.throughput_report(),
                "entries_per_s",
                TARGET_DURABLE_PER_S,
                at_least=True,
            ),
            "payloads": "ringtape.tools.demo.session.TradingSession bus messages (JSON), pool of"
            f" {POOL_SIZE}, mean {sum(len(p) for _, p in session_items) / POOL_SIZE:.0f} B",
        },
        "baselines": throughput_baselines,
        "ratios_ringtape_over_baseline": {
            k: _ratio(fast.per_s, v["entries_per_s"]) for k, v in throughput_baselines.items()
        },
    }
    compression = {
        "source": "raw entry record bytes vs the growth of events-*.seg over the throughput run",
        "entries": big,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": _ratio(raw, stored),
        "raw_mb_per_s": raw / fast.seconds / 1e6,
        "stored_mb_per_s": stored / fast.seconds / 1e6,
        "compression_level": StoreOptions().compression_level,
    }
    return {"producer_cpu": cpu, "durable_throughput": throughput, "compression": compression}


class _DurableStamps:
    """When each entry ``first .. first + count - 1`` became durable (perf_counter_ns)."""

    def __init__(self, first: int, count: int, durable: int) -> None:
        self.first = first
        self.count = count
        self.seen = durable
        self.visible = [0] * count

    def update(self, durable: int, now: int) -> None:
        lo = max(self.seen, self.first - 1) + 1
        hi = min(durable, self.first + self.count - 1)
        for seq in range(lo, hi + 1):
            self.visible[seq - self.first] = now
        self.seen = durable


def _section_append_to_durable(run: _Run) -> dict[str, Any]:
    items = run.items
    count = max(500, int(run.plan.durable_s * DURABLE_RATE))
    config = _config(run.tmp / "durable")
    run.log(f"append to durable: {count} appends at {DURABLE_RATE}/s")
    pc = time.perf_counter_ns
    clock = time.time_ns
    period = 1_000_000_000 // DURABLE_RATE
    mask = len(items) - 1
    appended = [0] * count
    with _open_store(config) as opened:
        store = opened.store
        channel = opened.channel(items)
        channel.warm()
        stamps = _DurableStamps(channel.target + 1, count, store.durable_seq())
        gc.collect()
        t_next = pc()
        for i in range(count):
            t_next += period
            now = pc()
            while now < t_next:
                durable = store.durable_seq()
                now = pc()
                if durable != stamps.seen:
                    stamps.update(durable, now)
            topic, payload = items[i & mask]
            appended[i] = pc()
            store.append(topic, payload, ts_init=clock())
        last = stamps.first + count - 1
        deadline = time.monotonic() + 60.0
        while stamps.seen < last:
            if store.is_halted() or time.monotonic() > deadline:
                raise RuntimeError(f"entries not durable (halt: {store.halt_reason()})")
            durable = store.durable_seq()
            if durable != stamps.seen:
                stamps.update(durable, pc())
    stats = _stats([v - a for a, v in zip(appended, stamps.visible, strict=True)])
    stats["rate_per_s"] = DURABLE_RATE
    max_batch_ns = int(config.max_batch_latency.total_seconds() * 1e9)
    return {
        "method": "durable_seq() polled between paced appends; latency = durable seen - append",
        "config": _describe_config(config),
        "sidecar_running": opened.sidecar_running,
        "latency": _judge(stats, {"p99_ns": max_batch_ns + TARGET_DURABLE_SLACK_NS}),
    }


def _section_idle(run: _Run) -> dict[str, Any]:
    config = _config(run.tmp / "idle")
    run.log(f"idle cpu: {run.plan.idle_s:.1f} s")
    with _open_store(config) as opened:
        time.sleep(run.plan.settle_s)
        procs = opened.children
        writer = opened.store.writer_pid()
        before = [_process_cpu([p]) for p in procs]
        own0 = _cpu_seconds()
        t0 = time.monotonic()
        time.sleep(run.plan.idle_s)
        wall = time.monotonic() - t0
        after = [_process_cpu([p]) for p in procs]
        own = _cpu_seconds() - own0
    rows = [
        {
            "role": "writer" if p.pid == writer else "sidecar",
            "pid": p.pid,
            "percent_of_core": (b - a) / wall * 100,
        }
        for p, a, b in zip(procs, before, after, strict=True)
    ]
    total = sum(r["percent_of_core"] for r in rows)
    return {
        "method": "psutil cpu_times (user+system) of the store's child processes, idle window",
        "window_s": wall,
        "settle_s": run.plan.settle_s,
        "sidecar_running": opened.sidecar_running,
        "processes": rows,
        "percent_of_core": total,
        "kernel_process_percent_of_core": own / wall * 100,
        "target": {"percent_of_core": TARGET_IDLE_PERCENT},
        "met": total < TARGET_IDLE_PERCENT,
    }


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MachineCpu:
    """Machine-wide CPU seconds (``/proc/stat``) against this process tree's own."""

    wall: float
    busy: float  # user + nice + system + irq + softirq, every CPU
    steal: float
    ours: float  # this process and its reaped children (writers, consumers)

    @classmethod
    def now(cls) -> _MachineCpu:
        busy = steal = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
            jiffies = [int(x) for x in first[1:9]]
            hz = os.sysconf("SC_CLK_TCK")
            busy = (sum(jiffies[:3]) + jiffies[5] + jiffies[6]) / hz
            steal = jiffies[7] / hz
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return cls(time.monotonic(), busy, steal, ours)

    def since(self, start: _MachineCpu) -> dict[str, float]:
        wall = self.wall - start.wall
        other = max(0.0, (self.busy - start.busy) - (self.ours - start.ours))
        return {
            "wall_s": wall,
            "other_processes_cores": other / wall,
            "steal_cores": (self.steal - start.steal) / wall,
        }


def _meta(options: BenchOptions, plan: _Plan, work: Path) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for dist in ("ringtape", "faster-fifo", "numpy", "zstandard"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "seconds_scale": options.seconds,
        "seed": options.seed,
        "plan": asdict(plan),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "versions": versions,
        "work_dir": str(work),
        "gc_enabled": gc.isenabled(),
        "switch_interval_s": sys.getswitchinterval(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def _checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every judged figure of ``result`` in one flat list."""
    out: list[dict[str, Any]] = []

    def add(name: str, section: Any, key: str) -> None:
        if isinstance(section, dict) and "met" in section:
            met = section.get("met_detail", {}).get(key, section["met"])
            out.append(
                {"name": name, "value": section[key], "target": section["target"][key], "met": met}
            )

    def get(*path: str) -> Any:
        node: Any = result
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    for mode in ("ts_init_passed", "default_clock"):
        for key in TARGET_APPEND_NS:
            add(f"append {key} ({mode})", get("append_latency", "ringtape", mode), key)
    add("producer cpu", get("producer_cpu", "ringtape"), "us_per_entry")
    add("durable throughput", get("durable_throughput", "ringtape"), "entries_per_s")
    add(
        "durable throughput (session stream)",
        get("durable_throughput", "ringtape_session_stream"),
        "entries_per_s",
    )
    add("append to durable", get("append_to_durable", "latency"), "p99_ns")
    add("idle cpu", get("idle_cpu"), "percent_of_core")
    return out


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run every section and return the JSON-able result. A section that fails holds
    ``{"error": ...}`` (also listed in ``errors``) and the others still run.

    The baselines' consumers are ``multiprocessing`` spawn processes: a script that calls this
    needs the usual ``if __name__ == "__main__":`` guard (the ``ringtape`` command has it).
    """
    plan = _Plan.from_options(options)

    def log(message: str) -> None:
        if options.progress:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    root = options.work_dir or Path.cwd() / ".bench-tmp"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    run = _Run(plan, tmp, _make_messages(options.seed), log)
    machine = _MachineCpu.now()
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "meta": _meta(options, plan, tmp),
        "payloads": run.messages.describe(),
    }
    steps: list[tuple[tuple[str, ...], Callable[[_Run], dict[str, Any]]]] = [
        (("append_latency",), _section_append_latency),
        (("producer_cpu", "durable_throughput", "compression"), _section_unpaced),
        (("append_to_durable",), _section_append_to_durable),
        (("idle_cpu",), _section_idle),
    ]
    errors = []
    try:
        for keys, step in steps:
            try:
                out = step(run)
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                log(f"{'/'.join(keys)} failed: {text}")
                errors.append({"sections": list(keys), "error": text})
                result.update({k: {"error": text} for k in keys})
                continue
            result.update(out if len(keys) > 1 else {keys[0]: out})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty: another bench may be using it
    result["checks"] = _checks(result)
    result["errors"] = errors
    load = _MachineCpu.now().since(machine)
    result["machine"] = {
        **load,
        "note": "other_processes_cores: CPU used by processes outside this benchmark during the"
        f" run, in cores of {os.cpu_count()}; above ~0.2 the figures are pessimistic",
    }
    if load["other_processes_cores"] > 0.2:
        log(f"warning: other processes used {load['other_processes_cores']:.2f} cores meanwhile")
    result["elapsed_s"] = load["wall_s"]
    return result


# -- the human table ---------------------------------------------------------------------------


def _num(value: Any, scale: float, spec: str) -> str:
    return format(value / scale, spec) if isinstance(value, int | float) else "-"


def _met(value: Any) -> str:
    return "" if value is None else ("yes" if value else "NO")


def format_table(result: dict[str, Any]) -> str:
    """A short human summary: ringtape beside each baseline, the target and whether it is met."""
    lat = result.get("append_latency", {})
    passed = lat.get("ringtape", {}).get("ts_init_passed") or {}
    clock = lat.get("ringtape", {}).get("default_clock") or {}
    timer = lat.get("timer_overhead", {}).get("record_call") or {}
    cpu = result.get("producer_cpu", {})
    thr = result.get("durable_throughput", {})
    dur = result.get("append_to_durable", {}).get("latency") or {}
    idle = result.get("idle_cpu", {})
    comp = result.get("compression", {})
    units = {"us": (1e3, ".2f"), "ms": (1e6, ".2f"), "n": (1, ",.0f"), "x": (1, ".2f")}
    rows = [["", "ringtape", *BASELINE_NAMES, "target", "met"]]

    def add(label: str, own: Any, key: str, unit: str, section: Any = None) -> None:
        scale, spec = units[unit]
        own = own or {}
        base = (section or {}).get("baselines", {})
        values = [own, *(base.get(name) or {} for name in BASELINE_NAMES)]
        target = own.get("target", {}).get(key)
        met = own.get("met_detail", {}).get(key, own.get("met")) if target else None
        cells = [_num(v.get(key), scale, spec) for v in values]
        rows.append([label, *cells, _num(target, scale, spec) if target else "", _met(met)])

    for key in ("p50_ns", "p99_ns", "p99_9_ns", "max_ns"):
        add(f"append {key[:-3]} (us)", passed, key, "us", lat)
    add("  own clock p50 (us)", clock, "p50_ns", "us")
    add("  own clock p99 (us)", clock, "p99_ns", "us")
    add("  timer overhead p50 (us)", timer, "p50_ns", "us")
    add("producer CPU (us/entry)", cpu.get("ringtape"), "us_per_entry", "x", cpu)
    add("entries/s (ringtape durable)", thr.get("ringtape"), "entries_per_s", "n", thr)
    add("  on session stream", thr.get("ringtape_session_stream"), "entries_per_s", "n")
    add("append->durable p50 (ms)", dur, "p50_ns", "ms")
    add("append->durable p99 (ms)", dur, "p99_ns", "ms")
    add("idle writer+sidecar (% core)", idle, "percent_of_core", "x")
    add("compression ratio", comp, "ratio", "x")
    add("raw MB/s to disk", comp, "raw_mb_per_s", "x")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    machine = result.get("machine", {})
    if "other_processes_cores" in machine:
        lines.append(
            f"other processes used {machine['other_processes_cores']:.2f} cores during the"
            f" {machine['wall_s']:.0f} s run (above ~0.2 the figures are pessimistic)"
        )
    lines += [f"error in {'/'.join(e['sections'])}: {e['error']}" for e in result.get("errors", [])]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------


def bench_main(args: argparse.Namespace) -> int:
    """Run ``ringtape bench`` from parsed arguments: JSON to ``--out`` or stdout, a table to
    stderr. Exit 0, or 1 when a section could not run (targets missed are not an error)."""
    options = BenchOptions(quick=args.quick, seconds=args.seconds, seed=args.seed)
    out = None
    if args.out:  # opened first: a bad path must not cost a whole run's figures
        try:
            out = open(args.out, "w")  # noqa: SIM115 - closed below, after the run
        except OSError as exc:
            print(f"ringtape bench: --out {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
    result = run_bench(options)
    if not args.no_markers:
        from ringtape.tools.bench.markers import run_marker_bench  # imports tools.bench itself

        try:
            result["data_markers"] = run_marker_bench(quick=args.quick)
        except Exception as exc:  # a failed section is reported, the rest still stands
            result["data_markers"] = {"error": f"{type(exc).__name__}: {exc}"}
            result["errors"].append({"sections": ["data_markers"], "error": str(exc)})
    text = json.dumps(result, indent=2)
    if out is not None:
        with out:
            out.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    print(format_table(result), file=sys.stderr)
    markers = result.get("data_markers", {}).get("paced", {})
    if "observe_data" in markers:
        lat = markers["observe_data"]
        print(
            f"observe_data at {markers.get('achieved_rate_per_s', 0):,.0f}/s with entries"
            f" running: p50 {lat['p50_ns'] / 1e3:.2f} us, p99 {lat['p99_ns'] / 1e3:.2f} us;"
            f" dropped {markers.get('dropped', '?')}",
            file=sys.stderr,
        )
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m ringtape.tools.bench.run [--quick] [--out FILE]``."""
    description = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="ringtape bench", description=description)
    bench_arguments(parser)
    return bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
