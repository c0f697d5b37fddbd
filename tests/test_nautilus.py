"""ringtape.nautilus against the real nautilus_trader: real BacktestEngines on small synthetic
data, the real store (writer process, marker sidecar, files), real signals.

Each test builds its own engine: a backtest of 1,500–3,000 quotes runs in well under a second;
the writer's start and the interpreter's imports cost more than the engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nautilus_support import (
    AAPL,
    AAPL_BARS,
    AUDUSD,
    START_NS,
    STEP_NS,
    cache_state,
    fx_engine,
    market_data_engine,
    quotes,
)
from nautilus_trader.common.config import MessageBusConfig
from nautilus_trader.model.data import QuoteTick
from nautilus_trader.model.enums import OmsType, OrderStatus, TradingState
from pipeline_support import pid_alive, shm_names, wait_until

from ringtape.capture.config import DataMarkerConfig, EventStoreConfig
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.nautilus import NautilusCache, RingtapeCapture, instance_id_for, iter_objects
from ringtape.nautilus.routes import INSTRUMENT_TOPIC
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED, Entry
from ringtape.storage.read.markers import iter_marker_records
from ringtape.storage.read.reader import iter_entries
from ringtape.storage.read.replay import replay_run
from ringtape.storage.run.manifest import read_manifest
from ringtape.tools.cli import main as ringtape_main

TESTS = Path(__file__).resolve().parent


class Recorder:
    """The simplest MessageBus listener: what NautilusTrader hands every listener."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def is_closed(self) -> bool:
        return False

    def publish(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))


def bus_config(encoding: str | None) -> MessageBusConfig | None:
    return None if encoding is None else MessageBusConfig(encoding=encoding)


def decoder(encoding: str | None) -> Any:
    return msgspec.msgpack.decode if encoding == "msgpack" else msgspec.json.decode


