"""The marker check in bulk: a proof, with numpy, that a marker stream has no finding at all.

``check_markers`` (``storage/check/markers.py``) walks the stream a record at a time, and on a
marker-heavy run that is most of ``verify``'s time. Nearly every run is clean, so this module
tries first to prove that, a batch of frames at a time: the high-fidelity markers and cursor
snapshots between two stream definitions or gaps are checked as arrays; the rare stream
definitions and gaps one by one, as the record checker does.

Rules of this module:

1. It answers only "clean" (``True``) or "not proven" (``False``), never a finding. On
   ``False`` the caller runs the record checker, whose findings are the report: which rule
   failed, where, and what it says stay that checker's alone.
2. Every rule of the record checker is checked here, no weaker: seq continuity, records that
   decode, ``event_seq_before`` never back and never past the entries' high watermark, stream
   slots defined once and before use, observation numbers forward (strictly for a
   high-fidelity marker), cursors never back, every observation counted or in a gap, each
   high-fidelity stream's marker count equal to its cursor's count, gaps that do not overlap.
   Anything this module does not recognise is "not proven".
3. It reads the same intact prefix of the stream as the record checker (the same frame walk,
   stopping quietly at a torn tail or at damage, which the segment scan reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from ringtape.storage.format.entry import ENTRY_HEADER_SIZE, EntryError, decode_entry
from ringtape.storage.format.markers import (
    CURSOR_HEAD,
    CURSOR_ITEM,
    HIFI_BODY,
    MARKER_STREAM,
    PAYLOAD_BIN,
    SNAPSHOT_REASONS,
    TOPIC_CURSOR,
    TOPIC_GAP,
    TOPIC_HIFI,
    TOPIC_STREAM,
    MarkerFormatError,
    MarkerGap,
    StreamDef,
    decode_marker,
)
from ringtape.storage.read.columns import Columns, iter_columns
from ringtape.storage.read.reader import CorruptionError

_HIFI, _CURSOR, _STREAM, _GAP, _OTHER = 0, 1, 2, 3, 4
_TOPICS: Final = (
    (_HIFI, TOPIC_HIFI),
    (_CURSOR, TOPIC_CURSOR),
    (_STREAM, TOPIC_STREAM),
    (_GAP, TOPIC_GAP),
)
_BIN: Final = np.frombuffer(PAYLOAD_BIN.encode(), np.uint8)
_ITEM_FIELDS: Final = np.array([0, 4, 8, 16], np.int64)  # stream, ordinal, count, ts_init_hi


class _NotProven(Exception):
    """Some rule could not be shown to hold: the record checker decides."""


@dataclass
class _State:
    """What the record checker carries from one record to the next."""

    next_seq: int | None = None
    last_esb: int = 0
    last_obs: int = 0
    counted: int = 0
    gapped: int = 0
    open_gap: bool = False
    high_fidelity: dict[int, bool] = field(default_factory=dict)  # defined slots
    count: dict[int, int] = field(default_factory=dict)  # each slot's cursor
    hi: dict[int, int] = field(default_factory=dict)
    hifi_seen: dict[int, int] = field(default_factory=dict)


def marker_stream_clean(run_dir: Path, entry_high_watermark: int) -> bool:
    """Whether the run's marker stream provably has no marker finding (rule 1)."""
    state = _State()
    try:
        for cols in iter_columns(run_dir, MARKER_STREAM, strict=False):
            _batch(cols, state, entry_high_watermark)
    except CorruptionError:
        pass  # the intact prefix is what is checked (rule 3): the scan reports the damage
    except (_NotProven, ValueError, OverflowError):
        return False
    return True


