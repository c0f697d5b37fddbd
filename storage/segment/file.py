"""A segment file opened for reading, through one bounded window.

Memory is bounded whatever the file says: a segment is read through one window (1 MiB, grown
only to the largest frame whose header checksum passed and whose lengths are within the
format's limits). The file is opened without following symlinks and must be a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

WINDOW: Final = 1 << 20


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