def run_dir_of(capture: RingtapeCapture, base: Path) -> Path:
    iid = capture.instance_id
    runs = sorted((base / str(iid)).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def bus_entries(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if not e.topic.startswith("ringtape.")]


def state_at_dispose(engine: Any) -> dict[str, Any]:
    """The kernel's cache state when the trader reports DISPOSED, i.e. at the seal (a
    subscriber runs before the listeners)."""
    kernel = engine.kernel
    found: dict[str, Any] = {}

    def on_state(event: Any) -> None:
        if event.state.name == "DISPOSED":
            found.update(cache_state(kernel.cache))

    kernel.msgbus.subscribe(f"events.system.{kernel.trader_id.value}", on_state)
    return found


# -- one publish, one entry ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "json", "msgpack"])
def test_every_publish_is_one_entry_with_its_bytes_type_and_a_real_start_time(
    tmp_path: Path, encoding: str | None
) -> None:
    engine = fx_engine(1500, message_bus=bus_config(encoding))
    seen = Recorder()
    engine.kernel.msgbus.add_listener(seen)
    before = time.time_ns()
    capture = RingtapeCapture(EventStoreConfig(base_dir=str(tmp_path))).attach(engine.kernel)
    engine.run()
    engine.dispose()
    after = time.time_ns()

    assert capture.is_closed()
    assert capture.stats.refused == 0 and capture.stats.dropped_before_open == 0
    run_dir = run_dir_of(capture, tmp_path)
    entries = list(iter_entries(run_dir))
    captured = bus_entries(entries)
    assert [(e.topic, e.payload) for e in captured] == seen.messages  # every one, bytes as is
    assert len(captured) > 1500
    decode = decoder(encoding)
    for entry in captured:
        assert entry.payload_type == decode(entry.payload).get("type", ""), entry

    started, ended = entries[0], entries[-1]
    assert (started.seq, started.topic, ended.topic) == (1, TOPIC_RUN_STARTED, TOPIC_RUN_ENDED)
    assert before <= started.ts_init <= after  # the wall clock, not the TestClock's 0
    assert run_dir.name.startswith(f"{started.ts_init}-")
    facts = json.loads(started.payload)["extra"]["nautilus"]
    assert facts["encoding"]["format"] == (encoding or "json")
    assert facts["encoding"]["timestamps_as_str"] is (encoding is not None)
    assert facts["trader_id"] == "TESTER-001"
    assert facts["kernel_instance_id"] == engine.kernel.instance_id.value
    assert entries[1].topic == INSTRUMENT_TOPIC and entries[1].payload_type == "CurrencyPair"
    last = decode(entries[-2].payload)  # the trader's DISPOSED is the last bus entry
    assert (last["component_id"], last["state"]) == ("TESTER-001", "DISPOSED")

    manifest = read_manifest(run_dir)
    assert manifest.status.value == "ended"
    assert manifest.environment == "backtest"
    assert manifest.instance_id == str(instance_id_for("TESTER-001"))
    assert "Flipper-000" in manifest.registered_components["strategies"]


def test_nothing_raises_into_nautilus_after_a_seal_and_late_publishes_are_counted(
    tmp_path: Path,
) -> None:
    engine = fx_engine(2000)
    capture = RingtapeCapture(EventStoreConfig(base_dir=str(tmp_path))).attach(engine.kernel)
    seen = {"quotes": 0}

    def on_quote(_: QuoteTick) -> None:
        seen["quotes"] += 1
        if seen["quotes"] == 1000:
            capture.close()  # sealed mid-run, on the engine's own thread

    engine.kernel.msgbus.subscribe("data.quotes.*", on_quote)
    engine.run()  # goes on after the seal
    capture.publish("events.order.X", b'{"type":"OrderDenied"}')  # a bus that did not ask
    engine.dispose()
    capture.close()  # idempotent
    assert capture.is_closed()
    assert capture.stats.dropped_after_close == 1 and capture.stats.refused == 0
    run_dir = run_dir_of(capture, tmp_path)
    assert read_manifest(run_dir).status.value == "ended"
    quotes_in_run = sum(e.payload_type == "QuoteTick" for e in iter_entries(run_dir))
    assert quotes_in_run == 999  # the 1000th was being handled when the seal came


def test_a_reset_ends_the_run_at_the_traders_resetting(tmp_path: Path) -> None:
    engine = fx_engine(500)
    capture = RingtapeCapture(EventStoreConfig(base_dir=str(tmp_path))).attach(engine.kernel)
    engine.run()
    engine.reset()
    assert capture.is_closed()
    entries = list(iter_entries(run_dir_of(capture, tmp_path)))
    last = msgspec.json.decode(entries[-2].payload)
    assert (last["component_id"], last["state"]) == ("TESTER-001", "RESETTING")
    engine.dispose()


# -- halts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("halt_trading", "batch"), [(True, 1), (True, None), (False, None)], ids=str
)
def test_a_store_halt_stops_trading_through_the_risk_engine(
    tmp_path: Path, halt_trading: bool, batch: int | None
) -> None:
    engine = fx_engine(3000)
    config = EventStoreConfig(base_dir=str(tmp_path))
    capture = RingtapeCapture(config, halt_trading=halt_trading, batch=batch)
    capture.attach(engine.kernel)
    kernel = engine.kernel
    seen = Recorder()
    kernel.msgbus.add_listener(seen)
    killed: dict[str, Any] = {}
    kill_at = START_NS + 1000 * STEP_NS  # the 1001st quote

    def on_quote(tick: QuoteTick) -> None:
        store = capture.store
        if "at" not in killed and tick.ts_init >= kill_at:
            assert store is not None
            pid = store.writer_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # the writer dies: the store halts
            wait_until(store.is_halted, what="the store to notice its writer's death")
            killed.update(at=tick.ts_init, pid=pid, message=len(seen.messages))

    def on_risk(event: Any) -> None:
        killed.update(halted_message=len(seen.messages), halted_at=kernel.clock.timestamp_ns())

    kernel.msgbus.subscribe("data.quotes.*", on_quote)
    kernel.msgbus.subscribe("events.risk*", on_risk)
    engine.run()  # NautilusTrader sees no exception
    state = kernel.risk_engine.trading_state
    orders_after = [o for o in kernel.cache.orders() if o.ts_init > killed["at"]]
    engine.dispose()

    assert not pid_alive(killed["pid"])
    assert capture.stats.halt_reason is not None and "WriterDied" in capture.stats.halt_reason
    assert capture.stats.dropped_after_halt > 1000
    assert len(orders_after) >= 40
    statuses = Counter(o.status for o in orders_after)
    if halt_trading:
        assert capture.stats.trading_halted
        assert TradingState(state) is TradingState.HALTED
        lag = killed["halted_message"] - killed["message"]  # messages before trading halted
        assert 0 <= lag <= (batch or 64) + 1
        denied = [o for o in orders_after if o.ts_init >= killed["halted_at"]]
        assert len(denied) >= 40
        assert {o.status for o in denied} == {OrderStatus.DENIED}
        assert {o.last_event.reason for o in denied} == {"TradingState.HALTED"}
        if batch == 1:  # halted at the next message: every order after the death is denied
            assert statuses == {OrderStatus.DENIED: len(orders_after)}
    else:
        assert not capture.stats.trading_halted
        assert TradingState(state) is TradingState.ACTIVE
        assert statuses[OrderStatus.FILLED] >= 30
    # A halted run is not sealed: the next boot's sweep recovers it.
    run_dir = run_dir_of(capture, tmp_path)
    assert read_manifest(run_dir).status.value == "running"
    EventStore(config, instance_id=capture.instance_id)
    assert read_manifest(run_dir).status.value == "crashed_recovered"


