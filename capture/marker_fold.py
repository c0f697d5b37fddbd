"""Folding marker-ring records into marker entry records: cursors, snapshots, hi-fi markers, gaps.

Pure computation, no I/O (the sidecar, ``capture/marker_sidecar.py``, feeds it and writes what it
produces). What the records mean is ``storage/format/markers.py``.

Two ways to fold a run of observations, with the same output byte for byte (a property test
holds them to it):

* the bulk fold, with numpy: cursors, snapshot contents, record seqs and the records
  themselves for a whole chunk at once. It takes the common case: no gap in the observation
  numbers, and each stream's ``ts_init`` not going back (market data arrives in time order);
* the loop, one observation at a time: everything else (small chunks, gaps, a stream whose
  ``ts_init`` goes back), and the reference the bulk fold is tested against.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
import xxhash

from ringtape.capture.config import DataMarkerClass
from ringtape.capture.marker_ring import KIND_NAME, KIND_OBS, KIND_STREAM, NAME_CHUNK, ProtocolError
from ringtape.storage.format.markers import (
    CURSOR_HEAD_DTYPE,
    CURSOR_ITEM_DTYPE,
    GAP_OVERFLOW,
    HIFI_DTYPE,
    REASON_BOUNDARY,
    REASON_CLOSE,
    cursor_heads,
    cursor_items,
    encode_cursor,
    encode_cursor_one,
    encode_gap,
    encode_hifi,
    encode_stream,
    hifi_rows,
    stream_seed,
)

CLASS_NAMES: Final = [c.value for c in DataMarkerClass.all()]
_QUAD: Final = struct.Struct("<QQQQ")
_TS_PAIR: Final = struct.Struct("<QQ")
BULK_MIN: Final = 32  # below this many observations the loop is the faster fold
_I64_MAX: Final = (1 << 63) - 1


def _scatter(
    block: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], rows: npt.NDArray[np.void]
) -> None:
    """Copy each row's bytes into ``block`` at its offset in ``at``."""
    size = rows.dtype.itemsize
    block[at[:, None] + np.arange(size)] = rows.view(np.uint8).reshape(-1, size)


class MarkerOutput(NamedTuple):
    """Marker records produced and taken: laid end to end in ``data``, ``offsets`` where each
    starts, ``first_seq`` the marker seq of the first."""

    data: bytes
    offsets: npt.NDArray[np.int64]
    first_seq: int

    def records(self) -> list[bytes]:
        starts = self.offsets.tolist()
        ends = [*starts[1:], len(self.data)] if starts else []
        return [self.data[a:b] for a, b in zip(starts, ends, strict=True)]


