"""The shared-memory SPSC entry ring: layout, the producer's hot path, the consumer's bulk take.

Theory of operation
-------------------
The region is a control block, an index array and a data ring::

    [control: 64 u64 words][index: slots u64][data: ring_bytes]

The producer (the kernel thread calling ``append``) encodes each entry record — the same bytes
a segment stores, see ``storage/entry.py`` — straight into the data ring at its absolute byte
position ``pos`` (physical offset ``pos % ring_bytes``; a record never straddles the end, the
producer skips to the next lap instead), and then publishes it by storing ``pos`` in
``index[seq % slots]``. That one ``memoryview.cast("Q")`` store is the commit (never
``struct.pack_into``, which zeroes its target before writing). There is no separate write
counter for the producer to maintain: the index slot is it.

The consumer (the writer process) finds the frontier itself: for the seqs after ``READ_SEQ`` it
looks at index slots and record headers and accepts a record only if its slot points at or
after ``READ_POS`` (a slot from an earlier lap points before it; positions start at
``ring_bytes``, one lap in, so that the zeroed slots of a fresh ring point before the first
record too), its header carries that
very ``seq``, its length is in bounds and it ends where the next record starts. The first record
that fails is the frontier; it is simply looked at again on the next poll. The consumer then
returns ``READ_SEQ``/``READ_POS`` to free space.

The producer makes no system call on the hot path: the one exception is the doorbell, rung only
when the consumer sleeps and has asked to be woken at a seq the producer reached
(``WAKE_SEQ``), once per sleep.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ringtape.capture import control
from ringtape.storage.format.entry import ENTRY_HEADER_SIZE, TS_PUBLISH_OFFSET
from ringtape.storage.format.frame_index import FrameIndex

# Control block words (capture/control.py has the layout both rings share).
MAGIC: Final = control.MAGIC
WAKE_SEQ: Final = control.WAKE_SEQ
WAKE_NEVER: Final = control.WAKE_NEVER
# producer line
CLOSE_REQUEST: Final = control.CLOSE_REQUEST  # seq of the last entry to make durable, then exit
# consumer line
READ_SEQ: Final = control.READ_SEQ
READ_POS: Final = 17
DURABLE_SEQ: Final = control.DURABLE
WRITER_STATE: Final = control.STATE
WRITER_ERRNO: Final = control.ERRNO
WRITER_PID: Final = control.CHILD_PID
WRITER_HEARTBEAT_NS: Final = control.HEARTBEAT_NS
# The writer's running totals (read by EventStore.stats(); mirrored into writer.lock for
# `ringtape inspect`).
SYNCS: Final = 24
FRAMES_WRITTEN: Final = 25
BYTES_RAW: Final = 26
BYTES_STORED: Final = 27
TS_BACKWARDS: Final = 28  # entries whose ts_init is below the one before (a clock going back)
TS_BACKWARDS_FIRST: Final = 29  # the seq of the first of them
CONTROL_BYTES: Final = control.CONTROL_BYTES

RING_MAGIC: Final = 0x52494E4754415045  # "RINGTAPE"

MIN_RING_BYTES: Final = 256 * 1024
WALK_MAX: Final = 256  # takes up to this many records walk the ring (see RingConsumer.take)
FRAME_BYTES: Final = 4 * 1024 * 1024  # records per frame, past its first (frames stay small)
BYTES_PER_SLOT: Final = 512


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class RingGeometry:
    """Sizes derived from ``channel_capacity``: entry slots and a byte budget, powers of two."""

    capacity: int  # entries the ring may hold (channel_capacity)
    slots: int  # index slots, a power of two >= capacity
    ring_bytes: int

    @classmethod
    def for_capacity(cls, channel_capacity: int) -> RingGeometry:
        slots = _pow2_at_least(channel_capacity)
        ring_bytes = _pow2_at_least(max(MIN_RING_BYTES, channel_capacity * BYTES_PER_SLOT))
        return cls(channel_capacity, slots, ring_bytes)

    @property
    def max_record(self) -> int:
        """The largest record accepted: a quarter of the ring, so one never starves the rest."""
        return self.ring_bytes // 4

    @property
    def region_size(self) -> int:
        return CONTROL_BYTES + 8 * self.slots + self.ring_bytes


class RingViews:
    """Typed views of a mapped region; both sides build one."""

    def __init__(self, buf: memoryview, geometry: RingGeometry) -> None:
        self.geometry = geometry
        self.control = control.ControlBlock(buf)
        self.ctrl = self.control.words
        index_end = CONTROL_BYTES + 8 * geometry.slots
        self.index = buf[CONTROL_BYTES:index_end].cast("Q")
        self.data = buf[index_end : index_end + geometry.ring_bytes]
        self.index_np: npt.NDArray[np.uint64] = np.frombuffer(self.index, dtype=np.uint64)
        self.data_np: npt.NDArray[np.uint8] = np.frombuffer(self.data, dtype=np.uint8)

    def init_control(self, producer_pid: int) -> None:
        g = self.geometry
        self.ctrl[READ_POS] = g.ring_bytes  # first_position(): one lap in
        self.control.init(RING_MAGIC, g.slots, g.ring_bytes, producer_pid)

    @property
    def first_position(self) -> int:
        """Where the first record goes: one lap in, so that a zeroed index slot (0) always
        points before any record and can never pass for a published one."""
        return self.geometry.ring_bytes

    def mismatch(self, producer_pid: int) -> str | None:
        g = self.geometry
        return self.control.mismatch(RING_MAGIC, g.slots, g.ring_bytes, producer_pid)

    def release(self) -> None:
        del self.index_np, self.data_np
        for view in (self.index, self.data):
            view.release()
        self.control.release()


_LEN_SPAN: Final = np.arange(0, 4, dtype=np.int64)
_SEQ_SPAN: Final = np.arange(16, 24, dtype=np.int64)
_TS_INIT: Final = np.arange(24, 32, dtype=np.int64)
_TS_PUBLISH: Final = np.arange(32, 40, dtype=np.int64)
_WALK_HEADER: Final = struct.Struct("<I12xQQ")  # record_len, seq, ts_init
_TOPIC_KEY: Final = struct.Struct(">Q")  # the frame index's topic key: 8 bytes at +40
_KEY_END: Final = 48  # a record at least this long holds its whole topic key
_TS_PUBLISH_AT: Final = struct.Struct("<Q")


@dataclass
class Batch:
    """Entries ``first_seq .. first_seq + count - 1`` copied out of the ring, ``ts_publish``
    stamped."""

    first_seq: int
    records: bytearray
    offsets: npt.NDArray[np.int64]  # start of each record in ``records``
    end_pos: int  # absolute ring position after the last record
    ts_backwards: int = 0  # entries whose ts_init is below the entry before them
    ts_backwards_first: int = 0  # the seq of the first of them (0: none)
    ts_backwards_seqs: npt.NDArray[np.int64] | None = None  # the seqs of all of them
    # Each record's ts_init and topic key (storage/format/frame_index.py), as the ring walk read
    # them on its way: the frame index without a pass over the frame. None when the take was
    # vectorised, or when a record is too short for its key to lie inside it.
    ts_inits: list[int] | None = None
    topic_keys: list[int] | None = None

    def frame_index(self, first_seq: int, count: int) -> FrameIndex | None:
        """The index of the frame of records ``first_seq .. first_seq + count - 1`` (``None``:
        not known here; the segment writer computes it from the frame)."""
        if self.ts_inits is None or self.topic_keys is None:
            return None
        i = first_seq - self.first_seq
        ts, keys = self.ts_inits[i : i + count], self.topic_keys[i : i + count]
        return FrameIndex(min(ts), max(ts), min(keys), max(keys))

    @property
    def count(self) -> int:
        return len(self.offsets)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.offsets) - 1

    def frames(
        self, max_entries: int, max_bytes: int = FRAME_BYTES
    ) -> list[tuple[int, memoryview, npt.NDArray[np.int64]]]:
        """Split into frames of at most ``max_entries`` entries and, past the first entry,
        ``max_bytes`` of records: (first_seq, record bytes, offsets)."""
        out = []
        view = memoryview(self.records)
        offsets = self.offsets
        n = len(offsets)
        i = 0
        while i < n:
            j = min(n, i + max_entries)
            start = int(offsets[i])
            if (int(offsets[j]) if j < n else len(self.records)) - start > max_bytes:
                # the last record that still starts within max_bytes ends the frame
                j = max(i + 1, int(np.searchsorted(offsets, start + max_bytes, side="right")) - 1)
            stop = int(offsets[j]) if j < n else len(self.records)
            out.append((self.first_seq + i, view[start:stop], offsets[i:j] - start))
            i = j
        return out


class RingConsumer:
    """The writer's side: bulk, validated takes from the ring."""

    def __init__(self, views: RingViews) -> None:
        self.v = views
        g = views.geometry
        self._rmask = g.ring_bytes - 1
        self._smask = g.slots - 1
        self.last_ts_init = 0  # of the last record taken: ts_init going backwards is counted
        self.read_seq = int(views.ctrl[READ_SEQ])
        self.read_pos = int(views.ctrl[READ_POS])
        self._last_take = 0

    def has(self, seq: int) -> bool:
        """Whether entry ``seq`` (> read_seq) is published: one scalar look, for polling."""
        v = self.v
        pos = v.index[seq & self._smask]
        if pos < self.read_pos:
            return False
        phys = pos & self._rmask
        if phys + ENTRY_HEADER_SIZE > v.geometry.ring_bytes:
            return False
        return int.from_bytes(v.data[phys + 16 : phys + 24], "little") == seq

    def published_seq(self) -> int:
        """The last seq the producer has published (a binary search over ``has``; for stats,
        not for the hot loop: published seqs form a prefix after ``read_seq``)."""
        lo, hi = 0, self.v.geometry.capacity  # lo entries are known published
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.has(self.read_seq + mid):
                lo = mid
            else:
                hi = mid - 1
        return self.read_seq + lo

    def frontier_problem(self) -> str | None:
        """Why the next record, whose index slot says it is published, does not validate
        (``None``: it is not published yet, or it is valid). The producer writes a record
        before its slot, so a slot of this lap pointing at a record that does not check out
        is not a write in progress but something the producer never writes (two threads
        appending at once, say): the writer reports it rather than wait for it forever."""
        v = self.v
        seq = self.read_seq + 1
        pos = int(v.index[seq & self._smask])
        if pos < self.read_pos:
            return None  # a slot of an earlier lap: not published yet
        ring_bytes = v.geometry.ring_bytes
        next_lap = (self.read_pos + self._rmask) & ~self._rmask
        where = f"seq {seq} at ring position {pos}"
        if pos not in (self.read_pos, next_lap):
            return f"{where}: the record before it ends at {self.read_pos}"
        phys = pos & self._rmask
        if phys + ENTRY_HEADER_SIZE > ring_bytes:
            return f"{where}: no room for a record header before the ring's end"
        length = int.from_bytes(v.data[phys : phys + 4], "little")
        header_seq = int.from_bytes(v.data[phys + 16 : phys + 24], "little")
        if header_seq != seq:
            return f"{where}: the record there says seq {header_seq}"
        if length < ENTRY_HEADER_SIZE or phys + length > ring_bytes:
            return f"{where}: record length {length} is out of bounds"
        return None

    def _scan(self, count: int) -> tuple[int, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """How many of the next ``count`` seqs are published, with their positions and lengths.

        A record counts only if its slot points at or after ``read_pos`` (earlier laps point
        before it), its header carries its seq, its length fits the ring and it starts where
        the previous record ended (or at the next lap, when that one did not fit).
        """
        v = self.v
        rmask = self._rmask
        ring_bytes = v.geometry.ring_bytes
        first = self.read_seq + 1
        seqs = np.arange(first, first + count, dtype=np.uint64)
        pos = v.index_np[seqs & np.uint64(self._smask)].astype(np.int64)
        phys = pos & rmask
        inside = (pos >= self.read_pos) & (phys + ENTRY_HEADER_SIZE <= ring_bytes)
        n = count if bool(inside.all()) else int(np.argmin(inside))
        if n == 0:
            return 0, pos[:0], pos[:0]
        pos, phys, seqs = pos[:n], phys[:n], seqs[:n]
        # Only record_len (bytes 0..4) and seq (16..24) are needed: gather 12 bytes, not 40.
        data = v.data_np
        lengths = data[phys[:, None] + _LEN_SPAN].view("<u4").reshape(-1).astype(np.int64)
        header_seqs = data[phys[:, None] + _SEQ_SPAN].view("<u8").reshape(-1)
        prev_end = np.empty_like(pos)
        prev_end[0] = self.read_pos
        prev_end[1:] = pos[:-1] + lengths[:-1]
        good = (
            (header_seqs == seqs)
            & (lengths >= ENTRY_HEADER_SIZE)
            & (phys + lengths <= ring_bytes)
            & ((pos == prev_end) | (pos == ((prev_end + rmask) & ~rmask)))
        )
        if not bool(good.all()):
            n = int(np.argmin(good))
        return n, pos[:n], lengths[:n]

    def take(self, max_entries: int, max_bytes: int, ts_publish: int | None) -> Batch | None:
        """Copy out the published entries after ``read_seq`` (at most ``max_entries`` and, past
        the first, ``max_bytes``), stamping ``ts_publish`` into each (``None``: its own
        ``ts_init``, for deterministic backtests). Space is returned to the producer before
        this returns.

        A take of up to ``WALK_MAX`` records walks the ring record by record; a larger one is
        checked with numpy, whose fixed cost per call only pays off on larger batches."""
        limit = min(max_entries, self.v.geometry.capacity)
        if limit <= WALK_MAX or not self.has(self.read_seq + WALK_MAX):
            batch = self._walk(min(limit, WALK_MAX), max_bytes, ts_publish)
        else:
            batch = self._take_vectorised(limit, max_bytes)
            if batch is not None:
                stamp_publish_time(batch, ts_publish)
                self.last_ts_init = count_ts_backwards(batch, self.last_ts_init)
        if batch is None:
            return None
        self.read_seq = batch.last_seq
        self.read_pos = batch.end_pos
        v = self.v
        v.ctrl[READ_POS] = batch.end_pos
        v.ctrl[READ_SEQ] = self.read_seq
        return batch

    def _walk(self, limit: int, max_bytes: int, ts_publish: int | None) -> Batch | None:
        """The checks of ``_scan``, one record at a time, and the stamp and the ``ts_init``
        count on the way."""
        v = self.v
        index, data, smask, rmask = v.index, v.data, self._smask, self._rmask
        ring_bytes = v.geometry.ring_bytes
        unpack = _WALK_HEADER.unpack_from
        unpack_key = _TOPIC_KEY.unpack_from
        keys: list[int] | None = []
        first = seq = self.read_seq + 1
        pos = self.read_pos
        runs: list[tuple[int, int]] = []  # contiguous physical byte ranges to copy
        run_start = pos & rmask
        offsets: list[int] = []
        stamps: list[int] = []
        out = 0  # bytes taken so far
        last_ts = self.last_ts_init
        backs: list[int] = []  # seqs whose ts_init went back
        while len(offsets) < limit:
            slot = index[seq & smask]
            if slot != pos:
                lap = (pos + rmask) & ~rmask  # a record that did not fit went to the next lap
                if slot != lap or slot < self.read_pos:
                    break
                runs.append((run_start, pos & rmask if pos & rmask else ring_bytes))
                pos = slot
                run_start = 0
            phys = pos & rmask
            if phys + ENTRY_HEADER_SIZE > ring_bytes:
                break
            length, header_seq, ts = unpack(data, phys)
            if header_seq != seq or length < ENTRY_HEADER_SIZE or phys + length > ring_bytes:
                break
            if max_bytes and offsets and out + length > max_bytes:
                break
            if ts < last_ts:
                backs.append(seq)
            last_ts = ts
            if keys is not None:
                if length >= _KEY_END:
                    keys.append(unpack_key(data, phys + 40)[0])
                else:  # the key runs past the record: the frame's bytes decide (rare)
                    keys = None
            offsets.append(out)
            stamps.append(ts)
            out += length
            pos += length
            seq += 1
        if not offsets:
            return None
        end = pos & rmask or ring_bytes
        runs.append((run_start, end))
        records = bytearray(out) if len(runs) > 1 else bytearray(data[run_start:end])
        if len(runs) > 1:
            at = 0
            for lo, hi in runs:
                records[at : at + hi - lo] = data[lo:hi]
                at += hi - lo
        pack = _TS_PUBLISH_AT.pack_into
        if ts_publish is None:
            for off, ts in zip(offsets, stamps, strict=True):
                pack(records, off + TS_PUBLISH_OFFSET, ts)
        else:
            for off in offsets:
                pack(records, off + TS_PUBLISH_OFFSET, ts_publish)
        self.last_ts_init = last_ts
        batch = Batch(first, records, np.array(offsets, dtype=np.int64), pos)
        if keys is not None:
            batch.ts_inits, batch.topic_keys = stamps, keys
        if backs:
            batch.ts_backwards, batch.ts_backwards_first = len(backs), backs[0]
            batch.ts_backwards_seqs = np.array(backs, dtype=np.int64)
        return batch

    def _take_vectorised(self, limit: int, max_bytes: int) -> Batch | None:
        window = min(max(64, self._last_take), limit)
        while True:  # widen the look-ahead geometrically while everything in it is published
            n, pos, lengths = self._scan(window)
            if n < window or window == limit:
                break
            window = min(limit, window * 4)
        self._last_take = n
        if n == 0:
            return None
        first = self.read_seq + 1
        ends = pos + lengths
        if max_bytes and n > 1:
            over = np.flatnonzero(ends - pos[0] > max_bytes)
            if over.size:
                n = max(1, int(over[0]))  # the first record always goes, however large
                pos, lengths, ends = pos[:n], lengths[:n], ends[:n]
        phys = pos & self._rmask
        # Contiguous runs split where the physical offset goes back (a wrap).
        breaks = np.flatnonzero(phys[1:] < phys[:-1]) + 1
        records = bytearray(int(lengths.sum()))
        offsets = np.empty(n, dtype=np.int64)
        out = 0
        starts = [0, *breaks.tolist()]
        stops = [*breaks.tolist(), n]
        data = self.v.data
        for a, b in zip(starts, stops, strict=True):
            lo = int(phys[a])
            hi = int(phys[b - 1] + lengths[b - 1])
            records[out : out + hi - lo] = data[lo:hi]
            offsets[a:b] = phys[a:b] - lo + out
            out += hi - lo
        return Batch(first, records, offsets, int(ends[-1]))


def count_ts_backwards(batch: Batch, last: int) -> int:
    """Count (into ``batch``) its entries whose ``ts_init`` is below the entry before them
    (``last``: the previous batch's last one, 0 for none); returns the batch's last ts_init."""
    buf = np.frombuffer(batch.records, dtype=np.uint8)
    ts = buf[batch.offsets[:, None] + _TS_INIT].view("<u8").reshape(-1)
    prev = np.empty_like(ts)
    prev[0] = last
    prev[1:] = ts[:-1]
    back = np.flatnonzero(ts < prev)
    batch.ts_backwards = int(back.size)
    batch.ts_backwards_first = batch.first_seq + int(back[0]) if back.size else 0
    if back.size:
        batch.ts_backwards_seqs = back + batch.first_seq
    return int(ts[-1])


def stamp_publish_time(batch: Batch, ts_publish: int | None) -> None:
    """Set every record's ``ts_publish`` in one scatter: to ``ts_publish`` (the writer's
    clock), or, when it is ``None``, to the record's own ``ts_init`` (deterministic backtests).
    """
    buf = np.frombuffer(batch.records, dtype=np.uint8)
    if ts_publish is None:
        buf[batch.offsets[:, None] + _TS_PUBLISH] = buf[batch.offsets[:, None] + _TS_INIT]
    else:
        stamp = np.frombuffer(struct.pack("<Q", ts_publish), dtype=np.uint8)
        buf[batch.offsets[:, None] + _TS_PUBLISH] = stamp
