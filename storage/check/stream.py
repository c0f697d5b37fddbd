"""The segments of one stream (``events`` or ``markers``) of a run, checked against each other.

Segment ``i`` must be named ``<stream>-<i>.seg``, say so in its header, carry the run id, link to
the last frame of segment ``i-1`` and start at the seq after it; a torn tail in any but the last
segment is damage. It reads nothing itself but through ``storage.check.scan.scan_segment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.check.records import EntryMark
from ringtape.storage.check.scan import Progress, SegmentScan, link_finding, scan_segment
from ringtape.storage.format.entry import (
    Entry,
)
from ringtape.storage.format.frame import (
    STREAM_NAMES,
)
from ringtape.storage.run.checkpoint import StreamStart
from ringtape.storage.run.layout import SEGMENT_RE, is_run_id, list_segments


@dataclass(frozen=True)
class StreamScan:
    """The segments of one stream (``events`` or ``markers``) of a run, checked together."""

    stream: str
    segments: tuple[SegmentScan, ...]
    findings: tuple[Finding, ...]  # every finding of the stream, segment findings included

    @property
    def entries(self) -> int:
        return sum(s.entries for s in self.segments)

    @property
    def raw_bytes(self) -> int:
        return sum(s.raw_bytes for s in self.segments)

    @property
    def bytes_on_disk(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def first_seq(self) -> int | None:
        return next((s.first_seq for s in self.segments if s.first_seq is not None), None)

    @property
    def last_seq(self) -> int | None:
        return next((s.last_seq for s in reversed(self.segments) if s.last_seq is not None), None)

    @property
    def first_entry(self) -> EntryMark | None:
        return next((s.first_entry for s in self.segments if s.first_entry is not None), None)

    @property
    def last_entry(self) -> EntryMark | None:
        marks = (s.last_entry for s in reversed(self.segments) if s.last_entry is not None)
        return next(marks, None)

    @property
    def anchors(self) -> tuple[Entry, ...]:
        """The snapshot anchor entries the deep scans passed, in seq order."""
        return tuple(a for s in self.segments for a in s.anchors)

    @property
    def ts_backwards(self) -> tuple[int, int | None]:
        """Entries whose ts_init is below the entry before them, across segments too, and the
        seq of the first of them (deep scans)."""
        count, first = 0, None
        previous: EntryMark | None = None
        for s in self.segments:
            head = s.first_entry
            if previous is not None and head is not None and head.ts_init < previous.ts_init:
                count += 1
                first = first or head.seq
            if s.ts_backwards:
                count += s.ts_backwards
                if first is None or (s.ts_backwards_first or first) < first:
                    first = s.ts_backwards_first
            previous = s.last_entry or previous
        return count, first

    @property
    def anchors_complete(self) -> bool:
        return all(s.anchors_complete for s in self.segments)

    @property
    def torn(self) -> Finding | None:
        """The torn tail the stream ends in, if it does."""
        return next((f for f in self.findings if f.kind is Kind.TORN_TAIL), None)

    @property
    def damage(self) -> tuple[Finding, ...]:
        """Every finding except the torn tail at the very end of the stream."""
        return tuple(f for f in self.findings if f.kind is not Kind.TORN_TAIL)


def header_mismatch(
    scan: SegmentScan, stream: str, index: int, run_id: str | None
) -> Finding | None:
    """A ``segment_mismatch`` if the segment header disagrees with its file name or run dir."""
    h = scan.header
    if h is None:
        return None
    problems = []
    if STREAM_NAMES.get(h.stream_kind) != stream:
        problems.append(f"stream kind {STREAM_NAMES.get(h.stream_kind)}, file is {stream}")
    if h.segment_index != index:
        problems.append(f"segment index {h.segment_index}, file name says {index}")
    if run_id is not None and h.run_id != run_id:
        problems.append(f"run id {h.run_id!r}, directory is {run_id!r}")
    if not problems:
        return None
    return Finding(Kind.SEGMENT_MISMATCH, scan.path, 0, None, None, "; ".join(problems))


def check_stream(
    stream: str,
    scans: Sequence[SegmentScan],
    run_id: str | None,
    *,
    retained_from_seq: int = 1,
    start: StreamStart | None = None,
) -> StreamScan:
    """Check a stream's segment scans (in index order) against each other.

    Segment ``i`` must be named ``<stream>-<i>.seg``, say so in its header, carry ``run_id``
    (when given), link to the last frame of segment ``i-1`` and start at the seq after it; the
    first segment starts at seq 1 with link 0. A torn tail in any but the last segment is
    damage (the writer syncs a segment before it starts the next): ``truncated_segment``.

    ``retained_from_seq`` > 1 (the manifest's record of a retention that reclaimed the leading
    segments on purpose) lets the stream start at any segment whose first seq is at or before it.

    ``start`` (a recovery checkpoint's, ``storage/run/checkpoint.py``): ``scans`` are only the
    segments after the checkpoint; the first must be segment ``start.segment``, link to
    ``start.link`` and begin at ``start.seq``.
    """
    findings: list[Finding] = []
    expected_index = 0 if start is None else start.segment
    first_link, first_seq = (0, 1) if start is None else (start.link, start.seq)
    prev: SegmentScan | None = None
    if retained_from_seq > 1 and scans:
        first = scans[0]
        m = SEGMENT_RE.match(Path(first.path).name)
        expected_index = int(m.group(2)) if m else 0
        if first.header is not None and first.header.first_seq > retained_from_seq:
            findings.append(
                Finding(
                    Kind.MISSING_SEGMENT,
                    first.path,
                    None,
                    retained_from_seq,
                    first.header.first_seq - 1,
                    f"retention kept entries from seq {retained_from_seq}, but the first"
                    f" segment left starts at seq {first.header.first_seq}",
                )
            )
    for i, s in enumerate(scans):
        last = i == len(scans) - 1
        for f in s.findings:
            if f.kind is Kind.TORN_TAIL and not last:
                f = Finding(
                    Kind.TRUNCATED_SEGMENT,
                    f.path,
                    f.offset,
                    f.seq_from,
                    f.seq_to,
                    f"{f.detail}; a later segment exists, so this is damage, not a crash",
                )
            findings.append(f)
        m = SEGMENT_RE.match(Path(s.path).name)
        index = int(m.group(2)) if m else expected_index
        jumped = index != expected_index
        if jumped:
            findings.append(
                Finding(
                    Kind.MISSING_SEGMENT,
                    s.path,
                    None,
                    None if prev is None else prev.next_seq,
                    None,
                    f"segment index {index} follows {expected_index - 1}: segment"
                    f" {expected_index}..{index - 1} of {stream} is missing",
                )
            )
        expected_index = index + 1
        mismatch = header_mismatch(s, stream, index, run_id)
        if mismatch is not None:
            findings.append(mismatch)
        h = s.header
        if h is not None and not jumped and (prev is not None or retained_from_seq <= 1):
            link, seq = (first_link, first_seq) if prev is None else (prev.tail_link, prev.next_seq)
            found = link_finding(
                s.path,
                0,
                link,
                seq,
                h.prev_link,
                h.first_seq,
                h.first_seq,
                "segment header",
            )
            if found is not None:
                findings.append(found)
        prev = s
    return StreamScan(stream, tuple(scans), tuple(explain_reorders(findings)))


def explain_reorders(findings: list[Finding]) -> list[Finding]:
    """A forward jump whose "missing" seqs turn up later, out of order, is a reorder, not a
    loss: say so in the ``missing_frame`` finding (kind kept stable, the words corrected)."""
    late = sorted(
        (g.seq_from, g.seq_to)
        for g in findings
        if g.kind is Kind.CHAIN_BREAK and g.seq_from is not None and g.seq_to is not None
    )
    out = []
    for f in findings:
        if f.kind is Kind.MISSING_FRAME and f.seq_from is not None and f.seq_to is not None:
            covered_to = f.seq_from - 1  # seqs f.seq_from..covered_to turn up later
            for lo, hi in late:
                if lo <= covered_to + 1 <= hi:
                    covered_to = hi
            if covered_to >= f.seq_to:
                f = replace(
                    f,
                    detail=f"seq {f.seq_from}..{f.seq_to} are not gone, they come later in the"
                    " file: frames are out of order",
                )
        out.append(f)
    return out


def scan_stream(
    run_dir: Path,
    stream: str,
    *,
    deep: bool = True,
    retained_from_seq: int = 1,
    progress: Progress | None = None,
    start: StreamStart | None = None,
) -> StreamScan:
    """Scan every segment of one stream of a run, one after the other, and check them together
    (with ``start``: only the segments from ``start.segment`` on, see :func:`check_stream`)."""
    paths = list_segments(run_dir, stream)
    if start is not None:
        paths = [p for p in paths if _index(p) >= start.segment]
    scans = [scan_segment(p, deep=deep, progress=progress) for p in paths]
    run_id = run_dir.name if is_run_id(run_dir.name) else None
    return check_stream(stream, scans, run_id, retained_from_seq=retained_from_seq, start=start)


def _index(path: Path) -> int:
    m = SEGMENT_RE.match(path.name)
    return int(m.group(2)) if m else -1
