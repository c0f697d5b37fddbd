"""Retention plans for each mode on generated run sets, and reclaiming on real files."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from pipeline_support import wait_until, walk_entries

from ringtape.capture.config import EventStoreConfig, RegisteredComponents, RetentionMode
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.storage.run.blobs import Anchor
from ringtape.storage.run.layout import TRASH_DIR
from ringtape.storage.run.manifest import read_manifest, write_manifest
from ringtape.storage.run.retention import (
    RunInfo,
    SegmentInfo,
    apply_plan,
    describe_instance,
    plan_retention,
)
from ringtape.storage.run.status import RunStatus

STATUSES = [RunStatus.ENDED, RunStatus.CRASHED_RECOVERED, RunStatus.QUARANTINED, RunStatus.RUNNING]


def fake_run(i: int, status: RunStatus, anchored: bool, parent: str | None = None) -> RunInfo:
    run_dir = Path(f"/nonexistent/{1000 + i}-0000000{i % 10}")
    anchor = Anchor(50, "blobs/a.snap", "xxh3-128:00", 1, 51) if anchored else None
    segments = (
        SegmentInfo(run_dir / "events-000000.seg", 1, 40),
        SegmentInfo(run_dir / "events-000001.seg", 41, 80),
        SegmentInfo(run_dir / "events-000002.seg", 81, 100),
    )
    blobs = ("blobs/old.snap", "blobs/a.snap") if anchored else ()
    return RunInfo(
        run_dir.name,
        run_dir,
        status,
        parent,
        status is RunStatus.RUNNING,
        100,
        anchor,
        blobs,
        segments,
        1000,
    )


run_sets = st.lists(
    st.tuples(st.sampled_from(STATUSES), st.booleans()), min_size=0, max_size=12
).map(lambda specs: [fake_run(i, s, a) for i, (s, a) in enumerate(specs)])


def reclaimed_whole(plan_runs: list[RunInfo], mode: str, keep_last: int | None = None) -> set[str]:
    plan = plan_retention(plan_runs, mode, keep_last)
    return {r.run_id for r in plan.reclaim if r.whole_run}


@settings(max_examples=200)
@given(runs=run_sets, keep_last=st.integers(1, 5))
def test_plans_never_reclaim_protected_runs(runs: list[RunInfo], keep_last: int) -> None:
    for mode in ("Full", "Bounded", "SnapshotAnchored"):
        plan = plan_retention(runs, mode, keep_last)
        touched = {r.run_id for r in plan.reclaim}
        for run in runs:
            if run.status in (RunStatus.RUNNING, RunStatus.QUARANTINED):
                assert run.run_id not in touched
        kept = {run_id for run_id, _ in plan.keep}
        whole = {r.run_id for r in plan.reclaim if r.whole_run}
        assert kept | whole == {r.run_id for r in runs}, "every run is either kept or reclaimed"
        assert not kept & whole


@settings(max_examples=200)
@given(runs=run_sets, keep_last=st.integers(1, 5))
def test_bounded_keeps_newest_sealed_and_restore_point(runs: list[RunInfo], keep_last: int) -> None:
    gone = reclaimed_whole(runs, "Bounded", keep_last)
    sealed = [r for r in runs if r.status in (RunStatus.ENDED, RunStatus.CRASHED_RECOVERED)]
    assert not gone & {r.run_id for r in sealed[-keep_last:]}
    restore = [r for r in sealed if r.newest_valid_anchor is not None]
    if restore:
        assert restore[-1].run_id not in gone
    assert gone == {r.run_id for r in sealed} - {r.run_id for r in sealed[-keep_last:]} - (
        {restore[-1].run_id} if restore else set()
    )


@settings(max_examples=200)
@given(runs=run_sets)
def test_snapshot_anchored_reclaims_only_behind_a_restore_point(runs: list[RunInfo]) -> None:
    plan = plan_retention(runs, "SnapshotAnchored")
    sealed = [r for r in runs if r.status in (RunStatus.ENDED, RunStatus.CRASHED_RECOVERED)]
    restore = [r for r in sealed if r.newest_valid_anchor is not None]
    if not restore:
        assert not plan.reclaim
        return
    point = restore[-1]
    whole = {r.run_id for r in plan.reclaim if r.whole_run}
    assert whole == {r.run_id for r in sealed[: sealed.index(point)]}
    (partial,) = [r for r in plan.reclaim if not r.whole_run]
    assert partial.run_id == point.run_id
    # Segments 0 (1..40) lies before the anchor at 50; segment 1 (41..80) holds entries after it.
    assert {p.name for p in partial.paths} == {"events-000000.seg", "old.snap"}
    assert partial.retained_from_seq == 41


def test_full_keeps_everything() -> None:
    runs = [fake_run(i, RunStatus.ENDED, True) for i in range(5)]
    assert not plan_retention(runs, "Full").reclaim


def test_parent_of_a_running_run_is_kept() -> None:
    parent = fake_run(0, RunStatus.ENDED, False)
    runs = [
        parent,
        fake_run(1, RunStatus.ENDED, True),
        fake_run(2, RunStatus.RUNNING, False, parent.run_id),
    ]
    assert parent.run_id not in reclaimed_whole(runs, "Bounded", 1)
    assert parent.run_id not in reclaimed_whole(runs, "SnapshotAnchored")


def make_runs(base: Path, instance: uuid.UUID, count: int, anchored: set[int]) -> list[Path]:
    dirs = []
    for i in range(count):
        store = EventStore(EventStoreConfig(base_dir=str(base)))
        store.open(instance, RegisteredComponents(), "backtest")
        for k in range(50):
            store.append("events.order.accepted", b'{"order_id": "%d"}' % k, ts_init=k)
        if i in anchored:
            anchorer = store.snapshot_anchorer()
            assert anchorer is not None
            anchorer(b"snapshot %d" % i)
        run_dir = store.run_dir()
        assert run_dir is not None
        store.seal()
        dirs.append(run_dir)
    return dirs


def test_bounded_reclaims_on_disk_through_trash(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    dirs = make_runs(tmp_path, instance, 4, anchored={0})
    plan = plan_retention(describe_instance(tmp_path / str(instance)), "Bounded", 2)
    assert {r.run_id for r in plan.reclaim} == {dirs[1].name}
    apply_plan(tmp_path / str(instance), plan)
    assert not dirs[1].exists()
    assert all(d.exists() for d in (dirs[0], dirs[2], dirs[3]))
    assert not any((tmp_path / str(instance) / TRASH_DIR).iterdir())


def test_snapshot_anchored_prunes_segments_before_the_anchor(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    store = EventStore(
        EventStoreConfig(base_dir=str(tmp_path), max_batch_entries=10),
        options=StoreOptions(segment_max_bytes=4096),
    )
    store.open(instance, RegisteredComponents(), "backtest")
    for k in range(400):
        store.append("events.order.accepted", os.urandom(64), ts_init=k)
    anchorer = store.snapshot_anchorer()
    assert anchorer is not None
    watermark = anchorer(b"snapshot")
    for k in range(100):
        store.append("events.order.filled", os.urandom(64), ts_init=k)
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    plan = plan_retention(describe_instance(tmp_path / str(instance)), "SnapshotAnchored")
    (partial,) = plan.reclaim
    assert not partial.whole_run and partial.run_id == run_dir.name
    apply_plan(tmp_path / str(instance), plan)
    manifest = read_manifest(run_dir)
    assert 1 < manifest.retained_from_seq <= watermark + 1
    seqs = [e.seq for e in walk_entries(run_dir)]
    assert seqs[0] == manifest.retained_from_seq and seqs[-1] == manifest.high_watermark
    assert seqs == list(range(seqs[0], seqs[-1] + 1))


PRUNE_RACE_KERNEL = """
import sys, uuid, time
from ringtape.capture.config import EventStoreConfig, RegisteredComponents
from ringtape.capture.store import EventStore, StoreOptions
store = EventStore(EventStoreConfig(base_dir=sys.argv[1]))
store.open(uuid.UUID(sys.argv[2]), RegisteredComponents(), "live")
print(store.run_dir(), flush=True)
for i in range(200000):
    store.append("events.order.accepted", b"x" * 100)
    if i % 1000 == 0:
        time.sleep(0.001)
