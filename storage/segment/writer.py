"""Appends frames to a stream's segment files, rolling at a size limit.

The writer never overwrites a byte: a segment is created with ``O_EXCL``, written by
appending, and rolled by fsyncing it, replacing the stream's recovery checkpoint
(``storage/run/checkpoint.py``: where the fsynced segments end, and the anchors in them) and
starting the next index whose header links to the last frame of the one before; one directory
fsync then makes both the checkpoint's rename and the new segment's name durable. ``sync()``
is the group commit: one ``fdatasync`` for every frame appended since the previous call.

A failed ``fdatasync`` is never retried (PostgreSQL's "fsyncgate": after a failure the kernel
may have dropped the dirty pages and marked them clean, so a second call can succeed without
writing them). The first failure is kept and raised again by every later ``sync()`` and
``close()``: nothing appended after the last successful sync is ever reported durable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ringtape.storage.format.entry import TOPIC_SNAPSHOT_ANCHOR, EntryError, decode_entry
from ringtape.storage.format.frame import (
    FORMAT_VERSION,
    FrameEncoder,
    build_body,
    encode_segment_header,
)
from ringtape.storage.format.frame_index import UNKNOWN, FrameIndex, frame_index, prefix_interval
from ringtape.storage.run.blobs import Anchor, BlobError
from ringtape.storage.run.checkpoint import Checkpoint, write_checkpoint
from ringtape.storage.run.layout import create_private_file, fsync_dir, segment_name

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
FLUSH_BYTES = 1024 * 1024

# A hook the writer process uses for fault injection in tests: called with the descriptor and
# the bytes about to be written, it may raise OSError (ENOSPC, EIO) like a full or failing disk.
WriteGuard = Callable[[int, bytes], None]
# Likewise called with the descriptor before each fdatasync; it may raise OSError (EIO).
SyncGuard = Callable[[int], None]
_ANCHOR_TOPIC = TOPIC_SNAPSHOT_ANCHOR.encode()
_RINGTAPE_KEYS = prefix_interval(b"ringtape.")  # the topic keys of ringtape's own entries


class SegmentWriter:
    """Appends frames of one stream (``events`` or ``markers``) of one run."""

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        stream: str,
        stream_kind: int,
        *,
        max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        compression_level: int = 1,
        write_guard: WriteGuard | None = None,
        format_version: int = FORMAT_VERSION,
        sync_guard: SyncGuard | None = None,
    ) -> None:
        if max_segment_bytes < 4096:
            raise ValueError(f"max_segment_bytes must be >= 4096, got {max_segment_bytes}")
        self._run_dir = run_dir
        self._run_id = run_id
        self._stream = stream
        self._kind = stream_kind
        self._max = max_segment_bytes
        self._version = format_version
        self._encoder = FrameEncoder(compression_level, version=format_version)
        self._guard = write_guard
        self._sync_guard = sync_guard
        self._sync_failed: OSError | None = None
        # What the checkpoint at the next roll records: the last frame appended and the anchors.
        self._last_frame_offset = 0
        self._last_seq = 0
        self._last_ts_init = 0
        self._anchors: list[dict[str, object]] = []
        self._ts_backwards = 0  # entries whose ts_init went back, in the frames appended
        self._fd = -1
        self._index = -1
        self._size = 0
        self._link = 0  # checksum the next frame chains to
        self._unsynced = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.frames = 0
        self.raw_bytes = 0
        self.stored_bytes = 0

    @property
    def segment_index(self) -> int:
        return self._index

    def _open_next(self, first_seq: int) -> None:
        if self._fd >= 0:
            self._check_sync()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            checkpoint = Checkpoint(
                self._stream,
                self._index,
                self._size,
                self._last_seq,
                self._last_frame_offset,
                self._link,
                self._last_ts_init,
                tuple(self._anchors),
                self._ts_backwards,
            )
            write_checkpoint(self._run_dir, checkpoint)  # durable with the fsync_dir below
            self._last_frame_offset = 0
        self._index += 1
        path = self._run_dir / segment_name(self._stream, self._index)
        header = encode_segment_header(
            self._kind,
            self._index,
            first_seq,
            self._link,
            time.time_ns(),
            self._run_id,
            self._version,
        )
        fd = create_private_file(path)
        try:
            self._write(fd, header)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._size = len(header)
        self._link = int.from_bytes(header[-8:], "little")
        fsync_dir(self._run_dir)
        self._unsynced = True

    def _write(self, fd: int, data: bytes) -> None:
        if self._guard is not None:
            self._guard(fd, data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def append(
        self,
        entries: bytes | bytearray | memoryview,
        offsets: npt.NDArray[np.int64],
        first_seq: int,
        index: FrameIndex | None = None,
        ts_backwards: int = 0,
    ) -> int:
        """Compress and append one frame; returns its size. Frames are buffered and written
        together by ``flush()`` (one system call for a group); nothing is durable until sync().

        ``index`` (the frame's ``ts_init`` and topic key bounds) is computed here when not
        given; a caller that has already gathered the record headers of a whole batch may pass
        it (``frame_index.batch_indexes`` gives it for many frames at once). ``ts_backwards``:
        how many of the frame's entries have a ``ts_init`` below the entry before them (the
        writer counts them; the checkpoint carries the total).
        """
        if self._fd < 0 or self._size >= self._max:
            self.flush()
            self._open_next(first_seq)
        body = build_body(entries, offsets)
        if self._version == 1:
            index = UNKNOWN
        elif index is None:
            index = frame_index(body, offsets)
        frame, self._link = self._encoder.encode(body, len(offsets), first_seq, self._link, index)
        self._last_frame_offset = self._size
        self._last_seq = first_seq + len(offsets) - 1
        self._ts_backwards += ts_backwards
        last = int(offsets[-1])
        self._last_ts_init = int.from_bytes(entries[last + 24 : last + 32], "little")
        # Rare: only a frame whose topic bounds admit ringtape's own topics is searched, and
        # only one that holds an anchor topic is decoded.
        if (
            self._stream == "events"
            and index.topic_min <= _RINGTAPE_KEYS[1]
            and index.topic_max >= _RINGTAPE_KEYS[0]
            and _ANCHOR_TOPIC in body
        ):
            self._note_anchors(body, offsets)
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        self._size += len(frame)
        self._unsynced = True
        self.frames += 1
        self.raw_bytes += len(entries)
        self.stored_bytes += len(frame)
        return len(frame)

    def _note_anchors(self, body: bytes, offsets: npt.NDArray[np.int64]) -> None:
        """Keep the frame's snapshot anchors for the checkpoint (as the manifest indexes them)."""
        for offset in offsets.tolist():
            try:
                entry = decode_entry(body, offset)
                if entry.topic == TOPIC_SNAPSHOT_ANCHOR:
                    anchor = Anchor.from_payload(entry.payload, entry.seq)
                    self._anchors.append(anchor.to_index())
            except (EntryError, BlobError):
                continue  # not an anchor recovery or replay would use either

    def flush(self) -> None:
        """Write the buffered frames to the current segment file."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._write(self._fd, data)

    def _check_sync(self) -> None:
        if self._sync_failed is not None:
            raise self._sync_failed

    def sync(self) -> None:
        """Write what is buffered and fdatasync it (no-op when nothing was appended). After a
        failed fdatasync every call raises that failure again, without syncing."""
        self._check_sync()
        self.flush()
        if self._unsynced and self._fd >= 0:
            try:
                if self._sync_guard is not None:
                    self._sync_guard(self._fd)
                os.fdatasync(self._fd)
            except OSError as exc:
                self._sync_failed = exc
                raise
            self._unsynced = False

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1
