"""Data-marker records: what the marker sidecar writes, and how to read, fold and check it.

The marker stream records the *order* in which market data was seen relative to the entry
stream, never the data itself, so that a replay can line its data up with the trader's
decisions. It lives beside the entry stream in ``markers-NNNNNN.seg`` files, in the same
checksummed segment format (stream kind ``STREAM_MARKERS``), and each marker record is an entry
record: ``seq`` is the record's *marker seq* (from 1, gap-free, the stream's own durable
sequence), ``ts_init`` is the kernel clock of the observation the record is about, ``topic`` is
the record kind, and the payload is defined below (all integers little-endian).

Two numbers order everything:

- ``obs``: the observation number. The kernel numbers every market-data message of an enabled
  class from 1, whether or not it reaches the sidecar; a message lost to a full marker ring
  keeps its number, so the loss shows as numbers no record accounts for — and a gap record
  names them.
- ``event_seq_before``: the seq of the last entry appended to the entry stream before the
  observation (0: none yet).

Record kinds (``topic``: payload)
---------------------------------

``marker.stream`` (JSON, ``payload_type`` ``json``): ``{"stream": slot, "class": "Quote",
"instrument": "ETHUSDT-PERP.BINANCE", "high_fidelity": bool}`` — the stream dictionary entry,
written once, before the first record that names the slot.

``marker.cursor`` (binary, ``payload_type`` ``bin``), a ``DataCursorSnapshot``::

    u64 obs                 last observation folded into the cursors
    u64 event_seq_before    the entry stream position the snapshot describes
    u32 reason              0 entry boundary, 1 safety flush (timer), 2 close
    u32 n                   cursors that follow: those that advanced since the last snapshot
    n × { u32 stream, u32 ordinal, u64 count, u64 ts_init_hi }

  A cursor is one (class, instrument) stream: ``count`` observations folded, ``ts_init_hi`` the
  highest ``ts_init`` seen, ``ordinal`` how many earlier observations share that ``ts_init``
  (0 for the first one). Values are absolute, not deltas. The header's ``ts_init`` is that of
  the last observation folded.

``marker.hifi`` (binary, ``bin``), a ``HiFiMarker``, one per message of a high-fidelity
instrument::

    u64 obs, u64 event_seq_before, u32 stream, u32 ordinal, u64 ts_event, u64 fingerprint

  ``ts_init`` is the header's; ``ordinal`` is the stream cursor's after this message;
  ``fingerprint`` = xxh3-64 of ``u64 ts_event, u64 ts_init`` seeded with xxh3-64 of
  ``class NUL instrument`` (UTF-8): a replay computes it from its own data (:func:`fingerprint`).

``marker.gap`` (JSON, ``json``), a ``MarkerGap``: ``{"from": obs, "to": obs | null,
"reason": "overflow" | "writer_closed", "event_seq_before": int}`` — observations ``from..to``
(inclusive; ``null``: to the end of the run) are in no other record. ``overflow``: the kernel
found the marker ring full. When the sidecar dies, the *entry* stream gets a
``ringtape.MarkerLaneFailed`` entry whose JSON payload is the same gap (reason
``writer_closed``, ``to`` null) plus ``marker_high_watermark`` (the last durable marker seq) and
``detail``; observations from ``from`` on were not recorded.

Invariants (what :func:`check_marker_stream` verifies)
-------------------------------------------------------

1. At every cursor snapshot, the cursors' counts summed over all streams plus the sizes of the
   gap records so far equal the snapshot's ``obs``: every observation is counted or in a gap.
2. Counts, ``ts_init_hi``, snapshot ``obs`` and ``event_seq_before`` never go back.
3. ``event_seq_before`` never exceeds the entry stream's high watermark.
4. A high-fidelity stream has exactly one ``marker.hifi`` per counted observation.

:func:`fold_to` rebuilds every cursor as of a point in the entry stream: the cursors after all
observations made before entry ``event_seq + 1`` was appended (``event_seq_before <=
event_seq``); a snapshot's values are absolute, so the fold keeps the latest value per stream.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import xxhash

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.format.entry import ENTRY_HEADER, ENTRY_HEADER_SIZE, Entry
from ringtape.storage.read.reader import CorruptionError, iter_frames

MARKER_STREAM: Final = "markers"

TOPIC_STREAM: Final = "marker.stream"
TOPIC_CURSOR: Final = "marker.cursor"
TOPIC_HIFI: Final = "marker.hifi"
TOPIC_GAP: Final = "marker.gap"
# Entry-stream topic the store appends when the marker lane fails (payload: a gap, JSON).
TOPIC_MARKER_LANE_FAILED: Final = "ringtape.MarkerLaneFailed"

PAYLOAD_BIN: Final = "bin"
PAYLOAD_JSON: Final = "json"

GAP_OVERFLOW: Final = "overflow"
GAP_WRITER_CLOSED: Final = "writer_closed"
GAP_REASONS: Final = (GAP_OVERFLOW, GAP_WRITER_CLOSED)

REASON_BOUNDARY: Final = 0
REASON_SAFETY_FLUSH: Final = 1
REASON_CLOSE: Final = 2
SNAPSHOT_REASONS: Final = ("boundary", "safety_flush", "close")

CURSOR_HEAD: Final = struct.Struct("<QQII")
CURSOR_ITEM: Final = struct.Struct("<IIQQ")
HIFI_BODY: Final = struct.Struct("<QQIIQQ")
_FINGERPRINT_TS: Final = struct.Struct("<QQ")
_HIFI_TOPIC: Final = TOPIC_HIFI.encode()
_CURSOR_PREFIX: Final = TOPIC_CURSOR.encode() + PAYLOAD_BIN.encode()
# One struct writes a whole marker.hifi entry record: header, topic, payload type, payload.
_HIFI_RECORD: Final = struct.Struct(
    f"{ENTRY_HEADER.format}{len(_HIFI_TOPIC)}s{len(PAYLOAD_BIN)}s{HIFI_BODY.format[1:]}"
)
HIFI_RECORD_SIZE: Final = _HIFI_RECORD.size


class MarkerFormatError(ValueError):
    """A marker record whose topic or payload does not follow the format above."""


# -- record values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """One stream's cursor: observations folded, highest ts_init, ordinal within it."""

    count: int
    ts_init_hi: int
    ordinal: int


