"""Reading a run's entries back, in seq order, refusing to go past any damage.

Rules of this module:

1. A reader never skips silently. Every frame it passes on checks out (header, data checksum,
   records) and follows the one before it (chain and seq, across segments too); the first one
   that does not raises :class:`CorruptionError` carrying the
   :class:`~ringtape.storage.check.findings.Finding`.
2. Frames that cannot hold a wanted entry — wholly before ``from_seq``, or ruled out by the
   time window or topic globs through their header's index (``storage/format/frame_index.py``)
   — are skipped on their headers alone (header checksum, chain, seq); their stored bytes are
   not read or checked. A frame passed on may still hold unwanted entries: the callers filter.
3. A torn tail at the very end of the stream ends iteration quietly only when the run may still
   have been open: ``strict=False``, or ``strict=None`` and the manifest says ``running``. In a
   sealed (or quarantined, or manifest-less) run it is an error like any other damage, because
   recovery cuts torn tails before it seals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, NoReturn

import numpy as np
import numpy.typing as npt

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.check.records import RecordBatch
from ringtape.storage.check.scan import link_finding
from ringtape.storage.format.entry import Entry, EntryError, decode_checked, decode_entry
from ringtape.storage.format.frame import (
    SEGMENT_HEADER_SIZE,
    STREAM_NAMES,
    FormatError,
    FrameDecoder,
    FrameHeader,
)
from ringtape.storage.format.frame_index import TopicQuery
from ringtape.storage.run.layout import SEGMENT_RE, is_run_id, list_segments
from ringtape.storage.run.manifest import Manifest, ManifestError, read_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.storage.segment.file import SegmentFile
from ringtape.storage.segment.walk import Broken, FrameAt, Torn, next_frame, read_segment_header

PROGRESS_STEP: Final = 4 << 20
# Called with the number of segment bytes walked since the last call.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class FrameFilter:
    """What a reader wants: a ``ts_init`` window (inclusive; ``None``: open) and topic globs
    (``None``: every topic). :meth:`skips` rules frames out by their header's index alone."""

    since: int | None = None
    until: int | None = None
    topics: Sequence[str] | None = None

    def __post_init__(self) -> None:
        query = None if self.topics is None else TopicQuery(list(self.topics))
        object.__setattr__(self, "_query", query)

    @property
    def empty(self) -> bool:
        return self.since is None and self.until is None and self.topics is None

    def skips(self, header: FrameHeader) -> bool:
        """True when no record of the frame can be wanted."""
        index = header.bounds
        if self.since is not None and index.ts_max < self.since:
            return True
        if self.until is not None and index.ts_min > self.until:
            return True
        query: TopicQuery | None = getattr(self, "_query")  # noqa: B009 (set in __post_init__)
        return query is not None and not query.may_match(index)


class CorruptionError(Exception):
    """The run is damaged where the reader needed to read; ``finding`` says where and how."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(str(finding))
        self.finding = finding


class Frame(NamedTuple):
    """One checked frame: its body (records + offset table) and the record offsets."""

    path: str
    offset: int
    header: FrameHeader
    body: bytes
    offsets: npt.NDArray[np.int64]

    def entries(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Entry]:
        """The frame's entries with ``from_seq <= seq <= to_seq``, decoded."""
        first = self.header.first_seq
        lo = max(0, from_seq - first)
        hi = (
            self.header.entry_count
            if to_seq is None
            else max(0, min(to_seq - first + 1, len(self.offsets)))
        )
        try:
            entries = decode_checked(self.body, self.offsets[lo:hi])
        except EntryError:
            entries = None  # walk it entry by entry: pass on what precedes the bad one
        if entries is not None:
            yield from entries
            return
        for i in range(lo, hi):
            try:
                yield decode_entry(self.body, int(self.offsets[i]))
            except EntryError as exc:
                raise CorruptionError(
                    Finding(
                        Kind.DECODE_ERROR, self.path, self.offset, first + i, first + i, str(exc)
                    )
                ) from None


def _manifest(run_dir: Path) -> Manifest | None:
    try:
        return read_manifest(run_dir)
    except ManifestError:
        return None


