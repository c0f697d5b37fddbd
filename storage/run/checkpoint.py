"""The recovery checkpoint: where a stream's durable, already-rolled segments end.

Rules of this module:

1. One small file per stream, ``<run_dir>/<stream>.checkpoint``, replaced atomically (temp file,
   fsync, rename; the writer's next directory fsync makes the rename durable) each time the
   segment writer rolls, *after* the segment it describes was fsynced. So whatever checkpoint a
   crash leaves (the old one, the new one, or none) names bytes that are on disk.
2. A checkpoint is a hint, never the truth: :func:`checkpoint_start` checks it against the files
   (every segment up to it present, the last one of the size it names, its last frame header
   where it says, with the checksum it says) and returns ``None`` for anything that does not
   match, and then the reader scans the stream from its first segment as if there were none.
3. It does no I/O beyond reading and writing that file and the few bytes of one frame header.

Theory of operation: the boot sweep deep-scans only the segments after the checkpoint (in
practice the last one): the stream's checkpointed part was fdatasync'd when it was rolled, and
``ringtape verify`` checks it frame by frame. The checkpoint also carries what recovery would
otherwise have to read every frame of the run for: the last entry's seq and ``ts_init``, the
count of entries whose ``ts_init`` went back and, in the events stream, the snapshot anchors
(the manifest's anchor index).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import xxhash

from ringtape.storage.format.frame import FRAME_HEADER_SIZE, FormatError, decode_frame_header
from ringtape.storage.run.layout import (
    SEGMENT_RE,
    checkpoint_name,
    create_private_file,
    list_segments,
    open_regular,
)

CHECKPOINT_FORMAT: Final = 1
# Anchors make it grow with the run (about 150 bytes each); this bounds what a reader loads.
MAX_CHECKPOINT_BYTES: Final = 64 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, fails its checksum or has impossible fields."""


@dataclass(frozen=True)
class Checkpoint:
    """Segments ``0..segment`` of ``stream`` are complete, fsynced and end as described."""

    stream: str
    segment: int  # the last segment this checkpoint covers, whole
    size: int  # that segment's size in bytes: where its last frame ends
    last_seq: int  # the seq of the last entry in it (0: no entry yet)
    last_frame_offset: int  # where its last frame starts (0: it holds no frame)
    last_checksum: int  # that frame's header checksum: the next segment's prev_link
    last_ts_init: int  # the ts_init of the last entry
    # Events stream: every snapshot anchor entry in the covered segments, as the manifest's
    # anchor index lists them ({"high_watermark", "blob_ref", "content_hash", "size", "seq"}).
    anchors: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # Entries in the covered segments whose ts_init is below the entry before them.
    ts_init_backwards: int = 0

    def body(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "stream": self.stream,
            "segment": self.segment,
            "size": self.size,
            "last_seq": self.last_seq,
            "last_frame_offset": self.last_frame_offset,
            "last_checksum": self.last_checksum,
            "last_ts_init": self.last_ts_init,
            "anchors": list(self.anchors),
            "ts_init_backwards": self.ts_init_backwards,
        }

    def encode(self) -> bytes:
        """The file's bytes: the body's canonical JSON with its XXH3-64 as ``checksum``."""
        text = _canonical(self.body())
        sealed = {**self.body(), "checksum": f"{xxhash.xxh3_64_intdigest(text):016x}"}
        return (json.dumps(sealed, separators=(",", ":"), sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError):
            raise CheckpointError("not JSON") from None
        if not isinstance(raw, dict):
            raise CheckpointError("not a JSON object")
        stated = raw.pop("checksum", None)
        if stated != f"{xxhash.xxh3_64_intdigest(_canonical(raw)):016x}":
            raise CheckpointError("checksum does not match")
        if raw.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"format {raw.get('format')!r} is not {CHECKPOINT_FORMAT}")
        ints = ("segment", "size", "last_seq", "last_frame_offset", "last_checksum")
        if not all(type(raw.get(k)) is int and raw[k] >= 0 for k in (*ints, "last_ts_init")):
            raise CheckpointError("a field is missing or not a non-negative integer")
        backwards = raw.get("ts_init_backwards", 0)
        if type(backwards) is not int or backwards < 0:
            raise CheckpointError("ts_init_backwards is not a non-negative integer")
        anchors = raw.get("anchors")
        if not isinstance(anchors, list) or not all(isinstance(a, dict) for a in anchors):
            raise CheckpointError("anchors is not a list of objects")
        return cls(
            str(raw.get("stream")),
            raw["segment"],
            raw["size"],
            raw["last_seq"],
            raw["last_frame_offset"],
            raw["last_checksum"],
            raw["last_ts_init"],
            tuple(anchors),
            backwards,
        )


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def write_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Replace the stream's checkpoint: temp file, fsync, rename. The caller fsyncs ``run_dir``
    (the segment writer does, right after it creates the next segment)."""
    name = checkpoint_name(checkpoint.stream)
    tmp = run_dir / f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = create_private_file(tmp)
    try:
        view = memoryview(checkpoint.encode())
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, run_dir / name)


def read_checkpoint(run_dir: Path, stream: str) -> Checkpoint | None:
    """The stream's checkpoint, or ``None`` when there is none or it does not check out."""
    try:
        data = open_regular(run_dir / checkpoint_name(stream), MAX_CHECKPOINT_BYTES)
    except OSError:
        return None
    if len(data) > MAX_CHECKPOINT_BYTES:
        return None
    try:
        checkpoint = Checkpoint.decode(data)
    except CheckpointError:
        return None
    return checkpoint if checkpoint.stream == stream else None


class StreamStart(NamedTuple):
    """Where a scan of a stream picks up after a checkpoint: the segment it starts at,
    the link that segment's header must carry and the seq it must start at."""

    segment: int
    link: int
    seq: int


def checkpoint_start(run_dir: Path, checkpoint: Checkpoint) -> StreamStart | None:
    """Check ``checkpoint`` against the files; ``None`` when anything disagrees (then scan the
    whole stream). Reads one frame header."""
    segments = list_segments(run_dir, checkpoint.stream)
    indexes = []
    for path in segments:
        m = SEGMENT_RE.match(path.name)
        indexes.append(int(m.group(2)) if m else -1)
    if indexes[: checkpoint.segment + 1] != list(range(checkpoint.segment + 1)):
        return None  # a covered segment is missing: let the full scan say what is wrong
    path = segments[checkpoint.segment]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != checkpoint.size:
            return None
        if checkpoint.last_frame_offset == 0:  # a segment without a frame: nothing to check
            return None
        raw = os.pread(fd, FRAME_HEADER_SIZE, checkpoint.last_frame_offset)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        header = decode_frame_header(raw)
    except FormatError:
        return None
    if (
        header.checksum != checkpoint.last_checksum
        or header.last_seq != checkpoint.last_seq
        or checkpoint.last_frame_offset + header.size != checkpoint.size
    ):
        return None
    return StreamStart(checkpoint.segment + 1, checkpoint.last_checksum, checkpoint.last_seq + 1)
