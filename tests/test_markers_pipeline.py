"""The data-marker sidecar end to end: real store, real sidecar process, real signals."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pipeline_support import (
    pid_alive,
    shm_names,
    sigkill_kernel_after_report,
    wait_until,
    walk_entries,
)

from ringtape.capture.config import (
    DataMarkerClass,
    DataMarkerConfig,
    EventStoreConfig,
    RegisteredComponents as Components,
)
from ringtape.capture.markers import MarkerLane
from ringtape.capture.store import EventStore
from ringtape.storage.check.markers import check_marker_stream
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.entry import TOPIC_RUN_ENDED
from ringtape.storage.format.frame import FRAME_MAGIC
from ringtape.storage.format.markers import (
    GAP_OVERFLOW,
    GAP_WRITER_CLOSED,
    REASON_SAFETY_FLUSH,
    TOPIC_MARKER_LANE_FAILED,
    Cursor,
    CursorSnapshot,
    HiFiMarker,
    MarkerGap,
    StreamDef,
    decode_gap,
    fingerprint,
)
from ringtape.storage.read.markers import fold_to, iter_markers
from ringtape.storage.run.layout import list_segments
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.recovery import recover_run
from ringtape.storage.run.status import RunStatus

CLASSES = DataMarkerClass.all()
Q = DataMarkerClass.Quote


def open_store(stores: list[EventStore], tmp_path: Path, **markers: Any) -> EventStore:
    config = EventStoreConfig(base_dir=str(tmp_path), data_markers=DataMarkerConfig(**markers))
    store = EventStore(config)
    stores.append(store)
    store.open(uuid.uuid4(), Components(), "sandbox")
    return store


def lane_of(store: EventStore) -> MarkerLane:
    lane = store.marker_lane()
    assert lane is not None
    return lane


def run_dir_of(store: EventStore) -> Path:
    run_dir = store.run_dir()
    assert run_dir is not None
    return run_dir


def seal(store: EventStore) -> Path:
    run_dir = run_dir_of(store)
    store.seal()
    return run_dir


def test_markers_off_is_a_no_op(tmp_path: Path) -> None:
    store = EventStore(EventStoreConfig(base_dir=str(tmp_path)))
    store.observe_data(Q, "ETH.SIM", 1, 1)  # no run open
    store.open(uuid.uuid4(), Components(), "sandbox")
    store.observe_data(Q, "ETH.SIM", 1, 1)
    assert store.marker_lane() is None
    run_dir = seal(store)
    assert not list(run_dir.glob("markers-*"))
    assert read_manifest(run_dir).marker_high_watermark == 0


def test_a_kept_observe_data_serves_every_run(tmp_path: Path, stores: list[EventStore]) -> None:
    store = open_store(stores, tmp_path)
    observe = store.observe_data  # a kernel binds it once
    observe(Q, "ETH.SIM", 1, 1)
    first = seal(store)
    observe(Q, "ETH.SIM", 2, 2)  # between runs: a no-op
    store.open(uuid.uuid4(), Components(), "sandbox")
    observe(Q, "ETH.SIM", 3, 3)
    observe(Q, "ETH.SIM", 4, 4)
    second = seal(store)
    assert fold_to(first, 1).cursors == {("Quote", "ETH.SIM"): Cursor(1, 1, 0)}
    assert fold_to(second, 1).cursors == {("Quote", "ETH.SIM"): Cursor(2, 4, 0)}
    assert lane_of(store).stats().observed == 2


class Model:
    """Brute-force cursors, and their state as of every entry seq."""

    def __init__(self) -> None:
        self.cursors: dict[tuple[str, str], Cursor] = {}
        self.at_seq: dict[int, dict[tuple[str, str], Cursor]] = {}

    def observe(self, key: tuple[str, str], ts: int) -> Cursor:
        old = self.cursors.get(key, Cursor(0, -1, -1))
        if ts > old.ts_init_hi:
            new = Cursor(old.count + 1, ts, 0)
        elif ts == old.ts_init_hi:
            new = Cursor(old.count + 1, ts, old.ordinal + 1)
        else:
            new = Cursor(old.count + 1, old.ts_init_hi, old.ordinal)
        self.cursors[key] = new
        return new


ops = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(-2, 2)),
        st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(-2, 2)),
        st.just(("append",)),
    ),
    min_size=20,
    max_size=200,
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops, enabled=st.sets(st.sampled_from(CLASSES), min_size=1))
def test_cursors_match_model_through_the_sidecar(
    tmp_path: Path, stores: list[EventStore], ops: list[tuple[Any, ...]], enabled: set[Any]
) -> None:
    instruments = ["ETH.SIM", "BTC.SIM", "AUD/USD.IDEALPRO-LONGER-THAN-32-BYTES", "Z"]
    classes = [c for c in CLASSES if c in enabled]
    store = open_store(stores, tmp_path / uuid.uuid4().hex, classes=classes)
    model = Model()
    seq = 1  # RunStarted
    ts = 5_000
    for o in ops:
        if o[0] == "append":
            model.at_seq[seq] = dict(model.cursors)
            seq = store.append("events.order", b"x" * 10)
            continue
        cls, inst = CLASSES[o[0]], instruments[o[1]]
        ts = max(0, ts + o[2])
        store.observe_data(cls, inst, ts + 1, ts)
        if cls in enabled:
            model.observe((cls.value, inst), ts)
    model.at_seq[seq] = dict(model.cursors)
    lane = lane_of(store)
    run_dir = seal(store)
    assert lane.dropped == 0
    for s in range(1, seq + 1):
        assert fold_to(run_dir, s).cursors == model.at_seq[s], f"as of entry {s}"
    manifest = read_manifest(run_dir)
    records = list(iter_markers(run_dir))
    assert manifest.marker_high_watermark == (records[-1].marker_seq if records else 0)
    assert check_marker_stream(run_dir, manifest.high_watermark) == []
    assert verify_path(run_dir).ok


def test_hifi_markers_one_per_message_for_listed_instruments(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    hifi = ["ETH.SIM", "SOL.SIM"]
    instruments = ["ETH.SIM", "BTC.SIM", "SOL.SIM", "XRP.SIM"]
    store = open_store(stores, tmp_path, high_fidelity=hifi)
    model = Model()
    expected = []
    seq = 1
    for i in range(600):
        cls, inst = CLASSES[i % 5], instruments[(i * 7 // 5) % 4]
        ts = 1_000 + i // 3
        store.observe_data(cls.value if i % 2 else cls, inst, 10 * i, ts)
        cursor = model.observe((cls.value, inst), ts)
        if inst in hifi:
            fp = fingerprint(cls.value, inst, 10 * i, ts)
            expected.append((i + 1, seq, cls.value, inst, 10 * i, ts, cursor.ordinal, fp))
        if i % 7 == 0:
            seq = store.append("events.signal", b"s")
    run_dir = seal(store)
    records = list(iter_markers(run_dir))
    streams = {r.stream: r for r in records if isinstance(r, StreamDef)}
    assert {(d.instrument_id, d.high_fidelity) for d in streams.values()} == {
        (inst, inst in hifi) for inst in instruments
    }
    got = [
        (
            r.obs,
            r.event_seq_before,
            streams[r.stream].data_class,
            streams[r.stream].instrument_id,
            r.ts_event,
            r.ts_init,
            r.ordinal,
            r.fingerprint,
        )
        for r in records
        if isinstance(r, HiFiMarker)
    ]
    assert got == expected
    assert fold_to(run_dir, store.durable_seq()).cursors == model.cursors


def test_safety_flush_fires_on_a_timer(tmp_path: Path, stores: list[EventStore]) -> None:
    store = open_store(stores, tmp_path, safety_flush_interval=timedelta(milliseconds=200))
    run_dir = run_dir_of(store)
    for i in range(5):
        store.observe_data(Q, "ETH.SIM", i, 100 + i)

    def flushed() -> list[CursorSnapshot]:
        return [
            r
            for r in iter_markers(run_dir)
            if isinstance(r, CursorSnapshot) and r.reason == REASON_SAFETY_FLUSH
        ]

    # The kernel makes no call from here on: only the sidecar's timer can snapshot.
    lane = lane_of(store)
    wait_until(lambda: lane.stats().durable_obs == 5, what="a durable safety-flush snapshot")
    (snap,) = flushed()
    assert (snap.obs, snap.event_seq_before) == (5, 1)  # after RunStarted, nothing else
    assert [c for _, c in snap.cursors] == [Cursor(5, 104, 0)]
    store.seal()
    assert check_marker_stream(run_dir, read_manifest(run_dir).high_watermark) == []


def test_overflow_is_an_exact_gap_and_the_kernel_never_waits(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = open_store(stores, tmp_path, channel_capacity=64)
    lane = lane_of(store)
    store.observe_data(Q, "ETH.SIM", 0, 0)  # 3 records: name chunk, stream, observation
    wait_until(lambda: lane.in_flight() == 0, what="the sidecar to take the first records")
    pid = lane.sidecar_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        # The sidecar is stopped: a kernel that waited for space would hang here for ever.
        for i in range(1, 301):
            store.observe_data(Q, "ETH.SIM", i, i)
            if i % 50 == 0:
                store.append("events.order", b"o")
        assert lane.dropped == 236 and lane.gap_ranges == [(66, 301)]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: lane.in_flight() == 0, what="the sidecar to drain")
    for i in range(301, 311):
        store.observe_data("Quote", "ETH.SIM", i, i)
    wait_until(lambda: lane.in_flight() == 0, what="the sidecar to drain")
    os.kill(pid, signal.SIGSTOP)  # a second overflow, at the very end of the run: 64 fit
    try:
        for i in range(311, 411):
            store.observe_data(Q, "ETH.SIM", i, i)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert lane.gap_ranges == [(66, 301), (376, 411)]
    run_dir = seal(store)
    gaps = [
        (g.obs_from, g.obs_to, g.reason) for g in iter_markers(run_dir) if isinstance(g, MarkerGap)
    ]
    assert gaps == [(66, 301, GAP_OVERFLOW), (376, 411, GAP_OVERFLOW)]
    assert lane.stats().durable_obs == 411 and lane.dropped == 236 + 36
    final = fold_to(run_dir, read_manifest(run_dir).high_watermark)
    assert final.cursors[("Quote", "ETH.SIM")].count == 1 + 64 + 10 + 64
    assert check_marker_stream(run_dir, read_manifest(run_dir).high_watermark) == []


def test_sidecar_sigkill_leaves_the_kernel_trading(
    tmp_path: Path, stores: list[EventStore], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ringtape.markers")
    store = open_store(stores, tmp_path, safety_flush_interval=timedelta(milliseconds=50))
    lane = lane_of(store)
    for i in range(100):
        store.observe_data(CLASSES[i % 5], "ETH.SIM", i, i)
        if i % 10 == 9:
            store.append("events.fill", b"f")
    wait_until(lambda: lane.stats().durable_obs == 100, what="the sidecar to make 100 durable")
    pid = lane.sidecar_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: lane.failed, what="the lane to notice its sidecar died")
    durable_markers = lane.stats().durable_marker_seq
    seqs = []
    for i in range(100, 200):
        store.observe_data(CLASSES[i % 5], "ETH.SIM", i, i)  # a counted no-op now
        seqs.append(store.append("events.fill", b"f"))
    assert not store.is_halted()
    assert lane.dropped == 100 and lane.stats().observed == 200
    run_dir = seal(store)
    manifest = read_manifest(run_dir)
    assert manifest.status is RunStatus.ENDED
    on_disk = [r.marker_seq for r in iter_markers(run_dir)]
    assert manifest.marker_high_watermark == on_disk[-1] >= durable_markers
    report = verify_path(run_dir)
    assert report.ok, [str(f) for f in report.findings]
    entries = list(walk_entries(run_dir))
    failed = [e for e in entries if e.topic == TOPIC_MARKER_LANE_FAILED]
    assert len(failed) == 1 and entries[-1].topic == TOPIC_RUN_ENDED
    gap = decode_gap(failed[0])
    assert (gap.obs_from, gap.obs_to, gap.reason) == (101, None, GAP_WRITER_CLOSED)
    assert seqs == list(range(seqs[0], seqs[0] + 100))  # appends went on, one seq each
    assert failed[0].seq == seqs[0] - 1  # by the first observation after the failure
    errors = [r for r in caplog.records if r.name == "ringtape.markers"]
    assert len(errors) == 1 and "failed" in errors[0].getMessage()
    assert check_marker_stream(run_dir, manifest.high_watermark) == []
    assert fold_to(run_dir, manifest.high_watermark).obs == 100


def test_sidecar_killed_inside_a_write_leaves_no_torn_tail_in_the_sealed_run(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = open_store(stores, tmp_path, safety_flush_interval=timedelta(milliseconds=50))
    lane = lane_of(store)
    for i in range(100):
        store.observe_data(CLASSES[i % 5], "ETH.SIM", i, i)
        if i % 10 == 9:
            store.append("events.fill", b"f")
    wait_until(lambda: lane.stats().durable_obs == 100, what="the sidecar to make 100 durable")
    pid = lane.sidecar_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: lane.failed, what="the lane to notice its sidecar died")
    run_dir = run_dir_of(store)
    segment = list_segments(run_dir, "markers")[-1]
    whole = segment.read_bytes()
    torn = whole[80 : 80 + 40]  # the first 40 bytes of a frame header: a write cut short
    with open(segment, "ab") as f:
        f.write(torn)
    seal(store)
    assert segment.read_bytes() == whole, "the torn bytes are cut back to the last whole frame"
    assert Path(f"{segment}.torn").read_bytes() == torn
    report = verify_path(run_dir)
    # Notes only: the torn bytes kept aside, and the MarkerLaneFailed entry's ts_init (the
    # store's clock) above the test's own small ts_init values.
    assert {str(f.kind) for f in report.findings} <= {"leftover_torn", "ts_init_backwards"}
    assert report.ok


KERNEL_SCRIPT = textwrap.dedent(
    """
    import sys, uuid, time
    from datetime import timedelta
    from ringtape.capture.config import DataMarkerConfig, EventStoreConfig, RegisteredComponents
    from ringtape.capture.store import EventStore
    markers = DataMarkerConfig(safety_flush_interval=timedelta(seconds=60))
    store = EventStore(EventStoreConfig(base_dir=sys.argv[1], data_markers=markers))
    store.open(uuid.uuid4(), RegisteredComponents(), "live")
    lane = store.marker_lane()
    for i in range(3000):
        store.observe_data("Trade", "ETH.SIM", i, i)
        if i % 100 == 99:
            store.append("data.bar", b"b", ts_init=i)
    while lane.in_flight():
        time.sleep(0.001)
    print(lane.sidecar_pid, store.writer_pid(), store.run_dir(), flush=True)
    time.sleep(60)
    """
)


def test_kernel_sigkill_sidecar_accounts_for_what_it_took_and_exits(tmp_path: Path) -> None:
    (sidecar_text, writer_text, run_dir_text), kernel_pid = sigkill_kernel_after_report(
        KERNEL_SCRIPT, str(tmp_path)
    )
    sidecar_pid, run_dir = int(sidecar_text), Path(run_dir_text)
    wait_until(lambda: not pid_alive(sidecar_pid), what="the orphaned sidecar to exit")
    # The anchor regions the dead kernel prepared are the writer's to unlink as it exits.
    wait_until(lambda: not pid_alive(int(writer_text)), what="the orphaned writer to exit")
    assert not shm_names(kernel_pid)
    assert read_manifest(run_dir).status is RunStatus.RUNNING  # for the recovery sweep
    final = fold_to(run_dir, 10**9)
    assert final.cursors == {("Trade", "ETH.SIM"): Cursor(3000, 2999, 0)} and final.obs == 3000
    assert check_marker_stream(run_dir, 31) == []


def _crashed_run_with_markers(tmp_path: Path) -> Path:
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert kernel.stdout is not None
        sidecar_text, writer_text, run_dir_text = kernel.stdout.readline().split()
        kernel.send_signal(signal.SIGKILL)
        kernel.wait()
        pids = (int(sidecar_text), int(writer_text))
        wait_until(lambda: not any(map(pid_alive, pids)), what="the orphaned children to exit")
    finally:
        kernel.kill()
        kernel.wait()
    return Path(run_dir_text)


def test_recovery_cuts_a_torn_marker_tail(tmp_path: Path) -> None:
    run_dir = _crashed_run_with_markers(tmp_path)
    (segment,) = run_dir.glob("markers-*.seg")
    size = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(FRAME_MAGIC + bytes(30))  # an append cut short by the crash
    plan = recover_run(run_dir)
    assert plan.status is RunStatus.CRASHED_RECOVERED
    assert segment.stat().st_size == size
    manifest = read_manifest(run_dir)
    records = list(iter_markers(run_dir))
    assert manifest.marker_high_watermark == records[-1].marker_seq
    assert check_marker_stream(run_dir, manifest.high_watermark) == []


def test_damaged_marker_stream_does_not_quarantine_the_run(tmp_path: Path) -> None:
    run_dir = _crashed_run_with_markers(tmp_path)
    (segment,) = run_dir.glob("markers-*.seg")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage inside the marker stream, not at its tail
    segment.write_bytes(bytes(data))
    plan = recover_run(run_dir)
    manifest = read_manifest(run_dir)
    assert plan.status is RunStatus.CRASHED_RECOVERED
    assert manifest.status is RunStatus.CRASHED_RECOVERED
    assert [f["stream"] for f in manifest.findings] == ["markers"]
    assert [e.seq for e in walk_entries(run_dir)] == list(range(1, 32))  # entries intact
