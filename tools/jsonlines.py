"""Entries as JSON lines, a batch of columns at a time: what ``dump`` and ``tail`` print.

One object per line, in seq order::

    {"seq":42,"ts_init":…,"ts_publish":…,"topic":"events.order.filled",
     "payload_type":"OrderFilled","correlation_id":null,"causation_id":null,
     "encoding":"json","payload":{…}}

``encoding`` is ``"json"`` when the payload is UTF-8 JSON (``payload`` is then that JSON
value), ``"msgpack"`` when it is one msgpack map with string keys that JSON can show
(``payload`` is then its value: a NautilusTrader bus with ``encoding="msgpack"`` writes such
payloads), and ``"base64"`` otherwise
(``payload`` is then a base64 string; an empty payload is ``""``, base64). NaN and Infinity are
not JSON, nor are msgpack's binary values: such a payload is base64, kept exact.

Rules of this module:

1. A JSON payload is written as recorded, not parsed and re-encoded: it is checked to be one
   valid JSON value, and only a payload holding a raw line break (whitespace between tokens) is
   re-encoded, so that each object stays on one line. This is what makes a dump fast: parsing
   and encoding every payload costs more than everything else together. The check of the
   common case, an ASCII payload with no line break, is msgspec's syntax check into ``Raw``
   (no value is built: ~0.16 us for a 160-byte payload, against ~0.57 us for a parse by
   orjson); it does not check UTF-8, hence ASCII only. Whatever it refuses, and every other
   payload, goes through ``orjson`` and then the standard library, which has the last word:
   the output does not depend on which check accepted a payload.
2. The fixed fields come from numpy columns (``storage/read/columns.py``); the only loop per
   entry is the one that formats the line.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from ringtape.storage.format.entry import FLAG_CAUSATION, FLAG_CORRELATION
from ringtape.storage.read.columns import Columns

try:
    import orjson

    _fast_loads: Callable[[bytes], Any] | None = orjson.loads
    _FastError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - orjson is a dependency; kept for bare installs
    _fast_loads = None
    _FastError = ValueError


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads/dumps with options would build one per entry.
_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

_LINE: Final = (
    b'{"seq":%d,"ts_init":%d,"ts_publish":%d,"topic":%b,"payload_type":%b,'
    b'"correlation_id":%b,"causation_id":%b,"encoding":"%b","payload":%b}'
)
_NULL: Final = b"null"
_MSGPACK_MAP_LEADS: Final = frozenset([*range(0x81, 0x90), 0xDE, 0xDF])  # non-empty maps


def _stdlib_value(payload: bytes) -> Any:
    """The JSON value of a UTF-8 JSON payload (``ValueError`` if it is not one)."""
    return _DECODER.decode(payload.decode("utf-8"))


def payload_json(payload: bytes) -> tuple[bytes, bytes]:
    """``(encoding, payload field)`` of one payload, as JSON bytes (rule 1)."""
    if payload:
        valid = False
        if _fast_loads is not None:
            try:
                _fast_loads(payload)
                valid = True
            except (_FastError, RecursionError):
                pass
        if not valid:
            try:
                _stdlib_value(payload)
                valid = True
            except (UnicodeDecodeError, ValueError, RecursionError):
                pass
        if valid:
            if b"\n" not in payload and b"\r" not in payload:
                return b"json", payload
            return b"json", _ENCODER.encode(_stdlib_value(payload)).encode()
        value = _msgpack_value(payload)
        if value is not None:
            return b"msgpack", _ENCODER.encode(value).encode()
    return b"base64", b'"' + base64.b64encode(payload) + b'"'


def _json_safe(value: Any) -> bool:
    """Whether a decoded msgpack value says the same thing as JSON (no bytes, no NaN)."""
    if isinstance(value, str | bool | int) or value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_safe(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_safe(v) for k, v in value.items())
    return False


def _msgpack_value(payload: bytes) -> Any:
    """The value of a payload that is one whole, non-empty msgpack map with string keys and
    JSON-safe values, else ``None``. A lone scalar is not taken for msgpack: almost any byte is
    one."""
    if payload[0] not in _MSGPACK_MAP_LEADS:
        return None
    try:
        value = msgspec.msgpack.decode(payload)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return None
    return value if isinstance(value, dict) and value and _json_safe(value) else None


def _text(raw: bytes) -> bytes:
    return _ENCODER.encode(raw.decode("utf-8")).encode()


def _uuid(raw: bytes) -> bytes:
    return b'"' + str(uuid.UUID(bytes=raw)).encode() + b'"'


# Checks that bytes are one JSON value without building it (see rule 1).
_check_syntax: Final = msgspec.json.Decoder(msgspec.Raw).decode

_HEAD: Final = b'{"seq":%d,"ts_init":%d,"ts_publish":%d%b%b}'
_JSON_TAIL: Final = b',"encoding":"json","payload":'


class LineEncoder:
    """Formats columns as JSON lines, matching topics against globs (each distinct topic once)."""

    def __init__(self, topics: Sequence[str] | None = None) -> None:
        self.globs = None if topics is None else list(topics)
        # topic + payload_type bytes -> (topic_len, the line's middle for a JSON payload
        # without ids, topic JSON, type JSON, wanted); the length tells "ab"+"c" from "a"+"bc".
        self._names: dict[bytes, tuple[int, bytes, bytes, bytes, bool]] = {}

    def _name(self, key: bytes, topic_len: int) -> tuple[int, bytes, bytes, bytes, bool]:
        topic = key[:topic_len]
        wanted = self.globs is None or any(
            fnmatch.fnmatchcase(topic.decode("utf-8"), g) for g in self.globs
        )
        t, pt = _text(topic), _text(key[topic_len:])
        middle = b',"topic":%b,"payload_type":%b,"correlation_id":null,"causation_id":null' % (
            t,
            pt,
        )
        found = (topic_len, middle + _JSON_TAIL, t, pt, wanted)
        self._names[key] = found
        return found

    def lines(self, cols: Columns) -> list[bytes]:
        """The JSON lines (without line breaks) of the wanted entries of ``cols``.

        Text that is not UTF-8 raises ``UnicodeDecodeError`` (the records checked out, so it
        would be a writer's bug, reported as such by the caller)."""
        data = cols.buf.tobytes()
        out: list[bytes] = []
        append = out.append
        names = self._names
        check, syntax_error = _check_syntax, msgspec.DecodeError
        head = _HEAD
        fields = zip(
            cols.seq.tolist(),
            cols.ts_init.tolist(),
            cols.ts_publish.tolist(),
            cols.topic_start.tolist(),
            cols.topic_len.tolist(),
            cols.type_len.tolist(),
            cols.flags.tolist(),
            cols.payload_start.tolist(),
            cols.payload_len.tolist(),
            strict=True,
        )
        for seq, ts_init, ts_publish, t0, tlen, plen_type, flags, p0, plen in fields:
            key = data[t0 : t0 + tlen + plen_type]
            name = names.get(key)
            if name is None or name[0] != tlen:
                name = self._name(key, tlen)
            if not name[4]:
                continue
            payload = data[p0 : p0 + plen]
            if not flags and payload.isascii() and b"\n" not in payload and b"\r" not in payload:
                try:
                    check(payload)
                    append(head % (seq, ts_init, ts_publish, name[1], payload))
                    continue
                except (syntax_error, RecursionError):
                    pass
            corr = cause = _NULL
            if flags:
                at = t0 + tlen + plen_type
                if flags & FLAG_CORRELATION:
                    corr, at = _uuid(data[at : at + 16]), at + 16
                if flags & FLAG_CAUSATION:
                    cause = _uuid(data[at : at + 16])
            encoding, body = payload_json(payload)
            append(
                _LINE % (seq, ts_init, ts_publish, name[2], name[3], corr, cause, encoding, body)
            )
        return out