store.seal()
"""


def test_prune_racing_a_live_run_never_touches_it(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    make_runs(tmp_path, instance, 2, anchored={0, 1})
    kernel = subprocess.Popen(
        [sys.executable, "-c", PRUNE_RACE_KERNEL, str(tmp_path), str(instance)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert kernel.stdout is not None
        live = Path(kernel.stdout.readline().strip())
        passes = 0
        while kernel.poll() is None and passes < 200:
            for mode, keep in (("Bounded", 1), ("SnapshotAnchored", None)):
                plan = plan_retention(describe_instance(tmp_path / str(instance)), mode, keep)
                assert live.name not in {r.run_id for r in plan.reclaim}
                apply_plan(tmp_path / str(instance), plan)
            passes += 1
        assert kernel.wait(60) == 0
    finally:
        kernel.kill()
        kernel.wait()
    assert read_manifest(live).status is RunStatus.ENDED
    seqs = [e.seq for e in walk_entries(live)]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 200002


def test_supervisor_process_applies_the_mode(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    dirs = make_runs(tmp_path, instance, 3, anchored=set())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ringtape.capture.retention_supervisor",
            str(tmp_path),
            str(instance),
            "--mode",
            RetentionMode.bounded(1).to_json(),
            "--once",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    wait_until(lambda: not dirs[0].exists() and not dirs[1].exists(), what="reclaim")
    assert dirs[2].exists()


def test_quarantined_run_is_never_reclaimed_on_disk(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    dirs = make_runs(tmp_path, instance, 3, anchored={2})
    manifest = read_manifest(dirs[0])
    manifest.status = RunStatus.QUARANTINED
    write_manifest(dirs[0], manifest)
    for mode, keep in (("Bounded", 1), ("SnapshotAnchored", None)):
        apply_plan(
            tmp_path / str(instance),
            plan_retention(describe_instance(tmp_path / str(instance)), mode, keep),
        )
    assert dirs[0].exists() and not dirs[1].exists()


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError):
        plan_retention([], "Sometimes")
