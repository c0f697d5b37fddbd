"""Format version 2's frame index: exact bounds written, never a wrong skip, damage found, and
version 1 runs still read (with nothing skipped)."""

from __future__ import annotations

import fnmatch
import random
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import INSTANCE, TS0, make_run, write_stream
from hypothesis import given, settings, strategies as st

from ringtape.storage.check.findings import Kind
from ringtape.storage.check.scan import scan_segment
from ringtape.storage.format.entry import encode_entry
from ringtape.storage.format.frame import (
    STREAM_EVENTS,
    FrameEncoder,
    build_body,
    encode_segment_header,
)
from ringtape.storage.format.frame_index import FrameIndex, TopicQuery, frame_index, record_key
from ringtape.storage.read.reader import CorruptionError, FrameFilter, iter_entries, iter_frames
from ringtape.storage.run.layout import RunPaths
from ringtape.storage.segment.writer import SegmentWriter

TOPICS = st.text(alphabet="ab.é*?", min_size=0, max_size=12)


def encoded(topics: list[str], stamps: list[int]) -> tuple[bytes, np.ndarray]:
    recs = [
        encode_entry(i + 1, ts, 0, t, b"x" * (i % 3), "")
        for i, (t, ts) in enumerate(zip(topics, stamps, strict=True))
    ]
    offsets = np.cumsum([0] + [len(r) for r in recs[:-1]], dtype=np.int64)
    return b"".join(recs), offsets


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(TOPICS, st.integers(0, 2**64 - 1)), min_size=1, max_size=20))
def test_the_index_is_the_exact_bounds(items: list[tuple[str, int]]) -> None:
    topics, stamps = [t for t, _ in items], [ts for _, ts in items]
    entries, offsets = encoded(topics, stamps)
    body = build_body(entries, offsets)
    keys = [record_key(body, int(o)) for o in offsets]
    assert frame_index(body, offsets) == FrameIndex(min(stamps), max(stamps), min(keys), max(keys))


@settings(max_examples=300, deadline=None)
@given(st.lists(TOPICS, min_size=1, max_size=8), st.lists(TOPICS, min_size=1, max_size=3))
def test_a_glob_never_rules_out_a_frame_holding_a_match(
    topics: list[str], globs: list[str]
) -> None:
    entries, offsets = encoded(topics, [1] * len(topics))
    index = frame_index(entries, offsets)
    if any(fnmatch.fnmatchcase(t, g) for t in topics for g in globs):
        assert TopicQuery(globs).may_match(index)


def test_a_prefix_rules_out_other_families() -> None:
    entries, offsets = encoded(["events.order.filled", "events.position.changed"], [1, 2])
    index = frame_index(build_body(entries, offsets), offsets)
    assert not TopicQuery(["data.quotes.*"]).may_match(index)
    assert not TopicQuery(["ringtape.SnapshotAnchor"]).may_match(index)
    assert TopicQuery(["events.*"]).may_match(index)
    assert TopicQuery(["*.filled"]).may_match(index)  # no literal prefix: cannot tell


def test_frames_outside_the_window_are_not_read(tmp_path: Path) -> None:
    """A frame the filter rules out is skipped on its header: damage in its stored bytes is not
    even seen (the reader never read them), while an unfiltered read stops at it."""
    run = make_run(tmp_path, 400, per_frame=10)
    seg = run / "events-000000.seg"
    off, header = scan_segment(seg).frames[3]  # seqs 31..40, ts_init TS0 + seq
    data = bytearray(seg.read_bytes())
    data[off + header.header_size + 5] ^= 0x10
    seg.write_bytes(data)
    late = FrameFilter(since=TS0 + 100)
    frames = list(iter_frames(run, wanted=late))
    assert frames[0].header.first_seq == 91 and frames[-1].header.last_seq == 400
    topic = FrameFilter(topics=["ringtape.RunEnded"])
    assert [f.header.last_seq for f in iter_frames(run, wanted=topic)] == [10, 400]
    with pytest.raises(CorruptionError) as err:
        list(iter_entries(run))
    assert err.value.finding.kind is Kind.CHECKSUM_MISMATCH