def _stop_writer_at(capture: RingtapeCapture, engine: Any, quote: int) -> list[int]:
    """SIGSTOP the capture's writer (a disk that stops answering) at the ``quote``-th quote."""
    stopped: list[int] = []

    def on_quote(tick: QuoteTick) -> None:
        store = capture.store
        if not stopped and tick.ts_init >= START_NS + quote * STEP_NS:
            assert store is not None and store.writer_pid() is not None
            stopped.append(store.writer_pid())  # type: ignore[arg-type]
            os.kill(stopped[0], signal.SIGSTOP)

    engine.kernel.msgbus.subscribe("data.quotes.*", on_quote)
    return stopped


def test_anchors_while_the_writer_is_stopped_neither_block_nor_halt(tmp_path: Path) -> None:
    """Best-effort anchors (the default) go on while the writer cannot take them: the engine
    and trading carry on, and once the writer runs again the run seals with its anchors."""
    engine = fx_engine(3000)
    config = EventStoreConfig(base_dir=str(tmp_path))
    capture = RingtapeCapture(config, anchor_every=400).attach(engine.kernel)
    stopped = _stop_writer_at(capture, engine, 1000)
    try:
        engine.run()
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    store = capture.store
    assert stopped and store is not None
    engine.dispose()
    assert capture.stats.anchor_failures == 0 and capture.stats.anchors >= 5
    assert capture.stats.halt_reason is None and not capture.stats.trading_halted
    assert TradingState(engine.kernel.risk_engine.trading_state) is TradingState.ACTIVE
    states = Counter(r.state for r in store.anchors())
    assert set(states) <= {"durable", "superseded", "skipped"} and states["durable"] >= 1
    assert read_manifest(run_dir_of(capture, tmp_path)).status.value == "ended"


def test_mandatory_anchors_that_cannot_be_taken_halt_trading_not_the_engine(
    tmp_path: Path,
) -> None:
    engine = fx_engine(3000)
    config = EventStoreConfig(base_dir=str(tmp_path))
    capture = RingtapeCapture(config, StoreOptions(anchors="mandatory"), anchor_every=400).attach(
        engine.kernel
    )
    stopped = _stop_writer_at(capture, engine, 1000)
    try:
        engine.run()  # no exception reaches NautilusTrader
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    engine.dispose()
    # Two anchors find a free slot each after the writer stopped; the third waits and halts.
    assert capture.stats.anchor_failures == 1
    assert capture.stats.halt_reason is not None and "AnchorStall" in capture.stats.halt_reason
    assert capture.stats.trading_halted
    assert TradingState(engine.kernel.risk_engine.trading_state) is TradingState.HALTED


# -- data markers -------------------------------------------------------------------------------


