"""The live pipeline end to end: real writer processes, real shared memory, real signals."""

from __future__ import annotations

import errno
import json
import os
import signal
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pipeline_support import (
    pid_alive,
    shm_names,
    sigkill_kernel_after_report,
    wait_until,
    walk_entries,
)

from ringtape.capture.config import EventStoreConfig, RegisteredComponents
from ringtape.capture.errors import (
    EntryTooLarge,
    HaltReason,
    RunStartedTimeout,
    StoreHalted,
    StoreNotOpen,
)
from ringtape.capture.faults import FaultPlan
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED, TOPIC_SNAPSHOT_ANCHOR
from ringtape.storage.run.blobs import Anchor, read_snapshot
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.status import RunStatus

COMPONENTS = RegisteredComponents(strategies={"EMACross-001": "ab12"}, subscriptions=["quotes"])


def make_store(stores: list[EventStore], tmp_path: Path, **overrides: object) -> EventStore:
    options = overrides.pop("options", None)
    config = EventStoreConfig(base_dir=str(tmp_path), **overrides)  # type: ignore[arg-type]
    store = EventStore(config, options=options)  # type: ignore[arg-type]
    stores.append(store)
    return store


def test_append_seal_read_back(tmp_path: Path, stores: list[EventStore]) -> None:
    store = make_store(stores, tmp_path)
    store.open(uuid.uuid4(), COMPONENTS, "sandbox")
    run_dir = store.run_dir()
    assert run_dir is not None and store.durable_seq() >= 1
    payloads = [f"order-{i}".encode() * (i % 7 + 1) for i in range(5000)]
    seqs = [
        store.append("events.order.filled", p, payload_type="OrderFilled", ts_init=1000 + i)
        for i, p in enumerate(payloads)
    ]
    assert seqs == list(range(2, 5002))
    store.seal(ts_init=99_999)
    entries = list(walk_entries(run_dir))
    assert [e.seq for e in entries] == list(range(1, 5003))
    assert entries[0].topic == TOPIC_RUN_STARTED
    started = json.loads(entries[0].payload)
    assert started["registered_components"] == COMPONENTS.to_dict()
    assert started["environment"] == "sandbox"
    assert [e.payload for e in entries[1:-1]] == payloads
    assert all(e.payload_type == "OrderFilled" for e in entries[1:-1])
    assert [e.ts_init for e in entries[1:-1]] == list(range(1000, 6000))
    assert entries[-1].topic == TOPIC_RUN_ENDED and entries[-1].ts_init == 99_999
    manifest = read_manifest(run_dir)
    assert manifest.status is RunStatus.ENDED
    assert manifest.high_watermark == 5002 == store.durable_seq()
    assert manifest.end_ts_init == 99_999
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    assert all(
        p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600) for p in run_dir.iterdir()
    )


def test_durable_seq_never_ahead_of_the_file(tmp_path: Path, stores: list[EventStore]) -> None:
    store = make_store(stores, tmp_path, max_batch_entries=37)
    store.open(uuid.uuid4(), COMPONENTS, "live")
    run_dir = store.run_dir()
    assert run_dir is not None
    checks = 0
    for i in range(30_000):
        store.append("data.quote", b"q" * (i % 200), ts_init=i)
        if i % 997 == 0:
            durable = store.durable_seq()
            on_disk = sum(1 for _ in walk_entries(run_dir))
            assert on_disk >= durable, f"durable {durable} but only {on_disk} entries on disk"
            checks += 1
    assert checks > 20
    store.seal()