class _Pending:
    """Records not yet taken: single records and whole blocks of them, in seq order."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.lengths: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.lengths)

    def append(self, record: bytes) -> None:
        self.parts.append(record)
        self.lengths.append(len(record))

    def extend(self, block: bytes, lengths: list[int]) -> None:
        if lengths:
            self.parts.append(block)
            self.lengths.extend(lengths)

    def take(self, first_seq: int) -> MarkerOutput:
        lengths = np.array(self.lengths, np.int64)
        offsets = np.cumsum(lengths) - lengths
        out = MarkerOutput(b"".join(self.parts), offsets, first_seq)
        self.parts, self.lengths = [], []
        return out


class MarkerFolder:
    """Ring records in, marker entry records out (bytes, numbered from 1); no I/O.

    ``accounted`` is the highest observation number such that every observation up to it is in
    a record already produced (a cursor snapshot, or a gap): what ``DURABLE_OBS`` publishes.
    """

    def __init__(self, high_fidelity: Iterable[str], *, bulk: bool = True) -> None:
        self.hifi_names = frozenset(high_fidelity)
        self.bulk = bulk  # False: the loop only (the reference the bulk fold is tested against)
        self.next_seq = 1
        self.out = _Pending()
        self.out_first_seq = 1
        self.count: list[int] = []
        self.hi: list[int] = []
        self.ordinal: list[int] = []
        self.hifi: list[bool] = []
        self.seed: list[int] = []
        self.dirty: dict[int, None] = {}  # streams advanced since the last snapshot, in order
        self.dirty_since = 0.0
        self.last_obs = 0
        self.esb = 0
        self.ts_init = 0
        self.accounted = 0
        self.chunks: list[bytes] = []
        self.gap_records = 0
        self.gap_observations = 0
        self.snapshots = 0

    def feed(self, rows: npt.NDArray[np.void], now: float) -> None:
        """Fold one batch of ring records (a structured array of ``RECORD_DTYPE``)."""
        control = np.flatnonzero(rows["kind"] != KIND_OBS)
        start = 0
        for i in control.tolist():  # stream definitions are rare: fold the runs between them
            if i > start:
                self._fold_observations(rows[start:i], now)
            r = rows[i]
            self._control_record(
                int(r["a"]), int(r["b"]), int(r["esb"]), int(r["obs"]), int(r["stream"]),
                int(r["kind"]),
            )  # fmt: skip
            start = i + 1
        if start < len(rows):
            self._fold_observations(rows[start:], now)

    def _fold_observations(self, rows: npt.NDArray[np.void], now: float) -> None:
        """Fold observation records. The batch is checked and cut with numpy where an entry
        boundary or a gap falls; the loop between two cuts only moves cursors."""
        esb, obs, stream = rows["esb"], rows["obs"], rows["stream"]
        prev_esb = np.empty_like(esb)
        prev_esb[0], prev_esb[1:] = self.esb, esb[:-1]
        prev_obs = np.empty_like(obs)
        prev_obs[0], prev_obs[1:] = self.last_obs, obs[:-1]
        if bool((esb < prev_esb).any()) or bool((obs <= prev_obs).any()):
            raise ProtocolError("event_seq_before or the observation number goes back")
        if int(stream.max()) >= len(self.count):
            raise ProtocolError(f"an observation names a stream beyond {len(self.count) - 1}")
        if self.bulk and len(rows) >= BULK_MIN and self._fold_bulk(rows, prev_esb, now):
            return
        marks = np.flatnonzero((esb != prev_esb) | (obs != prev_obs + 1)).tolist()
        a_l, b_l, e_l, o_l = (rows[k].tolist() for k in ("a", "b", "esb", "obs"))
        s_l = stream.tolist()
        count, hi, ordinal, hifi, dirty, out = (
            self.count, self.hi, self.ordinal, self.hifi, self.dirty, self.out,
        )  # fmt: skip
        seeds, pack_ts, digest = self.seed, _TS_PAIR.pack, xxhash.xxh3_64_intdigest
        n = len(s_l)
        pos = 0
        for stop in [*marks, n]:
            if not dirty:
                self.dirty_since = now
            esb_run, seq = self.esb, self.next_seq
            for i in range(pos, stop):  # no boundary, no gap: cursors only
                st = s_l[i]
                b = b_l[i]
                count[st] += 1
                h = hi[st]
                if b > h:
                    hi[st] = b
                    ordinal[st] = 0
                elif b == h:
                    ordinal[st] += 1
                dirty[st] = None
                if hifi[st]:
                    a = a_l[i]
                    fp = digest(pack_ts(a, b), seeds[st])
                    out.append(encode_hifi(seq, b, o_l[i], esb_run, st, ordinal[st], a, fp))
                    seq += 1
            self.next_seq = seq
            if stop == n:
                break
            if stop > 0:  # the state as of the record before the mark
                self.esb, self.last_obs, self.ts_init = e_l[stop - 1], o_l[stop - 1], b_l[stop - 1]
            if e_l[stop] != self.esb:
                self.snapshot(REASON_BOUNDARY)  # an entry was appended since
            if o_l[stop] != self.last_obs + 1:
                self.gap(self.last_obs + 1, o_l[stop] - 1, GAP_OVERFLOW)
            self.esb = e_l[stop]
            pos = stop
        self.esb, self.last_obs, self.ts_init = e_l[-1], o_l[-1], b_l[-1]

    def _fold_bulk(
        self, rows: npt.NDArray[np.void], prev_esb: npt.NDArray[np.uint64], now: float
    ) -> bool:
        """The bulk fold of observation records already checked (module docstring). Returns
        ``False``, having changed nothing, when the chunk is not the common case."""
        n = len(rows)
        o = rows["obs"]
        if int(o[0]) != self.last_obs + 1 or int(o[-1]) - int(o[0]) != n - 1:
            return False  # a gap in the observation numbers: the loop writes the gap record
        if int(rows["b"].max()) > _I64_MAX:
            return False  # ts_init past int64 (only a kernel's bug): the loop's exact ints
        try:
            hi = np.array(self.hi, np.int64)
        except OverflowError:
            return False  # a stream's ts_init_hi, taken by the loop, is past int64 too
        b = rows["b"].astype(np.int64)
        st = rows["stream"].astype(np.intp)
        idx = np.arange(n)
        # Each stream's cursor after each row: rows grouped by stream (stably), then runs.
        order = np.argsort(st, kind="stable")
        g_st, g_b = st[order], b[order]
        first = np.ones(n, np.bool_)
        first[1:] = g_st[1:] != g_st[:-1]
        before = np.empty(n, np.int64)  # the stream's ts_init_hi before the row
        before[1:] = g_b[:-1]
        before[first] = hi[g_st[first]]
        if bool((g_b < before).any()):
            return False  # a stream's ts_init goes back: its hi and ordinal stay (the loop)
        new_hi = g_b != before
        run_start = np.maximum.accumulate(np.where(new_hi | first, idx, 0))
        group_start = np.maximum.accumulate(np.where(first, idx, 0))
        carry = np.array(self.ordinal, np.int64)[g_st] + 1
        ordinal = np.empty(n, np.int64)
        ordinal[order] = idx - run_start + np.where(new_hi[run_start], 0, carry)
        count = np.empty(n, np.int64)
        count[order] = np.array(self.count, np.int64)[g_st] + idx - group_start + 1
        # Segments between entry boundaries; the streams each advanced, in the order they did.
        e = rows["esb"]
        marks = np.flatnonzero(e != prev_esb)
        n_marks = len(marks)
        seg = np.searchsorted(marks, idx, side="right")
        key = seg.astype(np.int64) * len(self.count) + st
        _, first_at = np.unique(key, return_index=True)
        _, last_rev = np.unique(key[::-1], return_index=True)
        by_first = np.argsort(first_at, kind="stable")
        item_first, item_last = first_at[by_first], (n - 1 - last_rev)[by_first]
        item_seg = seg[item_first]
        per_seg = np.bincount(item_seg, minlength=n_marks + 1)
        carried = list(self.dirty)
        emitted = per_seg[:n_marks] > 0
        if n_marks and carried:
            emitted[0] = True
        snap_at = marks[emitted]
        # Record seqs: a segment's hi-fi records in row order, then the snapshot at its end.
        hifi = np.array(self.hifi, np.bool_)[st]
        hifi_before: npt.NDArray[np.int64] = np.cumsum(hifi, dtype=np.int64) - hifi
        h_rows = np.flatnonzero(hifi)
        h_pos = hifi_before[h_rows] + np.searchsorted(snap_at, h_rows, side="right")
        s_pos = hifi_before[snap_at] + np.arange(len(snap_at))
        total = len(h_rows) + len(snap_at)
        seq0 = self.next_seq
        # Every snapshot in bulk (a head, then its cursors) but one: the first segment's when
        # streams were already dirty before this chunk (its cursors merge with theirs).
        seg_of_snap = np.flatnonzero(emitted)
        merged = bool(n_marks and carried)
        bulk = np.ones(len(snap_at), np.bool_)
        bulk[:1] = not merged
        b_end = snap_at[bulk] - 1  # the row before each boundary (a bulk one's segment has one)
        heads = cursor_heads(
            seq0 + s_pos[bulk],
            b[b_end],
            o[b_end],
            e[b_end],
            REASON_BOUNDARY,
            per_seg[seg_of_snap[bulk]],
        )
        items = item_seg < n_marks  # the cursors of the snapshots, in their order
        if merged:
            items &= item_seg > 0
        i_last = item_last[items]
        cursor_rows = cursor_items(st[i_last], ordinal[i_last], count[i_last], b[i_last])
        i_seg = item_seg[items]
        i_rank = np.arange(len(i_seg)) - np.searchsorted(i_seg, i_seg)  # place in its record
        merged_record = b""
        if merged:
            first_items = item_last[item_seg == 0].tolist()
            moved = {int(st[i]): (int(ordinal[i]), int(count[i]), int(b[i])) for i in first_items}
            end = int(snap_at[0])
            head = (
                (self.ts_init, self.last_obs, self.esb)
                if end == 0
                else (int(b[end - 1]), int(o[end - 1]), int(e[end - 1]))
            )
            merged_record = self._merged_snapshot(seq0 + int(s_pos[0]), head, moved)
        # Lay the records out in seq order.
        h_size, head_size = HIFI_DTYPE.itemsize, CURSOR_HEAD_DTYPE.itemsize
        lengths = np.empty(total, np.int64)
        lengths[h_pos] = h_size
        lengths[s_pos[bulk]] = heads["record_len"]
        if merged:
            lengths[s_pos[0]] = len(merged_record)
        offsets = np.cumsum(lengths) - lengths
        block = np.empty(int(lengths.sum()), np.uint8)
        if len(h_rows):
            a_h, b_h, s_h = rows["a"][h_rows], rows["b"][h_rows], st[h_rows]
            seeds, pack_ts, digest = self.seed, _TS_PAIR.pack, xxhash.xxh3_64_intdigest
            fps = [
                digest(pack_ts(x, y), seeds[z])
                for x, y, z in zip(a_h.tolist(), b_h.tolist(), s_h.tolist(), strict=True)
            ]
            recs = hifi_rows(
                seq0 + h_pos, b_h, o[h_rows], e[h_rows], s_h, ordinal[h_rows], a_h,
                np.array(fps, np.uint64),
            )  # fmt: skip
            _scatter(block, offsets[h_pos], recs)
        if len(heads):
            _scatter(block, offsets[s_pos[bulk]], heads)
            # the snapshot of segment j is the k-th bulk one: where its record starts
            snap_offset = np.zeros(n_marks + 1, np.int64)
            snap_offset[seg_of_snap[bulk]] = offsets[s_pos[bulk]]
            at = snap_offset[i_seg] + head_size + CURSOR_ITEM_DTYPE.itemsize * i_rank
            _scatter(block, at, cursor_rows)
        if merged:
            p = int(offsets[s_pos[0]])
            block[p : p + len(merged_record)] = np.frombuffer(merged_record, np.uint8)
        self.out.extend(block.tobytes(), lengths.tolist())
        # The state after the chunk.
        last_of_group = np.ones(n, np.bool_)
        last_of_group[:-1] = first[1:]
        ends = order[last_of_group]
        for s, c, h, r in zip(
            st[ends].tolist(),
            count[ends].tolist(),
            b[ends].tolist(),
            ordinal[ends].tolist(),
            strict=True,
        ):
            self.count[s], self.hi[s], self.ordinal[s] = c, h, r
        trailing = [int(s) for s in st[item_first[item_seg == n_marks]].tolist()]
        if len(snap_at):  # as of the last snapshot's boundary
            end = int(snap_at[-1])
            self.accounted = int(o[end - 1]) if end > 0 else self.last_obs
        if n_marks:
            self.dirty = dict.fromkeys(trailing)
            self.dirty_since = now
        else:
            if not carried:
                self.dirty_since = now
            for s in trailing:
                self.dirty[s] = None
        self.snapshots += len(snap_at)
        self.next_seq = seq0 + total
        self.esb, self.last_obs, self.ts_init = int(e[-1]), int(o[-1]), int(b[-1])
        return True

    def _merged_snapshot(
        self, seq: int, head: tuple[int, int, int], moved: dict[int, tuple[int, int, int]]
    ) -> bytes:
        """The snapshot at a chunk's first boundary: the streams dirty before the chunk, then
        those first moved in it; ``moved`` has the new ``ordinal, count, ts_init_hi`` of the
        streams the chunk moved before the boundary (the others' are as they were)."""
        flat: list[int] = []
        for s in [*self.dirty, *(s for s in moved if s not in self.dirty)]:
            cursor = moved.get(s)
            flat.extend((s, *cursor) if cursor else (s, self.ordinal[s], self.count[s], self.hi[s]))
        return encode_cursor(seq, *head, REASON_BOUNDARY, flat)

    def _control_record(self, a: int, b: int, esb: int, obs: int, stream: int, kind: int) -> None:
        if kind == KIND_NAME:
            self.chunks.append(_QUAD.pack(a, b, esb, obs))
            return
        if kind != KIND_STREAM:
            raise ProtocolError(f"unknown ring record kind {kind}")
        name = b"".join(self.chunks)
        self.chunks.clear()
        if (
            stream != len(self.count)
            or a >= len(CLASS_NAMES)
            or not 0 <= len(name) - b < NAME_CHUNK
        ):
            raise ProtocolError(f"stream definition {stream} (class {a}, {b} bytes) is invalid")
        instrument = name[:b].decode()
        data_class = CLASS_NAMES[a]
        hifi = instrument in self.hifi_names
        self.count.append(0)
        self.hi.append(-1)  # below any ts_init: the first observation sets it, ordinal 0
        self.ordinal.append(0)
        self.hifi.append(hifi)
        self.seed.append(stream_seed(data_class, instrument))
        self.out.append(
            encode_stream(self.next_seq, self.ts_init, stream, data_class, instrument, hifi)
        )
        self.next_seq += 1

    def snapshot(self, reason: int) -> None:
        """A ``marker.cursor`` record of the streams advanced since the last one."""
        dirty = self.dirty
        if not dirty:
            return
        count, hi, ordinal = self.count, self.hi, self.ordinal
        if len(dirty) == 1:  # entries and observations interleaved: one stream moved
            (s,) = dirty
            one = (s, ordinal[s], count[s], hi[s])
            record = encode_cursor_one(
                self.next_seq, self.ts_init, self.last_obs, self.esb, reason, one
            )
        else:
            items: list[int] = []
            add = items.extend
            for s in dirty:
                add((s, ordinal[s], count[s], hi[s]))
            record = encode_cursor(
                self.next_seq, self.ts_init, self.last_obs, self.esb, reason, items
            )
        self.out.append(record)
        self.next_seq += 1
        self.snapshots += 1
        self.dirty.clear()
        self.accounted = self.last_obs

    def gap(self, obs_from: int, obs_to: int, reason: str) -> None:
        self.out.append(encode_gap(self.next_seq, self.ts_init, obs_from, obs_to, reason, self.esb))
        self.next_seq += 1
        self.gap_records += 1
        self.gap_observations += obs_to - obs_from + 1
        self.last_obs = obs_to
        if not self.dirty:
            self.accounted = obs_to

    def finish(self, final_obs: int | None) -> None:
        """The end of the stream: a last snapshot, and a gap for drops after the last record."""
        self.snapshot(REASON_CLOSE)
        if final_obs is not None and final_obs > self.last_obs:
            self.gap(self.last_obs + 1, final_obs, GAP_OVERFLOW)

    def take_output(self) -> MarkerOutput:
        """The records produced since the last call."""
        out = self.out.take(self.out_first_seq)
        self.out_first_seq = self.next_seq
        return out
