"""Snapshot blob files, format 2: a checksummed header, then the zstd-compressed snapshot.

Pure byte functions (no file I/O); ``storage/FORMAT.md`` section 6c is the spec. A blob names its
run, its anchor and the watermark it was taken at, and carries the xxh3-128 hash of the snapshot
it holds, so that a blob is checked against its anchor entry and against itself. An *alias* blob
holds no snapshot, only the name of an earlier blob of the same run with the same content (an
anchor whose snapshot did not change is stored once).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import xxhash
import zstandard

BLOB_MAGIC: Final = b"RTBLOB02"
BLOB_VERSION: Final = 2
BLOB_HEADER: Final = struct.Struct("<8sHHIQQQQ16s32s")
BLOB_HEADER_SIZE: Final = BLOB_HEADER.size + 8  # + u64 header checksum = 104

CODEC_ZSTD: Final = 1
CODEC_ALIAS: Final = 2

MAX_BLOB_BYTES: Final = 1 << 30  # the largest snapshot a reader restores
MAX_ALIAS_BYTES: Final = 256

_U64: Final = struct.Struct("<Q")


class BlobFormatError(ValueError):
    """Bytes that are not a valid blob, or not the blob an anchor names."""


class BlobHeader(NamedTuple):
    codec: int
    anchor_id: int
    high_watermark: int
    raw_size: int
    stored_size: int
    content_hash: bytes  # xxh3-128 digest of the snapshot
    run_id: str


def snapshot_hash(data: bytes | memoryview) -> bytes:
    """The content hash a blob carries: xxh3-128, digest bytes."""
    return bytes(xxhash.xxh3_128_digest(data))


def encode_blob_header(header: BlobHeader) -> bytes:
    run_id = header.run_id.encode("ascii")
    if len(run_id) > 32:
        raise BlobFormatError(f"run id {header.run_id!r} is longer than 32 bytes")
    body = BLOB_HEADER.pack(
        BLOB_MAGIC,
        BLOB_VERSION,
        header.codec,
        0,
        header.anchor_id,
        header.high_watermark,
        header.raw_size,
        header.stored_size,
        header.content_hash,
        run_id,
    )
    return body + _U64.pack(xxhash.xxh3_64_intdigest(body))


def decode_blob_header(data: bytes | memoryview) -> BlobHeader:
    if len(data) < BLOB_HEADER_SIZE:
        raise BlobFormatError(f"blob header needs {BLOB_HEADER_SIZE} bytes, found {len(data)}")
    body = bytes(data[: BLOB_HEADER.size])
    magic, version, codec, reserved, anchor_id, watermark, raw, stored, digest, rid = (
        BLOB_HEADER.unpack(body)
    )
    if magic != BLOB_MAGIC:
        raise BlobFormatError(f"not a ringtape blob (magic {magic!r})")
    (checksum,) = _U64.unpack_from(data, BLOB_HEADER.size)
    if checksum != xxhash.xxh3_64_intdigest(body):
        raise BlobFormatError("blob header checksum does not match")
    if version != BLOB_VERSION or reserved or codec not in (CODEC_ZSTD, CODEC_ALIAS):
        raise BlobFormatError(f"blob version {version} or codec {codec} is not supported")
    if raw > MAX_BLOB_BYTES or stored > MAX_BLOB_BYTES + 1024:
        raise BlobFormatError(f"blob sizes {raw}/{stored} are over the limit")
    if codec == CODEC_ALIAS and stored > MAX_ALIAS_BYTES:
        raise BlobFormatError(f"alias of {stored} bytes is over {MAX_ALIAS_BYTES}")
    try:
        run_id = rid.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        raise BlobFormatError("run id in the blob header is not ASCII") from None
    return BlobHeader(codec, anchor_id, watermark, raw, stored, digest, run_id)


def compressor(level: int = 3) -> zstandard.ZstdCompressor:
    """The compressor blobs are written with: zstd frames with content size and checksum."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)


def decompress_snapshot(header: BlobHeader, stored: bytes | memoryview) -> bytes:
    """The snapshot of a zstd blob, checked: bounded by the header's size, the frame's own
    checksum and the header's content hash."""
    try:
        params = zstandard.get_frame_parameters(stored)
        if params.content_size != header.raw_size:
            raise BlobFormatError(
                f"zstd content size {params.content_size} != the blob's {header.raw_size}"
            )
        data = zstandard.ZstdDecompressor().decompress(
            stored, max_output_size=header.raw_size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise BlobFormatError(f"blob does not decompress: {exc}") from None
    if len(data) != header.raw_size or snapshot_hash(data) != header.content_hash:
        raise BlobFormatError("blob content does not match its hash")
    return data
