"""Content-addressed snapshot blobs: ``<run_dir>/blobs/<xxh3-128 hex>.snap``.

A blob is written to a temp file, fsynced, renamed to its content name and the directory
fsynced, so a crash leaves either no blob or a whole one (a stray temp file at worst). The
anchor entry that refers to it is appended only after that, so an anchor never names a blob
that is not durable. Readers recompute the hash before trusting a byte.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import xxhash

from ringtape.storage.run.layout import (
    BLOB_DIR,
    create_private_file,
    fsync_dir,
    inside,
    make_private_dir,
    open_regular,
)

HASH_PREFIX: Final = "xxh3-128:"
MAX_BLOB_BYTES: Final = 1 << 30


class BlobError(ValueError):
    """A blob that is missing, unreadable, too large or does not match its hash."""


def content_hash(data: bytes) -> str:
    return HASH_PREFIX + xxhash.xxh3_128_hexdigest(data)


@dataclass(frozen=True)
class Anchor:
    """A snapshot anchor as recorded in the entry stream (payload of a SnapshotAnchor entry)."""

    high_watermark: int
    blob_ref: str
    content_hash: str
    size: int
    seq: int = 0  # the seq of the anchor entry itself (filled in by readers)

    def to_payload(self) -> bytes:
        body = {
            "high_watermark": self.high_watermark,
            "blob_ref": self.blob_ref,
            "content_hash": self.content_hash,
            "size": self.size,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_payload(cls, payload: bytes, seq: int = 0) -> Anchor:
        try:
            d: Any = json.loads(payload)
            anchor = cls(
                int(d["high_watermark"]),
                str(d["blob_ref"]),
                str(d["content_hash"]),
                int(d["size"]),
                seq,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BlobError(f"anchor payload is malformed: {exc}") from None
        if anchor.high_watermark < 0 or anchor.size < 0:
            raise BlobError("anchor payload has negative fields")
        return anchor


def write_blob(
    run_dir: Path, data: bytes, *, during_write: Callable[[int, bytes], None] | None = None
) -> Anchor:
    """Store ``data`` durably under its content hash; returns an anchor without watermark."""
    digest = content_hash(data)
    name = f"{digest.removeprefix(HASH_PREFIX)}.snap"
    blob_dir = run_dir / BLOB_DIR
    if not blob_dir.is_dir():
        make_private_dir(blob_dir)
        fsync_dir(run_dir)
    final = blob_dir / name
    ref = f"{BLOB_DIR}/{name}"
    if not final.exists():
        tmp = blob_dir / f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = create_private_file(tmp)
        try:
            if during_write is not None:
                during_write(fd, data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(blob_dir)
    return Anchor(0, ref, digest, len(data))


def read_blob(run_dir: Path, anchor: Anchor) -> bytes:
    """The blob's bytes, after checking its path stays in the run dir and its hash matches."""
    try:
        path = inside(run_dir, anchor.blob_ref)
    except ValueError as exc:
        raise BlobError(str(exc)) from None
    if anchor.size > MAX_BLOB_BYTES:
        raise BlobError(f"blob {anchor.blob_ref} claims {anchor.size} bytes, over the limit")
    try:
        data = open_regular(path, anchor.size)
    except OSError as exc:
        raise BlobError(f"blob {anchor.blob_ref}: {exc.strerror}") from None
    if len(data) != anchor.size:
        raise BlobError(f"blob {anchor.blob_ref} is {len(data)} bytes, anchor says {anchor.size}")
    actual = content_hash(data)
    if actual != anchor.content_hash:
        raise BlobError(
            f"blob {anchor.blob_ref} hash {actual} != the anchor's {anchor.content_hash}"
        )
    return data