@dataclass(frozen=True, slots=True)
class StreamDef:
    marker_seq: int
    ts_init: int
    stream: int
    data_class: str
    instrument_id: str
    high_fidelity: bool


@dataclass(frozen=True, slots=True)
class CursorSnapshot:
    marker_seq: int
    ts_init: int
    obs: int
    event_seq_before: int
    reason: int
    cursors: tuple[tuple[int, Cursor], ...]  # (stream slot, cursor) for advanced streams


@dataclass(frozen=True, slots=True)
class HiFiMarker:
    marker_seq: int
    ts_init: int
    obs: int
    event_seq_before: int
    stream: int
    ordinal: int
    ts_event: int
    fingerprint: int


@dataclass(frozen=True, slots=True)
class MarkerGap:
    marker_seq: int
    ts_init: int
    obs_from: int
    obs_to: int | None  # None: to the end of the run
    reason: str
    event_seq_before: int


MarkerRecord = StreamDef | CursorSnapshot | HiFiMarker | MarkerGap
StreamKey = tuple[str, str]  # (data class name, instrument id)


def fingerprint(data_class: str, instrument_id: str, ts_event: int, ts_init: int) -> int:
    """The fingerprint a ``marker.hifi`` carries, which a replay computes from its own data:
    xxh3-64 of ``u64 ts_event, u64 ts_init`` (little-endian) with :func:`stream_seed` as seed."""
    return fingerprint_with(stream_seed(data_class, instrument_id), ts_event, ts_init)


