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

Reading a run's marker stream, folding it (``fold_to``) and its JSON form are
``storage/read/markers.py``; checking these invariants is ``storage/check/markers.py``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import xxhash

from ringtape.storage.format.entry import ENTRY_HEADER, ENTRY_HEADER_SIZE, HEADER_DTYPE, Entry

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

# The same two records as numpy rows, for encoding many at once (the sidecar's bulk fold): a
# marker.hifi record and a marker.cursor record of one cursor, byte for byte as the structs.
_ENTRY_FIELDS: Final = HEADER_DTYPE.descr
HIFI_DTYPE: Final = np.dtype(
    [
        *_ENTRY_FIELDS,
        ("topic", f"S{len(_HIFI_TOPIC)}"),
        ("payload_type", f"S{len(PAYLOAD_BIN)}"),
        ("obs", "<u8"),
        ("event_seq_before", "<u8"),
        ("stream", "<u4"),
        ("ordinal", "<u4"),
        ("ts_event", "<u8"),
        ("fingerprint", "<u8"),
    ]
)
assert HIFI_DTYPE.itemsize == HIFI_RECORD_SIZE
# A marker.cursor record is this head, then one CURSOR_ITEM_DTYPE row per cursor.
CURSOR_HEAD_DTYPE: Final = np.dtype(
    [
        *_ENTRY_FIELDS,
        ("prefix", f"S{len(_CURSOR_PREFIX)}"),
        ("obs", "<u8"),
        ("event_seq_before", "<u8"),
        ("reason", "<u4"),
        ("cursors", "<u4"),
    ]
)
CURSOR_ITEM_DTYPE: Final = np.dtype(
    [("stream", "<u4"), ("ordinal", "<u4"), ("count", "<u8"), ("ts_init_hi", "<u8")]
)


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


def encode_cursor_one(
    marker_seq: int,
    ts_init: int,
    obs: int,
    event_seq_before: int,
    reason: int,
    cursor: tuple[int, int, int, int],
) -> bytes:
    """:func:`encode_cursor` of one cursor (``stream, ordinal, count, ts_init_hi``): the common
    snapshot when entries and observations interleave, without building the item list."""
    return _CURSOR_ONE.pack(
        _CURSOR_ONE.size, _CURSOR_ONE_PLEN, len(TOPIC_CURSOR), len(PAYLOAD_BIN), 0, marker_seq,
        ts_init, 0, _CURSOR_PREFIX, obs, event_seq_before, reason, 1, *cursor,
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


_CURSOR_ONE: Final = _cursor_record(1)
_CURSOR_ONE_PLEN: Final = CURSOR_HEAD.size + CURSOR_ITEM.size
assert CURSOR_HEAD_DTYPE.itemsize + CURSOR_ITEM_DTYPE.itemsize == _CURSOR_ONE.size

U64s = npt.NDArray[np.uint64] | npt.NDArray[np.int64]


def _rows(dtype: np.dtype[np.void], n: int, **fields: U64s | int | bytes) -> npt.NDArray[np.void]:
    """``n`` records of ``dtype``, zeroed, each named field set (an array, or one value for all)."""
    rows = np.zeros(n, dtype)
    for name, values in fields.items():
        rows[name] = values
    return rows


def hifi_rows(
    marker_seq: U64s,
    ts_init: U64s,
    obs: U64s,
    event_seq_before: U64s,
    stream: U64s,
    ordinal: U64s,
    ts_event: U64s,
    fp: U64s,
) -> npt.NDArray[np.void]:
    """Many :func:`encode_hifi` records at once (one argument array per field)."""
    return _rows(
        HIFI_DTYPE, len(marker_seq), record_len=HIFI_RECORD_SIZE, payload_len=HIFI_BODY.size,
        topic_len=len(_HIFI_TOPIC), payload_type_len=len(PAYLOAD_BIN), topic=_HIFI_TOPIC,
        payload_type=PAYLOAD_BIN.encode(), seq=marker_seq, ts_init=ts_init, obs=obs,
        event_seq_before=event_seq_before, stream=stream, ordinal=ordinal, ts_event=ts_event,
        fingerprint=fp,
    )  # fmt: skip


def cursor_heads(
    marker_seq: U64s,
    ts_init: U64s,
    obs: U64s,
    event_seq_before: U64s,
    reason: int,
    cursors: U64s,
) -> npt.NDArray[np.void]:
    """The heads of many :func:`encode_cursor` records at once; record ``i`` is its head
    followed by ``cursors[i]`` rows of :func:`cursor_items`."""
    return _rows(
        CURSOR_HEAD_DTYPE, len(marker_seq),
        record_len=CURSOR_HEAD_DTYPE.itemsize + CURSOR_ITEM.size * cursors,
        payload_len=CURSOR_HEAD.size + CURSOR_ITEM.size * cursors, topic_len=len(TOPIC_CURSOR),
        payload_type_len=len(PAYLOAD_BIN), prefix=_CURSOR_PREFIX, reason=reason, seq=marker_seq,
        ts_init=ts_init, obs=obs, event_seq_before=event_seq_before, cursors=cursors,
    )  # fmt: skip


def cursor_items(
    stream: U64s, ordinal: U64s, count: U64s, ts_init_hi: U64s
) -> npt.NDArray[np.void]:
    """Many cursors of ``marker.cursor`` records (``CURSOR_ITEM`` each) at once."""
    return _rows(
        CURSOR_ITEM_DTYPE, len(stream), stream=stream, ordinal=ordinal, count=count,
        ts_init_hi=ts_init_hi,
    )  # fmt: skip


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
    except RecursionError:
        raise MarkerFormatError(f"{entry.topic} payload is JSON nested too deeply") from None
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
