"""Scanning segment files: which frames check out, where the damage is, where a torn tail starts.

Rules of this module:

1. It only reads. A scan returns values (:class:`SegmentScan`, :class:`StreamScan`) holding
   findings; it never raises for anything it finds in a file, and it never writes.
2. Memory is bounded whatever the file says: a segment is read through one window (1 MiB, grown
   only to the largest frame whose header checksum passed and whose lengths are within the
   format's limits), one frame at a time.
3. The rules that tell a torn tail from damage live here, in :func:`next_frame`, and nowhere
   else; ``FORMAT.md`` ("Torn tail or damage") states them for other implementations.

Theory of operation: :func:`scan_segment` walks a file from the segment header, frame by frame.
Each frame header is checked first (its checksum, then its bounds); then the stored bytes against
the header's data checksum; in a deep scan the stored bytes are decompressed and every record is
checked against the frame's offset table — many frames per numpy call (:class:`RecordBatch`),
which is what makes a deep scan fast. Every frame must chain to the frame before it (its
``prev_checksum``) and continue its seq range; :func:`link_finding` says what a frame that does not
means. After a header that fails, the scan resyncs at the next header that checks out and reports
the seq range lost in between. :func:`check_stream` then checks the segments of one stream against
each other (index sequence, header chain, seq continuity, run id, stream kind).
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.format.entry import (
    ENTRY_HEADER,
    TOPIC_SNAPSHOT_ANCHOR,
    Entry,
    EntryError,
    bad_record_runs,
    decode_entry,
    explain_records,
)
from ringtape.storage.format.frame import (
    FRAME_HEADER_SIZE,
    FRAME_MAGIC,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    STREAM_NAMES,
    ChecksumError,
    FormatError,
    FrameDecoder,
    FrameHeader,
    SegmentHeader,
    checksum,
    decode_frame_header,
    decode_segment_header,
)
from ringtape.storage.run.layout import SEGMENT_RE, is_run_id, list_segments

WINDOW: Final = 1 << 20
# A frame whose data fails its checksum is a torn append rather than damage only when the file
# ends in at least this many zero bytes reaching into the frame (see FORMAT.md): a flipped byte
# cannot make a run this long in a frame, a zero-filled block after a crash does.
MIN_ZERO_TAIL: Final = 64
PROGRESS_STEP: Final = 4 << 20
MAX_ANCHORS: Final = 1 << 16  # anchor entries a scan keeps; past that, anchors_complete is false
_ANCHOR_TOPIC: Final = TOPIC_SNAPSHOT_ANCHOR.encode()
_TOPIC_LEN_AT: Final = 8  # offset of topic_len in an entry header

Progress = Callable[[int], None]


# -- reading a segment file -------------------------------------------------------------------


class SegmentFile:
    """A segment opened for reading through one reusable window.

    ``read`` returns a view into the window, valid until the next ``read``. The file is opened
    without following symlinks and must be a regular file (a FIFO or device is refused, so a
    hostile path cannot make a scan block).
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size
        self._buf = bytearray(WINDOW)
        self._view = memoryview(self._buf)
        self._start = 0
        self._len = 0
        self._zero_tail: int | None = None

    @classmethod
    def open(cls, path: Path) -> SegmentFile:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{path} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, st.st_size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SegmentFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset: int, n: int) -> memoryview:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the file)."""
        n = max(0, min(n, self.size - offset))
        lo = offset - self._start
        if lo >= 0 and lo + n <= self._len:
            return self._view[lo : lo + n]
        if n == 0:
            return memoryview(b"")
        want = min(max(n, WINDOW), self.size - offset)
        if want > len(self._buf):
            # Views handed out earlier keep the old buffer alive; never resize one in place.
            self._buf = bytearray(want)
            self._view = memoryview(self._buf)
        got = os.preadv(self._fd, [self._view[:want]], offset)
        self._start, self._len = offset, got
        if got < want:  # the file shrank under us: its end is where reading stops
            self.size = offset + got
            self._zero_tail = None
            n = min(n, got)
        return self._view[:n]

    def zero_tail_start(self) -> int:
        """Offset where the trailing run of zero bytes begins (``size`` if the last is not 0)."""
        if self._zero_tail is None:
            end = self.size
            while end > 0:
                start = max(0, end - WINDOW)
                data = os.pread(self._fd, end - start, start).rstrip(b"\0")
                if data:
                    end = start + len(data)
                    break
                end = start
            self._zero_tail = end
        return self._zero_tail


# -- one step of the walk: the rules for torn tails ---------------------------------------------


class FrameAt(NamedTuple):
    """A frame whose header checks out; ``data_ok`` says whether its stored bytes do too."""

    offset: int
    header: FrameHeader
    raw_header: bytes
    stored: memoryview
    data_ok: bool


class Torn(NamedTuple):
    """The file ends inside an append that never completed, starting at ``offset``."""

    offset: int
    header: FrameHeader | None
    detail: str


class Broken(NamedTuple):
    """Bytes at ``offset`` that are neither a frame nor a torn tail: damage."""

    offset: int
    detail: str


Step = FrameAt | Torn | Broken


def _plausible_prefix(data: bytes | memoryview, magic: bytes, zero_spans: Sequence[slice]) -> bool:
    """Could ``data`` be the start of a header that was cut short? (magic, zero fields)."""
    head = bytes(data[: len(magic)])
    if head != magic[: len(head)]:
        return False
    return not any(any(data[s]) for s in zero_spans)


# Fields of a frame header that are fixed whatever the frame: flags, reserved u16, reserved u32.
_FRAME_ZERO_FIELDS: Final = (slice(5, 8), slice(20, 24))


def next_frame(f: SegmentFile, pos: int, *, skip_before: int = 0) -> Step | None:
    """Read the frame at ``pos``: ``None`` at a clean end of file, else what is there.

    A frame whose seqs all lie before ``skip_before`` is returned on its header alone, its
    stored bytes neither read nor checked (``stored`` empty): a reader skipping ahead.

    Torn (an append cut short by a crash) when, from ``pos``:
      * the bytes up to where the file's trailing zeros begin are fewer than a frame header
        and could be the start of one (magic, zero reserved fields) — this includes an
        all-zero remainder and a header cut short by the end of the file;
      * or the header checks out but the frame it describes runs past the end of the file;
      * or the header checks out, the stored bytes fail their checksum, and the file ends in at
        least ``MIN_ZERO_TAIL`` zero bytes that reach into the frame (a zero-filled block).
    Anything else that is not a whole, checking frame is damage (``Broken`` or a ``FrameAt``
    with ``data_ok`` false).
    """
    rest = f.size - pos
    if rest <= 0:
        return None
    view = f.read(pos, FRAME_HEADER_SIZE)
    header: FrameHeader | None = None
    reason = f"only {len(view)} bytes left for a frame header"
    if len(view) == FRAME_HEADER_SIZE:
        try:
            header = decode_frame_header(view)
        except ChecksumError as exc:
            reason = str(exc)
        except FormatError as exc:  # checksum fine, fields impossible: written that way
            return Broken(pos, f"frame header: {exc}")
    if header is None:
        written = max(0, f.zero_tail_start() - pos)
        if written < FRAME_HEADER_SIZE and _plausible_prefix(
            view[:written], FRAME_MAGIC, _FRAME_ZERO_FIELDS
        ):
            if written == 0:
                return Torn(pos, None, f"{rest} zero bytes to the end of the file")
            return Torn(
                pos, None, f"{written} bytes of a frame header, then {rest - written} zero bytes"
            )
        return Broken(pos, f"frame header: {reason}")
    raw_header = bytes(view)
    end = pos + header.size
    if end > f.size:
        return Torn(
            pos,
            header,
            f"frame of {header.size} bytes runs {end - f.size} bytes past the end of the file",
        )
    if header.last_seq < skip_before:
        return FrameAt(pos, header, raw_header, memoryview(b""), True)
    stored = f.read(pos + FRAME_HEADER_SIZE, header.stored_len)
    if checksum(stored) == header.data_checksum:
        return FrameAt(pos, header, raw_header, stored, True)
    zeros = f.zero_tail_start()
    if zeros < end and f.size - zeros >= MIN_ZERO_TAIL:
        return Torn(
            pos,
            header,
            f"stored bytes fail their checksum and the file is zero from offset {zeros}",
        )
    return FrameAt(pos, header, raw_header, stored, False)


def read_segment_header(f: SegmentFile) -> SegmentHeader | Torn | Broken:
    """The segment header at offset 0, or why there is none.

    Torn when the file holds no more than the start of a segment header (magic so far) followed
    by nothing or by zero bytes: a segment created just before a crash.
    """
    view = f.read(0, SEGMENT_HEADER_SIZE)
    reason = f"only {len(view)} bytes, a segment header needs {SEGMENT_HEADER_SIZE}"
    if len(view) == SEGMENT_HEADER_SIZE:
        try:
            return decode_segment_header(view)
        except ChecksumError as exc:
            reason = str(exc)
        except FormatError as exc:  # checksum fine, fields unsupported or impossible
            return Broken(0, f"segment header: {exc}")
    written = min(f.zero_tail_start(), len(view))
    if written < SEGMENT_HEADER_SIZE and _plausible_prefix(view[:written], SEGMENT_MAGIC, ()):
        return Torn(
            0,
            None,
            f"the file holds {written} bytes of a segment header and {f.size - written} zero bytes",
        )
    return Broken(0, f"segment header: {reason}")


def resync(f: SegmentFile, start: int) -> tuple[int, FrameHeader] | None:
    """The first offset at or after ``start`` holding a frame header that checks out."""
    pos = start
    while pos + FRAME_HEADER_SIZE <= f.size:
        chunk = bytes(f.read(pos, WINDOW + FRAME_HEADER_SIZE))
        i = chunk.find(FRAME_MAGIC)
        limit = len(chunk) - FRAME_HEADER_SIZE
        while 0 <= i <= limit:
            try:
                return pos + i, decode_frame_header(chunk, i)
            except FormatError:
                i = chunk.find(FRAME_MAGIC, i + 1)
        if limit < 0 or pos + len(chunk) >= f.size:
            return None
        pos += limit + 1
    return None


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


# -- results ------------------------------------------------------------------------------------


class EntryMark(NamedTuple):
    """Enough of one entry for lifecycle checks: its seq, ts_init and topic."""

    seq: int
    ts_init: int
    topic: str


def _mark_at(buf: memoryview, offset: int) -> EntryMark:
    _, _, topic_len, _, _, seq, ts_init, _ = ENTRY_HEADER.unpack_from(buf, offset)
    start = offset + ENTRY_HEADER.size
    topic = bytes(buf[start : start + topic_len]).decode("utf-8", "replace")
    return EntryMark(seq, ts_init, topic)


def _records_with_topic(
    buf: npt.NDArray[np.uint8], records: npt.NDArray[np.int64], topic: bytes
) -> npt.NDArray[np.intp]:
    """Indices into ``records`` of the records whose topic is ``topic``, vectorised.

    Records of frames that fail their checks may be garbage; the caller drops those.
    """
    size = len(topic)
    if len(buf) < ENTRY_HEADER.size + size or len(records) == 0:
        return np.zeros(0, np.intp)
    lengths = np.ndarray((len(buf) - 1,), "<u2", buf, 0, (1,))  # a u16 at every byte
    found = np.flatnonzero(lengths[np.minimum(records + _TOPIC_LEN_AT, len(buf) - 2)] == size)
    if found.size:
        names = np.ndarray((len(buf) - size + 1,), np.dtype(("V", size)), buf, 0, (1,))
        at = np.minimum(records[found] + ENTRY_HEADER.size, len(buf) - size)
        found = found[names[at] == np.void(topic)]
    return found


class FrameTable:
    """The good frames of a segment, compactly: 8 bytes of offset + the 56 raw header bytes."""

    __slots__ = ("_headers", "_offsets")

    def __init__(self) -> None:
        self._offsets = array("Q")
        self._headers = bytearray()

    def append(self, offset: int, raw_header: bytes) -> None:
        self._offsets.append(offset)
        self._headers += raw_header

    def extend(self, offsets: list[int], raw_headers: list[bytes]) -> None:
        self._offsets.extend(offsets)
        self._headers += b"".join(raw_headers)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> tuple[int, FrameHeader]:
        off = self._offsets[i]
        j = (i % len(self._offsets)) * FRAME_HEADER_SIZE
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

    def add(self, offset: int, header: FrameHeader, raw_header: bytes) -> None:
        self.frames.append(offset, raw_header)
        self.entries += header.entry_count
        self.raw_bytes += header.entry_bytes
        if self.first_seq is None:
            self.first_seq = header.first_seq
        self.last_seq = header.last_seq
        self.valid_end = offset + header.size


class RecordBatch:
    """Decompressed frame bodies packed into one buffer, their records checked in one go.

    Each body is placed so that its offset table is 4-aligned; ``check`` gathers every table
    and every record header with a handful of numpy operations for the whole batch. The queue
    (``offsets``, ``headers``, ``raw_headers``) stays readable after ``check`` until ``clear``.
    """

    def __init__(self, capacity: int = 2 * WINDOW) -> None:
        self._alloc(capacity)
        self.clear()

    def _alloc(self, capacity: int) -> None:
        capacity += -capacity % 4
        self._buf = np.zeros(capacity, np.uint8)
        self._mem = self._buf.data
        self._u4 = self._buf.view("<u4")

    def clear(self) -> None:
        self.offsets: list[int] = []  # of the frames in the file
        self.headers: list[FrameHeader] = []
        self.raw_headers: list[bytes] = []
        self._bases: list[int] = []
        self._used = 0
        self._records = np.zeros(0, np.int64)
        self._firsts = self._counts = self._anchor_hits = self._records

    def add(self, offset: int, header: FrameHeader, raw_header: bytes, body: bytes) -> bool:
        """Queue a body; ``False`` when there is no room (check and clear first)."""
        entry_len = header.raw_len - 4 * header.entry_count
        base = self._used + (-(self._used + entry_len) % 4)
        if base + header.raw_len > len(self._buf):
            if self.headers:
                return False
            self._alloc(header.raw_len + 4)  # bounded: raw_len <= MAX_FRAME_RAW
            base = -entry_len % 4
        self._mem[base : base + header.raw_len] = body
        self.offsets.append(offset)
        self.headers.append(header)
        self.raw_headers.append(raw_header)
        self._bases.append(base)
        self._used = base + header.raw_len
        return True

    def check(self) -> dict[int, str]:
        """Check the records of every queued frame: the problems, by position in the queue."""
        if not self.headers:
            return {}
        counts = np.array([h.entry_count for h in self.headers], np.int64)
        bases = np.array(self._bases, np.int64)
        ends = bases + np.array([h.raw_len for h in self.headers], np.int64) - 4 * counts
        seqs = np.array([h.first_seq for h in self.headers], np.int64)
        firsts = np.cumsum(counts) - counts
        n = int(counts[-1] + firsts[-1])
        table = np.repeat(ends // 4 - firsts, counts) + np.arange(n, dtype=np.int64)
        records = self._u4[table].astype(np.int64) + np.repeat(bases, counts)
        self._records, self._firsts, self._counts = records, firsts, counts
        buf = self._buf[: self._used]
        self._anchor_hits = _records_with_topic(buf, records, _ANCHOR_TOPIC)
        problems = {}
        for j in bad_record_runs(buf, records, counts, bases, ends, seqs).tolist():
            h, lo = self.headers[j], self._bases[j]
            rel = records[firsts[j] : firsts[j] + counts[j]] - lo
            body = self._mem[lo : lo + h.raw_len]
            why = explain_records(body, rel, int(ends[j]) - lo, h.first_seq)
            problems[j] = why or "entry records do not check out"
        return problems

    def record_offsets(self, j: int) -> npt.NDArray[np.int64]:
        """Where each record of queued frame ``j`` starts in its body, after ``check``."""
        lo = self._firsts[j]
        rel: npt.NDArray[np.int64] = self._records[lo : lo + self._counts[j]] - self._bases[j]
        return rel

    def anchors(self, problems: dict[int, str]) -> Iterator[tuple[int, Entry]]:
        """``(j, entry)`` for each snapshot anchor entry in a good queued frame ``j``."""
        for i in self._anchor_hits.tolist():
            j = int(np.searchsorted(self._firsts, i, side="right")) - 1
            if j not in problems:
                yield j, decode_entry(self._mem, int(self._records[i]))

    def mark(self, j: int, last: bool) -> EntryMark:
        """The first (or last) entry of queued frame ``j``, after ``check``."""
        i = int(self._firsts[j] + (self._counts[j] - 1 if last else 0))
        return _mark_at(self._mem, int(self._records[i]))


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
            step = next_frame(f, pos)
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


# -- a whole stream -----------------------------------------------------------------------------


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
    stream: str, scans: Sequence[SegmentScan], run_id: str | None, *, retained_from_seq: int = 1
) -> StreamScan:
    """Check a stream's segment scans (in index order) against each other.

    Segment ``i`` must be named ``<stream>-<i>.seg``, say so in its header, carry ``run_id``
    (when given), link to the last frame of segment ``i-1`` and start at the seq after it; the
    first segment starts at seq 1 with link 0. A torn tail in any but the last segment is
    damage (the writer syncs a segment before it starts the next): ``truncated_segment``.

    ``retained_from_seq`` > 1 (the manifest's record of a retention that reclaimed the leading
    segments on purpose) lets the stream start at any segment whose first seq is at or before it.
    """
    findings: list[Finding] = []
    expected_index = 0
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
            link, seq = (0, 1) if prev is None else (prev.tail_link, prev.next_seq)
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
) -> StreamScan:
    """Scan every segment of one stream of a run, one after the other, and check them together."""
    scans = [scan_segment(p, deep=deep, progress=progress) for p in list_segments(run_dir, stream)]
    run_id = run_dir.name if is_run_id(run_dir.name) else None
    return check_stream(stream, scans, run_id, retained_from_seq=retained_from_seq)
