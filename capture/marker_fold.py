"""Folding marker-ring records into marker entry records: cursors, snapshots, hi-fi markers, gaps.

Pure computation, no I/O (the sidecar, ``capture/marker_sidecar.py``, feeds it and writes what it
produces). What the records mean is ``storage/format/markers.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt
import xxhash

from ringtape.capture.config import DataMarkerClass
from ringtape.capture.marker_ring import KIND_NAME, KIND_OBS, KIND_STREAM, NAME_CHUNK, ProtocolError
from ringtape.storage.format.markers import (
    GAP_OVERFLOW,
    REASON_BOUNDARY,
    REASON_CLOSE,
    encode_cursor,
    encode_cursor_one,
    encode_gap,
    encode_hifi,
    encode_stream,
    stream_seed,
)

CLASS_NAMES: Final = [c.value for c in DataMarkerClass.all()]
_QUAD: Final = struct.Struct("<QQQQ")
_TS_PAIR: Final = struct.Struct("<QQ")


class MarkerFolder:
    """Ring records in, marker entry records out (bytes, numbered from 1); no I/O.

    ``accounted`` is the highest observation number such that every observation up to it is in
    a record already produced (a cursor snapshot, or a gap): what ``DURABLE_OBS`` publishes.
    """

    def __init__(self, high_fidelity: Iterable[str]) -> None:
        self.hifi_names = frozenset(high_fidelity)
        self.next_seq = 1
        self.out: list[bytes] = []
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

    def take_output(self) -> tuple[list[bytes], int]:
        """The records produced since the last call and the marker seq of the first."""
        out, first = self.out, self.out_first_seq
        self.out = []
        self.out_first_seq = self.next_seq
        return out, first
