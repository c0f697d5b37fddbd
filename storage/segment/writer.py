"""Appends frames to a stream's segment files, rolling at a size limit.

The writer never overwrites a byte: a segment is created with ``O_EXCL``, written by
appending, and rolled by fsyncing it and starting the next index whose header links to the last
frame of the one before. ``sync()`` is the group commit: one ``fdatasync`` for every frame
appended since the previous call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ringtape.storage.format.frame import (
    FORMAT_VERSION,
    FrameEncoder,
    build_body,
    encode_segment_header,
)
from ringtape.storage.format.frame_index import UNKNOWN, FrameIndex, frame_index
from ringtape.storage.run.layout import create_private_file, fsync_dir, segment_name

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
FLUSH_BYTES = 1024 * 1024

# A hook the writer process uses for fault injection in tests: called with the descriptor and
# the bytes about to be written, it may raise OSError (ENOSPC, EIO) like a full or failing disk.
WriteGuard = Callable[[int, bytes], None]


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
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
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
    ) -> int:
        """Compress and append one frame; returns its size. Frames are buffered and written
        together by ``flush()`` (one system call for a group); nothing is durable until sync().

        ``index`` (the frame's ``ts_init`` and topic key bounds) is computed here when not
        given; a caller that has already gathered the record headers of a whole batch may pass
        it (``frame_index.batch_indexes`` gives it for many frames at once).
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

    def flush(self) -> None:
        """Write the buffered frames to the current segment file."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._write(self._fd, data)

    def sync(self) -> None:
        """Write what is buffered and fdatasync it (no-op when nothing was appended)."""
        self.flush()
        if self._unsynced and self._fd >= 0:
            os.fdatasync(self._fd)
            self._unsynced = False

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1
