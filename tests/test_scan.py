"""Segment scans of real files: flipped bytes, cuts, removed and swapped frames, hostile input."""

from __future__ import annotations

import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import INSTANCE, make_run, records, write_stream

from ringtape.storage.check.findings import Kind
from ringtape.storage.check.scan import SegmentScan, scan_segment
from ringtape.storage.check.stream import scan_stream
from ringtape.storage.format.entry import TOPIC_SNAPSHOT_ANCHOR, encode_entry
from ringtape.storage.format.frame import (
    CODEC_NONE,
    CODEC_ZSTD,
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    STREAM_EVENTS,
    FrameEncoder,
    build_body,
    checksum,
    encode_frame_header,
    encode_segment_header,
)
from ringtape.storage.run.status import RunStatus

RUN_ID = "1700000000000000001-0badf00d"


def segment(
    tmp_path: Path, *, frames: int = 4, per_frame: int = 3, codec: int = CODEC_ZSTD
) -> Path:
    """One segment file of ``frames`` frames of ``per_frame`` entries, stored with ``codec``."""
    run_dir = tmp_path / INSTANCE / RUN_ID
    run_dir.mkdir(parents=True)
    recs = [
        encode_entry(seq, 10 + seq, 20 + seq, "data.quotes", b"quote " * 20, "Quote")
        for seq in range(1, frames * per_frame + 1)
    ]
    if codec == CODEC_ZSTD:
        write_stream(run_dir, RUN_ID, recs, per_frame=per_frame)
        return run_dir / "events-000000.seg"
    # The writer stores a frame raw only when zstd does not pay; build raw frames by hand.
    header = encode_segment_header(STREAM_EVENTS, 0, 1, 0, 0, RUN_ID)
    link = int.from_bytes(header[-8:], "little")
    parts = [header]
    for i in range(0, len(recs), per_frame):
        batch = recs[i : i + per_frame]
        body = build_body(b"".join(batch), np.cumsum([0] + [len(r) for r in batch[:-1]]))
        frame_header, link = encode_frame_header(
            CODEC_NONE, len(batch), len(body), len(body), i + 1, link, checksum(body)
        )
        parts += [frame_header, body]
    path = run_dir / "events-000000.seg"
    path.write_bytes(b"".join(parts))
    return path


def spans(scan: SegmentScan) -> list[tuple[int, int]]:
    return [(off, off + h.size) for off, h in scan.frames]


