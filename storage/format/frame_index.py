"""A frame's index: bounds of its records' ``ts_init`` and topics, so readers skip frames unopened.

Version 2 frame headers (``storage/FORMAT.md``, section 4) carry four u64 fields computed from
the frame's records: the smallest and largest ``ts_init``, and the smallest and largest *topic
key*. A reader with a time window or a topic glob skips a frame whose header proves that no
record of it can match, without reading or decompressing its stored bytes. Both tests are
conservative: a frame they do not rule out may still hold no match (the reader then filters
record by record), but a frame they rule out never holds one.

Rules of this module:

1. The topic key of a record is its topic's first ``min(len, 8)`` bytes, zero-padded to eight,
   read as a *big-endian* u64: keys order like the topics themselves, byte by byte, so every
   topic that starts with a given prefix has a key in one interval (:func:`prefix_interval`).
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

_TOPIC_LEN_AT: Final = 8  # u16 topic_len in an entry header
_TS_INIT_AT: Final = 24
_TOPIC_AT: Final = 40
# Columns gathered per record: the u64s at +8 (topic_len in its low 16 bits), +24 (ts_init) and
# +40 (the topic's first bytes).
_COLUMNS: Final = np.array([_TOPIC_LEN_AT, _TS_INIT_AT, _TOPIC_AT], np.int64)
PAD: Final = _TOPIC_AT + KEY_BYTES
# _KEEP[n]: the big-endian mask keeping the first n of 8 bytes.
_KEEP: Final = np.array(
    [((1 << (8 * n)) - 1) << (8 * (8 - n)) for n in range(KEY_BYTES + 1)], np.uint64
)
_M16: Final = np.uint64(0xFFFF)
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


def topic_key(topic: bytes) -> int:
    """The key of one topic (rule 1)."""
    return int.from_bytes(topic[:KEY_BYTES].ljust(KEY_BYTES, b"\0"), "big")


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


def _columns(
    buf: npt.NDArray[np.uint8], records: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """``ts_init`` and the topic key of every record at ``records`` (``buf`` must hold
    :data:`PAD` bytes from each record's start)."""
    words = np.ndarray((len(buf) - 7,), "<u8", buf, 0, (1,))
    rows = words[records[:, None] + _COLUMNS]
    keep = _KEEP[np.minimum(rows[:, 0] & _M16, KEY_BYTES).astype(np.intp)]
    keys: npt.NDArray[np.uint64] = rows[:, 2].byteswap() & keep
    ts: npt.NDArray[np.uint64] = rows[:, 1]
    return ts, keys


def frame_index(body: bytes | bytearray | memoryview, offsets: npt.NDArray[np.int64]) -> FrameIndex:
    """The index of one frame: ``body`` holds its records from offset 0 (a frame body, or just
    its records), ``offsets`` where each starts (at least one)."""
    if int(offsets[-1]) + PAD > len(body):  # a tiny last record: read zeros past its end
        body = bytes(body) + bytes(PAD)
    buf = np.frombuffer(body, dtype=np.uint8)
    ts, keys = _columns(buf, offsets)
    return FrameIndex(int(ts.min()), int(ts.max()), int(keys.min()), int(keys.max()))


def batch_indexes(
    buf: npt.NDArray[np.uint8], records: npt.NDArray[np.int64], firsts: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """The index of many frames at once, as an ``(frames, 4)`` array: run ``j`` of records
    starts at ``records[firsts[j]]`` (every run non-empty). ``buf`` must hold :data:`PAD`
    bytes after every record's start (pad it)."""
    ts, keys = _columns(buf, records)
    return np.stack(
        (
            np.minimum.reduceat(ts, firsts),
            np.maximum.reduceat(ts, firsts),
            np.minimum.reduceat(keys, firsts),
            np.maximum.reduceat(keys, firsts),
        ),
        axis=1,
    )
