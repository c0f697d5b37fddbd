"""The hot path's contract under real use, end to end: threads, an invalid record in the ring,
ts_init checks and counts, and the right halt reason whatever notices the trouble first.

Real stores, writer and sidecar processes, signals and disks. The "under load" tests run CPU
hogs beside the store on this 2-core machine, so that which thread or process notices a
failure first varies from trial to trial.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import make_run, records, write_stream
from pipeline_support import pid_alive, wait_until, walk_entries

from ringtape import (
    DataMarkerConfig,
    EventStore,
    EventStoreConfig,
    RegisteredComponents,
    StoreHalted,
    StoreOptions,
    WrongThread,
)
from ringtape.capture.faults import FaultPlan
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, encode_entry
from ringtape.storage.format.markers import TOPIC_MARKER_LANE_FAILED
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.recovery import recover_run
from ringtape.storage.run.status import RunStatus

COMPONENTS = RegisteredComponents()


def open_store(
    stores: list[EventStore], base: Path, options: StoreOptions | None = None, **config: object
) -> EventStore:
    store = EventStore(EventStoreConfig(base_dir=str(base), **config), options=options)  # type: ignore[arg-type]
    stores.append(store)
    store.open(uuid.uuid4(), COMPONENTS, "live")
    return store


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Let the interpreter switch threads after (almost) every bytecode."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.fixture
def cpu_hogs() -> Iterator[None]:
    """Two processes spinning on the two cores for the length of the test."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


# -- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("intruders", [1, 3, 7])
def test_a_single_producer_store_refuses_other_threads_at_once(
    tmp_path: Path, stores: list[EventStore], switch_often: None, intruders: int
) -> None:
    """Every other thread gets WrongThread on its first call and writes nothing; the owner's
    entries are all there, once each, in order, whatever the interleaving."""
    store = open_store(stores, tmp_path)
    refused: list[tuple[int, BaseException]] = []
    start = threading.Barrier(intruders + 1)

    def intrude(k: int) -> None:
        start.wait()
        for i in range(2000):
            try:
                store.append("events.intruder", f"{k}:{i}".encode())
            except WrongThread as exc:
                refused.append((i, exc))
                return

    threads = [threading.Thread(target=intrude, args=(k,)) for k in range(intruders)]
    for t in threads:
        t.start()
    start.wait()
    seqs = [store.append("events.owner", f"owner:{i}".encode()) for i in range(5000)]
    for t in threads:
        t.join()
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    assert [i for i, _ in refused] == [0] * intruders, "an intruder got past its first call"
    assert all("Nothing was written" in str(exc) for _, exc in refused)
    assert seqs == list(range(2, 5002))
    entries = list(walk_entries(run_dir))
    owner = [e for e in entries if e.topic == "events.owner"]
    assert [e.payload for e in owner] == [f"owner:{i}".encode() for i in range(5000)]
    assert not [e for e in entries if e.topic == "events.intruder"]
    assert [e.seq for e in entries] == list(range(1, 5003))
    assert verify_path(run_dir).ok


@pytest.mark.parametrize("threads", [2, 4, 8])
def test_a_threads_store_keeps_every_acknowledged_append_exactly_once(
    tmp_path: Path, stores: list[EventStore], switch_often: None, threads: int
) -> None:
    """producers="threads": appends, linked appends and observations from several threads are
    serialised; every seq a thread was given holds that thread's payload, exactly once."""
    store = open_store(
        stores,
        tmp_path,
        StoreOptions(producers="threads"),
        data_markers=DataMarkerConfig(),
        channel_capacity=512,
    )
    given: dict[int, bytes] = {}
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def produce(k: int) -> None:
        start.wait()
        mine = {}
        for i in range(1500):
            payload = f"{k}:{i}".encode()
            if i % 10 == 0:
                seq = store.append_linked("events.linked", payload, correlation_id=uuid.uuid4())
            else:
                seq = store.append("events.threaded", payload)
            store.observe_data("Quote", f"I{k}.SIM", i, i)
            mine[seq] = payload
        with lock:
            assert not set(mine) & set(given), "a seq was handed out twice"
            given.update(mine)

    pool = [threading.Thread(target=produce, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    assert len(given) == threads * 1500
    entries = {e.seq: e for e in walk_entries(run_dir)}
    assert sorted(entries) == list(range(1, threads * 1500 + 3))
    for seq, payload in given.items():
        assert entries[seq].payload == payload
    assert entries[max(entries)].topic == TOPIC_RUN_ENDED
    assert verify_path(run_dir).ok


def test_seal_from_another_thread_is_refused_while_the_owner_lives(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = open_store(stores, tmp_path)
    store.append("events.x", b"1")
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(errors, store.seal))
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], WrongThread)
    assert store.append("events.x", b"2") == 3  # the owner goes on
    store.seal()


