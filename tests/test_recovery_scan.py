"""Recovery of crashed runs: one test per row of the verdict table, cuts, markers, idempotence."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import make_run, records

from ringtape.storage.check.findings import Kind
from ringtape.storage.check.scan import scan_segment
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.read.reader import iter_entries
from ringtape.storage.run.lock import LockHeldError, WriterLock
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.recovery import RecoveryError, apply_plan, recover_run, scan_run
from ringtape.storage.run.status import RECOVERY_VERDICTS, Outcome, RunStatus
from ringtape.storage.segment.writer import SegmentWriter

RUNNING = RunStatus.RUNNING


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def last_segment(run: Path, stream: str = "events") -> Path:
    return sorted(run.glob(f"{stream}-*.seg"))[-1]


def test_the_table_covers_every_outcome() -> None:
    assert set(RECOVERY_VERDICTS) == set(Outcome)


def test_no_entries_is_crashed_recovered(tmp_path: Path) -> None:
    run = make_run(tmp_path, 0, status=RUNNING)
    plan = recover_run(run)
    assert (plan.outcome, plan.status, plan.high_watermark) == (
        Outcome.EMPTY,
        RunStatus.CRASHED_RECOVERED,
        0,
    )
    assert read_manifest(run).status is RunStatus.CRASHED_RECOVERED


def test_a_segment_that_is_only_a_torn_header_goes_and_its_bytes_stay(tmp_path: Path) -> None:
    run = make_run(tmp_path, 0, status=RUNNING)
    (run / "events-000000.seg").write_bytes(b"RTAPES")
    plan = recover_run(run)
    assert plan.outcome is Outcome.EMPTY and [c.offset for c in plan.cuts] == [0]
    assert not (run / "events-000000.seg").exists()
    assert (run / "events-000000.seg.torn").read_bytes() == b"RTAPES"
    assert verify_path(run).ok


def test_a_clean_stream_ending_in_run_ended_is_ended(tmp_path: Path) -> None:
    run = make_run(tmp_path, 30, status=RUNNING, ended=True)
    before = snapshot(run)
    plan = recover_run(run)
    assert (plan.outcome, plan.status) == (Outcome.CLEAN_ENDED, RunStatus.ENDED)
    m = read_manifest(run)
    assert (m.status, m.high_watermark, m.end_ts_init) == (RunStatus.ENDED, 30, plan.end_ts_init)
    assert plan.end_ts_init == list(iter_entries(run))[-1].ts_init
    assert {k: v for k, v in snapshot(run).items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    assert verify_path(run).ok


def test_a_clean_stream_without_run_ended_is_crashed_recovered(tmp_path: Path) -> None:
    run = make_run(tmp_path, 30, status=RUNNING, ended=False)
    plan = recover_run(run)
    assert (plan.outcome, plan.status, plan.high_watermark) == (
        Outcome.CLEAN_OPEN,
        RunStatus.CRASHED_RECOVERED,
        30,
    )
    assert verify_path(run).ok


def test_a_torn_tail_is_cut_after_its_bytes_are_kept(tmp_path: Path) -> None:
    run = make_run(tmp_path, 300, status=RUNNING, ended=False, segment_bytes=4096)
    seg = last_segment(run)
    data = seg.read_bytes()
    os.truncate(seg, len(data) - 7)
    start = scan_segment(seg).torn_at
    assert start is not None
    plan = recover_run(run)
    assert plan.status is RunStatus.CRASHED_RECOVERED and plan.high_watermark < 300
    assert seg.read_bytes() == data[:start]
    assert (run / f"{seg.name}.torn").read_bytes() == data[start:-7]
    assert [e.seq for e in iter_entries(run)][-1] == plan.high_watermark
    assert [f["kind"] for f in read_manifest(run).findings] == ["torn_tail"]
    report = verify_path(run)
    assert report.ok and [f.kind for f in report.findings] == [Kind.LEFTOVER_TORN]


def flip_stored(run: Path) -> None:
    seg = run / "events-000000.seg"
    off, header = scan_segment(seg).frames[2]
    data = bytearray(seg.read_bytes())
    data[off + header.header_size + 4] ^= 1  # a stored byte
    seg.write_bytes(data)


def flip_header(run: Path) -> None:
    seg = run / "events-000000.seg"
    off, _ = scan_segment(seg).frames[2]
    data = bytearray(seg.read_bytes())
    data[off + 9] ^= 1
    seg.write_bytes(data)


def drop_frame(run: Path) -> None:
    seg = run / "events-000000.seg"
    (a, _), (b, _) = list(scan_segment(seg).frames)[2:4]
    data = seg.read_bytes()
    seg.write_bytes(data[:a] + data[b:])


def rewrite(run: Path, frames: list[tuple[list[bytes], int, list[int] | None]]) -> None:
    """Replace the events stream with frames (records, first_seq, offsets override)."""
    for p in run.glob("events-*.seg"):
        p.unlink()
    writer = SegmentWriter(run, run.name, "events", STREAM_EVENTS)
    for recs, first, offsets in frames:
        offs = offsets or np.cumsum([0] + [len(r) for r in recs[:-1]]).tolist()
        writer.append(b"".join(recs), np.array(offs, dtype=np.int64), first)
    writer.close()


def skip_seqs(run: Path) -> None:
    recs = records(20, ended=False)
    rewrite(run, [(recs[:8], 1, None), (recs[10:15], 11, None), (recs[15:], 16, None)])


def bad_records(run: Path) -> None:
    recs = records(12, ended=False)
    wrong = [0, len(recs[4]) + 1, len(recs[4]) + len(recs[5])]
    rewrite(run, [(recs[:4], 1, None), (recs[4:7], 5, wrong), (recs[7:], 8, None)])


@pytest.mark.parametrize(
    ("damage", "kind"),
    [
        (flip_stored, Kind.CHECKSUM_MISMATCH),
        (flip_header, Kind.BAD_HEADER),
        (drop_frame, Kind.MISSING_FRAME),
        (skip_seqs, Kind.SEQ_GAP),
        (bad_records, Kind.DECODE_ERROR),
    ],
)
def test_damage_before_the_tail_quarantines_and_cuts_nothing(
    tmp_path: Path, damage: Callable[[Path], None], kind: Kind
) -> None:
    run = make_run(tmp_path, 40, status=RUNNING, ended=False)
    damage(run)
    seg = last_segment(run)
    os.truncate(seg, seg.stat().st_size - 3)  # a torn tail too: it must stay as evidence
    before = snapshot(run)
    plan = recover_run(run)
    assert (plan.outcome, plan.status, plan.cuts) == (Outcome.DAMAGED, RunStatus.QUARANTINED, ())
    assert kind in {f["kind"] for f in plan.findings}
    assert {k: v for k, v in snapshot(run).items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    assert read_manifest(run).status is RunStatus.QUARANTINED


def test_marker_damage_is_recorded_and_its_tail_cut_without_quarantine(tmp_path: Path) -> None:
    run = make_run(tmp_path, 30, status=RUNNING, ended=True, markers=40)
    markers = run / "markers-000000.seg"
    off, header = scan_segment(markers).frames[1]
    data = bytearray(markers.read_bytes())
    data[off + header.header_size + 4] ^= 1  # a stored byte
    markers.write_bytes(data[:-2])
    plan = recover_run(run)
    assert plan.status is RunStatus.ENDED
    recorded = {(f["kind"], f["stream"]) for f in read_manifest(run).findings}
    assert recorded == {("checksum_mismatch", "markers"), ("torn_tail", "markers")}
    assert (run / "markers-000000.seg.torn").exists()
    assert all(not os.path.isabs(f["path"]) for f in plan.findings)


def test_recovering_twice_changes_nothing(tmp_path: Path) -> None:
    run = make_run(tmp_path, 300, status=RUNNING, ended=False, segment_bytes=4096)
    os.truncate(last_segment(run), last_segment(run).stat().st_size - 11)
    recover_run(run)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    plan = recover_run(run)
    assert not plan.changes_anything and plan.cuts == ()
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == after


def test_an_interrupted_recovery_is_finished_by_the_next(tmp_path: Path) -> None:
    run = make_run(tmp_path, 300, status=RUNNING, ended=False, segment_bytes=4096)
    seg = last_segment(run)
    os.truncate(seg, seg.stat().st_size - 11)
    plan = scan_run(run)
    (cut,) = plan.cuts
    # The crash came after the torn bytes were kept, before the segment was cut.
    (run / f"{seg.name}.torn").write_bytes(seg.read_bytes()[cut.offset :])
    recover_run(run)
    assert sorted(p.name for p in run.glob("*.torn")) == [f"{seg.name}.torn"]
    assert seg.stat().st_size == cut.offset
    # And after the cut, before the manifest: the next recovery seals it, recording the leftover.
    run2 = make_run(tmp_path / "two", 300, status=RUNNING, ended=False, segment_bytes=4096)
    seg2 = last_segment(run2)
    os.truncate(seg2, seg2.stat().st_size - 11)
    (cut2,) = scan_run(run2).cuts
    (run2 / f"{seg2.name}.torn").write_bytes(seg2.read_bytes()[cut2.offset :])
    os.truncate(seg2, cut2.offset)
    plan2 = recover_run(run2)
    assert plan2.status is RunStatus.CRASHED_RECOVERED and plan2.cuts == ()
    assert [f["kind"] for f in plan2.findings] == ["leftover_torn"]


def test_a_live_writer_is_never_touched(tmp_path: Path) -> None:
    run = make_run(tmp_path, 30, status=RUNNING, ended=False)
    plan = scan_run(run)
    lock = WriterLock.acquire(run)
    try:
        with pytest.raises(LockHeldError):
            scan_run(run)
        with pytest.raises(LockHeldError):
            apply_plan(run, plan)
    finally:
        lock.release()
    assert read_manifest(run).status is RUNNING


def test_an_unreadable_manifest_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path, 30, status=RUNNING)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(RecoveryError):
        scan_run(run)


def test_a_stale_plan_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path, 300, status=RUNNING, ended=False, segment_bytes=4096)
    seg = last_segment(run)
    os.truncate(seg, seg.stat().st_size - 11)
    plan = scan_run(run)
    os.truncate(seg, seg.stat().st_size - 1)
    with pytest.raises(RecoveryError):
        apply_plan(run, plan)