def stream_seed(data_class: str, instrument_id: str) -> int:
    """xxh3-64 of ``class NUL instrument`` (UTF-8): the per-stream part of :func:`fingerprint`."""
    return int(xxhash.xxh3_64_intdigest(f"{data_class}\0{instrument_id}".encode()))


def fingerprint_with(seed: int, ts_event: int, ts_init: int) -> int:
    """:func:`fingerprint` for a stream whose :func:`stream_seed` is known."""
    return int(xxhash.xxh3_64_intdigest(_FINGERPRINT_TS.pack(ts_event, ts_init), seed))


# -- encoding (the sidecar) ---------------------------------------------------------------------


def encode_hifi(
    marker_seq: int,
    ts_init: int,
    obs: int,
    event_seq_before: int,
    stream: int,
    ordinal: int,
    ts_event: int,
    fp: int,
) -> bytes:
    """One ``marker.hifi`` entry record (``ts_publish`` 0)."""
    n = HIFI_RECORD_SIZE
    return _HIFI_RECORD.pack(
        n, HIFI_BODY.size, len(_HIFI_TOPIC), len(PAYLOAD_BIN), 0, marker_seq, ts_init, 0,
        _HIFI_TOPIC, b"bin", obs, event_seq_before, stream, ordinal, ts_event, fp,
    )  # fmt: skip


def encode_cursor(
    marker_seq: int,
    ts_init: int,
    obs: int,
    event_seq_before: int,
    reason: int,
    items: Sequence[int],
) -> bytes:
    """One ``marker.cursor`` entry record; ``items`` is flat: ``stream, ordinal, count,
    ts_init_hi`` of each advanced cursor, one after the other."""
    n = len(items) // 4
    layout = _CURSOR_RECORDS.get(n)
    if layout is None:
        layout = _cursor_record(n)
    plen = CURSOR_HEAD.size + CURSOR_ITEM.size * n
    return layout.pack(
        layout.size, plen, len(TOPIC_CURSOR), len(PAYLOAD_BIN), 0, marker_seq, ts_init, 0,
        _CURSOR_PREFIX, obs, event_seq_before, reason, n, *items,
    )  # fmt: skip


_CURSOR_RECORDS: Final[dict[int, struct.Struct]] = {}


def _cursor_record(n: int) -> struct.Struct:
    """One struct for a whole ``marker.cursor`` record of ``n`` cursors (cached up to 1024)."""
    items = CURSOR_ITEM.format[1:] * n
    layout = struct.Struct(
        f"{ENTRY_HEADER.format}{len(_CURSOR_PREFIX)}s{CURSOR_HEAD.format[1:]}{items}"
    )
    if n <= 1024:
        _CURSOR_RECORDS[n] = layout
    return layout


def _encode_payload(
    marker_seq: int, ts_init: int, topic: str, payload_type: str, payload: bytes
) -> bytes:
    t, pt = topic.encode(), payload_type.encode()
    n = ENTRY_HEADER_SIZE + len(t) + len(pt) + len(payload)
    header = ENTRY_HEADER.pack(n, len(payload), len(t), len(pt), 0, marker_seq, ts_init, 0)
    return b"".join((header, t, pt, payload))


def encode_stream(
    marker_seq: int,
    ts_init: int,
    stream: int,
    data_class: str,
    instrument_id: str,
    high_fidelity: bool,
) -> bytes:
    """One ``marker.stream`` entry record (the dictionary entry of a stream slot)."""
    body = {
        "stream": stream,
        "class": data_class,
        "instrument": instrument_id,
        "high_fidelity": high_fidelity,
    }
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return _encode_payload(marker_seq, ts_init, TOPIC_STREAM, PAYLOAD_JSON, payload)