def _u64(buf: npt.NDArray[np.uint8], at: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    words = np.ndarray((len(buf) - 7,), "<u8", buf, 0, (1,))
    out: npt.NDArray[np.uint64] = words[at]
    return out


def _u32(buf: npt.NDArray[np.uint8], at: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    words = np.ndarray((len(buf) - 3,), "<u4", buf, 0, (1,))
    out: npt.NDArray[np.int64] = words[at].astype(np.int64)
    return out


def _kinds(cols: Columns) -> npt.NDArray[np.int64]:
    kinds = np.full(len(cols), _OTHER, np.int64)
    for kind, topic in _TOPICS:
        raw = np.frombuffer(topic.encode(), np.uint8)
        same_len = np.flatnonzero(cols.topic_len == len(raw))
        if same_len.size:
            got = cols.buf[cols.topic_start[same_len, None] + np.arange(len(raw))]
            kinds[same_len[(got == raw).all(axis=1)]] = kind
    return kinds


def _batch(cols: Columns, state: _State, hwm: int) -> None:
    seqs = cols.seq.astype(np.int64)
    first = int(seqs[0])
    if state.next_seq is not None and first != state.next_seq:
        raise _NotProven
    if np.any(np.diff(seqs) != 1):
        raise _NotProven
    state.next_seq = int(seqs[-1]) + 1
    kinds = _kinds(cols)
    if np.any(kinds == _OTHER):
        raise _NotProven
    # Runs of hifi markers and cursor snapshots, cut at the stream definitions and gaps.
    singles = np.flatnonzero(kinds >= _STREAM).tolist()
    start = 0
    for i in [*singles, len(cols)]:
        if i > start:
            _run(cols, np.arange(start, i), kinds[start:i], state, hwm)
        if i < len(cols):
            _single(cols, i, int(kinds[i]), state, hwm)
        start = i + 1


def _single(cols: Columns, i: int, kind: int, state: _State, hwm: int) -> None:
    """A stream definition or a gap, exactly as the record checker visits it."""
    start = int(cols.topic_start[i]) - ENTRY_HEADER_SIZE
    try:
        entry = decode_entry(cols.buf.data, start)  # checked by the walk already
    except EntryError:
        raise _NotProven from None
    try:
        rec = decode_marker(entry)
    except MarkerFormatError:
        raise _NotProven from None
    if isinstance(rec, StreamDef) and kind == _STREAM:
        if rec.stream in state.high_fidelity:
            raise _NotProven
        state.high_fidelity[rec.stream] = rec.high_fidelity
        return
    if not isinstance(rec, MarkerGap) or kind != _GAP:
        raise _NotProven
    esb = rec.event_seq_before
    if esb > hwm or esb < state.last_esb or rec.obs_from <= state.last_obs or state.open_gap:
        raise _NotProven
    state.last_esb = esb
    if rec.obs_to is None:
        state.open_gap = True
    else:
        state.gapped += rec.obs_to - rec.obs_from + 1
        state.last_obs = max(state.last_obs, rec.obs_to)


def _run(
    cols: Columns, at: npt.NDArray[np.int64], kinds: npt.NDArray[np.int64], state: _State, hwm: int
) -> None:
    """Hifi markers and cursor snapshots (no stream definition or gap among them)."""
    buf = cols.buf
    lengths = cols.payload_len[at]
    starts = cols.payload_start[at]
    types_ok = cols.type_len[at] == len(_BIN)
    if not types_ok.all():
        raise _NotProven
    got = buf[cols.type_start[at, None] + np.arange(len(_BIN))]
    if not (got == _BIN).all():
        raise _NotProven
    hifi = kinds == _HIFI
    cursor = ~hifi
    if np.any(lengths[hifi] != HIFI_BODY.size) or np.any(lengths[cursor] < CURSOR_HEAD.size):
        raise _NotProven
    obs = _u64(buf, starts).astype(np.int64)  # both bodies start with obs, event_seq_before
    esb = _u64(buf, starts + 8).astype(np.int64)
    if np.any(obs < 0) or np.any(esb < 0):  # past 2**63: not a count this checker trusts
        raise _NotProven
    # event_seq_before: never back, never past the entries.
    if np.any(esb > hwm) or np.any(np.diff(np.concatenate(([state.last_esb], esb))) < 0):
        raise _NotProven
    # Observation numbers forward: strictly for hifi markers, as far for snapshots.
    step = np.diff(np.concatenate(([state.last_obs], obs)))
    if np.any(step < 0) or np.any(step[hifi] == 0):
        raise _NotProven
    hifi_streams = _u32(buf, starts[hifi] + 16)
    _hifi_slots(hifi_streams, state)
    positions = np.arange(len(at))
    _cursors(buf, starts[cursor], lengths[cursor], obs[cursor], positions[cursor],
             positions[hifi], hifi_streams, state)  # fmt: skip
    state.last_esb = int(esb[-1])
    state.last_obs = int(obs[-1])
    for slot, n in zip(*np.unique(hifi_streams, return_counts=True), strict=True):
        state.hifi_seen[int(slot)] = state.hifi_seen.get(int(slot), 0) + int(n)


def _hifi_slots(streams: npt.NDArray[np.int64], state: _State) -> None:
    """Every hifi marker names a defined, high-fidelity stream."""
    for slot in np.unique(streams).tolist():
        if not state.high_fidelity.get(slot, False):
            raise _NotProven


def _cursors(
    buf: npt.NDArray[np.uint8],
    starts: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    obs: npt.NDArray[np.int64],
    positions: npt.NDArray[np.int64],
    hifi_positions: npt.NDArray[np.int64],
    hifi_streams: npt.NDArray[np.int64],
    state: _State,
) -> None:
    """The snapshots of a run: well formed, cursors forward, every observation accounted for,
    each high-fidelity stream's count equal to its markers."""
    if len(starts) == 0:
        return
    reason = _u32(buf, starts + 16)
    n = _u32(buf, starts + 20)
    if np.any(reason >= len(SNAPSHOT_REASONS)):
        raise _NotProven
    if np.any(lengths != CURSOR_HEAD.size + n * CURSOR_ITEM.size):
        raise _NotProven
    owner = np.repeat(np.arange(len(starts)), n)  # the snapshot each item belongs to
    first_item = np.cumsum(n) - n
    index_in_snapshot = np.arange(len(owner)) - first_item[owner]
    item_at = starts[owner] + CURSOR_HEAD.size + index_in_snapshot * CURSOR_ITEM.size
    if len(owner) == 0:  # snapshots of no cursor: only the accounting applies
        if np.any(state.counted + state.gapped != obs):
            raise _NotProven
        return
    slot = _u32(buf, item_at + _ITEM_FIELDS[0])
    count = _u64(buf, item_at + _ITEM_FIELDS[2]).astype(np.int64)
    hi = _u64(buf, item_at + _ITEM_FIELDS[3]).astype(np.int64)
    if np.any(count < 0) or np.any(hi < 0):
        raise _NotProven
    slots = np.unique(slot).tolist()
    if any(s not in state.high_fidelity for s in slots):
        raise _NotProven
    # Per slot, in stream order: the cursor before each item (the carried one first).
    order = np.lexsort((np.arange(len(slot)), slot))
    s_sorted, c_sorted, h_sorted = slot[order], count[order], hi[order]
    new_group = np.ones(len(order), bool)
    new_group[1:] = s_sorted[1:] != s_sorted[:-1]
    prev_c = np.empty_like(c_sorted)
    prev_h = np.empty_like(h_sorted)
    prev_c[1:], prev_h[1:] = c_sorted[:-1], h_sorted[:-1]
    heads = np.flatnonzero(new_group)
    prev_c[heads] = [state.count.get(int(s), 0) for s in s_sorted[heads]]
    prev_h[heads] = [state.hi.get(int(s), 0) for s in s_sorted[heads]]
    if np.any(c_sorted < prev_c) or np.any(h_sorted < prev_h):
        raise _NotProven
    delta = np.empty_like(count)
    delta[order] = c_sorted - prev_c
    per_snapshot = np.zeros(len(starts), np.int64)
    np.add.at(per_snapshot, owner, delta)
    counted = state.counted + np.cumsum(per_snapshot)
    if np.any(counted + state.gapped != obs):
        raise _NotProven
    # High-fidelity streams: markers so far (carried + this run's before the snapshot) = count.
    for s in slots:
        if not state.high_fidelity[s]:
            continue
        mine = slot == s
        marks = hifi_positions[hifi_streams == s]
        seen = state.hifi_seen.get(s, 0) + np.searchsorted(marks, positions[owner[mine]])
        if np.any(seen != count[mine]):
            raise _NotProven
    state.counted = int(counted[-1])
    tails = np.flatnonzero(np.append(new_group[1:], True))  # each slot's last item
    for k in tails.tolist():
        s = int(s_sorted[k])
        state.count[s] = int(c_sorted[k])
        state.hi[s] = int(h_sorted[k])
