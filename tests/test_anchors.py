"""Snapshot anchors: handed over in one copy, made durable by the writer, never a halt.

Real stores and writer processes. The crash cases kill the kernel or the writer at each step
of the anchor path and check that the run replays from the newest complete anchor while verify
explains the incomplete one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from pipeline_support import wait_until

from ringtape import (
    EventStore,
    EventStoreConfig,
    RegisteredComponents,
    RetentionMode,
    StoreHalted,
    StoreOptions,
)
from ringtape.capture.faults import FaultPlan
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.blob import BLOB_HEADER_SIZE, CODEC_ALIAS
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_SNAPSHOT_ANCHOR
from ringtape.storage.read.reader import iter_entries
from ringtape.storage.read.replay import iter_anchors, newest_valid_anchor, replay_run
from ringtape.storage.run.blobs import blob_header, read_snapshot
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.status import RunStatus

ROOT = Path(__file__).resolve().parent.parent


def open_store(
    stores: list[EventStore], base: Path, options: StoreOptions | None = None, **config: object
) -> EventStore:
    store = EventStore(EventStoreConfig(base_dir=str(base), **config), options=options)  # type: ignore[arg-type]
    stores.append(store)
    store.open(uuid.uuid4(), RegisteredComponents(), "live")
    return store


def snapshot(i: int, size: int = 50_000) -> bytes:
    """A compressible snapshot (JSON-like), different for each ``i``."""
    row = b'{"order_id": "O-%08d", "status": "FILLED", "qty": 10}\n' % i
    return (row * (size // len(row) + 1))[:size]


class Restored:
    """A replay target that keeps what it was restored from (the snapshots here are opaque)."""

    def __init__(self) -> None:
        self.snapshot: bytes | None = None
        self.applied = 0

    def restore(self, blob: bytes) -> None:
        self.snapshot = blob

    def apply(self, entry: object) -> None:
        self.applied += 1


def settle(store: EventStore) -> None:
    wait_until(lambda: all(a.state != "pending" for a in store.anchors()), what="anchors to settle")


def test_anchor_returns_at_once_and_its_blob_becomes_durable(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = open_store(stores, tmp_path)
    anchor = store.snapshot_anchorer()
    assert anchor is not None
    marks = []
    for i in range(5):
        for k in range(100):
            store.append("events.x", b"%d" % k)
        marks.append(anchor(snapshot(i)))
        settle(store)
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    records = store.anchors()
    assert [r.state for r in records] == ["durable"] * 5
    assert [r.high_watermark for r in records] == marks
    assert all(r.stored_bytes < r.size / 5 for r in records), "blobs are compressed"
    anchor_5, skipped = newest_valid_anchor(run_dir, read_manifest(run_dir).high_watermark)
    assert anchor_5 is not None and anchor_5.anchor_id == 5 and skipped == []
    assert read_snapshot(run_dir, anchor_5) == snapshot(4)
    report = verify_path(run_dir)
    assert report.ok and report.findings == (), report.findings


def test_identical_snapshots_are_stored_once(tmp_path: Path, stores: list[EventStore]) -> None:
    store = open_store(stores, tmp_path)
    anchor = store.snapshot_anchorer()
    assert anchor is not None
    for _ in range(3):
        store.append("events.x", b"x")
        anchor(snapshot(7))
        settle(store)
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    headers = [blob_header(run_dir, f"blobs/anchor-00000{i}.blob") for i in (1, 2, 3)]
    assert [h.codec for h in headers] == [1, CODEC_ALIAS, CODEC_ALIAS]
    assert (run_dir / "blobs/anchor-000003.blob").read_bytes()[BLOB_HEADER_SIZE:] == (
        b"blobs/anchor-000001.blob"
    )
    last, _ = newest_valid_anchor(run_dir, read_manifest(run_dir).high_watermark)
    assert last is not None and last.anchor_id == 3 and read_snapshot(run_dir, last) == snapshot(7)
    assert verify_path(run_dir).ok


def test_a_slow_disk_makes_anchors_superseded_or_skipped_never_a_halt(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    """Every blob write takes 50 ms: anchors every 2 ms pile up. They are superseded (a newer
    snapshot takes the waiting slot) or skipped (both slots busy), counted, and trading goes
    on; the last one is still made durable."""
    plan = FaultPlan(blob_write_delay_s=0.05)
    store = open_store(stores, tmp_path, StoreOptions(faults=plan))
    anchor = store.snapshot_anchorer()
    assert anchor is not None
    for i in range(100):
        store.append("events.x", b"%d" % i)
        anchor(snapshot(i, 20_000))
        time.sleep(0.002)
    assert not store.is_halted()
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    fates = read_manifest(run_dir).anchor_fates
    assert (
        fates.get("durable", 0) >= 1 and fates.get("superseded", 0) + fates.get("skipped", 0) > 50
    )
    assert sum(fates.values()) == 100
    assert {r.state for r in store.anchors()} <= {"durable", "superseded", "skipped"}
    # What the kernel was told is what is on disk: a blob for every durable anchor, no other.
    durable = {r.anchor_id for r in store.anchors() if r.state == "durable"}
    assert {int(p.stem.removeprefix("anchor-")) for p in (run_dir / "blobs").iterdir()} == durable
    report = verify_path(run_dir)
    assert report.ok, report.findings  # superseded anchors are notes: no blob, no restore point
    assert all(str(f.kind) == "anchor_incomplete" for f in report.findings)


@pytest.mark.parametrize("pause_s", [0.0, 0.0005])
def test_anchors_in_a_burst_each_end_in_one_state_that_matches_the_disk(
    tmp_path: Path, stores: list[EventStore], pause_s: float
) -> None:
    """Hundreds of anchors of varied sizes, back to back or nearly: the kernel and the writer
    race for the two slots all along. Every anchor ends durable, superseded or skipped, the
    durable ones are exactly the blobs on disk, and each blob holds its own snapshot."""
    store = open_store(stores, tmp_path)
    anchor = store.snapshot_anchorer()
    assert anchor is not None
    expected = {}  # watermark -> the snapshot anchored there
    for i in range(300):
        store.append("events.x", b"%d" % i)
        data = snapshot(i, 1000 + (i * 7919) % 300_000)
        expected[anchor(data)] = data
        if pause_s:
            time.sleep(pause_s)
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    records = store.anchors()
    assert len(records) == 300 and {r.state for r in records} <= {
        "durable",
        "superseded",
        "skipped",
    }
    durable = [r for r in records if r.state == "durable"]
    assert durable, "not one anchor of the burst completed"
    if not pause_s:  # back to back, the writer cannot keep up: the race is exercised
        assert any(r.state == "superseded" for r in records)
    assert {int(p.stem.removeprefix("anchor-")) for p in (run_dir / "blobs").iterdir()} == {
        r.anchor_id for r in durable
    }
    entries = {a.anchor_id: a for a in iter_anchors(run_dir)}
    for r in durable:
        assert read_snapshot(run_dir, entries[r.anchor_id]) == expected[r.high_watermark]
    assert verify_path(run_dir).ok


def test_mandatory_anchors_halt_when_the_writer_cannot_take_them(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    plan = FaultPlan(blob_write_delay_s=0.5)
    store = open_store(
        stores,
        tmp_path,
        StoreOptions(faults=plan, anchors="mandatory"),
        halt_threshold=timedelta(milliseconds=100),
    )
    anchor = store.snapshot_anchorer()
    assert anchor is not None
    with pytest.raises(StoreHalted) as caught:
        for i in range(10):
            store.append("events.x", b"%d" % i)
            anchor(snapshot(i))
    assert caught.value.reason.kind == "AnchorStall"


def test_snapshot_anchored_runs_keep_blob_space_bounded(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    store = open_store(stores, tmp_path, retention=RetentionMode.snapshot_anchored())
    anchor = store.snapshot_anchorer()
    assert anchor is not None
    for i in range(8):
        store.append("events.x", b"%d" % i)
        anchor(snapshot(i))
        settle(store)
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    assert sorted(p.name for p in (run_dir / "blobs").iterdir()) == [
        "anchor-000007.blob",
        "anchor-000008.blob",
    ]
    report = verify_path(run_dir)
    assert report.ok
    target = Restored()
    result = replay_run(run_dir, target)
    assert result.anchor is not None and result.anchor.anchor_id == 8
    assert target.snapshot == snapshot(7)


# -- crashes at each step of the anchor path --------------------------------------------------

KERNEL = r"""
import json, os, sys, time, uuid
from ringtape import EventStore, EventStoreConfig, RegisteredComponents, StoreOptions
from ringtape.capture.faults import FaultPlan