def test_writer_sigkill_halts_and_keeps_durable_entries(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    halts: list[HaltReason] = []
    store = make_store(stores, tmp_path, options=StoreOptions(on_halt=halts.append))
    store.open(uuid.uuid4(), COMPONENTS, "live")
    run_dir = store.run_dir()
    pid = store.writer_pid()
    assert run_dir is not None and pid is not None
    for i in range(20_000):
        store.append("data.trade", b"t" * 64, ts_init=i)
    wait_until(lambda: store.durable_seq() > 1000, what="first durable batches")
    os.kill(pid, signal.SIGKILL)
    observed = store.durable_seq()
    wait_until(store.is_halted, timeout=5, what="halt after writer death")
    with pytest.raises(StoreHalted) as exc:
        store.append("data.trade", b"late")
    assert exc.value.reason.kind == "WriterDied"
    assert [h.kind for h in halts] == ["WriterDied"]
    on_disk = [e.seq for e in walk_entries(run_dir)]
    assert on_disk[: store.durable_seq()] == list(range(1, store.durable_seq() + 1))
    assert len(on_disk) >= observed
    store.seal()  # a halted store does not seal: the run stays running for the sweep
    assert read_manifest(run_dir).status is RunStatus.RUNNING


KERNEL_SCRIPT = textwrap.dedent(
    """
    import sys, uuid, time
    from ringtape.capture.config import EventStoreConfig, RegisteredComponents
    from ringtape.capture.store import EventStore
    store = EventStore(EventStoreConfig(base_dir=sys.argv[1]))
    store.open(uuid.uuid4(), RegisteredComponents(), "live")
    for i in range(5000):
        store.append("data.bar", b"b" * 100, ts_init=i)
    while store.durable_seq() < 5001:
        time.sleep(0.001)
    for i in range(3000):
        store.append("data.bar", b"c" * 100, ts_init=i)
    print(store.writer_pid(), store.run_dir(), flush=True)
    time.sleep(60)
    """
)


def test_kernel_sigkill_writer_drains_and_exits(tmp_path: Path) -> None:
    (writer_pid_text, run_dir_text), kernel_pid = sigkill_kernel_after_report(
        KERNEL_SCRIPT, str(tmp_path)
    )
    writer_pid, run_dir = int(writer_pid_text), Path(run_dir_text)
    wait_until(lambda: not pid_alive(writer_pid), what="orphaned writer to exit")
    assert not shm_names(kernel_pid)
    assert read_manifest(run_dir).status is RunStatus.RUNNING
    seqs = [e.seq for e in walk_entries(run_dir)]
    assert seqs == list(range(1, 8002)), "the writer drains everything published before exiting"


def test_stalled_writer_halts_with_backpressure(tmp_path: Path, stores: list[EventStore]) -> None:
    store = make_store(
        stores, tmp_path, channel_capacity=64, halt_threshold=timedelta(milliseconds=150)
    )
    store.open(uuid.uuid4(), COMPONENTS, "live")
    pid = store.writer_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreHalted) as exc:
            for i in range(10_000):
                store.append("data.quote", b"x" * 32, ts_init=i)
        reason = exc.value.reason
        assert reason.kind == "BackpressureStall"
        assert reason.stalled_for_s is not None and reason.stalled_for_s >= 0.150
        assert i <= 64, "the ring holds at most channel_capacity entries"
        assert store.is_halted()
        with pytest.raises(StoreHalted):
            store.append("data.quote", b"after")
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize(
    ("plan", "err"),
    [
        (FaultPlan(enospc_after_bytes=200_000), errno.ENOSPC),
        (FaultPlan(eio_after_bytes=200_000), errno.EIO),
    ],
)
def test_disk_error_halts_with_errno(
    tmp_path: Path, stores: list[EventStore], plan: FaultPlan, err: int
) -> None:
    store = make_store(stores, tmp_path, options=StoreOptions(faults=plan))
    store.open(uuid.uuid4(), COMPONENTS, "live")
    with pytest.raises(StoreHalted):
        for i in range(1_000_000):
            store.append("data.quote", os.urandom(100), ts_init=i)
            if store.is_halted():
                store.append("data.quote", b"x")
    reason = store.halt_reason()
    assert reason is not None and reason.kind == "BackendDisk" and reason.errno == err
    durable = store.durable_seq()
    run_dir = store.run_dir()
    assert run_dir is not None
    assert [e.seq for e in walk_entries(run_dir)][:durable] == list(range(1, durable + 1))


