"""Checking many frames' records at once: decompressed bodies packed into one buffer.

A deep scan and the reader both queue frame bodies in a :class:`RecordBatch` and check every
record of every queued frame with a fixed number of numpy operations, which is what makes a deep
scan fast. Records of frames that fail their checks may be garbage; callers drop those. The
check includes each frame's index (version 2 headers): its bounds must hold every record's
``ts_init`` and topic key, or a filtered reader would skip a frame it should have read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ringtape.storage.format.entry import (
    ENTRY_HEADER,
    TOPIC_SNAPSHOT_ANCHOR,
    Entry,
    bad_record_runs,
    decode_entry,
    explain_records,
)
from ringtape.storage.format.frame import (
    FrameHeader,
)
from ringtape.storage.format.frame_index import PAD, batch_indexes
from ringtape.storage.segment.file import WINDOW

_TOPIC_LEN_AT: Final = 8  # offset of topic_len in an entry header
_TS_INIT_AT: Final = 24  # offset of ts_init
_ANCHOR_TOPIC: Final = TOPIC_SNAPSHOT_ANCHOR.encode()


class EntryMark(NamedTuple):
    """Enough of one entry for lifecycle checks: its seq, ts_init and topic."""

    seq: int
    ts_init: int
    topic: str


def _mark_at(buf: memoryview, offset: int) -> EntryMark:
    _, _, topic_len, _, _, seq, ts_init, _ = ENTRY_HEADER.unpack_from(buf, offset)
    start = offset + ENTRY_HEADER.size
    topic = bytes(buf[start : start + topic_len]).decode("utf-8", "replace")
    return EntryMark(seq, ts_init, topic)


def _records_with_topic(
    buf: npt.NDArray[np.uint8], records: npt.NDArray[np.int64], topic: bytes
) -> npt.NDArray[np.intp]:
    """Indices into ``records`` of the records whose topic is ``topic``, vectorised.

    Records of frames that fail their checks may be garbage; the caller drops those.
    """
    size = len(topic)
    if len(buf) < ENTRY_HEADER.size + size or len(records) == 0:
        return np.zeros(0, np.intp)
    lengths = np.ndarray((len(buf) - 1,), "<u2", buf, 0, (1,))  # a u16 at every byte
    found = np.flatnonzero(lengths[np.minimum(records + _TOPIC_LEN_AT, len(buf) - 2)] == size)
    if found.size:
        names = np.ndarray((len(buf) - size + 1,), np.dtype(("V", size)), buf, 0, (1,))
        at = np.minimum(records[found] + ENTRY_HEADER.size, len(buf) - size)
        found = found[names[at] == np.void(topic)]
    return found


class RecordBatch:
    """Decompressed frame bodies packed into one buffer, their records checked in one go.

    Each body is placed so that its offset table is 4-aligned; ``check`` gathers every table
    and every record header with a handful of numpy operations for the whole batch. The queue
    (``offsets``, ``headers``, ``raw_headers``) stays readable after ``check`` until ``clear``.
    """

    def __init__(self, capacity: int = 2 * WINDOW) -> None:
        self._alloc(capacity)
        self.clear()

    def _alloc(self, capacity: int) -> None:
        capacity += -capacity % 4
        # PAD spare bytes at the end: the index check reads a few bytes past a record's start.
        self._room = capacity
        self._buf = np.zeros(capacity + PAD, np.uint8)
        self._mem = self._buf.data
        self._u4 = self._buf.view("<u4")

    def clear(self) -> None:
        self.offsets: list[int] = []  # of the frames in the file
        self.headers: list[FrameHeader] = []
        self.raw_headers: list[bytes] = []
        self._bases: list[int] = []
        self._used = 0
        self._records = np.zeros(0, np.int64)
        self._firsts = self._counts = self._anchor_hits = self._records

    def add(self, offset: int, header: FrameHeader, raw_header: bytes, body: bytes) -> bool:
        """Queue a body; ``False`` when there is no room (check and clear first)."""
        entry_len = header.raw_len - 4 * header.entry_count
        base = self._used + (-(self._used + entry_len) % 4)
        if base + header.raw_len > self._room:
            if self.headers:
                return False
            self._alloc(header.raw_len + 4)  # bounded: raw_len <= MAX_FRAME_RAW
            base = -entry_len % 4
        self._mem[base : base + header.raw_len] = body
        self.offsets.append(offset)
        self.headers.append(header)
        self.raw_headers.append(raw_header)
        self._bases.append(base)
        self._used = base + header.raw_len
        return True

    def check(self) -> dict[int, str]:
        """Check the records of every queued frame: the problems, by position in the queue."""
        if not self.headers:
            return {}
        counts = np.array([h.entry_count for h in self.headers], np.int64)
        bases = np.array(self._bases, np.int64)
        ends = bases + np.array([h.raw_len for h in self.headers], np.int64) - 4 * counts
        seqs = np.array([h.first_seq for h in self.headers], np.int64)
        firsts = np.cumsum(counts) - counts
        n = int(counts[-1] + firsts[-1])
        table = np.repeat(ends // 4 - firsts, counts) + np.arange(n, dtype=np.int64)
        records = self._u4[table].astype(np.int64) + np.repeat(bases, counts)
        self._records, self._firsts, self._counts = records, firsts, counts
        buf = self._buf[: self._used]
        self._anchor_hits = _records_with_topic(buf, records, _ANCHOR_TOPIC)
        problems = {}
        for j in bad_record_runs(buf, records, counts, bases, ends, seqs).tolist():
            h, lo = self.headers[j], self._bases[j]
            rel = records[firsts[j] : firsts[j] + counts[j]] - lo
            body = self._mem[lo : lo + h.raw_len]
            why = explain_records(body, rel, int(ends[j]) - lo, h.first_seq)
            problems[j] = why or "entry records do not check out"
        for j, why in self._index_problems(records, firsts).items():
            problems.setdefault(j, why)
        return problems

    def _index_problems(
        self, records: npt.NDArray[np.int64], firsts: npt.NDArray[np.int64]
    ) -> dict[int, str]:
        """Frames whose header index does not hold their records (version 1: none can)."""
        if all(h.version == 1 for h in self.headers):
            return {}
        safe = np.minimum(records, self._used)  # a bad frame's offsets may point anywhere
        ends = np.array(self._bases, np.int64) + np.array(
            [h.raw_len for h in self.headers], np.int64
        )
        found = batch_indexes(self._buf[: self._used + PAD], safe, firsts, ends)
        said = np.array([tuple(h.bounds) for h in self.headers], np.uint64).reshape(-1, 4)
        bad = (
            (found[:, 0] < said[:, 0])
            | (found[:, 1] > said[:, 1])
            | (found[:, 2] < said[:, 2])
            | (found[:, 3] > said[:, 3])
        )
        out = {}
        for j in np.flatnonzero(bad).tolist():
            f, s = found[j].tolist(), said[j].tolist()
            out[j] = (
                f"the frame header's index (ts_init {s[0]}..{s[1]}, topic keys"
                f" {s[2]:#x}..{s[3]:#x}) does not hold its records ({f[0]}..{f[1]},"
                f" {f[2]:#x}..{f[3]:#x})"
            )
        return out

    @property
    def buffer(self) -> npt.NDArray[np.uint8]:
        """The packed bodies (with :data:`PAD` spare bytes); valid until ``clear``."""
        return self._buf[: self._used + PAD]

    def good_records(self, n: int) -> npt.NDArray[np.int64]:
        """After ``check``: where each record of the first ``n`` queued frames starts in
        :attr:`buffer`, in seq order."""
        if n == 0:
            return self._records[:0]
        return self._records[: int(self._firsts[n - 1] + self._counts[n - 1])]

    def record_offsets(self, j: int) -> npt.NDArray[np.int64]:
        """Where each record of queued frame ``j`` starts in its body, after ``check``."""
        lo = self._firsts[j]
        rel: npt.NDArray[np.int64] = self._records[lo : lo + self._counts[j]] - self._bases[j]
        return rel

    def ts_backwards(self, good: list[int], last: int | None) -> tuple[int, int | None, int | None]:
        """Entries of the good queued frames ``good`` (after ``check``) whose ``ts_init`` is
        below the entry before them (``last``: the one before the first): ``(count, seq of the
        first such entry, the last ts_init)``."""
        buf = self._buf[: self._used]
        if not good or len(buf) < 32:
            return 0, None, last
        rows, at = self._records, None  # at: where each row is among all queued records
        if len(good) < len(self.headers):
            keep = np.zeros(len(self.headers), np.bool_)
            keep[good] = True
            at = np.flatnonzero(np.repeat(keep, self._counts))
            rows = rows[at]
        items = np.ndarray((len(buf) - 7,), np.dtype(("V", 8)), buf, 0, (1,))
        ts = items[np.minimum(rows + _TS_INIT_AT, len(buf) - 8)].view("<u8").reshape(-1)
        back = np.flatnonzero(ts[1:] < ts[:-1]) + 1
        count = int(back.size)
        first = self._seq_of(int(back[0] if at is None else at[back[0]])) if count else None
        if last is not None and int(ts[0]) < last:
            count += 1
            first = self._seq_of(0 if at is None else int(at[0]))
        return count, first, int(ts[-1])

    def _frame_of(self, i: int) -> int:
        """The queued frame that holds queued record ``i`` (after ``check``)."""
        return int(np.searchsorted(self._firsts, i, side="right")) - 1

    def _seq_of(self, i: int) -> int:
        """The seq of queued record ``i`` (after ``check``)."""
        j = self._frame_of(i)
        return self.headers[j].first_seq + i - int(self._firsts[j])

    def anchors(self, problems: dict[int, str]) -> Iterator[tuple[int, Entry]]:
        """``(j, entry)`` for each snapshot anchor entry in a good queued frame ``j``."""
        for i in self._anchor_hits.tolist():
            j = self._frame_of(i)
            if j not in problems:
                yield j, decode_entry(self._mem, int(self._records[i]))

    def mark(self, j: int, last: bool) -> EntryMark:
        """The first (or last) entry of queued frame ``j``, after ``check``."""
        i = int(self._firsts[j] + (self._counts[j] - 1 if last else 0))
        return _mark_at(self._mem, int(self._records[i]))
