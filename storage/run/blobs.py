"""Snapshot blobs of a run and the anchors that name them.

An anchor is a ``SnapshotAnchor`` entry of the events stream (FORMAT.md, "Snapshot anchors"). It
is a restore point only once its blob is complete: the entry (durable in the stream, so every
entry up to its watermark is durable too) and the blob (durable in ``blobs/``) are both there and
check out. Two formats:

* format 2 (written today): the entry names ``blobs/anchor-<id>.blob`` and carries no hash; the
  writer process compresses the snapshot into that file off the kernel's thread, after the entry
  was taken from the ring (storage/format/blob.py has the layout). A missing blob is an anchor
  that never completed (the run crashed first, or the anchor was superseded) or one retention
  reclaimed; either way it is no restore point, and not damage.
* format 1 (read only): content-addressed ``blobs/<xxh3-128 hex>.snap`` holding the raw bytes,
  written by the kernel before the entry, whose payload carries the hash.

Blob files are written to a temp file, fsynced, renamed into place and the directory fsynced: a
crash leaves no blob or a whole one (a stray ``.*.tmp`` at worst). Readers check everything
before trusting a byte, and never allocate from a length field beyond ``MAX_BLOB_BYTES``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import xxhash

from ringtape.storage.format.blob import (
    BLOB_HEADER_SIZE,
    CODEC_ALIAS,
    MAX_ALIAS_BYTES,
    MAX_BLOB_BYTES,
    BlobFormatError,
    BlobHeader,
    decode_blob_header,
    decompress_snapshot,
)
from ringtape.storage.run.layout import (
    BLOB_DIR,
    create_private_file,
    fsync_dir,
    inside,
    make_private_dir,
    open_regular,
)

HASH_PREFIX: Final = "xxh3-128:"
BLOB_NAME_V2: Final = re.compile(r"^anchor-(\d{6,20})\.blob$")
BLOB_NAME_V1: Final = re.compile(r"^[0-9a-f]{32}\.snap$")

# Called with (descriptor, bytes) before each write of a blob file (tests crash there).
WriteHook = Callable[[int, bytes], None]


class BlobError(ValueError):
    """A blob that is missing, unreadable, too large or not the one its anchor names."""


class BlobMissing(BlobError):
    """The anchor's blob file does not exist: the anchor never completed (or was reclaimed)."""


def content_hash(data: bytes) -> str:
    return HASH_PREFIX + xxhash.xxh3_128_hexdigest(data)


def blob_ref(anchor_id: int) -> str:
    """Where the blob of anchor ``anchor_id`` lives, relative to the run directory."""
    return f"{BLOB_DIR}/anchor-{anchor_id:06d}.blob"


