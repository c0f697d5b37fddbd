"""Disks that fail: an fdatasync error is never retried ("fsyncgate"), and a real ENOSPC on a
small tmpfs halts the store with nothing durable lost and a recovery once space is freed."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import records
from pipeline_support import walk_entries

from ringtape.capture.config import EventStoreConfig, RegisteredComponents
from ringtape.capture.errors import StoreHalted
from ringtape.capture.faults import FaultPlan
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.storage.segment.writer import SegmentWriter

COMPONENTS = RegisteredComponents()


def payload(seq: int) -> bytes:
    """What the test appends under ``seq``: incompressible, and known from the seq alone."""
    return random.Random(seq).randbytes(700)


def test_a_failed_fdatasync_is_never_retried(tmp_path: Path) -> None:
    """The segment writer keeps the first fdatasync failure: later syncs and close raise it
    again without calling fdatasync (after a failure the kernel may have dropped the pages and
    marked them clean, so a retry could "succeed" without writing them)."""
    calls: list[int] = []

    def fail_first(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "injected")

    writer = SegmentWriter(tmp_path, "1-deadbeef", "events", STREAM_EVENTS, sync_guard=fail_first)
    rec = records(1)[0]
    writer.append(rec, np.zeros(1, dtype=np.int64), 1)
    for step in (writer.sync, writer.sync, writer.close):
        with pytest.raises(OSError) as err:
            step()
        assert err.value.errno == errno.EIO
    assert len(calls) == 1, "fdatasync was tried again after it failed"


def test_an_fdatasync_error_halts_and_nothing_after_the_last_sync_is_durable(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    """The writer's sixth group commit fails its fdatasync with EIO: BackendDisk, and the
    durable seq stays where the fifth left it, for good (halt, seal, recovery)."""
    plan = FaultPlan(sync_eio_after_commits=5)
    store = EventStore(
        EventStoreConfig(base_dir=str(tmp_path), max_batch_entries=20),
        options=StoreOptions(faults=plan),
    )
    stores.append(store)
    store.open(uuid.uuid4(), COMPONENTS, "live")
    seen = 0
    with pytest.raises(StoreHalted):
        for seq in range(2, 2_000_000):
            store.append("data.x", payload(seq), ts_init=seq)
            seen = max(seen, store.durable_seq())
            if seq % 64 == 0:
                time.sleep(0.001)  # let commits happen one by one
    reason = store.halt_reason()
    assert reason is not None and (reason.kind, reason.errno) == ("BackendDisk", errno.EIO)
    stats = store.stats()
    assert stats is not None and stats.commits == 5, "exactly five syncs succeeded"
    durable = store.durable_seq()
    assert seen <= durable
    time.sleep(0.2)
    assert store.durable_seq() == durable, "nothing after the failed sync became durable"
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()  # a halted store only releases
    assert store.durable_seq() == durable
    assert read_manifest(run_dir).status is RunStatus.RUNNING
    boot = EventStore(EventStoreConfig(base_dir=str(tmp_path)), instance_id=run_dir.parent.name)
    assert boot.last_sweep is not None and len(boot.last_sweep.recovered) == 1
    entries = list(walk_entries(run_dir))
    assert [e.seq for e in entries][:durable] == list(range(1, durable + 1))
    for e in entries[1:durable]:
        assert e.payload == payload(e.seq)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards whatever happens (needs root: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_enospc_halts_loses_nothing_and_recovers_once_space_is_freed(
    small_disk: Path, stores: list[EventStore]
) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(bytes(4 << 20))  # freed after the halt, so that recovery has room
    base = small_disk / "runs"
    config = EventStoreConfig(base_dir=str(base), max_batch_entries=50)
    store = EventStore(config, options=StoreOptions(segment_max_bytes=2 << 20))
    stores.append(store)
    iid = uuid.uuid4()
    store.open(iid, COMPONENTS, "live")
    seen = 0
    with pytest.raises(StoreHalted):
        for seq in range(2, 10_000_000):
            store.append("data.x", payload(seq), ts_init=seq)
            seen = max(seen, store.durable_seq())
    reason = store.halt_reason()
    assert reason is not None and (reason.kind, reason.errno) == ("BackendDisk", errno.ENOSPC)
    durable = store.durable_seq()
    assert durable >= seen > 10_000, "the disk filled up after a good many entries"
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    filler.unlink()
    boot = EventStore(config, instance_id=iid)
    assert boot.last_sweep is not None
    (plan,) = boot.last_sweep.recovered
    assert plan.status is RunStatus.CRASHED_RECOVERED and plan.high_watermark >= durable
    entries = list(walk_entries(run_dir))
    assert [e.seq for e in entries] == list(range(1, plan.high_watermark + 1))
    for e in entries[1:]:
        assert e.payload == payload(e.seq), e.seq
    report = verify_path(run_dir)
    assert report.ok, [str(f) for f in report.findings]
