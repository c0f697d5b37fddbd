"""``ringtape demo --nautilus``: a real NautilusTrader backtest captured, verified, replayed.

1. **Capture.** NautilusTrader's own ``EMACross`` example strategy trades a seeded random walk
   of AUD/USD quotes in a ``BacktestEngine`` (``ringtape.nautilus.example``), with a
   ``RingtapeCapture`` attached: every bus message an entry, quotes and bars data markers
   (AUD/USD high-fidelity), a snapshot anchor of the kernel's cache every ``anchor_every``
   entries. The run is sealed when the engine is disposed.
2. **Verify** the run (``storage.check.verify.verify_path``).
3. **Replay** it through a second store configured with ``replay_from_run_id`` into a fresh
   NautilusTrader ``Cache`` (``ringtape.nautilus.NautilusCache``: newest anchor, then the
   tail) and compare its orders, positions and accounts with the kernel's cache at the seal.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ringtape import DataMarkerConfig, EventStore, EventStoreConfig, EventStoreError
from ringtape.nautilus import NautilusCache, RingtapeCapture, instance_id_for
from ringtape.nautilus.example import TRADER_ID, ema_cross_backtest
from ringtape.nautilus.parity import cache_summary, differences
from ringtape.storage.check.verify import VerifyReport, verify_path
from ringtape.tools.common import choose_jobs
from ringtape.tools.verify_pool import scanner

DEFAULT_QUOTES: Final = 20_000
INSTRUMENT: Final = "AUD/USD.SIM"


@dataclass
class NautilusDemoResult:
    """Everything the summary shows; ``ok`` is verify intact, replay parity and no halt."""

    nautilus_trader: str
    run_dir: str
    quotes: int
    backtest_seconds: float
    bus_messages: int
    entries: int
    marker_records: int
    anchors: int
    raw_bytes: int
    segment_bytes: int
    orders: int
    positions: int
    capture: dict[str, Any]
    verify: VerifyReport
    replay_ok: bool
    replay_detail: str

    @property
    def ok(self) -> bool:
        return self.verify.ok and self.replay_ok and self.capture["halt_reason"] is None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "verify"}
        out["verify"] = self.verify.to_dict()
        out["ok"] = self.ok
        return out


def replay_parity(config: EventStoreConfig, run_id: str, live: dict[str, Any]) -> tuple[bool, str]:
    """Restore a fresh NautilusTrader cache from ``run_id`` through a second store and
    compare it with ``live`` (a ``cache_summary``)."""
    iid = instance_id_for(TRADER_ID)
    store = EventStore(dataclasses.replace(config, replay_from_run_id=run_id), instance_id=iid)
    replayed = NautilusCache()
    try:
        store.restore_parent_cache(iid, replayed)
    except EventStoreError as exc:
        return False, f"replay failed: {exc}"
    result = store.last_replay
    how = "no replay"
    if result is not None:
        start = "from seq 1" if result.anchor is None else f"anchor at seq {result.anchor.seq}"
        how = f"{start} + {result.applied:,} entries"
    found = differences(live, cache_summary(replayed.cache))
    counts = f"{len(live['orders'])} orders, {len(live['positions'])} position(s),"
    counts += f" {len(live['accounts'])} account(s)"
    if not found:
        return True, f"{how}; {counts} equal"
    return False, f"{how}; {len(found)} difference(s), first: {found[0]}"


def run_nautilus_demo(
    base_dir: Path, *, quotes: int = DEFAULT_QUOTES, seed: int = 42, jobs: int | None = None
) -> NautilusDemoResult:
    """Capture, seal, verify and replay one NautilusTrader backtest (module docstring)."""
    import nautilus_trader

    if quotes < 1:
        raise ValueError(f"quotes must be >= 1, got {quotes}")
    base_dir.mkdir(parents=True, exist_ok=True)
    markers = DataMarkerConfig(high_fidelity=[INSTRUMENT])
    config = EventStoreConfig(base_dir=str(base_dir), data_markers=markers)
    engine = ema_cross_backtest(quotes, seed=seed)
    kernel = engine.kernel
    live: dict[str, Any] = {}

    def at_seal(event: Any) -> None:  # subscribers run before listeners: before the seal
        if event.state.name == "DISPOSED":
            live.update(cache_summary(kernel.cache))

    kernel.msgbus.subscribe(f"events.system.{TRADER_ID}", at_seal)
    capture = RingtapeCapture(config, anchor_every=max(1000, quotes // 3)).attach(kernel)
    started = time.perf_counter()
    engine.run()
    elapsed = time.perf_counter() - started
    store = capture.store
    assert store is not None
    run_dir, run_id = store.run_dir(), store.run_id()
    engine.dispose()
    capture.close()
    if run_dir is None or run_id is None:
        raise EventStoreError(f"the run did not open: {capture.stats.open_error}")
    report = verify_path(run_dir, scan=scanner(choose_jobs(run_dir, jobs)))
    summary = report.runs[0] if report.runs else None
    entries = 0 if summary is None or summary.last_seq is None else summary.last_seq
    if capture.stats.halt_reason is None:
        ok, detail = replay_parity(config, run_id, live)
    else:
        ok, detail = False, f"not replayed: the store halted ({capture.stats.halt_reason})"
    return NautilusDemoResult(
        nautilus_trader=nautilus_trader.__version__,
        run_dir=str(run_dir),
        quotes=quotes,
        backtest_seconds=elapsed,
        bus_messages=entries - 2 - capture.stats.anchors - capture.stats.instruments,
        entries=entries,
        marker_records=0 if summary is None else summary.markers,
        anchors=capture.stats.anchors,
        raw_bytes=0 if summary is None else summary.raw_bytes,
        segment_bytes=sum(p.stat().st_size for p in run_dir.glob("events-*.seg")),
        orders=len(live.get("orders", {})),
        positions=len(live.get("positions", {})),
        capture=dataclasses.asdict(capture.stats),
        verify=report,
        replay_ok=ok,
        replay_detail=detail,
    )