def marker_streams(run_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    records = list(iter_marker_records(run_dir))
    streams = {r["stream"]: (r["class"], r["instrument"]) for r in records if r["kind"] == "stream"}
    out: dict[tuple[str, str], dict[str, Any]] = {
        s: {"count": 0, "hifi": 0} for s in streams.values()
    }
    for rec in records:
        if rec["kind"] == "cursor":
            for cursor in rec["cursors"]:
                key = (cursor["class"], cursor["instrument"])
                out[key]["count"] = max(out[key]["count"], cursor["count"])
        elif rec["kind"] == "hifi":
            out[streams[rec["stream"]]]["hifi"] += 1
    return out


@pytest.mark.parametrize("markers_only", [False, True])
def test_market_data_maps_to_the_five_marker_classes(tmp_path: Path, markers_only: bool) -> None:
    engine = market_data_engine()
    markers = DataMarkerConfig(high_fidelity=[AAPL.id.value])
    config = EventStoreConfig(base_dir=str(tmp_path), data_markers=markers)
    capture = RingtapeCapture(config, markers_only=markers_only).attach(engine.kernel)
    engine.run()
    engine.dispose()
    run_dir = run_dir_of(capture, tmp_path)
    iid = AAPL.id.value
    assert marker_streams(run_dir) == {
        ("BookDeltas", iid): {"count": 5, "hifi": 5},
        ("BookDepth10", iid): {"count": 5, "hifi": 5},
        ("Quote", iid): {"count": 5, "hifi": 5},
        ("Trade", iid): {"count": 5, "hifi": 5},
        ("Bar", str(AAPL_BARS)): {"count": 5, "hifi": 0},  # keyed by bar type, not hi-fi
    }
    data_types = {"OrderBookDeltas", "OrderBookDepth10", "QuoteTick", "TradeTick", "Bar"}
    recorded = Counter(e.payload_type for e in iter_entries(run_dir))
    if markers_only:
        assert not data_types & set(recorded)
    else:
        assert {t: recorded[t] for t in data_types} == dict.fromkeys(data_types, 5)


# -- back into NautilusTrader -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "msgpack"])
def test_a_run_reads_back_as_nautilus_objects(tmp_path: Path, encoding: str | None) -> None:
    engine = fx_engine(1500, message_bus=bus_config(encoding))
    capture = RingtapeCapture(EventStoreConfig(base_dir=str(tmp_path))).attach(engine.kernel)
    engine.run()
    fills = sum(o.event_count for o in engine.kernel.cache.orders() if o.is_closed)
    engine.dispose()
    run_dir = run_dir_of(capture, tmp_path)
    read = list(iter_objects(run_dir))
    ticks = [r.value for r in read if r.topic.startswith("data.quotes.")]
    assert all(isinstance(t, QuoteTick) for t in ticks)
    assert [(t.bid_price, t.ask_price, t.ts_init) for t in ticks] == [
        (q.bid_price, q.ask_price, q.ts_init) for q in quotes(1500)
    ]
    assert all(type(r.value).__name__ == r.payload_type for r in read), "types as recorded"
    instrument = next(r.value for r in read if r.topic == INSTRUMENT_TOPIC)
    assert instrument == AUDUSD and instrument.id == AUDUSD.id
    order_events = list(iter_objects(run_dir, topic="events.order.*"))
    assert len(order_events) <= fills + 100 and order_events
    lifecycle = list(iter_objects(run_dir, lifecycle=True, to_seq=1))
    assert (
        lifecycle[0].topic == TOPIC_RUN_STARTED and lifecycle[0].value["environment"] == "backtest"
    )


@pytest.mark.parametrize(
    ("oms", "encoding"),
    [(OmsType.NETTING, None), (OmsType.HEDGING, None), (OmsType.NETTING, "msgpack")],
)
def test_the_cache_rebuilt_from_a_run_equals_the_live_cache_at_seal(
    tmp_path: Path, oms: OmsType, encoding: str | None
) -> None:
    engine = fx_engine(3000, oms=oms, message_bus=bus_config(encoding))
    live = state_at_dispose(engine)
    config = EventStoreConfig(base_dir=str(tmp_path))
    capture = RingtapeCapture(config, anchor_every=1200).attach(engine.kernel)
    engine.run()
    engine.dispose()
    assert capture.stats.anchors >= 2 and capture.stats.anchor_failures == 0
    assert len(live["orders"]) == 100 and live["accounts"]
    statuses = Counter(v[0] for v in live["orders"].values())
    assert statuses["FILLED"] >= 70 and statuses["CANCELED"] >= 10
    if oms is OmsType.NETTING:
        assert len(live["snapshots"]) >= 10  # re-opened netting positions and flips
    else:
        assert len(live["positions"]) >= 50

    run_dir = run_dir_of(capture, tmp_path)
    from_anchor = NautilusCache()
    result = replay_run(run_dir, from_anchor)  # the newest anchor's snapshot, then the tail
    assert result.anchor is not None and result.applied < result.high_watermark / 2
    assert cache_state(from_anchor.cache) == live

    tail_only = NautilusCache()
    for entry in iter_entries(run_dir):
        tail_only.apply(entry)
    assert cache_state(tail_only.cache) == live


def test_dump_shows_a_msgpack_run_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = fx_engine(200, message_bus=bus_config("msgpack"))
    capture = RingtapeCapture(EventStoreConfig(base_dir=str(tmp_path))).attach(engine.kernel)
    engine.run()
    engine.dispose()
    run_dir = run_dir_of(capture, tmp_path)
    assert ringtape_main(["dump", str(run_dir), "--topic", "data.quotes.*"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 200
    first = lines[0]
    assert first["encoding"] == "msgpack" and first["payload"]["type"] == "QuoteTick"
    assert first["payload"]["ts_init"] == str(quotes(1)[0].ts_init)  # strings under a config


def test_a_store_with_several_producers_is_sealed_from_another_thread(tmp_path: Path) -> None:
    engine = fx_engine(500)
    config = EventStoreConfig(base_dir=str(tmp_path))
    capture = RingtapeCapture(config, producers="threads").attach(engine.kernel)
    engine.run()
    closer = threading.Thread(target=capture.close)
    closer.start()
    closer.join()
    engine.dispose()
    assert read_manifest(run_dir_of(capture, tmp_path)).status.value == "ended"
    assert capture.stats.dropped_after_close == 0 and capture.stats.refused == 0


# -- a real crash -------------------------------------------------------------------------------

CRASHING_KERNEL = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from nautilus_support import cache_state, fx_engine
from ringtape.capture.config import EventStoreConfig
from ringtape.nautilus import RingtapeCapture

engine = fx_engine(3000, trader_id="CRASHER-001")
capture = RingtapeCapture(EventStoreConfig(base_dir=sys.argv[1]), anchor_every=900)
capture.attach(engine.kernel)
seen = [0]

def on_quote(tick):
    seen[0] += 1
    if seen[0] == 2500:  # what the cache holds now, the entries hold: the report is exact
        store = capture.store
        capture.flush()  # a backtest hands messages over in batches
        deadline = time.monotonic() + 30
        while store.durable_seq() < capture.entries and time.monotonic() < deadline:
            time.sleep(0.001)
        report = {"state": cache_state(engine.kernel.cache), "run_dir": str(store.run_dir()),
                  "entries": capture.entries, "durable": store.durable_seq(),
                  "writer": store.writer_pid(), "anchors": capture.stats.anchors}
        print(json.dumps(report), flush=True)
        time.sleep(600)  # killed here

engine.kernel.msgbus.subscribe("data.quotes.*", on_quote)
engine.run()
"""


@pytest.mark.slow
def test_a_restarted_kernel_recovers_its_crashed_run_and_restores_its_cache(
    tmp_path: Path,
) -> None:
    kernel = subprocess.Popen(
        [sys.executable, "-c", CRASHING_KERNEL, str(tmp_path), str(TESTS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert kernel.stdout is not None
        line = kernel.stdout.readline()
        kernel.send_signal(signal.SIGKILL)
    finally:
        kernel.kill()
        kernel.wait()
    assert kernel.returncode == -signal.SIGKILL  # the crash happened
    report = json.loads(line)
    assert report["durable"] == report["entries"] and report["anchors"] >= 2
    crashed = Path(report["run_dir"])
    assert read_manifest(crashed).status.value == "running"

    engine = fx_engine(500, trader_id="CRASHER-001")  # the node boots again
    capture = RingtapeCapture(EventStoreConfig(base_dir=str(tmp_path)), restore_cache=True)
    capture.attach(engine.kernel)
    restored = json.loads(json.dumps(cache_state(engine.kernel.cache)))
    assert restored == report["state"]
    assert read_manifest(crashed).status.value == "crashed_recovered"
    engine.run()
    engine.dispose()
    runs = sorted(p for p in crashed.parent.iterdir() if p != crashed)
    assert len(runs) == 1
    manifest = read_manifest(runs[0])
    assert manifest.parent_run_id == crashed.name and manifest.status.value == "ended"
    started = json.loads(next(iter_entries(runs[0])).payload)
    assert started["extra"]["nautilus"]["restored_from"] == crashed.name
    wait_until(lambda: not pid_alive(report["writer"]), what="the dead kernel's writer to exit")
    wait_until(lambda: not shm_names(kernel.pid), what="the dead kernel's shared memory to go")


def test_the_nautilus_demo_captures_verifies_and_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--nautilus", "--base-dir", str(tmp_path), "--quotes", "3000", "--json"]
    assert ringtape_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["replay_ok"] and result["verify"]["ok"]
    assert result["anchors"] >= 1 and "anchor at seq" in result["replay_detail"]
    assert result["bus_messages"] > 3000 and result["marker_records"] > 3000
    assert ringtape_main(["demo", "--quotes", "5", "--base-dir", str(tmp_path)]) == 2
