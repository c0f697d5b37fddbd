"""Reading entries back: seq ranges, skipping, and refusing to go past damage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import make_run

from ringtape.storage.check.findings import Kind
from ringtape.storage.check.scan import scan_segment
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED
from ringtape.storage.read.reader import CorruptionError, iter_entries, iter_frames
from ringtape.storage.run.status import RunStatus


def test_reads_every_entry_in_order(tmp_path: Path) -> None:
    run = make_run(tmp_path, 300, segment_bytes=4096)
    entries = list(iter_entries(run))
    assert [e.seq for e in entries] == list(range(1, 301))
    assert entries[0].topic == TOPIC_RUN_STARTED and entries[-1].topic == TOPIC_RUN_ENDED
    assert entries[5].payload.endswith((6).to_bytes(8, "little"))


@pytest.mark.parametrize(("lo", "hi"), [(1, 1), (7, 9), (150, 151), (298, None), (1, 10_000)])
def test_seq_ranges(tmp_path: Path, lo: int, hi: int | None) -> None:
    run = make_run(tmp_path, 300, segment_bytes=4096)
    want = list(range(lo, min(300, hi or 300) + 1))
    assert [e.seq for e in iter_entries(run, from_seq=lo, to_seq=hi)] == want


def test_frames_before_from_seq_are_not_read(tmp_path: Path) -> None:
    run = make_run(tmp_path, 300, segment_bytes=4096)
    first = run / "events-000000.seg"
    off, header = scan_segment(first).frames[1]
    data = bytearray(first.read_bytes())
    data[off + header.header_size + 4] ^= 0xFF  # stored bytes of the second frame (seq 5..8)
    first.write_bytes(data)
    assert [e.seq for e in iter_entries(run, from_seq=header.last_seq + 1, to_seq=20)] == list(
        range(header.last_seq + 1, 21)
    )
    with pytest.raises(CorruptionError) as err:
        list(iter_entries(run))
    f = err.value.finding
    assert (f.kind, f.offset, f.seq_from, f.seq_to) == (
        Kind.CHECKSUM_MISMATCH,
        off,
        header.first_seq,
        header.last_seq,
    )


def test_a_missing_frame_is_an_error_not_a_skip(tmp_path: Path) -> None:
    run = make_run(tmp_path, 40)
    seg = run / "events-000000.seg"
    frames = list(scan_segment(seg).frames)
    data = seg.read_bytes()
    (a, h), (b, _) = frames[3], frames[4]
    seg.write_bytes(data[:a] + data[b:])
    with pytest.raises(CorruptionError) as err:
        list(iter_entries(run))
    assert err.value.finding.kind is Kind.MISSING_FRAME
    assert err.value.finding.seq_from == h.first_seq
    # Entries before the damage are still readable on their own.
    assert [e.seq for e in iter_entries(run, to_seq=h.first_seq - 1)][-1] == h.first_seq - 1


def test_a_missing_segment_is_an_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, 300, segment_bytes=4096)
    (run / "events-000001.seg").unlink()
    with pytest.raises(CorruptionError) as err:
        list(iter_entries(run))
    assert err.value.finding.kind is Kind.MISSING_SEGMENT


def torn(run: Path) -> None:
    last = sorted(run.glob("events-*.seg"))[-1]
    os.truncate(last, last.stat().st_size - 3)


def test_a_torn_tail_ends_an_open_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, 40, status=RunStatus.RUNNING)
    torn(run)
    seqs = [e.seq for e in iter_entries(run)]
    assert seqs == list(range(1, 37))
    with pytest.raises(CorruptionError) as err:
        list(iter_entries(run, strict=True))
    assert err.value.finding.kind is Kind.TORN_TAIL


def test_a_torn_tail_in_a_sealed_run_is_an_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, 40, status=RunStatus.ENDED)
    torn(run)
    with pytest.raises(CorruptionError) as err:
        list(iter_entries(run))
    assert err.value.finding.kind is Kind.TORN_TAIL
    assert [e.seq for e in iter_entries(run, strict=False)][-1] == 36


def test_markers_stream_and_frames(tmp_path: Path) -> None:
    run = make_run(tmp_path, 10, markers=9)
    frames = list(iter_frames(run, "markers"))
    assert [f.header.first_seq for f in frames] == [1, 5, 9]
    assert [e.seq for f in frames for e in f.entries()] == list(range(1, 10))
    with pytest.raises(ValueError):
        list(iter_frames(run, "nope"))
    with pytest.raises(ValueError):
        list(iter_entries(run, from_seq=5, to_seq=4))


def test_every_entry_before_the_damage_is_passed_on_first(tmp_path: Path) -> None:
    run = make_run(tmp_path, 300, segment_bytes=4096)
    seg = run / "events-000001.seg"
    off, header = scan_segment(seg).frames[2]
    data = bytearray(seg.read_bytes())
    data[off + 70] ^= 0x10
    seg.write_bytes(data)
    seen = []
    with pytest.raises(CorruptionError) as err:
        for entry in iter_entries(run):
            seen.append(entry.seq)
    assert seen == list(range(1, header.first_seq))
    assert err.value.finding.seq_from == header.first_seq