@pytest.fixture(params=[CODEC_ZSTD, CODEC_NONE], ids=["zstd", "raw"])
def seg(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = segment(tmp_path, codec=request.param)
    assert {h.codec for _, h in scan_segment(path).frames} == {request.param}
    return path


def test_clean_segment(seg: Path) -> None:
    deep = scan_segment(seg)
    assert deep.findings == ()
    assert [(h.first_seq, h.last_seq) for _, h in deep.frames] == [(1, 3), (4, 6), (7, 9), (10, 12)]
    assert deep.valid_end == deep.size == seg.stat().st_size and deep.torn_at is None
    assert (deep.entries, deep.first_seq, deep.last_seq, deep.next_seq) == (12, 1, 12, 13)
    assert deep.first_entry is not None and deep.first_entry.seq == 1
    assert deep.last_entry is not None and deep.last_entry.seq == 12
    assert deep.last_entry.topic == "data.quotes"
    shallow = scan_segment(seg, deep=False)
    assert shallow.findings == () and shallow.entries == 12 and shallow.first_entry is None
    assert list(shallow.frames) == list(deep.frames)
    assert pickle.loads(pickle.dumps(deep)) == deep or list(
        pickle.loads(pickle.dumps(deep)).frames
    ) == list(deep.frames)


def test_every_flipped_byte_is_found_where_it_is(seg: Path) -> None:
    data = seg.read_bytes()
    frames = spans(scan_segment(seg))
    regions = [(0, SEGMENT_HEADER_SIZE), *frames]
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x41
        seg.write_bytes(damaged)
        scan = scan_segment(seg)
        assert scan.findings, f"flip at {i} not found"
        lo, hi = next(r for r in regions if r[0] <= i < r[1])
        first = scan.findings[0]
        assert first.offset is not None and lo <= first.offset < hi, (i, first)
        # Every frame before the damaged one still checks out.
        assert [s for s in spans(scan) if s[1] <= lo] == [s for s in frames if s[1] <= lo]


def test_every_cut_inside_the_last_frame_is_a_torn_tail(seg: Path) -> None:
    data = seg.read_bytes()
    full = scan_segment(seg)
    start, _ = spans(full)[-1]
    _, last = full.frames[-1]
    for cut in range(start + 1, len(data)):
        seg.write_bytes(data[:cut])
        scan = scan_segment(seg)
        assert [f.kind for f in scan.findings] == [Kind.TORN_TAIL], cut
        torn = scan.findings[0]
        assert torn.offset == scan.torn_at == scan.valid_end == start
        assert spans(scan) == spans(full)[:-1]
        if cut >= start + FRAME_HEADER_SIZE:
            assert (torn.seq_from, torn.seq_to) == (last.first_seq, last.last_seq)


def test_a_cut_at_a_frame_boundary_is_clean(seg: Path) -> None:
    data = seg.read_bytes()
    start, _ = spans(scan_segment(seg))[-1]
    seg.write_bytes(data[:start])
    scan = scan_segment(seg)
    assert scan.findings == () and len(scan.frames) == 3


def test_a_cut_inside_the_segment_header_is_a_torn_tail(seg: Path) -> None:
    data = seg.read_bytes()
    for cut in range(SEGMENT_HEADER_SIZE):
        seg.write_bytes(data[:cut])
        scan = scan_segment(seg)
        assert [(f.kind, f.offset) for f in scan.findings] == [(Kind.TORN_TAIL, 0)], cut
        assert scan.torn_at == 0 and scan.header is None


def test_zero_filled_tails_are_torn(seg: Path) -> None:
    data = seg.read_bytes()
    start, _ = spans(scan_segment(seg))[-1]
    # Preallocated: zeros after the last whole frame.
    seg.write_bytes(data + bytes(8192))
    scan = scan_segment(seg)
    assert [(f.kind, f.offset) for f in scan.findings] == [(Kind.TORN_TAIL, len(data))]
    assert len(scan.frames) == 4
    # A block that never reached the disk: the last frame's bytes turn to zeros part-way.
    seg.write_bytes(data[: start + FRAME_HEADER_SIZE + 3] + bytes(8192))
    scan = scan_segment(seg)
    assert [(f.kind, f.offset) for f in scan.findings] == [(Kind.TORN_TAIL, start)]
    assert scan.findings[0].seq_from == 10 and len(scan.frames) == 3
    # A header cut short and zero-filled.
    seg.write_bytes(data[: start + 20] + bytes(8192))
    assert [f.kind for f in scan_segment(seg).findings] == [Kind.TORN_TAIL]
    # The whole file zero.
    seg.write_bytes(bytes(len(data)))
    scan = scan_segment(seg)
    assert [(f.kind, f.offset) for f in scan.findings] == [(Kind.TORN_TAIL, 0)]


def test_non_zero_garbage_after_the_last_frame_is_damage(seg: Path) -> None:
    data = seg.read_bytes()
    seg.write_bytes(data + b"\x01" * 200)
    scan = scan_segment(seg)
    assert [(f.kind, f.offset) for f in scan.findings] == [(Kind.BAD_HEADER, len(data))]
    assert scan.torn_at is None and len(scan.frames) == 4


def test_a_removed_frame_is_a_missing_frame(seg: Path) -> None:
    data = seg.read_bytes()
    (a, b), (c, _) = spans(scan_segment(seg))[1:3]
    seg.write_bytes(data[:a] + data[b:])
    scan = scan_segment(seg)
    assert [(f.kind, f.offset, f.seq_from, f.seq_to) for f in scan.findings] == [
        (Kind.MISSING_FRAME, a, 4, 6)
    ]
    assert c - (b - a) == a


def test_swapped_frames_are_found(seg: Path) -> None:
    data = seg.read_bytes()
    (a, b), (_, c) = spans(scan_segment(seg))[1:3]
    seg.write_bytes(data[:a] + data[b:c] + data[a:b] + data[c:])
    scan = scan_segment(seg)
    kinds = [f.kind for f in scan.findings]
    assert Kind.CHAIN_BREAK in kinds and set(kinds) <= {Kind.CHAIN_BREAK, Kind.MISSING_FRAME}
    assert all(f.offset is not None and a <= f.offset < c + 1 for f in scan.findings)


def test_a_damaged_frame_header_resyncs_and_reports_the_lost_range(seg: Path) -> None:
    data = bytearray(seg.read_bytes())
    (a, _), (c, _) = spans(scan_segment(seg))[1:3]
    data[a + 10] ^= 0xFF
    seg.write_bytes(data)
    scan = scan_segment(seg)
    assert [(f.kind, f.offset, f.seq_from, f.seq_to) for f in scan.findings] == [
        (Kind.BAD_HEADER, a, 4, 6)
    ]
    assert str(c) in scan.findings[0].detail
    assert [h.first_seq for _, h in scan.frames] == [1, 7, 10]


def test_records_that_do_not_check_out_are_a_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "events-000000.seg"
    header = encode_segment_header(1, 0, 1, 0, 0, RUN_ID)
    link = int.from_bytes(header[-8:], "little")
    recs = [encode_entry(s, 1, 2, "t", b"x" * 30) for s in (1, 2, 3)]
    good, link = FrameEncoder().encode(
        build_body(b"".join(recs), np.array([0, 71, 142])), 3, 1, link
    )
    # Right checksums, wrong contents: the offset table says entry 2 starts one byte late.
    bad_body = build_body(b"".join(recs), np.array([0, 72, 142]))
    bad, _ = FrameEncoder().encode(bad_body, 3, 4, link)
    path.write_bytes(header + good + bad)
    scan = scan_segment(path)
    assert [(f.kind, f.offset, f.seq_from) for f in scan.findings] == [
        (Kind.DECODE_ERROR, SEGMENT_HEADER_SIZE + len(good), 4)
    ]
    assert len(scan.frames) == 1
    assert [f.kind for f in scan_segment(path, deep=False).findings] == []


def bounded(path: Path) -> tuple[SegmentScan, int]:
    tracemalloc.start()
    try:
        scan = scan_segment(path)
        return scan, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_hostile_files_are_findings_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "events-000000.seg"
    path.write_bytes(os.urandom(3 << 20))
    scan, peak = bounded(path)
    assert {f.kind for f in scan.findings} == {Kind.BAD_HEADER} and peak < 16 << 20
    # A header that checks out and claims a 4 GiB frame.
    header = encode_segment_header(1, 0, 1, 0, 0, RUN_ID)
    link = int.from_bytes(header[-8:], "little")
    claim, _ = encode_frame_header(CODEC_ZSTD, 10, 1 << 20, (1 << 32) - 1, 1, link, 0)
    path.write_bytes(header + claim + os.urandom(4096))
    scan, peak = bounded(path)
    assert [(f.kind, f.offset) for f in scan.findings] == [(Kind.BAD_HEADER, SEGMENT_HEADER_SIZE)]
    assert "stored length" in scan.findings[0].detail and peak < 16 << 20
    # Within the limits but far past the end of the file: torn, and nothing is allocated for it.
    claim, _ = encode_frame_header(CODEC_ZSTD, 10, 60 << 20, 60 << 20, 1, link, 0)
    path.write_bytes(header + claim + os.urandom(4096))
    scan, peak = bounded(path)
    assert [f.kind for f in scan.findings] == [Kind.TORN_TAIL] and peak < 16 << 20


def test_unreadable_and_special_files(tmp_path: Path) -> None:
    missing = scan_segment(tmp_path / "nope.seg")
    assert [f.kind for f in missing.findings] == [Kind.UNREADABLE]
    fifo = tmp_path / "events-000000.seg"
    os.mkfifo(fifo)
    assert [f.kind for f in scan_segment(fifo).findings] == [Kind.UNREADABLE]
    link = tmp_path / "events-000001.seg"
    target = tmp_path / "real"
    target.write_bytes(b"")
    link.symlink_to(target)
    assert [f.kind for f in scan_segment(link).findings] == [Kind.UNREADABLE]


def multi(tmp_path: Path) -> Path:
    run = make_run(tmp_path / "base", 200, segment_bytes=4096)
    assert len(list(run.glob("events-*.seg"))) >= 3
    return run


def test_stream_across_segments(tmp_path: Path) -> None:
    run = multi(tmp_path)
    stream = scan_stream(run, "events")
    assert stream.findings == () and stream.entries == 200
    assert (stream.first_seq, stream.last_seq) == (1, 200)
    assert stream.first_entry is not None and stream.last_entry is not None
    assert (stream.first_entry.seq, stream.last_entry.seq) == (1, 200)
    assert scan_stream(run, "markers").segments == ()


def test_a_removed_segment_is_found(tmp_path: Path) -> None:
    run = multi(tmp_path)
    (run / "events-000001.seg").unlink()
    kinds = [f.kind for f in scan_stream(run, "events").findings]
    assert kinds == [Kind.MISSING_SEGMENT]


def test_segments_that_do_not_belong_are_found(tmp_path: Path) -> None:
    run = multi(tmp_path)
    os.rename(run / "events-000001.seg", run / "events-000001.tmp")
    os.rename(run / "events-000002.seg", run / "events-000001.seg")
    os.rename(run / "events-000001.tmp", run / "events-000002.seg")
    kinds = {f.kind for f in scan_stream(run, "events").findings}
    assert Kind.SEGMENT_MISMATCH in kinds and Kind.CHAIN_BREAK in kinds
    other = run.parent / "1700000000000000009-12345678"
    os.rename(run, other)
    kinds = {f.kind for f in scan_stream(other, "events").findings}
    assert Kind.SEGMENT_MISMATCH in kinds


def test_a_torn_tail_before_the_last_segment_is_damage(tmp_path: Path) -> None:
    run = multi(tmp_path)
    first = run / "events-000000.seg"
    os.truncate(first, first.stat().st_size - 5)
    findings = scan_stream(run, "events").findings
    assert [f.kind for f in findings][:1] == [Kind.TRUNCATED_SEGMENT]


def test_retention_may_start_a_stream_later(tmp_path: Path) -> None:
    run = multi(tmp_path)
    first_kept = scan_segment(run / "events-000001.seg").first_seq
    assert first_kept is not None
    (run / "events-000000.seg").unlink()
    assert scan_stream(run, "events", retained_from_seq=first_kept).findings == ()
    assert scan_stream(run, "events").findings != ()


def test_records_helper_numbers_from_one() -> None:
    assert len(records(5)) == 5


def test_deep_scans_keep_the_anchor_entries(tmp_path: Path) -> None:
    run = make_run(tmp_path / "base", 0, status=RunStatus.RUNNING)
    recs = [
        encode_entry(s, s, s, TOPIC_SNAPSHOT_ANCHOR if s % 50 == 0 else "q", b"{}" * (s % 5))
        for s in range(1, 301)
    ]
    write_stream(run, run.name, recs, segment_bytes=4096)
    stream = scan_stream(run, "events")
    assert [a.seq for a in stream.anchors] == [50, 100, 150, 200, 250, 300]
    assert stream.anchors_complete and stream.anchors[0].topic == TOPIC_SNAPSHOT_ANCHOR
    assert scan_stream(run, "events", deep=False).anchors == ()
