"""Frames and segment headers: the checksummed containers of a segment file.

Pure byte functions (no file I/O); ``storage/FORMAT.md`` is the byte-level spec.

A frame stores one batch of entry records. Its *body* before compression is the records laid
end to end followed by a table of ``entry_count`` u32 offsets (one per record, relative to the
body start), so a reader can check every record header of a frame with a few numpy operations.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
import xxhash
import zstandard

from ringtape.storage.format.entry import ENTRY_HEADER_SIZE, check_records
from ringtape.storage.format.frame_index import UNKNOWN, FrameIndex

SEGMENT_MAGIC: Final = b"RTAPESEG"
# Version 2 adds each frame's index (ts_init and topic key bounds); version 1 segments stay
# readable. A segment's version says which frame header its frames carry.
FORMAT_VERSION: Final = 2
SUPPORTED_VERSIONS: Final = (1, 2)
SEGMENT_HEADER: Final = struct.Struct("<8sHHIQQQ32s")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size + 8  # + u64 header checksum = 80
RUN_ID_FIELD: Final = 32

STREAM_EVENTS: Final = 1
STREAM_MARKERS: Final = 2
STREAM_NAMES: Final = {STREAM_EVENTS: "events", STREAM_MARKERS: "markers"}

# Version 1 frame header: 48 bytes of fields + u64 header checksum = 56.
FRAME_MAGIC_V1: Final = b"RTFR"
FRAME_HEADER_V1: Final = struct.Struct("<4sBBHIIIIQQQ")
FRAME_HEADER_SIZE_V1: Final = FRAME_HEADER_V1.size + 8
# Version 2: the same 48 bytes (magic RTF2), then ts_init_min, ts_init_max, topic_min,
# topic_max, then the u64 header checksum = 88.
FRAME_MAGIC: Final = b"RTF2"
FRAME_HEADER: Final = struct.Struct("<4sBBHIIIIQQQQQQQ")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size + 8
MAX_FRAME_HEADER_SIZE: Final = FRAME_HEADER_SIZE
FRAME_MAGICS: Final = {1: FRAME_MAGIC_V1, 2: FRAME_MAGIC}
FRAME_HEADER_SIZES: Final = {1: FRAME_HEADER_SIZE_V1, 2: FRAME_HEADER_SIZE}

CODEC_NONE: Final = 0
CODEC_ZSTD: Final = 1

# Bounds a reader enforces before it allocates anything a header asks for.
MAX_FRAME_ENTRIES: Final = 1 << 20
MAX_FRAME_RAW: Final = 64 * 1024 * 1024
MAX_FRAME_STORED: Final = MAX_FRAME_RAW + 1024

_U64: Final = struct.Struct("<Q")


def checksum(data: bytes | bytearray | memoryview) -> int:
    """xxh3-64, seed 0: the one checksum of the format."""
    return int(xxhash.xxh3_64_intdigest(data))


class FormatError(ValueError):
    """Bytes that are not a valid header or frame; the message says what and where."""


class ChecksumError(FormatError):
    """A header whose stored checksum does not match its bytes (damaged, torn or not a header)."""


class SegmentHeader(NamedTuple):
    stream_kind: int
    segment_index: int
    first_seq: int
    prev_link: int
    created_ns: int
    run_id: str
    checksum: int
    version: int = FORMAT_VERSION


def encode_segment_header(
    stream_kind: int,
    segment_index: int,
    first_seq: int,
    prev_link: int,
    created_ns: int,
    run_id: str,
    version: int = FORMAT_VERSION,
) -> bytes:
    """The 80-byte segment header; ``prev_link`` is the previous segment's last frame checksum.
    ``version`` says which frame header the segment's frames carry (1 only to test readers)."""
    rid = run_id.encode("ascii")
    if len(rid) > RUN_ID_FIELD:
        raise FormatError(f"run id {run_id!r} is longer than {RUN_ID_FIELD} bytes")
    body = SEGMENT_HEADER.pack(
        SEGMENT_MAGIC,
        version,
        stream_kind,
        segment_index,
        first_seq,
        prev_link,
        created_ns,
        rid,
    )
    return body + _U64.pack(checksum(body))


