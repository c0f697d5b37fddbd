"""One step of the walk through a segment: a whole frame, a torn tail, or damage.

Rules of this module:

1. The rules that tell a torn tail from damage live here, in :func:`next_frame` and
   :func:`read_segment_header`, and nowhere else; ``FORMAT.md`` ("Torn tail or damage") states
   them for other implementations.
2. It only reads, and only through a :class:`~ringtape.storage.segment.file.SegmentFile`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from ringtape.storage.format.frame import (
    FRAME_HEADER_SIZE_V1,
    FRAME_HEADER_SIZES,
    FRAME_MAGIC,
    FRAME_MAGIC_V1,
    FRAME_MAGICS,
    MAX_FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    ChecksumError,
    FormatError,
    FrameHeader,
    SegmentHeader,
    checksum,
    decode_frame_header,
    decode_segment_header,
)
from ringtape.storage.segment.file import WINDOW, SegmentFile

# A frame whose data fails its checksum is a torn append rather than damage only when the file
# ends in at least this many zero bytes reaching into the frame (see FORMAT.md): a flipped byte
# cannot make a run this long in a frame, a zero-filled block after a crash does.
MIN_ZERO_TAIL: Final = 64
# Write-back happens in sectors: after a power loss, un-synced data can read back as whole
# zeroed sectors (or a zeroed last partial sector), out of order with the sectors around them.
SECTOR: Final = 512


def zeroed_sector(f: SegmentFile, start: int, end: int) -> int | None:
    """The offset of the first zeroed sector overlapping ``start..end``, or ``None``: a
    ``SECTOR``-aligned block that reads as all zeros (a whole sector, or the file's last partial
    one), or the bytes from ``start`` (where a frame must begin) to the end of its sector. A
    flipped byte cannot make one; a sector that never reached the disk does (it reads as it was:
    zeros past the end of the file as last synced)."""
    boundary = min(start - start % SECTOR + SECTOR, f.size)
    if start % SECTOR and start < boundary:
        n = boundary - start
        if bytes(f.read(start, n)).count(0) == n:
            return start
    offset = start - start % SECTOR
    while offset < min(end, f.size):
        n = min(SECTOR, f.size - offset)
        if bytes(f.read(offset, n)).count(0) == n:
            return offset
        offset += SECTOR
    return None


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


# Fields of a frame header that are fixed whatever the frame: flags, reserved u16, reserved u32
# (the same in both versions).
_FRAME_ZERO_FIELDS: Final = (slice(5, 8), slice(20, 24))

_V2_MAGICS: Final[tuple[bytes, ...]] = (FRAME_MAGIC,)

# Whether a reader can do without a frame's stored bytes, from its header alone.
SkipFrame = Callable[[FrameHeader], bool]


def _expected_layout(
    view: bytes | memoryview, version: int | None
) -> tuple[int, tuple[bytes, ...]]:
    """The header size and magics a frame at a position may have: the segment's version says
    (``None``: its header is damaged, so either version, by what the bytes start with)."""
    if version is not None:
        return FRAME_HEADER_SIZES[version], (FRAME_MAGICS[version],)
    if bytes(view[:4]) == FRAME_MAGIC:
        return MAX_FRAME_HEADER_SIZE, (FRAME_MAGIC,)
    return FRAME_HEADER_SIZE_V1, (FRAME_MAGIC_V1, FRAME_MAGIC)


def next_frame(
    f: SegmentFile,
    pos: int,
    *,
    skip_before: int = 0,
    version: int | None = None,
    skip: SkipFrame | None = None,
) -> Step | None:
    """Read the frame at ``pos``: ``None`` at a clean end of file, else what is there.

    ``version`` is the segment header's (``None`` when it is damaged: either layout is taken).
    A frame whose seqs all lie before ``skip_before``, or for which ``skip(header)`` is true, is
    returned on its header alone, its stored bytes neither read nor checked (``stored`` empty):
    a reader skipping ahead, or past frames its filters rule out.

    Torn (an append cut short by a crash) when, from ``pos``:
      * the bytes up to where the file's trailing zeros begin are fewer than a frame header
        and could be the start of one (magic, zero reserved fields) — this includes an
        all-zero remainder and a header cut short by the end of the file;
      * or the header checks out but the frame it describes runs past the end of the file;
      * or the header checks out, the stored bytes fail their checksum, and the file ends in at
        least ``MIN_ZERO_TAIL`` zero bytes that reach into the frame (a zero-filled block);
      * or the header (or, when the header checks out, the stored bytes) fails its checksum and
        a zeroed sector overlaps it: a ``SECTOR``-aligned block of it that reads as all zeros
        (a whole sector, or the file's last partial one), or zeros from ``pos`` to the end of
        its sector (:func:`zeroed_sector`). Write-back after a power loss can leave such a
        block with written sectors after it, so everything from ``pos`` on is the torn tail.
    Anything else that is not a whole, checking frame is damage (``Broken`` or a ``FrameAt``
    with ``data_ok`` false).
    """
    rest = f.size - pos
    if rest <= 0:
        return None
    view = f.read(pos, MAX_FRAME_HEADER_SIZE)
    if version == 2:
        size, magics = MAX_FRAME_HEADER_SIZE, _V2_MAGICS
    else:
        size, magics = _expected_layout(view, version)
    header: FrameHeader | None = None
    reason = f"only {len(view)} bytes left for a frame header"
    if len(view) >= size:
        try:
            header = decode_frame_header(view)
        except ChecksumError as exc:
            reason = str(exc)
        except FormatError as exc:  # checksum fine, fields impossible: written that way
            return Broken(pos, f"frame header: {exc}")
    if header is None:
        written = max(0, f.zero_tail_start() - pos)
        if written < size and any(
            _plausible_prefix(view[:written], magic, _FRAME_ZERO_FIELDS) for magic in magics
        ):
            if written == 0:
                return Torn(pos, None, f"{rest} zero bytes to the end of the file")
            return Torn(
                pos, None, f"{written} bytes of a frame header, then {rest - written} zero bytes"
            )
        zeros = zeroed_sector(f, pos, pos + size)
        if zeros is not None:
            return Torn(pos, None, f"frame header unreadable, zeroed sector at offset {zeros}")
        return Broken(pos, f"frame header: {reason}")
    if version is not None and header.version != version:
        return Broken(
            pos, f"frame header: a version {header.version} frame in a version {version} segment"
        )
    raw_header = bytes(view[: header.header_size])
    end = pos + header.size
    if end > f.size:
        return Torn(
            pos,
            header,
            f"frame of {header.size} bytes runs {end - f.size} bytes past the end of the file",
        )
    if header.last_seq < skip_before or (skip is not None and skip(header)):
        return FrameAt(pos, header, raw_header, memoryview(b""), True)
    stored = f.read(pos + header.header_size, header.stored_len)
    if checksum(stored) == header.data_checksum:
        return FrameAt(pos, header, raw_header, stored, True)
    zeros = f.zero_tail_start()
    if zeros < end and f.size - zeros >= MIN_ZERO_TAIL:
        return Torn(
            pos,
            header,
            f"stored bytes fail their checksum and the file is zero from offset {zeros}",
        )
    stored = memoryview(bytes(stored))  # the next reads reuse the window it points into
    sector = zeroed_sector(f, pos + header.header_size, end)
    if sector is not None:
        return Torn(
            pos, header, f"stored bytes fail their checksum, zeroed sector at offset {sector}"
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
    if zeroed_sector(f, 0, SEGMENT_HEADER_SIZE) is not None:  # never synced: nothing in it was
        return Torn(0, None, "the segment header reads as a zeroed sector")
    return Broken(0, f"segment header: {reason}")


_MAGIC_STEM: Final = FRAME_MAGIC[:3]  # both versions' magics start RTF
assert FRAME_MAGIC_V1[:3] == _MAGIC_STEM


def resync(f: SegmentFile, start: int) -> tuple[int, FrameHeader] | None:
    """The first offset at or after ``start`` holding a frame header (of either version) that
    checks out."""
    pos = start
    while pos + FRAME_HEADER_SIZE_V1 <= f.size:
        chunk = bytes(f.read(pos, WINDOW + MAX_FRAME_HEADER_SIZE))
        i = chunk.find(_MAGIC_STEM)
        # Past this, a header could be cut by the chunk's end: look at it from the next chunk.
        limit = len(chunk) - MAX_FRAME_HEADER_SIZE
        if pos + len(chunk) >= f.size:
            limit = len(chunk) - FRAME_HEADER_SIZE_V1
        while 0 <= i <= limit:
            try:
                return pos + i, decode_frame_header(chunk, i)
            except FormatError:
                i = chunk.find(_MAGIC_STEM, i + 1)
        if limit < 0 or pos + len(chunk) >= f.size:
            return None
        pos += limit + 1
    return None
