"""Scanning a segment file: which frames check out, where the damage is, where a torn tail starts.

Rules of this module:

1. It only reads. A scan returns a value (:class:`SegmentScan`) holding findings; it never
   raises for anything it finds in a file, and it never writes.
2. Memory is bounded whatever the file says (``storage/segment/file.py``), one frame at a time.
3. What is a torn tail and what is damage is decided by the walk (``storage/segment/walk.py``).

Theory of operation: :func:`scan_segment` walks a file from the segment header, frame by frame.
Each frame header is checked first (its checksum, then its bounds); then the stored bytes against
the header's data checksum; in a deep scan the stored bytes are decompressed and every record is
checked against the frame's offset table — many frames per numpy call
(:class:`~ringtape.storage.check.records.RecordBatch`). Every frame must chain to the frame before
it (its ``prev_checksum``) and continue its seq range; :func:`link_finding` says what a frame that
does not means. After a header that fails, the scan resyncs at the next header that checks out and
reports the seq range lost in between. ``storage/check/stream.py`` then checks the segments of
one stream against each other.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.check.records import EntryMark, RecordBatch
from ringtape.storage.format.entry import (
    TOPIC_SNAPSHOT_ANCHOR,
    Entry,
    EntryError,
)
from ringtape.storage.format.frame import (
    MAX_FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FormatError,
    FrameDecoder,
    FrameHeader,
    SegmentHeader,
    checksum,
    decode_frame_header,
)
from ringtape.storage.segment.file import SegmentFile
from ringtape.storage.segment.walk import (
    Broken,
    FrameAt,
    Torn,
    next_frame,
    read_segment_header,
    resync,
)

PROGRESS_STEP: Final = 4 << 20
MAX_ANCHORS: Final = 1 << 16  # anchor entries a scan keeps; past that, anchors_complete is false

Progress = Callable[[int], None]


def link_finding(
    path: str,
    offset: int,
    link: int | None,
    next_seq: int | None,
    prev: int,
    first_seq: int,
    last_seq: int,
    what: str = "frame",
) -> Finding | None:
    """What it means when a frame (or segment header) does not follow the one before it.

    ``link``/``next_seq`` are what the frame must carry (``None``: unknown, not checked);
    ``prev``/``first_seq`` what it carries. Going backwards is a reorder (``chain_break``); a
    forward jump with a broken chain is a removed frame (``missing_frame``); a jump or repeat
    with an intact chain is a numbering fault (``seq_gap``); a broken chain with the right seq
    is a spliced frame (``chain_break``).
    """
    chained = link is None or prev == link
    if next_seq is not None and first_seq < next_seq:
        kind = Kind.SEQ_GAP if chained else Kind.CHAIN_BREAK
        return Finding(
            kind,
            path,
            offset,
            first_seq,
            last_seq,
            f"{what} holds seq {first_seq}..{last_seq} but seq {next_seq} comes next:"
            + (" seq repeats" if chained else " frames are out of order"),
        )
    if next_seq is not None and first_seq > next_seq:
        kind = Kind.SEQ_GAP if chained else Kind.MISSING_FRAME
        return Finding(
            kind,
            path,
            offset,
            next_seq,
            first_seq - 1,
            f"{what} starts at seq {first_seq}, expected {next_seq}:"
            + (" the writer skipped seqs" if chained else f" {first_seq - next_seq} entries gone"),
        )
    if not chained:
        return Finding(
            Kind.CHAIN_BREAK,
            path,
            offset,
            first_seq,
            last_seq,
            f"{what} chains to {prev:#018x}, expected {link:#018x}",
        )
    return None


class FrameTable:
    """The good frames of a segment, compactly: 8 bytes of offset + the raw header bytes (each
    padded to the largest header size; a header's magic says its own size)."""

    __slots__ = ("_headers", "_offsets")

    def __init__(self) -> None:
        self._offsets = array("Q")
        self._headers = bytearray()

    def append(self, offset: int, raw_header: bytes) -> None:
        self._offsets.append(offset)
        self._headers += raw_header.ljust(MAX_FRAME_HEADER_SIZE, b"\0")

    def extend(self, offsets: list[int], raw_headers: list[bytes]) -> None:
        self._offsets.extend(offsets)
        self._headers += b"".join(h.ljust(MAX_FRAME_HEADER_SIZE, b"\0") for h in raw_headers)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> tuple[int, FrameHeader]:
        off = self._offsets[i]
        j = (i % len(self._offsets)) * MAX_FRAME_HEADER_SIZE
        return off, decode_frame_header(memoryview(self._headers), j)

    def __iter__(self) -> Iterator[tuple[int, FrameHeader]]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrameTable):
            return NotImplemented
        return self._offsets == other._offsets and self._headers == other._headers

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> tuple[bytes, bytes]:
        return self._offsets.tobytes(), bytes(self._headers)

    def __setstate__(self, state: tuple[bytes, bytes]) -> None:
        self._offsets = array("Q")
        self._offsets.frombytes(state[0])
        self._headers = bytearray(state[1])