@dataclass(frozen=True)
class Anchor:
    """A snapshot anchor as recorded in the entry stream (payload of a SnapshotAnchor entry).

    ``anchor_id`` is 0 for format 1 anchors (whose payload carries ``content_hash``); format 2
    anchors carry no hash (the blob does)."""

    high_watermark: int
    blob_ref: str
    content_hash: str
    size: int
    seq: int = 0  # the seq of the anchor entry itself (filled in by readers)
    anchor_id: int = 0

    @property
    def format(self) -> int:
        return 2 if self.anchor_id else 1

    def to_payload(self) -> bytes:
        body: dict[str, Any] = {
            "high_watermark": self.high_watermark,
            "blob_ref": self.blob_ref,
            "size": self.size,
        }
        if self.anchor_id:
            body = {"format": 2, "anchor_id": self.anchor_id, **body}
        else:
            body["content_hash"] = self.content_hash
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_payload(cls, payload: bytes, seq: int = 0) -> Anchor:
        try:
            d: Any = json.loads(payload)
            v2 = d.get("format") == 2
            anchor = cls(
                int(d["high_watermark"]),
                str(d["blob_ref"]),
                "" if v2 else str(d["content_hash"]),
                int(d["size"]),
                seq,
                int(d["anchor_id"]) if v2 else 0,
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise BlobError(f"anchor payload is malformed: {type(exc).__name__}: {exc}") from None
        if anchor.high_watermark < 0 or anchor.size < 0 or anchor.anchor_id < 0:
            raise BlobError("anchor payload has negative fields")
        if v2 and (anchor.anchor_id == 0 or anchor.blob_ref != blob_ref(anchor.anchor_id)):
            raise BlobError(f"anchor {anchor.anchor_id} names blob {anchor.blob_ref!r}")
        return anchor

    def to_index(self) -> dict[str, Any]:
        """How the manifest's ``anchors`` index lists it."""
        return {
            "seq": self.seq,
            "high_watermark": self.high_watermark,
            "blob_ref": self.blob_ref,
            "content_hash": self.content_hash,
            "size": self.size,
            "anchor_id": self.anchor_id,
        }

    @classmethod
    def from_index(cls, d: dict[str, Any]) -> Anchor:
        """Back from the manifest's index (``BlobError`` when malformed)."""
        try:
            return cls(
                int(d["high_watermark"]),
                str(d["blob_ref"]),
                str(d.get("content_hash", "")),
                int(d["size"]),
                int(d.get("seq", 0)),
                int(d.get("anchor_id", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BlobError(f"manifest anchor is malformed: {exc}") from None


# -- writing (format 2, by the writer process) ------------------------------------------------


def write_blob_file(
    run_dir: Path, ref: str, parts: Sequence[bytes | memoryview], *, hook: WriteHook | None = None
) -> int:
    """Write ``parts`` as the blob ``ref`` durably (temp, fsync, rename, fsync ``blobs/``);
    returns the bytes written."""
    blob_dir = run_dir / BLOB_DIR
    make_private_dir(blob_dir)  # (its name fsynced into the run directory when it is new)
    final = run_dir / ref
    tmp = blob_dir / f".{final.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = create_private_file(tmp)
    written = 0
    try:
        try:
            for part in parts:
                if hook is not None:
                    hook(fd, bytes(part))
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
                written += len(part)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a temp in a sealed run
        raise
    fsync_dir(blob_dir)
    return written


# -- reading ---------------------------------------------------------------------------------


def read_blob(run_dir: Path, anchor: Anchor) -> bytes:
    """A format 1 blob's bytes, after checking its path stays in the run dir and its hash."""
    path = _path(run_dir, anchor.blob_ref)
    if anchor.size > MAX_BLOB_BYTES:
        raise BlobError(f"blob {anchor.blob_ref} claims {anchor.size} bytes, over the limit")
    data = _read(path, anchor.blob_ref, anchor.size)
    if len(data) != anchor.size:
        raise BlobError(f"blob {anchor.blob_ref} is {len(data)} bytes, anchor says {anchor.size}")
    actual = content_hash(data)
    if actual != anchor.content_hash:
        raise BlobError(
            f"blob {anchor.blob_ref} hash {actual} != the anchor's {anchor.content_hash}"
        )
    return data


def read_snapshot(run_dir: Path, anchor: Anchor) -> bytes:
    """The snapshot an anchor names, whichever the format, checked end to end:
    ``BlobMissing`` when there is no blob, ``BlobError`` when it is not the right one."""
    if anchor.format == 1:
        return read_blob(run_dir, anchor)
    header, stored = _read_v2(run_dir, anchor.blob_ref)
    _check_names(header, anchor, run_dir.name)
    if header.codec == CODEC_ALIAS:
        target_ref = _alias_target(stored, anchor.blob_ref)
        target, target_stored = _read_v2(run_dir, target_ref)
        if target.codec == CODEC_ALIAS or target.content_hash != header.content_hash:
            raise BlobError(f"alias {anchor.blob_ref} -> {target_ref}: the target differs")
        if target.run_id != header.run_id or target.raw_size != header.raw_size:
            raise BlobError(f"alias {anchor.blob_ref} -> {target_ref}: another run's blob")
        header, stored = target, target_stored
    try:
        return decompress_snapshot(header, stored)
    except BlobFormatError as exc:
        raise BlobError(f"blob {anchor.blob_ref}: {exc}") from None


def blob_header(run_dir: Path, ref: str) -> BlobHeader:
    """The checked header of a format 2 blob (``BlobMissing``/``BlobError`` otherwise)."""
    return _read_v2(run_dir, ref)[0]


def alias_target(run_dir: Path, anchor: Anchor) -> str | None:
    """The blob an anchor's alias blob stands for (kept and checked with it); ``None`` when
    the anchor's blob is no readable alias."""
    if anchor.format == 1:
        return None
    try:
        header, stored = _read_v2(run_dir, anchor.blob_ref)
        return _alias_target(stored, anchor.blob_ref) if header.codec == CODEC_ALIAS else None
    except BlobError:
        return None


def _read_v2(run_dir: Path, ref: str) -> tuple[BlobHeader, bytes]:
    path = _path(run_dir, ref)
    data = _read(path, ref, BLOB_HEADER_SIZE + MAX_BLOB_BYTES + 1024)
    try:
        header = decode_blob_header(data)
    except BlobFormatError as exc:
        raise BlobError(f"blob {ref}: {exc}") from None
    stored = data[BLOB_HEADER_SIZE:]
    if len(stored) != header.stored_size:
        raise BlobError(f"blob {ref} holds {len(stored)} bytes, its header {header.stored_size}")
    return header, stored


def _check_names(header: BlobHeader, anchor: Anchor, run_id: str) -> None:
    if header.anchor_id != anchor.anchor_id or header.high_watermark != anchor.high_watermark:
        raise BlobError(
            f"blob {anchor.blob_ref} is anchor {header.anchor_id} at {header.high_watermark},"
            f" the entry says anchor {anchor.anchor_id} at {anchor.high_watermark}"
        )
    if header.raw_size != anchor.size:
        raise BlobError(f"blob {anchor.blob_ref} holds {header.raw_size} bytes, not {anchor.size}")
    if run_id and header.run_id != run_id:
        raise BlobError(f"blob {anchor.blob_ref} belongs to run {header.run_id!r}")


def _alias_target(stored: bytes, ref: str) -> str:
    if len(stored) > MAX_ALIAS_BYTES:
        raise BlobError(f"alias {ref} is too long")
    try:
        target = stored.decode("ascii")
    except UnicodeDecodeError:
        raise BlobError(f"alias {ref} does not name a blob") from None
    match = BLOB_NAME_V2.match(target.removeprefix(f"{BLOB_DIR}/"))
    if not target.startswith(f"{BLOB_DIR}/") or match is None:
        raise BlobError(f"alias {ref} names {target!r}, not a blob of this run")
    return target


def _path(run_dir: Path, ref: str) -> Path:
    try:
        return inside(run_dir, ref)
    except ValueError as exc:
        raise BlobError(str(exc)) from None


def _read(path: Path, ref: str, limit: int) -> bytes:
    try:
        return open_regular(path, limit)
    except FileNotFoundError:
        raise BlobMissing(f"blob {ref} is not there") from None
    except OSError as exc:
        raise BlobError(f"blob {ref}: {exc.strerror}") from None