base, instance, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
store = EventStore(EventStoreConfig(base_dir=base), instance_id=instance,
                   options=StoreOptions(faults=FaultPlan(**spec.get("faults", {}))))
store.open(instance, RegisteredComponents(), "live")
print(json.dumps({"run_dir": str(store.run_dir())}), flush=True)
anchor = store.snapshot_anchorer()
row = b'{"order_id": "O-1", "status": "FILLED"}\n'
for i in range(2000):
    store.append("events.order.filled", b'{"order_id": "O-%d"}' % i)
    if i == 500:
        anchor(row * 1000)  # anchor 1: let it complete
        while store.anchors()[0].state != "durable":
            time.sleep(0.001)
    if i == 1500:
        anchor(row * 2000)  # anchor 2: the one the crash hits
        if spec.get("kill_kernel_after_anchor"):
            print(json.dumps({"anchored": True}), flush=True)
            time.sleep(60)
        if spec.get("seal_after_anchor"):  # the writer writes this blob as it closes
            store.seal()
            break
deadline = time.monotonic() + 20
if spec.get("writer_dies"):  # its blob thread kills the writer: wait for the halt
    while not store.is_halted() and time.monotonic() < deadline:
        time.sleep(0.001)
else:
    while store.durable_seq() < 2003 and time.monotonic() < deadline:
        time.sleep(0.001)