def gap_body(
    obs_from: int, obs_to: int | None, reason: str, event_seq_before: int, **extra: object
) -> bytes:
    """The JSON body of a gap: a ``marker.gap`` payload, or a ``MarkerLaneFailed`` entry's
    (which adds ``marker_high_watermark`` and ``detail``; readers ignore keys they do not know).
    """
    body = {"from": obs_from, "to": obs_to, "reason": reason, "event_seq_before": event_seq_before}
    return json.dumps({**body, **extra}, separators=(",", ":"), ensure_ascii=False).encode()


def encode_gap(
    marker_seq: int,
    ts_init: int,
    obs_from: int,
    obs_to: int | None,
    reason: str,
    event_seq_before: int,
) -> bytes:
    """One ``marker.gap`` entry record."""
    payload = gap_body(obs_from, obs_to, reason, event_seq_before)
    return _encode_payload(marker_seq, ts_init, TOPIC_GAP, PAYLOAD_JSON, payload)


# -- decoding -----------------------------------------------------------------------------------


def _json_object(entry: Entry) -> dict[str, Any]:
    if entry.payload_type != PAYLOAD_JSON:
        raise MarkerFormatError(f"{entry.topic} payload type is {entry.payload_type!r}")
    try:
        body = json.loads(entry.payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MarkerFormatError(f"{entry.topic} payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MarkerFormatError(f"{entry.topic} payload is not a JSON object")
    return body


def _uint(body: dict[str, Any], key: str, topic: str, *, optional: bool = False) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise MarkerFormatError(f"{topic}.{key} is {value!r}, expected an unsigned integer")
    return value


def decode_gap(entry: Entry) -> MarkerGap:
    """A ``marker.gap`` record, or the gap a ``MarkerLaneFailed`` entry carries."""
    body = _json_object(entry)
    t = entry.topic
    obs_from = _uint(body, "from", t)
    obs_to = _uint(body, "to", t, optional=True)
    reason = body.get("reason")
    if reason not in GAP_REASONS:
        raise MarkerFormatError(f"{t}.reason is {reason!r}, expected one of {GAP_REASONS}")
    if obs_from < 1 or (obs_to is not None and obs_to < obs_from):
        raise MarkerFormatError(f"{t} bounds {obs_from}..{obs_to} are not a range")
    esb = _uint(body, "event_seq_before", t)
    return MarkerGap(entry.seq, entry.ts_init, obs_from, obs_to, str(reason), esb)


def decode_marker(entry: Entry) -> MarkerRecord:
    """The marker record an entry of the marker stream holds; ``MarkerFormatError`` if none."""
    topic = entry.topic
    payload = entry.payload
    if topic == TOPIC_HIFI:
        if entry.payload_type != PAYLOAD_BIN or len(payload) != HIFI_BODY.size:
            raise MarkerFormatError(f"marker.hifi payload of {len(payload)} bytes")
        obs, esb, stream, ordinal, ts_event, fp = HIFI_BODY.unpack(payload)
        return HiFiMarker(entry.seq, entry.ts_init, obs, esb, stream, ordinal, ts_event, fp)
    if topic == TOPIC_CURSOR:
        if entry.payload_type != PAYLOAD_BIN or len(payload) < CURSOR_HEAD.size:
            raise MarkerFormatError(f"marker.cursor payload of {len(payload)} bytes")
        obs, esb, reason, n = CURSOR_HEAD.unpack_from(payload)
        if len(payload) != CURSOR_HEAD.size + n * CURSOR_ITEM.size:
            raise MarkerFormatError(f"marker.cursor says {n} cursors in {len(payload)} bytes")
        if reason >= len(SNAPSHOT_REASONS):
            raise MarkerFormatError(f"marker.cursor reason {reason} is unknown")
        cursors = tuple(
            (stream, Cursor(count, hi, ordinal))
            for stream, ordinal, count, hi in CURSOR_ITEM.iter_unpack(payload[CURSOR_HEAD.size :])
        )
        return CursorSnapshot(entry.seq, entry.ts_init, obs, esb, reason, cursors)
    if topic == TOPIC_STREAM:
        body = _json_object(entry)
        stream = _uint(body, "stream", topic)
        data_class, instrument = body.get("class"), body.get("instrument")
        if not isinstance(data_class, str) or not isinstance(instrument, str):
            raise MarkerFormatError("marker.stream class/instrument are not strings")
        hifi = body.get("high_fidelity", False)
        if not isinstance(hifi, bool) or stream >= 1 << 32:
            raise MarkerFormatError("marker.stream stream/high_fidelity are not valid")
        return StreamDef(entry.seq, entry.ts_init, stream, data_class, instrument, hifi)
    if topic == TOPIC_GAP:
        return decode_gap(entry)
    raise MarkerFormatError(f"topic {topic!r} is not a marker record")


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


# -- verification -------------------------------------------------------------------------------


class _Checker:
    """Walks the marker stream once, checking the invariants in the module docstring."""

    def __init__(self, entry_high_watermark: int) -> None:
        self.hwm = entry_high_watermark
        self.findings: list[Finding] = []
        self.streams: dict[int, StreamDef] = {}
        self.cursors: dict[int, Cursor] = {}
        self.hifi_seen: dict[int, int] = {}
        self.counted = 0  # sum of all cursor counts
        self.gapped = 0  # observations covered by gap records
        self.open_gap: MarkerGap | None = None  # a gap "to the end"
        self.last_obs = 0  # highest obs any record named
        self.last_esb = 0
        self.next_seq: int | None = None

    def note(self, kind: Kind, where: LocatedEntry, detail: str) -> None:
        seq = where.entry.seq
        self.findings.append(Finding(kind, str(where.path), where.frame_offset, seq, seq, detail))

    def visit(self, where: LocatedEntry) -> None:
        entry = where.entry
        if self.next_seq is not None and entry.seq != self.next_seq:
            self.note(
                Kind.MARKER_GAP_UNRECORDED,
                where,
                f"marker seq {entry.seq} follows {self.next_seq - 1}",
            )
        self.next_seq = entry.seq + 1
        try:
            rec = decode_marker(entry)
        except MarkerFormatError as exc:
            self.note(Kind.DECODE_ERROR, where, str(exc))
            return
        esb = rec.event_seq_before if not isinstance(rec, StreamDef) else self.last_esb
        if esb > self.hwm:
            self.note(
                Kind.MARKER_EVENT_SEQ_AHEAD,
                where,
                f"event_seq_before {esb} is past the entry stream's high watermark {self.hwm}",
            )
        if esb < self.last_esb:
            self.note(
                Kind.MARKER_CURSOR_BACKWARDS,
                where,
                f"event_seq_before goes back from {self.last_esb} to {esb}",
            )
        self.last_esb = max(self.last_esb, esb)
        if isinstance(rec, StreamDef):
            if rec.stream in self.streams:
                self.note(Kind.DECODE_ERROR, where, f"stream {rec.stream} is defined twice")
            self.streams[rec.stream] = rec
        elif isinstance(rec, CursorSnapshot):
            self.snapshot(where, rec)
        elif isinstance(rec, HiFiMarker):
            self.hifi(where, rec)
        else:
            self.gap(where, rec)

    def known(self, where: LocatedEntry, slot: int) -> bool:
        if slot in self.streams:
            return True
        self.note(Kind.DECODE_ERROR, where, f"stream {slot} is used before it is defined")
        return False

    def obs_forward(self, where: LocatedEntry, obs: int, strict: bool) -> None:
        if obs < self.last_obs or (strict and obs == self.last_obs):
            self.note(
                Kind.MARKER_CURSOR_BACKWARDS,
                where,
                f"observation {obs} comes after observation {self.last_obs}",
            )
        self.last_obs = max(self.last_obs, obs)

    def snapshot(self, where: LocatedEntry, rec: CursorSnapshot) -> None:
        self.obs_forward(where, rec.obs, strict=False)
        for slot, cur in rec.cursors:
            if not self.known(where, slot):
                continue
            old = self.cursors.get(slot, Cursor(0, 0, 0))
            if cur.count < old.count or cur.ts_init_hi < old.ts_init_hi:
                d = self.streams[slot]
                self.note(
                    Kind.MARKER_CURSOR_BACKWARDS,
                    where,
                    f"cursor {d.data_class} {d.instrument_id} goes back from count {old.count},"
                    f" ts_init_hi {old.ts_init_hi} to count {cur.count},"
                    f" ts_init_hi {cur.ts_init_hi}",
                )
            self.counted += cur.count - old.count
            self.cursors[slot] = cur
            if self.streams[slot].high_fidelity and self.hifi_seen.get(slot, 0) != cur.count:
                d = self.streams[slot]
                self.note(
                    Kind.MARKER_GAP_UNRECORDED,
                    where,
                    f"high-fidelity stream {d.data_class} {d.instrument_id} counts {cur.count}"
                    f" observations but has {self.hifi_seen.get(slot, 0)} hifi markers",
                )
                self.hifi_seen[slot] = cur.count  # report each discrepancy once
        accounted = self.counted + self.gapped
        if accounted != rec.obs:
            what = "neither counted nor in a gap record" if accounted < rec.obs else "over-counted"
            self.note(
                Kind.MARKER_GAP_UNRECORDED,
                where,
                f"snapshot at observation {rec.obs}: {self.counted} counted + {self.gapped} in"
                f" gap records = {accounted}; {abs(rec.obs - accounted)} observations {what}",
            )
            self.counted = rec.obs - self.gapped  # re-base so one loss is reported once

    def hifi(self, where: LocatedEntry, rec: HiFiMarker) -> None:
        self.obs_forward(where, rec.obs, strict=True)
        if not self.known(where, rec.stream):
            return
        self.hifi_seen[rec.stream] = self.hifi_seen.get(rec.stream, 0) + 1
        d = self.streams[rec.stream]
        if not d.high_fidelity:
            self.note(
                Kind.DECODE_ERROR,
                where,
                f"hifi marker for {d.data_class} {d.instrument_id}, not a high-fidelity stream",
            )

    def gap(self, where: LocatedEntry, rec: MarkerGap) -> None:
        if rec.obs_from <= self.last_obs or self.open_gap is not None:
            self.note(
                Kind.MARKER_GAP_OVERLAP,
                where,
                f"gap {rec.obs_from}..{rec.obs_to} overlaps observations already accounted for"
                f" (up to {self.last_obs})",
            )
        if rec.obs_to is None:
            self.open_gap = rec
        else:
            self.gapped += rec.obs_to - rec.obs_from + 1
            self.last_obs = max(self.last_obs, rec.obs_to)


def check_records(located: Iterable[LocatedEntry], entry_high_watermark: int) -> list[Finding]:
    """The marker findings for a sequence of marker-stream entries (see the module docstring)."""
    checker = _Checker(entry_high_watermark)
    for where in located:
        checker.visit(where)
    return checker.findings


def check_marker_stream(run_dir: Path, entry_high_watermark: int) -> list[Finding]:
    """Marker findings for a run: observations no record accounts for
    (``marker_gap_unrecorded``), gap records that overlap (``marker_gap_overlap``), cursors,
    observation numbers or ``event_seq_before`` going back (``marker_cursor_backwards``),
    ``event_seq_before`` past ``entry_high_watermark`` (``marker_event_seq_ahead``) and records
    that do not decode (``decode_error``). Damage to the segments themselves is the segment
    scan's to report; this reads the intact prefix of the stream."""
    return check_records(iter_marker_entries(run_dir), entry_high_watermark)