def _catch(errors: list[BaseException], call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except BaseException as exc:
        errors.append(exc)


# -- a record the writer cannot take ----------------------------------------------------------


def test_an_invalid_record_halts_the_store_naming_seq_and_position(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    """A slot that says "published" over a record that does not check out (what two threads
    appending at once used to make): within halt_threshold the writer fails and the store
    halts with InvalidRecord, naming the seq and the ring position; seal() does not wait."""
    halts: list[str] = []
    store = open_store(stores, tmp_path, StoreOptions(on_halt=lambda r: halts.append(r.kind)))
    for i in range(50):
        store.append("events.x", b"%d" % i)
    wait_until(lambda: store.durable_seq() >= 51, what="entries durable")
    session = store._session
    assert session is not None
    views = session.views
    producer = store._producer
    seq, pos = producer.seq + 1, producer.pos
    phys = pos & (views.geometry.ring_bytes - 1)
    record = struct.pack("<IIHHB3xQQQ", 40, 0, 0, 0, 0, seq + 7, 0, 0)  # the wrong seq
    views.data[phys : phys + 40] = record
    views.index[seq & (views.geometry.slots - 1)] = pos
    wait_until(store.is_halted, timeout=10.0, what="the store to halt")
    reason = store.halt_reason()
    assert reason is not None and reason.kind == "InvalidRecord", reason
    assert f"seq {seq} at ring position {pos}" in reason.detail
    assert f"says seq {seq + 7}" in reason.detail
    assert halts == ["InvalidRecord"]
    with pytest.raises(StoreHalted):
        store.append("events.x", b"after")
    store.seal()  # returns: a halted store only releases


# -- ts_init --------------------------------------------------------------------------------


def test_ts_init_going_backwards_is_counted_and_noted_not_damage(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = open_store(stores, tmp_path)
    base = time.time_ns()
    for i in range(300):
        store.append("events.clock", b"x", ts_init=base + 1000 * i - (5000 if i % 100 == 50 else 0))
    with pytest.raises(ValueError, match="ts_init"):
        store.append("events.clock", b"x", ts_init=-5)
    with pytest.raises(TypeError, match="ts_init"):
        store.append("events.clock", b"x", ts_init=1.5)  # type: ignore[arg-type]
    run_dir = store.run_dir()
    assert run_dir is not None
    wait_until(lambda: store.durable_seq() >= 301, what="entries durable")
    stats = store.stats()
    assert stats is not None and stats.ts_init_backwards == 3  # i = 50, 150, 250
    store.seal()
    manifest = read_manifest(run_dir)
    assert manifest.ts_init_backwards == 3 and manifest.high_watermark == 302
    report = verify_path(run_dir)
    assert report.ok, report.findings
    notes = [f for f in report.findings if f.kind == "ts_init_backwards"]
    assert len(notes) == 1 and notes[0].seq_from == 52, notes  # entry i = 50 is seq 52
    assert "3 entries" in notes[0].detail


def test_recovery_counts_ts_init_going_backwards_from_the_data(tmp_path: Path) -> None:
    """A crashed run's writer took its count with it: the sweep counts from the entries."""
    run_dir = make_run(tmp_path, 40, status=RunStatus.RUNNING, ended=False, per_frame=3)
    seg = run_dir / "events-000000.seg"
    recs = records(40, ended=False)
    recs[20] = encode_entry(21, 5, 0, "data.x", b"back in time", "")  # ts 5 < ts of seq 20
    seg.unlink()
    write_stream(run_dir, run_dir.name, recs, per_frame=3)
    plan = recover_run(run_dir)
    assert plan.status is RunStatus.CRASHED_RECOVERED and plan.ts_init_backwards == 1
    assert read_manifest(run_dir).ts_init_backwards == 1


# -- the right reason under load -------------------------------------------------------------


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0]


def test_a_killed_writer_is_writer_died_even_with_the_ring_full(
    tmp_path: Path, stores: list[EventStore], cpu_hogs: None
) -> None:
    """The writer dies with the ring full and the producer then waits for room: whichever of
    the monitor thread (starved by the hogs, it may be late) and the stalled producer's own
    timer notices first, the reason is the death. The order is made, not timed: the ring is
    filled while the writer is stopped, the writer is killed and seen dead, and only then
    does the producer ask for room."""
    for trial in range(4):
        store = open_store(
            stores,
            tmp_path / str(trial),
            channel_capacity=64,
            halt_threshold=timedelta(milliseconds=100),
        )
        pid = store.writer_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda p=pid: _process_state(p) == "T", 10, "the writer to stop")
        stats = store.stats()
        assert stats is not None
        for _ in range(stats.ring_capacity - stats.in_ring):  # fills the ring, never waits
            store.append("events.x", b"y")
        stats = store.stats()
        assert stats is not None and stats.in_ring == stats.ring_capacity
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda p=pid: not pid_alive(p), 10, "the writer to die")
        with pytest.raises(StoreHalted) as caught:
            store.append("events.x", b"y")  # no room: the slow path, or the halt already
        assert caught.value.reason.kind == "WriterDied", (trial, caught.value.reason)
        store.seal()


