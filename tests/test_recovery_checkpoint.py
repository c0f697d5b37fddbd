"""Recovery in time proportional to the tail: the checkpoint, what the sweep trusts and what it
still checks, zeros in the un-synced tail, one manifest write, aborted opens.

Runs are written with the real segment writer (small segments, so that it rolls and writes
checkpoints); crashes are made by cutting or zeroing the bytes a crash would leave.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import INSTANCE, TS0, make_run, records
from pipeline_support import walk_entries, write_snapshot_blob
from test_cli_support import ringtape

from ringtape.storage.check.findings import Kind
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.entry import TOPIC_SNAPSHOT_ANCHOR, encode_entry
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.run.checkpoint import checkpoint_start, read_checkpoint
from ringtape.storage.run.layout import ABORTED_DIR, LOCK_NAME, checkpoint_name
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.recovery import recover_run, scan_run
from ringtape.storage.run.status import Outcome, RunStatus
from ringtape.storage.run.sweep import sweep_instance
from ringtape.storage.segment.writer import SegmentWriter

RUNNING = RunStatus.RUNNING
SEG = 4096


def segments(run: Path) -> list[Path]:
    return sorted(run.glob("events-*.seg"))


def crashed_run(base: Path, n: int = 400) -> Path:
    """A running run of ``n`` entries over several 4 KiB segments, its last frame half written."""
    run = make_run(base, n, status=RUNNING, segment_bytes=SEG)
    last = segments(run)[-1]
    os.truncate(last, last.stat().st_size - 20)
    return run


def test_the_writer_checkpoints_each_roll(tmp_path: Path) -> None:
    run = make_run(tmp_path, 400, status=RUNNING, segment_bytes=SEG)
    segs = segments(run)
    assert len(segs) >= 4
    cp = read_checkpoint(run, "events")
    assert cp is not None and cp.segment == len(segs) - 2
    assert cp.size == segs[-2].stat().st_size
    start = checkpoint_start(run, cp)
    assert start is not None and start.segment == len(segs) - 1
    first_of_last = next(e.seq for e in walk_entries(run) if e.seq >= start.seq)
    assert first_of_last == cp.last_seq + 1 == start.seq
    assert cp.last_ts_init == TS0 + cp.last_seq  # records() stamps ts_init = TS0 + seq


def test_the_sweep_reads_only_the_tail_and_cuts_it_exactly(tmp_path: Path) -> None:
    """Damage inside a checkpointed segment is not read by the sweep (verify reports it); the
    tail after the checkpoint is checked and cut to the byte."""
    run = crashed_run(tmp_path)
    last = segments(run)[-1]
    torn_from = scan_run(run).cuts[0].offset
    tail = last.read_bytes()[torn_from:]
    first = segments(run)[0]
    data = bytearray(first.read_bytes())
    data[300] ^= 0x01  # inside a frame's stored bytes, segment 0 (checkpointed)
    first.write_bytes(bytes(data))
    plan = recover_run(run)
    assert plan.status is RunStatus.CRASHED_RECOVERED
    assert dict(plan.checkpointed)["events"] == len(segments(run)) - 2
    assert last.stat().st_size == torn_from
    assert (run / f"{last.name}.torn").read_bytes() == tail
    found = [f.kind for f in verify_path(run).findings]
    assert Kind.CHECKSUM_MISMATCH in found, "verify checks what the sweep did not"


def test_a_checkpoint_that_disagrees_means_a_full_scan(tmp_path: Path) -> None:
    run = crashed_run(tmp_path)
    cp_path = run / checkpoint_name("events")
    body = json.loads(cp_path.read_text())
    body["size"] += 1  # the checksum no longer matches: the file is ignored
    cp_path.write_text(json.dumps(body))
    assert read_checkpoint(run, "events") is None
    first = segments(run)[0]
    data = bytearray(first.read_bytes())
    data[300] ^= 0x01
    first.write_bytes(bytes(data))
    plan = recover_run(run)
    assert dict(plan.checkpointed)["events"] == -1
    assert plan.status is RunStatus.QUARANTINED, "a full scan finds the damage"


def test_a_missing_checkpointed_segment_means_a_full_scan(tmp_path: Path) -> None:
    run = crashed_run(tmp_path)
    segments(run)[1].unlink()
    plan = recover_run(run)
    assert plan.status is RunStatus.QUARANTINED
    assert Kind.MISSING_SEGMENT in {f["kind"] for f in plan.findings}


def test_nothing_after_the_checkpoint(tmp_path: Path) -> None:
    """A crash right after a roll: the new segment is only a torn header."""
    run = make_run(tmp_path, 400, status=RUNNING, segment_bytes=SEG)
    last = segments(run)[-1]
    last.write_bytes(b"RTAPESEG")
    cp = read_checkpoint(run, "events")
    assert cp is not None
    plan = recover_run(run)
    assert (plan.outcome, plan.high_watermark) == (Outcome.CLEAN_OPEN, cp.last_seq)
    assert plan.end_ts_init == cp.last_ts_init
    assert not last.exists()
    assert verify_path(run).ok


def anchored_run(base: Path, n: int = 300, every: int = 50) -> tuple[Path, list[int]]:
    """A running run over several segments with a snapshot anchor every ``every`` entries."""
    run = make_run(base, 0, status=RUNNING)
    writer = SegmentWriter(run, run.name, "events", STREAM_EVENTS, max_segment_bytes=SEG)
    recs = records(n, ended=False)
    anchors = []
    for i, rec in enumerate(recs):
        seq = i + 1
        if seq > 1 and seq % every == 0:
            blob = write_snapshot_blob(run, len(anchors) + 1, seq - 1, b"snapshot %d" % seq)
            payload = blob.to_payload()
            rec = encode_entry(seq, TS0 + seq, TS0 + seq, TOPIC_SNAPSHOT_ANCHOR, payload, "json")
            anchors.append(seq)
        writer.append(rec, np.zeros(1, dtype=np.int64), seq)
    writer.close()
    return run, anchors


def test_the_anchor_index_of_a_recovered_run_is_whole(tmp_path: Path) -> None:
    """Defect 6: the anchors in checkpointed segments are indexed without reading them."""
    run, anchors = anchored_run(tmp_path)
    cp = read_checkpoint(run, "events")
    assert cp is not None and 0 < len(cp.anchors) < len(anchors)
    plan = recover_run(run)
    assert plan.status is RunStatus.CRASHED_RECOVERED
    assert [a["seq"] for a in read_manifest(run).anchors] == anchors
    report = verify_path(run)
    assert report.ok, [str(f) for f in report.findings]


RECOVER_THEN_DIE = r"""
import os, signal, sys
from pathlib import Path
from ringtape.storage.run.recovery import apply_plan, scan_run
run = Path(sys.argv[1])
plan = scan_run(run)
apply_plan(run, plan, before_rename=lambda: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_recovery_killed_before_its_manifest_rename_is_finished_by_the_next(
    tmp_path: Path,
) -> None:
    """Defect 6: a recovery is one manifest write; killed before its rename, the run is still
    `running`, and the next sweep seals it whole (anchors indexed, temp files gone)."""
    run, anchors = anchored_run(tmp_path)
    last = segments(run)[-1]
    os.truncate(last, last.stat().st_size - 10)
    proc = subprocess.run([sys.executable, "-c", RECOVER_THEN_DIE, str(run)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert read_manifest(run).status is RUNNING
    assert list(run.glob(".manifest.json.*.tmp")), "the crash left the new manifest unrenamed"
    assert list(run.glob("*.torn")), "the cut was made before the crash"
    report = sweep_instance(run.parent)
    assert [p.status for p in report.recovered] == [RunStatus.CRASHED_RECOVERED]
    assert [a["seq"] for a in read_manifest(run).anchors] == [a for a in anchors if a < 300]
    assert not list(run.glob(".manifest.json.*.tmp"))
    assert verify_path(run).ok


@pytest.mark.parametrize("where", ["middle_sector", "last_partial_sector", "header_sector"])
def test_zeros_in_the_unsynced_tail_are_a_torn_tail(tmp_path: Path, where: str) -> None:
    """Defect 8: zeroed sectors (out-of-order write-back after a power loss), even with written
    sectors after them, are a torn tail from the frame they hit on, not damage."""
    run = make_run(tmp_path, 600, status=RUNNING, segment_bytes=1 << 20, per_frame=1)
    last = segments(run)[-1]
    entries = list(walk_entries(run))
    data = bytearray(last.read_bytes())
    size = len(data)
    if where == "middle_sector":
        at = (size // 2) // 512 * 512
        data[at : at + 512] = bytes(512)
    elif where == "last_partial_sector":
        at = size // 512 * 512
        data[at:] = bytes(size - at)
    else:
        at = 512 * 3
        data[at : at + 512] = bytes(512)
    last.write_bytes(bytes(data))
    plan = scan_run(run)
    assert plan.outcome is Outcome.CLEAN_OPEN, plan.findings
    (cut,) = plan.cuts
    assert cut.offset <= at
    recover_run(run)
    kept = [e.seq for e in walk_entries(run)]
    assert kept == list(range(1, len(kept) + 1)) and kept == [e.seq for e in entries][: len(kept)]
    assert verify_path(run).ok


def test_a_zeroed_sector_in_a_sealed_run_is_still_damage(tmp_path: Path) -> None:
    run = make_run(tmp_path, 600, per_frame=1)
    last = segments(run)[-1]
    data = bytearray(last.read_bytes())
    at = (len(data) // 2) // 512 * 512
    data[at : at + 512] = bytes(512)
    last.write_bytes(bytes(data))
    assert not verify_path(run).ok


def aborted(base: Path, *, lock: bool, temp: bool) -> Path:
    run = make_run(base, 0, status=RUNNING)
    for p in run.iterdir():
        p.unlink()
    if lock:
        WriterLock.acquire(run).release()
    if temp:
        (run / ".manifest.json.4242.tmp").write_text('{"run_id": ')
    return run


@pytest.mark.parametrize(("lock", "temp"), [(True, False), (True, True), (False, True)])
def test_an_open_that_never_became_durable_is_retired_once(
    tmp_path: Path, lock: bool, temp: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 7: such a run dir was skipped with a warning at every boot, forever."""
    run = aborted(tmp_path, lock=lock, temp=temp)
    report = sweep_instance(run.parent)
    assert [r for r, _ in report.retired] == [run.name] and not report.skipped
    assert not run.exists() and (run.parent / ABORTED_DIR / run.name).is_dir()
    caplog.clear()
    again = sweep_instance(run.parent)
    assert not again.retired and not again.skipped and not caplog.records
    assert verify_path(run.parent).ok or not verify_path(run.parent).runs


def test_recover_reports_a_retired_open_and_exits_0(tmp_path: Path) -> None:
    run = aborted(tmp_path, lock=True, temp=True)
    proc = ringtape("recover", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"retired    {run.name}" in proc.stdout
    assert ringtape("recover", tmp_path).returncode == 0


def test_a_live_open_is_not_retired(tmp_path: Path) -> None:
    run = aborted(tmp_path, lock=False, temp=False)
    lock = WriterLock.acquire(run)  # an open() between its lock and its first manifest
    try:
        report = sweep_instance(run.parent)
        assert report.live == [run.name] and run.is_dir()
    finally:
        lock.release()
    fresh = aborted(tmp_path / "b", lock=False, temp=False)  # just made: it may be opening
    report = sweep_instance(fresh.parent)
    assert not report.retired and fresh.is_dir()
    old = time.time() - 60
    os.utime(fresh, (old, old))
    assert [r for r, _ in sweep_instance(fresh.parent).retired] == [fresh.name]


def test_a_run_dir_with_segments_but_no_manifest_is_not_retired(tmp_path: Path) -> None:
    run = make_run(tmp_path, 20, status=RUNNING)
    (run / "manifest.json").unlink()
    report = sweep_instance(run.parent)
    assert not report.retired and [r for r, _ in report.skipped] == [run.name]
    assert (run / "events-000000.seg").exists() and (run / LOCK_NAME).exists() is False


def test_checkpoint_files_are_known_to_verify(tmp_path: Path) -> None:
    run = make_run(tmp_path, 400, segment_bytes=SEG)
    assert (run / checkpoint_name("events")).exists()
    report = verify_path(run)
    assert report.ok and not report.findings
    assert INSTANCE in str(run)