@dataclass(frozen=True)
class SegmentScan:
    """What one segment file holds: good frames, findings, and where its valid bytes end."""

    path: str
    size: int
    header: SegmentHeader | None
    frames: FrameTable
    valid_end: int  # byte offset just after the last good frame (after the header if none)
    torn_at: int | None  # where a torn tail begins: the cut point for recovery
    entries: int  # in good frames
    raw_bytes: int  # entry record bytes in good frames
    first_seq: int | None  # of the good frames
    last_seq: int | None
    next_seq: int | None  # the seq the next segment must start at (None: unknown)
    tail_link: int | None  # the checksum the next segment's header must link to
    first_entry: EntryMark | None  # deep scans only
    last_entry: EntryMark | None
    findings: tuple[Finding, ...]
    deep: bool
    # Deep scans keep the snapshot anchor entries they pass (up to MAX_ANCHORS), so that
    # anchor checks need not read the run again.
    anchors: tuple[Entry, ...] = ()
    anchors_complete: bool = True
    # Entries (deep scans) whose ts_init is below the entry before them in this segment.
    ts_backwards: int = 0
    ts_backwards_first: int | None = None

    @classmethod
    def unreadable(cls, path: str, detail: str, *, size: int = 0, deep: bool = True) -> SegmentScan:
        """The scan of a file that could not be read at all: one ``unreadable`` finding."""
        finding = Finding(Kind.UNREADABLE, path, None, None, None, detail)
        return cls(
            path, size, None, FrameTable(), 0, None, 0, 0, None, None, None, None, None, None,
            (finding,), deep,
        )  # fmt: skip

    @property
    def damaged(self) -> bool:
        """Any finding other than a torn tail."""
        return any(f.kind is not Kind.TORN_TAIL for f in self.findings)


@dataclass
class _Tally:
    """Running totals of the good frames of one scan."""

    frames: FrameTable = field(default_factory=FrameTable)
    entries: int = 0
    raw_bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    valid_end: int = 0
    first_entry: EntryMark | None = None
    last_entry: EntryMark | None = None
    anchors: list[Entry] = field(default_factory=list)
    anchors_complete: bool = True
    ts_backwards: int = 0
    ts_backwards_first: int | None = None
    last_ts_init: int | None = None

    def add(self, offset: int, header: FrameHeader, raw_header: bytes) -> None:
        self.frames.append(offset, raw_header)
        self.entries += header.entry_count
        self.raw_bytes += header.entry_bytes
        if self.first_seq is None:
            self.first_seq = header.first_seq
        self.last_seq = header.last_seq
        self.valid_end = offset + header.size