class _StreamReader:
    """Walks one stream's segments, keeping the chain and seq that the next frame must carry."""

    def __init__(
        self,
        run_dir: Path,
        stream: str,
        from_seq: int,
        retained: int,
        tolerant: bool,
        wanted: FrameFilter | None = None,
        progress: Progress | None = None,
    ):
        self.stream = stream
        self.from_seq = from_seq
        self.tolerant = tolerant
        self.skip = None if wanted is None or wanted.empty else wanted.skips
        self.progress = progress
        self.walked = 0  # bytes of segments walked, not yet reported to ``progress``
        self.run_id = run_dir.name if is_run_id(run_dir.name) else None
        self.decoder = FrameDecoder()
        self.batch = RecordBatch()
        self.bodies: list[bytes] = []  # of the frames queued in the batch
        # What the next segment header must carry; unknown when retention cut the stream's start.
        self.link: int | None = 0
        self.next_seq: int | None = 1
        self.index: int | None = 0
        if retained > 1:
            self.link = self.next_seq = self.index = None

    def segment(self, path: Path, last: bool, to_seq: int | None) -> Iterator[tuple[str, int]]:
        """The wanted frames of one segment, as ``(path, n)``: the first ``n`` frames queued in
        ``self.batch`` (bodies in ``self.bodies``) are checked and good, until the next step.
        ``self.link``/``next_seq`` follow the walk.

        Frames are checked in batches (see ``RecordBatch``); when damage stops the walk, the
        checked frames before it are passed on first, then the error is raised.
        """
        try:
            yield from self._walk(path, last, to_seq)
        except CorruptionError:
            yield from self._release(str(path))
            raise
        yield from self._release(str(path))

    def _release(self, where: str) -> Iterator[tuple[str, int]]:
        """Check the queued frames and pass them on in order, up to the first bad one."""
        batch = self.batch
        problems = batch.check()
        try:
            good = min(problems) if problems else len(batch.headers)
            if good:
                yield where, good
            if problems:
                h = batch.headers[good]
                raise CorruptionError(
                    Finding(
                        Kind.DECODE_ERROR, where, batch.offsets[good], h.first_seq, h.last_seq,
                        problems[good],
                    )
                )  # fmt: skip
        finally:
            batch.clear()
            self.bodies.clear()

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.walked += n
            if self.walked >= PROGRESS_STEP:
                self.progress(self.walked)
                self.walked = 0

    def _walk(self, path: Path, last: bool, to_seq: int | None) -> Iterator[tuple[str, int]]:
        where = str(path)

        def fail(
            kind: Kind, offset: int | None, lo: int | None, hi: int | None, why: str
        ) -> NoReturn:
            if kind is Kind.TORN_TAIL and not last:
                kind, why = Kind.TRUNCATED_SEGMENT, f"{why}; a later segment exists"
            raise CorruptionError(Finding(kind, where, offset, lo, hi, why))

        m = SEGMENT_RE.match(path.name)
        index = int(m.group(2)) if m else -1
        if self.index is not None and index != self.index:
            fail(
                Kind.MISSING_SEGMENT, None, self.next_seq, None, f"segment {self.index} is missing"
            )
        self.index = index + 1
        try:
            f = SegmentFile.open(path)
        except OSError as exc:
            fail(Kind.UNREADABLE, None, self.next_seq, None, f"cannot read: {exc.strerror or exc}")
        with f:
            header = read_segment_header(f)
            if isinstance(header, Torn):
                if last and self.tolerant:
                    return
                fail(Kind.TORN_TAIL, 0, None, None, f"torn tail: {header.detail}")
            if isinstance(header, Broken):
                fail(Kind.BAD_HEADER, 0, self.next_seq, None, header.detail)
            if (
                STREAM_NAMES.get(header.stream_kind) != self.stream
                or header.segment_index != index
                or (self.run_id is not None and header.run_id != self.run_id)
            ):
                fail(Kind.SEGMENT_MISMATCH, 0, None, None, "segment header does not match its file")
            self.check_link(where, 0, header.prev_link, header.first_seq, header.first_seq)
            if to_seq is not None and header.first_seq > to_seq:
                return
            self.link, self.next_seq = header.checksum, header.first_seq
            pos = SEGMENT_HEADER_SIZE
            version = header.version
            skip = self.skip
            from_seq = self.from_seq
            tracking = self.progress is not None
            while (
                step := next_frame(f, pos, skip_before=from_seq, version=version, skip=skip)
            ) is not None:
                if not isinstance(step, FrameAt):
                    if isinstance(step, Torn):
                        if last and self.tolerant:
                            return
                        h = step.header
                        lo, hi = (None, None) if h is None else (h.first_seq, h.last_seq)
                        fail(Kind.TORN_TAIL, pos, lo, hi, f"torn tail: {step.detail}")
                    fail(Kind.BAD_HEADER, pos, self.next_seq, None, step.detail)
                h = step.header
                if h.prev_checksum != self.link or h.first_seq != self.next_seq:
                    self.check_link(where, pos, h.prev_checksum, h.first_seq, h.last_seq)
                self.link, self.next_seq = h.checksum, h.last_seq + 1
                pos += h.size
                if tracking:
                    self._advance(h.size)
                if h.last_seq < from_seq or (skip is not None and skip(h)):
                    if to_seq is not None and h.last_seq >= to_seq:
                        return
                    continue
                if not step.data_ok:
                    fail(
                        Kind.CHECKSUM_MISMATCH,
                        step.offset,
                        h.first_seq,
                        h.last_seq,
                        "frame data checksum does not match its stored bytes",
                    )
                try:
                    body = self.decoder.body(h, step.stored)
                except FormatError as exc:
                    fail(Kind.DECODE_ERROR, step.offset, h.first_seq, h.last_seq, str(exc))
                if not self.batch.add(step.offset, h, step.raw_header, body):
                    yield from self._release(where)
                    self.batch.add(step.offset, h, step.raw_header, body)
                self.bodies.append(body)
                if to_seq is not None and h.last_seq >= to_seq:
                    return

    def check_link(self, where: str, offset: int, prev: int, first: int, last: int) -> None:
        found = link_finding(where, offset, self.link, self.next_seq, prev, first, last)
        if found is not None:
            raise CorruptionError(found)