def test_run_started_timeout_leaves_nothing_running(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = make_store(
        stores,
        tmp_path,
        run_started_timeout=timedelta(milliseconds=400),
        options=StoreOptions(faults=FaultPlan(hang_at="after_write")),
    )
    with pytest.raises(RunStartedTimeout):
        store.open(uuid.uuid4(), COMPONENTS, "live")
    assert store.writer_pid() is None and store.run_id() is None
    store.close()  # the next run's children, started ahead, end too
    children = psutil.Process().children(recursive=True)
    assert not [c for c in children if "child_main" in " ".join(c.cmdline())]


def test_seal_is_idempotent_and_open_reopens(tmp_path: Path, stores: list[EventStore]) -> None:
    store = make_store(stores, tmp_path)
    store.seal()  # nothing open: a no-op
    instance = uuid.uuid4()
    store.open(instance, COMPONENTS, "live")
    first = store.run_id()
    store.open(str(instance), COMPONENTS, "live")  # same instance while open: the same run
    assert store.run_id() == first
    with pytest.raises(ValueError, match="seal it first"):
        store.open(uuid.uuid4(), COMPONENTS, "live")
    store.append("x", b"1")
    store.seal()
    store.seal()
    assert store.run_id() is None
    with pytest.raises(StoreNotOpen):
        store.append("x", b"2")
    assert first is not None
    run_dir = tmp_path / str(instance) / first
    assert read_manifest(run_dir).high_watermark == 3
    store.open(instance, COMPONENTS, "live")  # a rerun: a fresh run from seq 1
    second = store.run_id()
    assert second is not None and second != first
    assert store.append("x", b"3") == 2
    store.seal()
    assert [e.seq for e in walk_entries(tmp_path / str(instance) / second)] == [1, 2, 3]


def test_oversized_entry_is_refused_and_store_continues(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = make_store(stores, tmp_path, channel_capacity=16)
    store.open(uuid.uuid4(), COMPONENTS, "live")
    with pytest.raises(EntryTooLarge, match="exceeds the ring"):
        store.append("big", b"x" * (1 << 20))
    with pytest.raises(EntryTooLarge, match="topic"):
        store.append("t" * 5000, b"x")
    assert store.append("small", b"ok") == 2
    assert not store.is_halted()


def test_invalid_open_arguments(tmp_path: Path, stores: list[EventStore]) -> None:
    with pytest.raises(ValueError, match="base_dir"):
        EventStore(EventStoreConfig()).open(uuid.uuid4(), COMPONENTS, "live")
    store = make_store(stores, tmp_path)
    with pytest.raises(ValueError, match="instance_id"):
        store.open("not-a-uuid", COMPONENTS, "live")
    with pytest.raises(ValueError, match="environment"):
        store.open(uuid.uuid4(), COMPONENTS, "paper")


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sizes=st.lists(st.integers(min_value=0, max_value=60_000), min_size=1, max_size=300))
def test_wrap_around_random_sizes(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int]
) -> None:
    base = tmp_path_factory.mktemp("wrap")
    store = EventStore(EventStoreConfig(base_dir=str(base), channel_capacity=8))
    try:
        store.open(uuid.uuid4(), COMPONENTS, "backtest")
        run_dir = store.run_dir()
        assert run_dir is not None
        payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        for i, p in enumerate(payloads):
            store.append(f"t.{i % 3}", p, ts_init=i)
        store.seal(ts_init=len(sizes))
    finally:
        store.seal()
    entries = list(walk_entries(run_dir))
    assert [e.payload for e in entries[1:-1]] == payloads
    assert [e.topic for e in entries[1:-1]] == [f"t.{i % 3}" for i in range(len(sizes))]
    assert all(e.ts_publish == e.ts_init for e in entries), "backtests stamp ts_publish = ts_init"


def test_snapshot_anchor_is_durable_blob_and_entry(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = make_store(stores, tmp_path)
    assert store.snapshot_anchorer() is None
    store.open(uuid.uuid4(), COMPONENTS, "live")
    run_dir = store.run_dir()
    anchor = store.snapshot_anchorer()
    assert anchor is not None and run_dir is not None
    for i in range(500):
        store.append("events.order.submitted", b'{"order_id": "%d"}' % i)
    snapshot = b"state-after-501 " * 1000
    watermark = anchor(snapshot)
    assert watermark == 501  # returned at once: the writer makes it durable
    wait_until(lambda: store.anchors()[0].state == "durable", what="the first anchor durable")
    assert store.durable_seq() >= 502  # its blob is durable only after its entry was taken
    assert anchor(b"state-after-502") == 502  # the first anchor's own entry is seq 502
    store.seal()
    states = [(a.anchor_id, a.high_watermark, a.state) for a in store.anchors()]
    assert states == [(1, 501, "durable"), (2, 502, "durable")]
    anchors = [e for e in walk_entries(run_dir) if e.topic == TOPIC_SNAPSHOT_ANCHOR]
    assert len(anchors) == 2
    recorded = Anchor.from_payload(anchors[0].payload, anchors[0].seq)
    assert recorded.high_watermark == 501 and recorded.seq == 502 and recorded.anchor_id == 1
    assert read_snapshot(run_dir, recorded) == snapshot
    blob = run_dir / recorded.blob_ref
    assert oct(blob.stat().st_mode & 0o777) == "0o600"
    assert blob.stat().st_size < len(snapshot) / 5  # compressed
    assert read_manifest(run_dir).anchor_fates == {"durable": 2}
