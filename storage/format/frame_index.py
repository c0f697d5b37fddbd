"""A frame's index: bounds of its records' ``ts_init`` and topics, so readers skip frames unopened.

Version 2 frame headers (``storage/FORMAT.md``, section 4) carry four u64 fields computed from
the frame's records: the smallest and largest ``ts_init``, and the smallest and largest *topic
key*. A reader with a time window or a topic glob skips a frame whose header proves that no
record of it can match, without reading or decompressing its stored bytes. Both tests are
conservative: a frame they do not rule out may still hold no match (the reader then filters
record by record), but a frame they rule out never holds one.

Rules of this module:

1. The topic key of a record is the eight bytes at offset 40 of the record, read as a
   *big-endian* u64: the topic's first eight bytes, or for a shorter topic the topic and then
   whatever follows it in the frame body (zero bytes past the body's end). Keys order like the
   topics themselves, byte by byte, so every topic that starts with a given prefix has a key in
   one interval (:func:`prefix_interval`), whatever follows a short topic. Not masking the
   bytes after a short topic saves the writer the work of reading each topic's length.
2. The writer computes the index with one gather over the record offsets and a few numpy
   reductions per frame (no loop per record: the writer's CPU per entry is what a live trader
   pays); verification recomputes it for many frames at once and reports any difference.
3. A glob (``fnmatch``: ``*``, ``?``, ``[…]``) rules frames out only through its literal prefix
   (the characters before the first wildcard): a glob starting with a wildcard matches every
   frame. A topic filter cannot be sharper than the first eight bytes of a topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

TS_MAX: Final = (1 << 64) - 1
KEY_MAX: Final = (1 << 64) - 1
KEY_BYTES: Final = 8

_TS_INIT_AT: Final = 24
_TOPIC_AT: Final = 40
# Columns gathered per record: the u64s at +24 (ts_init) and +40 (the topic's first bytes).
_COLUMNS: Final = np.array([[_TS_INIT_AT], [_TOPIC_AT]], np.int64)
PAD: Final = _TOPIC_AT + KEY_BYTES
# _KEEP[n]: the big-endian mask keeping the first n of 8 bytes.
_KEEP: Final = np.array(
    [((1 << (8 * n)) - 1) << (8 * (8 - n)) for n in range(KEY_BYTES + 1)], np.uint64
)
_WILDCARDS: Final = "*?["


class FrameIndex(NamedTuple):
    """The index fields of one frame header."""

    ts_min: int
    ts_max: int
    topic_min: int
    topic_max: int

    @classmethod
    def unknown(cls) -> FrameIndex:
        """What a version 1 frame (which has no index) is taken to hold: anything."""
        return cls(0, TS_MAX, 0, KEY_MAX)


UNKNOWN: Final = FrameIndex.unknown()


def record_key(body: bytes, offset: int) -> int:
    """The topic key of the record at ``offset`` of a frame body (rule 1), one at a time."""
    at = offset + _TOPIC_AT
    return int.from_bytes(body[at : at + KEY_BYTES].ljust(KEY_BYTES, b"\0"), "big")


def prefix_interval(prefix: bytes) -> tuple[int, int]:
    """The keys of every topic that starts with ``prefix`` lie in this closed interval."""
    head = prefix[:KEY_BYTES]
    rest = KEY_BYTES - len(head)
    lo = int.from_bytes(head + b"\0" * rest, "big")
    return lo, lo | ((1 << (8 * rest)) - 1)


class TopicQuery:
    """Which frames a set of topic globs can match, from their topic key bounds (rule 3)."""

    def __init__(self, globs: Sequence[str]) -> None:
        self.globs = tuple(globs)
        spans: list[tuple[int, int]] = []
        for glob in self.globs:
            cut = min([i for i in (glob.find(c) for c in _WILDCARDS) if i >= 0] + [len(glob)])
            if cut == 0:
                spans = []
                break
            spans.append(prefix_interval(glob[:cut].encode()))
        # ``None``: some glob can match any topic, so no frame is ruled out.
        self._spans: tuple[tuple[int, int], ...] | None = tuple(spans) if spans else None

    def may_match(self, index: FrameIndex) -> bool:
        """Can a frame with this index hold a record matching some glob?"""
        if self._spans is None:
            return True
        return any(lo <= index.topic_max and hi >= index.topic_min for lo, hi in self._spans)


def _columns(buf: npt.NDArray[np.uint8], records: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """``(2, n)``: the ``ts_init`` and the topic key of every record at ``records`` (``buf``
    must hold :data:`PAD` bytes from each record's start); one gather, rows contiguous so that
    each reduction runs along memory."""
    words = np.ndarray((len(buf) - 7,), "<u8", buf, 0, (1,))
    rows: npt.NDArray[np.uint64] = words[records[None, :] + _COLUMNS]
    rows[1].byteswap(inplace=True)
    return rows


def frame_index(body: bytes | bytearray | memoryview, offsets: npt.NDArray[np.int64]) -> FrameIndex:
    """The index of one frame: ``body`` is its body (records then offset table), ``offsets``
    where each record starts (at least one)."""
    if int(offsets[-1]) + PAD > len(body):  # a tiny last record: read zeros past the end
        body = bytes(body) + bytes(PAD)
    rows = _columns(np.frombuffer(body, dtype=np.uint8), offsets)
    lo, hi = rows.min(axis=1).tolist(), rows.max(axis=1).tolist()
    return FrameIndex(lo[0], hi[0], lo[1], hi[1])


def batch_indexes(
    buf: npt.NDArray[np.uint8],
    records: npt.NDArray[np.int64],
    firsts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
) -> npt.NDArray[np.uint64]:
    """The index of many frames at once, as an ``(frames, 4)`` array: run ``j`` of records
    starts at ``records[firsts[j]]`` (every run non-empty) and its body ends at ``ends[j]`` in
    ``buf`` (bytes past it read as zero, as the writer saw them). ``buf`` must hold :data:`PAD`
    bytes after every record's start (pad it)."""
    rows = _columns(buf, records)
    counts = np.diff(np.append(firsts, len(records)))
    over = records + _TOPIC_AT + KEY_BYTES - np.repeat(ends, counts)
    late = np.flatnonzero(over > 0)
    if late.size:  # keys that ran past their body's end: keep only the bytes inside it
        rows[1, late] &= _KEEP[KEY_BYTES - np.minimum(over[late], KEY_BYTES)]
    return np.stack(
        (
            np.minimum.reduceat(rows[0], firsts),
            np.maximum.reduceat(rows[0], firsts),
            np.minimum.reduceat(rows[1], firsts),
            np.maximum.reduceat(rows[1], firsts),
        ),
        axis=1,
    )