class _Scanner:
    """One pass over one segment file; collects a :class:`SegmentScan`."""

    def __init__(self, f: SegmentFile, path: str, deep: bool, progress: Progress | None) -> None:
        self.f = f
        self.path = path
        self.deep = deep
        self.progress = progress
        self.reported = 0
        self.findings: list[Finding] = []
        self.tally = _Tally()
        self.decoder = FrameDecoder()
        self.batch = RecordBatch()
        self.link: int | None = None
        self.next_seq: int | None = None
        self.version: int | None = None  # the segment header's (None: damaged)

    def note(self, kind: Kind, offset: int | None, lo: int | None, hi: int | None, s: str) -> None:
        self.findings.append(Finding(kind, self.path, offset, lo, hi, s))

    def advance(self, pos: int) -> None:
        if self.progress is not None and pos - self.reported >= PROGRESS_STEP:
            self.progress(pos - self.reported)
            self.reported = pos

    def run(self) -> SegmentScan:
        f = self.f
        header, torn_at = self.segment_header()
        pos = SEGMENT_HEADER_SIZE
        if torn_at is None:
            self.tally.valid_end = SEGMENT_HEADER_SIZE if header is not None else 0
        while torn_at is None:
            step = next_frame(f, pos, version=self.version)
            if step is None:
                break
            if isinstance(step, Torn):
                h = step.header
                lo, hi = (None, None) if h is None else (h.first_seq, h.last_seq)
                self.note(Kind.TORN_TAIL, pos, lo, hi, f"torn tail: {step.detail}")
                torn_at = pos
                break
            if isinstance(step, Broken):
                resumed = self.broken(step)
                if resumed is None:
                    break
                pos = resumed
                continue
            self.frame(step)
            pos += step.header.size
            self.advance(pos)
        self.drain()
        if self.progress is not None and f.size > self.reported:
            self.progress(f.size - self.reported)
        t = self.tally
        self.findings.sort(key=lambda x: -1 if x.offset is None else x.offset)
        return SegmentScan(
            self.path,
            f.size,
            header,
            t.frames,
            t.valid_end,
            torn_at,
            t.entries,
            t.raw_bytes,
            t.first_seq,
            t.last_seq,
            self.next_seq,
            self.link,
            t.first_entry,
            t.last_entry,
            tuple(self.findings),
            self.deep,
            tuple(t.anchors),
            t.anchors_complete,
            t.ts_backwards,
            t.ts_backwards_first,
        )

    def segment_header(self) -> tuple[SegmentHeader | None, int | None]:
        """The header (``None`` if bad or torn) and ``0`` if the file is only a torn header."""
        step = read_segment_header(self.f)
        if isinstance(step, Torn):
            self.note(Kind.TORN_TAIL, 0, None, None, f"torn tail: {step.detail}")
            return None, 0
        if isinstance(step, Broken):
            self.note(Kind.BAD_HEADER, 0, None, None, step.detail)
            return None, None
        self.link, self.next_seq = step.checksum, step.first_seq
        self.version = step.version
        return step, None

    def broken(self, step: Broken) -> int | None:
        """Report damage at ``step`` and return where the next good header is, if anywhere."""
        found = resync(self.f, step.offset + 1)
        lo = self.next_seq
        if found is None:
            self.note(
                Kind.BAD_HEADER,
                step.offset,
                lo,
                None,
                f"{step.detail}; no frame header checks out after it: the"
                f" {self.f.size - step.offset} bytes to the end of the file are unreadable",
            )
            return None
        at, h = found
        hi = h.first_seq - 1 if lo is not None and h.first_seq > lo else None
        lost = f", seq {lo}..{hi} lost" if hi is not None else ""
        self.note(
            Kind.BAD_HEADER,
            step.offset,
            lo if hi is not None else None,
            hi,
            f"{step.detail}; next frame header that checks out is at offset {at}"
            f" ({at - step.offset} bytes skipped{lost})",
        )
        # The frame found does not link to anything we trust: neither its chain nor its seq
        # can be checked against what came before.
        self.link = self.next_seq = None
        return at

    def frame(self, step: FrameAt) -> None:
        h = step.header
        if h.prev_checksum != self.link or h.first_seq != self.next_seq:
            found = link_finding(
                self.path, step.offset, self.link, self.next_seq, h.prev_checksum, h.first_seq,
                h.last_seq,
            )  # fmt: skip
            if found is not None:
                self.findings.append(found)
        self.link = h.checksum
        self.next_seq = (
            h.last_seq + 1 if self.next_seq is None else max(self.next_seq, h.last_seq + 1)
        )
        if not step.data_ok:
            self.note(
                Kind.CHECKSUM_MISMATCH,
                step.offset,
                h.first_seq,
                h.last_seq,
                f"frame data checksum: header says {h.data_checksum:#018x},"
                f" the {h.stored_len} stored bytes hash to {checksum(step.stored):#018x}",
            )
            return
        if not self.deep:
            self.tally.add(step.offset, h, step.raw_header)
            return
        try:
            body = self.decoder.body(h, step.stored)
        except FormatError as exc:
            self.note(Kind.DECODE_ERROR, step.offset, h.first_seq, h.last_seq, str(exc))
            return
        if not self.batch.add(step.offset, h, step.raw_header, body):
            self.drain()
            self.batch.add(step.offset, h, step.raw_header, body)

    def drain(self) -> None:
        """Check the queued frames and count the good ones (in bulk: the common case)."""
        b, t = self.batch, self.tally
        problems = b.check()
        good = [j for j in range(len(b.headers)) if j not in problems]
        for j, why in problems.items():
            h = b.headers[j]
            self.note(Kind.DECODE_ERROR, b.offsets[j], h.first_seq, h.last_seq, why)
        if good:
            if problems:
                for j in good:
                    t.frames.append(b.offsets[j], b.raw_headers[j])
            else:
                t.frames.extend(b.offsets, b.raw_headers)
            t.entries += sum(b.headers[j].entry_count for j in good)
            t.raw_bytes += sum(b.headers[j].entry_bytes for j in good)
            first, last = good[0], good[-1]
            if t.first_seq is None:
                t.first_seq = b.headers[first].first_seq
                t.first_entry = b.mark(first, last=False)
            t.last_seq = b.headers[last].last_seq
            t.last_entry = b.mark(last, last=True)
            t.valid_end = b.offsets[last] + b.headers[last].size
            back, first_back, t.last_ts_init = b.ts_backwards(good, t.last_ts_init)
            if back and t.ts_backwards_first is None:
                t.ts_backwards_first = first_back
            t.ts_backwards += back
        self.keep_anchors(b, problems)
        b.clear()

    def keep_anchors(self, b: RecordBatch, problems: dict[int, str]) -> None:
        t = self.tally
        try:
            for _, entry in b.anchors(problems):
                if entry.topic != TOPIC_SNAPSHOT_ANCHOR:
                    continue
                if len(t.anchors) >= MAX_ANCHORS:
                    t.anchors_complete = False
                    return
                t.anchors.append(entry)
        except EntryError as exc:
            self.note(Kind.DECODE_ERROR, None, None, None, f"a snapshot anchor entry: {exc}")


def scan_segment(path: Path, *, deep: bool = True, progress: Progress | None = None) -> SegmentScan:
    """Scan one segment file. ``deep`` decompresses every frame and checks every record.

    Never raises for what is in the file; a file that cannot be opened or read is one
    ``unreadable`` finding. ``progress`` is called with byte counts as the scan advances.
    """
    try:
        with SegmentFile.open(path) as f:
            return _Scanner(f, str(path), deep, progress).run()
    except OSError as exc:
        return SegmentScan.unreadable(str(path), f"cannot read: {exc.strerror or exc}", deep=deep)