def _open_stream(
    run_dir: Path,
    stream: str,
    from_seq: int,
    to_seq: int | None,
    strict: bool | None,
    wanted: FrameFilter | None,
    progress: Progress | None,
) -> tuple[_StreamReader, list[Path]]:
    if stream not in STREAM_NAMES.values():
        raise ValueError(f"unknown stream {stream!r}")
    if from_seq < 1 or (to_seq is not None and to_seq < from_seq):
        raise ValueError(f"bad seq range {from_seq}..{to_seq}")
    manifest = _manifest(run_dir)
    retained = 1
    if manifest is not None and stream == "events":
        retained = int(getattr(manifest, "retained_from_seq", 1))
    if from_seq < retained:
        raise ValueError(f"entries before seq {retained} of this run were reclaimed by retention")
    if strict is None:
        strict = manifest is None or manifest.status is not RunStatus.RUNNING
    reader = _StreamReader(
        run_dir, stream, from_seq, retained, not strict, wanted=wanted, progress=progress
    )
    return reader, list_segments(run_dir, stream)


def segment_first_seq(path: Path) -> int | None:
    try:
        with SegmentFile.open(path) as f:
            header = read_segment_header(f)
    except OSError:
        return None
    return None if isinstance(header, Torn | Broken) else header.first_seq


def skip_segments(reader: _StreamReader, segments: list[Path]) -> list[Path]:
    """The segments from the last one that starts at or before ``reader.from_seq``: those
    before it hold only unwanted seqs and are not read at all (not even their frame headers),
    so the chain is checked from the first segment read (as after retention)."""
    start = 0
    for i in range(len(segments) - 1, 0, -1):
        first = segment_first_seq(segments[i])
        if first is not None and first <= reader.from_seq:
            start = i
            break
    if start:
        m = SEGMENT_RE.match(segments[start].name)
        reader.link = reader.next_seq = None
        reader.index = int(m.group(2)) if m else None
    return segments[start:]


def _walk_stream(
    reader: _StreamReader, segments: list[Path], to_seq: int | None
) -> Iterator[tuple[str, int]]:
    for i, path in enumerate(segments):
        yield from reader.segment(path, i == len(segments) - 1, to_seq)
        if reader.progress is not None and reader.walked:
            reader.progress(reader.walked)
            reader.walked = 0
        if to_seq is not None and reader.next_seq is not None and reader.next_seq > to_seq:
            return


def iter_frames(
    run_dir: Path,
    stream: str = "events",
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    strict: bool | None = None,
    wanted: FrameFilter | None = None,
    progress: Progress | None = None,
) -> Iterator[Frame]:
    """The checked frames of one stream of a run holding seqs ``from_seq..to_seq``, in order,
    less those ``wanted`` rules out by their headers; ``progress`` is told how many segment
    bytes were walked (every few MiB).

    Raises :class:`CorruptionError` at the first damage, ``ValueError`` for a bad range or a
    ``from_seq`` before what retention kept. See the module rules for torn tails and ``strict``.
    """
    reader, segments = _open_stream(run_dir, stream, from_seq, to_seq, strict, wanted, progress)
    batch, bodies = reader.batch, reader.bodies
    for where, n in _walk_stream(reader, segments, to_seq):
        for j in range(n):
            yield Frame(
                where, batch.offsets[j], batch.headers[j], bodies[j], batch.record_offsets(j)
            )


def iter_batches(
    run_dir: Path,
    stream: str = "events",
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    strict: bool | None = None,
    wanted: FrameFilter | None = None,
    progress: Progress | None = None,
    from_segment: bool = False,
) -> Iterator[tuple[RecordBatch, int]]:
    """Like :func:`iter_frames`, many frames at a time, for columnar readers: ``(batch, n)``
    where the first ``n`` frames queued in ``batch`` are checked and good. The batch (its
    buffer, record offsets and headers) is valid only until the next item is asked for.
    ``from_segment``: segments wholly before ``from_seq`` are not read (:func:`skip_segments`)."""
    reader, segments = _open_stream(run_dir, stream, from_seq, to_seq, strict, wanted, progress)
    if from_segment:
        segments = skip_segments(reader, segments)
    for _, n in _walk_stream(reader, segments, to_seq):
        yield reader.batch, n


def iter_entries(
    run_dir: Path,
    stream: str = "events",
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    strict: bool | None = None,
) -> Iterator[Entry]:
    """Entries ``from_seq..to_seq`` (``to_seq`` ``None``: to the end) of a run, in seq order.

    Memory is bounded by one frame. Raises :class:`CorruptionError` at the first damage.
    """
    for frame in iter_frames(run_dir, stream, from_seq=from_seq, to_seq=to_seq, strict=strict):
        yield from frame.entries(from_seq, to_seq)