def decode_segment_header(data: bytes | memoryview) -> SegmentHeader:
    if len(data) < SEGMENT_HEADER_SIZE:
        raise FormatError(f"segment header needs {SEGMENT_HEADER_SIZE} bytes, file has {len(data)}")
    body = bytes(data[: SEGMENT_HEADER.size])
    magic, version, kind, index, first_seq, prev_link, created, rid = SEGMENT_HEADER.unpack(body)
    if magic != SEGMENT_MAGIC:
        raise ChecksumError(f"not a ringtape segment (magic {magic!r})")
    (stored,) = _U64.unpack_from(data, SEGMENT_HEADER.size)
    actual = checksum(body)
    if stored != actual:
        raise ChecksumError(f"segment header checksum {stored:#018x} != computed {actual:#018x}")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"format version {version} is not supported (this reader: 1 and 2)")
    if kind not in STREAM_NAMES:
        raise FormatError(f"unknown stream kind {kind}")
    try:
        run_id = rid.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("run id in segment header is not ASCII") from None
    return SegmentHeader(kind, index, first_seq, prev_link, created, run_id, actual, version)


class FrameHeader(NamedTuple):
    codec: int
    entry_count: int
    raw_len: int
    stored_len: int
    first_seq: int
    prev_checksum: int
    data_checksum: int
    checksum: int
    bounds: FrameIndex = UNKNOWN  # the index; version 1 frames have none: they may hold anything
    header_size: int = FRAME_HEADER_SIZE

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.entry_count - 1

    @property
    def size(self) -> int:
        """Bytes the whole frame occupies on disk."""
        return self.header_size + self.stored_len

    @property
    def entry_bytes(self) -> int:
        """Raw bytes of the entry records (the body less its offset table)."""
        return self.raw_len - 4 * self.entry_count

    @property
    def version(self) -> int:
        return 1 if self.header_size == FRAME_HEADER_SIZE_V1 else 2


def encode_frame_header(
    codec: int,
    entry_count: int,
    raw_len: int,
    stored_len: int,
    first_seq: int,
    prev_checksum: int,
    data_checksum: int,
    index: FrameIndex = UNKNOWN,
    *,
    version: int = FORMAT_VERSION,
) -> tuple[bytes, int]:
    """A frame header of ``version`` (a version 1 header has no ``index``) and its checksum."""
    fields = (
        codec, 0, 0, entry_count, raw_len, stored_len, 0, first_seq, prev_checksum, data_checksum,
    )  # fmt: skip
    if version == 1:
        body = FRAME_HEADER_V1.pack(FRAME_MAGIC_V1, *fields)
    else:
        body = FRAME_HEADER.pack(FRAME_MAGIC, *fields, *index)
    c = checksum(body)
    return body + _U64.pack(c), c


def frame_header_size(data: bytes | memoryview, offset: int = 0) -> int:
    """The size of the frame header at ``offset``, by its magic (version 1 when unknown)."""
    return FRAME_HEADER_SIZE if data[offset : offset + 4] == FRAME_MAGIC else FRAME_HEADER_SIZE_V1


