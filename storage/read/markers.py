"""Reading a run's data-marker stream: its records in order, folded into cursors, as JSON.

:func:`fold_to` rebuilds every cursor as of a point in the entry stream: the cursors after all
observations made before entry ``event_seq + 1`` was appended (``event_seq_before <=
event_seq``); a snapshot's values are absolute, so the fold keeps the latest value per stream.
The records themselves are ``storage/format/markers.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ringtape.storage.format.entry import Entry
from ringtape.storage.format.markers import (
    MARKER_STREAM,
    SNAPSHOT_REASONS,
    Cursor,
    CursorSnapshot,
    HiFiMarker,
    MarkerFormatError,
    MarkerGap,
    MarkerRecord,
    StreamDef,
    StreamKey,
    decode_marker,
)
from ringtape.storage.read.reader import CorruptionError, iter_frames

# -- reading a run's marker stream --------------------------------------------------------------


class LocatedEntry(NamedTuple):
    """An entry with where it was read from (segment path, offset of its frame)."""

    path: Path
    frame_offset: int
    entry: Entry


def iter_marker_entries(run_dir: Path, *, strict: bool = False) -> Iterator[LocatedEntry]:
    """The marker stream's entries in whole, checked frames, in marker-seq order.

    By default stops quietly at a torn tail or at the first damage, which the segment scan
    reports (verification wants the intact prefix). ``strict``: damage raises
    ``CorruptionError`` after the entries before it, and only a live run's torn tail ends the
    stream quietly — what a reader that must not mislead (dump, fold) wants.
    """
    try:
        for frame in iter_frames(run_dir, MARKER_STREAM, strict=None if strict else False):
            path = Path(frame.path)  # once per frame: a Path per entry cost more than decoding
            for entry in frame.entries():
                yield LocatedEntry(path, frame.offset, entry)
    except CorruptionError:
        if strict:
            raise
        return


def iter_markers(run_dir: Path, *, strict: bool = False) -> Iterator[MarkerRecord]:
    """Decoded marker records of a run, in marker-seq order (see :func:`iter_marker_entries`)."""
    for located in iter_marker_entries(run_dir, strict=strict):
        yield decode_marker(located.entry)


# -- folding ------------------------------------------------------------------------------------


@dataclass
class Fold:
    """Cursors rebuilt from a marker stream, keyed by (class, instrument)."""

    cursors: dict[StreamKey, Cursor]
    obs: int  # last observation the cursors account for (0: none)
    gaps: list[MarkerGap]
    marker_seq: int  # last marker record folded


def fold_records(records: Iterable[MarkerRecord], event_seq: int | None = None) -> Fold:
    """Fold marker records into cursors, stopping at the first record past ``event_seq``
    (``event_seq_before > event_seq``); ``None`` folds everything."""
    streams: dict[int, StreamKey] = {}
    by_slot: dict[int, Cursor] = {}
    gaps: list[MarkerGap] = []
    obs = 0
    last = 0
    for rec in records:
        if isinstance(rec, StreamDef):
            streams[rec.stream] = (rec.data_class, rec.instrument_id)
        elif isinstance(rec, CursorSnapshot):
            if event_seq is not None and rec.event_seq_before > event_seq:
                break
            by_slot.update(rec.cursors)
            obs = max(obs, rec.obs)
        elif isinstance(rec, MarkerGap):
            if event_seq is not None and rec.event_seq_before > event_seq:
                break
            gaps.append(rec)
        elif event_seq is not None and rec.event_seq_before > event_seq:
            break
        last = rec.marker_seq
    cursors = {streams.get(slot, ("?", f"stream-{slot}")): c for slot, c in by_slot.items()}
    return Fold(cursors, obs, gaps, last)


def fold_to(run_dir: Path, event_seq: int) -> Fold:
    """Every cursor as of entry ``event_seq``: all observations made before entry
    ``event_seq + 1`` was appended. Reads the marker stream only as far as it must; damage on
    the way raises ``CorruptionError`` and a record that does not decode ``MarkerFormatError``
    (a fold must never be silently short)."""
    return fold_records(iter_markers(run_dir, strict=True), event_seq)


# -- JSON for `ringtape dump --markers` ---------------------------------------------------------


def record_to_dict(rec: MarkerRecord, streams: dict[int, StreamDef]) -> dict[str, Any]:
    """A JSON-able dict of one record; stream slots are resolved through ``streams``."""

    def name(slot: int) -> dict[str, Any]:
        d = streams.get(slot)
        if d is None:
            return {"stream": slot}
        return {"stream": slot, "class": d.data_class, "instrument": d.instrument_id}

    if isinstance(rec, StreamDef):
        return {
            "marker_seq": rec.marker_seq,
            "kind": "stream",
            "ts_init": rec.ts_init,
            "stream": rec.stream,
            "class": rec.data_class,
            "instrument": rec.instrument_id,
            "high_fidelity": rec.high_fidelity,
        }
    if isinstance(rec, CursorSnapshot):
        return {
            "marker_seq": rec.marker_seq,
            "kind": "cursor",
            "ts_init": rec.ts_init,
            "obs": rec.obs,
            "event_seq_before": rec.event_seq_before,
            "reason": SNAPSHOT_REASONS[rec.reason],
            "cursors": [
                {**name(slot), "count": c.count, "ts_init_hi": c.ts_init_hi, "ordinal": c.ordinal}
                for slot, c in rec.cursors
            ],
        }
    if isinstance(rec, HiFiMarker):
        return {
            "marker_seq": rec.marker_seq,
            "kind": "hifi",
            "ts_init": rec.ts_init,
            "obs": rec.obs,
            "event_seq_before": rec.event_seq_before,
            **name(rec.stream),
            "ts_event": rec.ts_event,
            "ordinal": rec.ordinal,
            "fingerprint": f"{rec.fingerprint:016x}",
        }
    return {
        "marker_seq": rec.marker_seq,
        "kind": "gap",
        "ts_init": rec.ts_init,
        "from": rec.obs_from,
        "to": rec.obs_to,
        "reason": rec.reason,
        "event_seq_before": rec.event_seq_before,
    }


def iter_marker_records(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The run's marker records as JSON-able dicts, in order (for ``ringtape dump --markers``).

    A record that does not decode is yielded as ``{"marker_seq", "kind": "invalid", "topic",
    "error"}`` rather than stopping the dump; damage to the stream raises ``CorruptionError``
    after the records before it (the dump then exits 1).
    """
    streams: dict[int, StreamDef] = {}
    for located in iter_marker_entries(run_dir, strict=True):
        entry = located.entry
        try:
            rec = decode_marker(entry)
        except MarkerFormatError as exc:
            yield {"marker_seq": entry.seq, "kind": "invalid", "topic": entry.topic,
                   "error": str(exc)}  # fmt: skip
            continue
        if isinstance(rec, StreamDef):
            streams[rec.stream] = rec
        yield record_to_dict(rec, streams)
