"""Entries as columns: every field of many checked frames at once, with numpy, no loop per entry.

:func:`iter_columns` walks a run like ``storage/read/reader.py`` (every frame checked, frames the
filter rules out skipped on their headers) and yields, per batch of frames, a :class:`Columns`:
the packed frame bodies and, for each wanted entry, its fixed fields and where its variable
fields lie in that buffer. The Arrow table (``storage/read/arrow.py``), ``ringtape dump`` and
``ringtape stats`` are built on it.

Rules of this module:

1. Selection is exact: ``from_seq``/``to_seq`` and the time window apply to every entry; the
   topic globs are applied by the caller on the topic values (they are text, decoded strictly),
   after the frame-level skip that the index allows.
2. A :class:`Columns` refers to a buffer the walk reuses: it is valid until the next one is
   asked for, unless it was made with ``own=True`` (the buffer is then a copy it keeps).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from ringtape.storage.format.entry import (
    ENTRY_HEADER_SIZE,
    FLAG_CAUSATION,
    FLAG_CORRELATION,
    HEADER_DTYPE,
)
from ringtape.storage.read.reader import FrameFilter, Progress, iter_batches

_HEADER_ITEM: Final = np.dtype(("V", ENTRY_HEADER_SIZE))


@dataclass(frozen=True)
class Columns:
    """One batch of entries, field by field (every array has one element per entry)."""

    buf: npt.NDArray[np.uint8]  # the packed frame bodies the starts point into
    seq: npt.NDArray[np.uint64]
    ts_init: npt.NDArray[np.uint64]
    ts_publish: npt.NDArray[np.uint64]
    flags: npt.NDArray[np.uint8]
    topic_start: npt.NDArray[np.int64]
    topic_len: npt.NDArray[np.int64]
    type_start: npt.NDArray[np.int64]
    type_len: npt.NDArray[np.int64]
    payload_start: npt.NDArray[np.int64]
    payload_len: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def correlation_start(self) -> npt.NDArray[np.int64]:
        """Where the correlation id is (valid where ``flags`` has it)."""
        start: npt.NDArray[np.int64] = self.type_start + self.type_len
        return start

    @property
    def causation_start(self) -> npt.NDArray[np.int64]:
        """Where the causation id is (valid where ``flags`` has it)."""
        start: npt.NDArray[np.int64] = self.correlation_start + 16 * (
            (self.flags & FLAG_CORRELATION) != 0
        )
        return start

    def take(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Columns:
        """The entries selected by a mask or an index array (same buffer)."""
        return Columns(
            self.buf,
            self.seq[keep],
            self.ts_init[keep],
            self.ts_publish[keep],
            self.flags[keep],
            self.topic_start[keep],
            self.topic_len[keep],
            self.type_start[keep],
            self.type_len[keep],
            self.payload_start[keep],
            self.payload_len[keep],
        )


def columns_of(
    buf: npt.NDArray[np.uint8], records: npt.NDArray[np.int64], *, own: bool = False
) -> Columns:
    """The columns of the (checked) records starting at ``records`` in ``buf``."""
    if own:
        buf = buf.copy()
    if len(records) == 0:
        z = np.zeros(0, np.int64)
        u = np.zeros(0, np.uint64)
        return Columns(buf, u, u, u, np.zeros(0, np.uint8), z, z, z, z, z, z)
    windows = np.ndarray((len(buf) - ENTRY_HEADER_SIZE + 1,), _HEADER_ITEM, buf, 0, (1,))
    h = windows[records].view(HEADER_DTYPE)
    flags = h["flags"]
    topic_len = h["topic_len"].astype(np.int64)
    type_len = h["payload_type_len"].astype(np.int64)
    topic_start = records + ENTRY_HEADER_SIZE
    type_start = topic_start + topic_len
    ids = 16 * ((flags & FLAG_CORRELATION) != 0) + 16 * ((flags & FLAG_CAUSATION) != 0)
    return Columns(
        buf,
        h["seq"],
        h["ts_init"],
        h["ts_publish"],
        flags,
        topic_start,
        topic_len,
        type_start,
        type_len,
        type_start + type_len + ids,
        h["payload_len"].astype(np.int64),
    )


def select(
    cols: Columns, from_seq: int, to_seq: int | None, since: int | None, until: int | None
) -> Columns:
    """The entries in the seq range and time window (rule 1); the same object if all are."""
    keep: npt.NDArray[np.bool_] | None = None

    def narrow(mask: npt.NDArray[np.bool_]) -> None:
        nonlocal keep
        keep = mask if keep is None else keep & mask

    n = len(cols)
    if n and int(cols.seq[0]) < from_seq:
        narrow(cols.seq >= np.uint64(from_seq))
    if n and to_seq is not None and int(cols.seq[-1]) > to_seq:
        narrow(cols.seq <= np.uint64(to_seq))
    if since is not None:
        narrow(cols.ts_init >= np.uint64(since))
    if until is not None:
        narrow(cols.ts_init <= np.uint64(until))
    if keep is None or bool(keep.all()):
        return cols
    return cols.take(keep)


def iter_columns(
    run_dir: Path,
    stream: str = "events",
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    since: int | None = None,
    until: int | None = None,
    topics: Sequence[str] | None = None,
    strict: bool | None = None,
    own: bool = False,
    progress: Progress | None = None,
    from_segment: bool = False,
) -> Iterator[Columns]:
    """The wanted entries of a run's stream, a batch of frames at a time, in seq order.

    Frames outside the seq range or ruled out by the time window or topic globs are skipped
    on their headers; entries are then selected by seq and time (rule 1). ``topics`` is only
    used to skip frames here: the caller still matches each entry's topic. Empty batches are
    not yielded. ``CorruptionError`` at the first damage, after the good entries before it.
    """
    wanted = FrameFilter(since, until, None if topics is None else list(topics))
    for batch, n in iter_batches(
        run_dir,
        stream,
        from_seq=from_seq,
        to_seq=to_seq,
        strict=strict,
        wanted=wanted,
        progress=progress,
        from_segment=from_segment,
    ):
        cols = select(
            columns_of(batch.buffer, batch.good_records(n), own=own),
            from_seq,
            to_seq,
            since,
            until,
        )
        if len(cols):
            yield cols