def decode_frame_header(data: bytes | memoryview, offset: int = 0) -> FrameHeader:
    """Parse and check the frame header at ``offset`` (bounds included); its magic says its
    version (``RTFR`` 1, ``RTF2`` 2)."""
    if data[offset : offset + 4] == FRAME_MAGIC:
        size, layout = FRAME_HEADER_SIZE, FRAME_HEADER
    else:
        size, layout = FRAME_HEADER_SIZE_V1, FRAME_HEADER_V1
    if offset < 0 or len(data) - offset < size:
        raise FormatError("frame header is cut short")
    view = memoryview(data)[offset : offset + layout.size]
    (stored,) = _U64.unpack_from(data, offset + layout.size)
    actual = checksum(view)
    if stored != actual:
        raise ChecksumError(f"frame header checksum {stored:#018x} != computed {actual:#018x}")
    fields = layout.unpack(view)
    magic, codec, flags, res16, count, raw_len, stored_len, res32, first_seq, prev, data_sum = (
        fields[:11]
    )
    if magic not in (FRAME_MAGIC, FRAME_MAGIC_V1):
        raise FormatError(f"frame magic is {magic!r}, expected {FRAME_MAGIC!r}")
    if codec not in (CODEC_NONE, CODEC_ZSTD) or flags or res16 or res32:
        raise FormatError(f"unknown codec {codec} or non-zero reserved bits")
    if not 1 <= count <= MAX_FRAME_ENTRIES:
        raise FormatError(f"entry count {count} outside 1..{MAX_FRAME_ENTRIES}")
    if not count * (ENTRY_HEADER_SIZE + 4) <= raw_len <= MAX_FRAME_RAW:
        raise FormatError(f"raw length {raw_len} impossible for {count} entries")
    if not 1 <= stored_len <= MAX_FRAME_STORED or (codec == CODEC_NONE and stored_len != raw_len):
        raise FormatError(f"stored length {stored_len} impossible (raw {raw_len})")
    if first_seq < 1 or first_seq + count - 1 >= 1 << 63:
        raise FormatError(f"first seq {first_seq} out of range")
    index = UNKNOWN
    if size == FRAME_HEADER_SIZE:
        ts_min, ts_max, topic_min, topic_max = fields[11:]
        if ts_min > ts_max or topic_min > topic_max:
            raise FormatError(f"index bounds out of order: {fields[11:]}")
        index = FrameIndex(ts_min, ts_max, topic_min, topic_max)
    return FrameHeader(
        codec, count, raw_len, stored_len, first_seq, prev, data_sum, actual, index, size
    )


def build_body(entries: bytes | bytearray | memoryview, offsets: npt.NDArray[np.int64]) -> bytes:
    """Frame body: the records, then their u32 offsets."""
    return b"".join((entries, offsets.astype("<u4").tobytes()))


class FrameEncoder:
    """Compresses bodies into frames of one format ``version`` (1 only to test readers)."""

    def __init__(self, level: int = 3, *, version: int = FORMAT_VERSION) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self.version = version

    def encode(
        self,
        body: bytes,
        entry_count: int,
        first_seq: int,
        prev_checksum: int,
        index: FrameIndex = UNKNOWN,
    ) -> tuple[bytes, int]:
        """Header + stored bytes for one frame, and the frame's checksum (the next link).
        ``index`` must hold every record's ``ts_init`` and topic key (``frame_index``)."""
        if len(body) > MAX_FRAME_RAW or entry_count > MAX_FRAME_ENTRIES:
            raise FormatError(
                f"frame of {entry_count} entries, {len(body)} bytes exceeds the format's limits"
            )
        stored = self._zstd.compress(body)
        codec = CODEC_ZSTD
        if len(stored) >= len(body):
            stored, codec = body, CODEC_NONE
        header, c = encode_frame_header(
            codec,
            entry_count,
            len(body),
            len(stored),
            first_seq,
            prev_checksum,
            checksum(stored),
            index,
            version=self.version,
        )
        return header + stored, c


class FrameDecoder:
    """Turns a frame's stored bytes back into its body, refusing anything out of bounds."""

    def __init__(self) -> None:
        self._zstd = zstandard.ZstdDecompressor()

    def body(self, header: FrameHeader, stored: bytes | memoryview) -> bytes:
        if header.codec == CODEC_NONE:
            return bytes(stored)
        try:
            params = zstandard.get_frame_parameters(stored)
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd frame header unreadable: {exc}") from None
        if params.content_size != header.raw_len:
            raise FormatError(
                f"zstd content size {params.content_size} != frame raw length {header.raw_len}"
            )
        try:
            # Trailing bytes after the zstd frame are refused, not ignored: every stored byte
            # must be part of the one frame the header describes.
            body = self._zstd.decompress(
                stored, max_output_size=header.raw_len, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd decompression failed: {exc}") from None
        if len(body) != header.raw_len:
            raise FormatError(f"decompressed {len(body)} bytes, header says {header.raw_len}")
        return body

    def entries(
        self, header: FrameHeader, stored: bytes | memoryview
    ) -> tuple[bytes, npt.NDArray[np.int64]]:
        """The checked body and the record offsets; ``FormatError`` if any record is malformed."""
        body = self.body(header, stored)
        n = header.entry_count
        end = header.raw_len - 4 * n
        offsets = np.frombuffer(body, dtype="<u4", count=n, offset=end).astype(np.int64)
        problem = check_records(body, offsets, end, header.first_seq)
        if problem is not None:
            raise FormatError(problem)
        return body, offsets