reason = store.halt_reason()
print(json.dumps({"halt": None if reason is None else reason.kind}), flush=True)
time.sleep(60)
"""


def crash_run(base: Path, spec: dict[str, object]) -> tuple[Path, int, dict[str, object]]:
    """Run the kernel above and SIGKILL it once it reports (unless it killed itself); returns
    the run, the kernel's exit status and its last report (empty if it died first)."""
    instance = uuid.uuid4()
    proc = subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(base), str(instance), json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        run_dir = Path(json.loads(proc.stdout.readline())["run_dir"])
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        status = proc.wait()
    wait_until(lambda: _lock_free(run_dir), 30, "the writer to finish")
    return run_dir, status, json.loads(line) if line else {}


def _lock_free(run_dir: Path) -> bool:
    from ringtape.storage.run.lock import writer_alive

    return not writer_alive(run_dir)


def recovered(base: Path, run_dir: Path, status: RunStatus = RunStatus.CRASHED_RECOVERED) -> None:
    boot = EventStore(EventStoreConfig(base_dir=str(base)), instance_id=run_dir.parent.name)
    boot.close()
    assert read_manifest(run_dir).status is status


def _writer_crash(point: str) -> dict[str, object]:
    return {"faults": {"blob_crash_at": point, "crash_anchor": 2}, "writer_dies": True}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "complete", "anchor_entries"),
    [
        (_writer_crash("blob_taken"), 1, 2),  # anchor 2's entry durable, nothing of its blob
        (_writer_crash("blob_mid_write"), 1, 2),  # half its blob written, never renamed
        (_writer_crash("blob_durable"), 2, 2),  # blob durable, the kernel never told
        ({"faults": {"kernel_crash_at": "anchor_before_entry", "crash_anchor": 2}}, 1, 1),
        ({"kill_kernel_after_anchor": True}, 2, 2),  # the kernel dies: its writer finishes it
        (  # seal() while the writer finishes anchor 2's (slow) blob, and it dies doing so
            {**_writer_crash("blob_mid_write"), "seal_after_anchor": True}
            | {
                "faults": {
                    "blob_crash_at": "blob_mid_write",
                    "crash_anchor": 2,
                    "blob_write_delay_s": 0.05,
                }
            },
            1,
            2,
        ),
    ],
    ids=[
        "writer_killed_blob_taken",
        "writer_killed_mid_blob",
        "writer_killed_blob_durable",
        "kernel_killed_before_entry",
        "kernel_killed_after_anchor",
        "writer_killed_mid_blob_at_seal",
    ],
)
def test_a_crash_in_the_anchor_path_replays_from_the_newest_complete_anchor(
    tmp_path: Path, spec: dict[str, object], complete: int, anchor_entries: int
) -> None:
    run_dir, status, report_line = crash_run(tmp_path, spec)
    # The crash happened where it was meant to: the writer's blob thread killed the writer
    # (the kernel saw it die), or the kernel died at its fault point (it never reported).
    assert status == -signal.SIGKILL
    if spec.get("writer_dies"):
        assert report_line == {"halt": "WriterDied"}
    elif "faults" in spec:
        assert report_line == {}
    else:
        assert report_line == {"anchored": True}
    # RunEnded was durable before the writer died closing: the sweep, not the kernel, seals
    # that run (ended), removing the half-written blob's temp.
    ended = bool(spec.get("seal_after_anchor")) and any(
        e.topic == TOPIC_RUN_ENDED for e in iter_entries(run_dir)
    )
    recovered(tmp_path, run_dir, RunStatus.ENDED if ended else RunStatus.CRASHED_RECOVERED)
    assert not list((run_dir / "blobs").glob(".*.tmp"))
    entries = [e for e in iter_entries(run_dir) if e.topic == TOPIC_SNAPSHOT_ANCHOR]
    assert len(entries) == anchor_entries
    target = Restored()
    result = replay_run(run_dir, target)
    assert result.anchor is not None and result.anchor.anchor_id == complete
    assert target.snapshot is not None and len(target.snapshot) == 40 * 1000 * complete
    report = verify_path(run_dir)
    assert report.ok, report.findings
    incomplete = [f for f in report.findings if str(f.kind) == "anchor_incomplete"]
    assert len(incomplete) == anchor_entries - complete
    if incomplete:  # anchor 2's entry: after anchor 1's entry and the appends i = 501..1500
        assert incomplete[0].seq_from == result.anchor.seq + 1001
        assert "never completed" in incomplete[0].detail


def test_a_blob_no_anchor_entry_names_is_no_restore_point(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    """A blob no anchor entry names (a run directory put together by hand) is reported as a
    note and never used: a replay starts from the newest anchor the stream holds."""
    store = open_store(stores, tmp_path)
    anchor = store.snapshot_anchorer()
    assert anchor is not None
    store.append("events.x", b"1")
    anchor(snapshot(1))
    settle(store)
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    orphan = run_dir / "blobs/anchor-000002.blob"
    orphan.write_bytes((run_dir / "blobs/anchor-000001.blob").read_bytes())
    os.chmod(orphan, 0o600)
    report = verify_path(run_dir)
    assert report.ok, report.findings
    notes = [f for f in report.findings if str(f.kind) == "anchor_incomplete"]
    assert len(notes) == 1 and "no anchor entry" in notes[0].detail
    result = replay_run(run_dir, Restored())
    assert result.anchor is not None and result.anchor.anchor_id == 1