def test_a_disk_error_is_backend_disk_while_an_anchor_or_a_full_ring_waits(
    tmp_path: Path, stores: list[EventStore], cpu_hogs: None
) -> None:
    for trial in range(4):
        plan = FaultPlan(enospc_after_bytes=20_000 + trial * 3000)
        store = open_store(
            stores, tmp_path / str(trial), StoreOptions(faults=plan), channel_capacity=64
        )
        anchor = store.snapshot_anchorer()
        assert anchor is not None
        with pytest.raises(StoreHalted) as caught:
            for i in range(100_000):
                store.append("events.x", b"z" * 150)
                if i % 25 == 24:
                    anchor(b"snapshot %d" % i)
        reason = caught.value.reason
        assert reason.kind == "BackendDisk" and reason.errno == errno.ENOSPC, (trial, reason)
        store.seal()


def test_a_dead_sidecar_always_yields_one_marker_lane_failed_entry(
    tmp_path: Path, stores: list[EventStore], cpu_hogs: None
) -> None:
    for trial in range(6):
        store = open_store(stores, tmp_path / str(trial), data_markers=DataMarkerConfig())
        lane = store.marker_lane()
        assert lane is not None and lane.sidecar_pid is not None
        for i in range(200):
            store.observe_data("Quote", "AUD/USD.SIM", i, i)
            store.append("events.x", b"%d" % i)
        os.kill(lane.sidecar_pid, signal.SIGKILL)
        for i in range(200 + trial * 300):  # some trials seal at once, some observe on
            store.observe_data("Trade", "AUD/USD.SIM", i, i)
            store.append("events.y", b"%d" % i)
        run_dir = store.run_dir()
        assert run_dir is not None
        store.seal()
        failed = [e for e in walk_entries(run_dir) if e.topic == TOPIC_MARKER_LANE_FAILED]
        assert len(failed) == 1, (trial, len(failed))
        assert json.loads(failed[0].payload)["reason"] == "writer_closed"