def test_an_index_that_does_not_hold_its_records_is_damage(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path, INSTANCE, f"{TS0}-{uuid.uuid4().hex[:8]}")
    paths.create()
    header = encode_segment_header(STREAM_EVENTS, 0, 1, 0, 0, paths.run_id)
    link = int.from_bytes(header[-8:], "little")
    entries, offsets = encoded(["a.b", "a.c"], [10, 20])
    body = build_body(entries, offsets)
    narrow = FrameIndex(10, 15, 0, 2**64 - 1)  # the second entry's ts_init (20) is outside
    frame, _ = FrameEncoder().encode(body, 2, 1, link, narrow)
    seg = paths.run_dir / "events-000000.seg"
    seg.write_bytes(header + frame)
    (finding,) = scan_segment(seg).findings
    assert finding.kind is Kind.DECODE_ERROR and "does not hold its records" in finding.detail
    with pytest.raises(CorruptionError):
        list(iter_entries(paths.run_dir))


def test_a_version_1_run_reads_whole_and_filters_by_entry(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path, INSTANCE, f"{TS0}-{uuid.uuid4().hex[:8]}")
    paths.create()
    noise = random.Random(3)
    recs = [
        encode_entry(s, TS0 + s, TS0 + s, f"t.{s % 3}", noise.randbytes(60), "")
        for s in range(1, 201)
    ]
    writer = SegmentWriter(
        paths.run_dir, paths.run_id, "events", STREAM_EVENTS, max_segment_bytes=4096,
        format_version=1,
    )  # fmt: skip
    for i in range(0, 200, 10):
        batch = recs[i : i + 10]
        writer.append(b"".join(batch), np.cumsum([0] + [len(r) for r in batch[:-1]]), i + 1)
    writer.close()
    scans = [scan_segment(p) for p in sorted(paths.run_dir.glob("events-*.seg"))]
    assert len(scans) > 1 and all(s.findings == () and s.header.version == 1 for s in scans)
    # No index: every frame is read whatever the filter.
    assert len(list(iter_frames(paths.run_dir, wanted=FrameFilter(since=TS0 + 195)))) == 20
    assert [e.seq for e in iter_entries(paths.run_dir)] == list(range(1, 201))


def test_the_writer_writes_version_2_with_exact_indexes(tmp_path: Path) -> None:
    run = make_run(tmp_path, 50, per_frame=7)
    scan = scan_segment(run / "events-000000.seg")
    assert scan.header is not None and scan.header.version == 2 and scan.findings == ()
    for _, h in scan.frames:
        assert (h.bounds.ts_min, h.bounds.ts_max) == (TS0 + h.first_seq, TS0 + h.last_seq)


def test_marker_frames_carry_an_index_too(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path, INSTANCE, f"{TS0}-{uuid.uuid4().hex[:8]}")
    paths.create()
    recs = [encode_entry(s, TS0 + s, 0, "marker.cursor", b"c", "bin") for s in range(1, 21)]
    write_stream(paths.run_dir, paths.run_id, recs, per_frame=5, stream="markers")
    scan = scan_segment(paths.run_dir / "markers-000000.seg")
    assert [h.bounds.ts_min for _, h in scan.frames] == [TS0 + 1, TS0 + 6, TS0 + 11, TS0 + 16]


@pytest.mark.parametrize(("version", "tail", "kind"), [
    (1, b"RTFR", Kind.TORN_TAIL),
    (2, b"RTF2", Kind.TORN_TAIL),
    (2, b"RTFR", Kind.BAD_HEADER),  # a version 2 writer never starts a version 1 frame
])  # fmt: skip
def test_a_torn_tail_is_judged_by_the_segment_version(
    tmp_path: Path, version: int, tail: bytes, kind: Kind
) -> None:
    paths = RunPaths(tmp_path, INSTANCE, f"{TS0}-{uuid.uuid4().hex[:8]}")
    paths.create()
    writer = SegmentWriter(
        paths.run_dir, paths.run_id, "events", STREAM_EVENTS, format_version=version
    )
    entries, offsets = encoded(["a.b", "a.c"], [1, 2])
    writer.append(entries, offsets, 1)
    writer.close()
    seg = paths.run_dir / "events-000000.seg"
    with seg.open("ab") as f:
        f.write(tail + bytes(30))
    (finding,) = scan_segment(seg).findings
    assert finding.kind is kind
