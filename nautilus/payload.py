"""Reading the few fields ringtape needs out of a serialised NautilusTrader payload, cheaply.

Every object NautilusTrader publishes serialises as a map whose first key is ``"type"`` (the
class name), in JSON (``{"type":"QuoteTick",…``) or msgpack (a map header, ``\\xa4type``,
then the name). :func:`json_type_name` and :func:`msgpack_type_name` slice the name out of
those first bytes without decoding the rest; anything else (a published dict with ``type``
elsewhere, an escaped name) falls back to a decode of that one key, and a payload with no
string ``type`` (a primitive, raw bytes) has the type name ``""``.

Market data needs more: the instrument, ``ts_event`` and ``ts_init``. :class:`DataHeader` is a
``msgspec`` struct of just those keys, so decoding skips the prices and sizes. Timestamps are
integers, integer strings or ISO 8601 strings (``encoding.PayloadEncoding``):
:func:`to_ns` turns each into nanoseconds. ``OrderBookDeltas`` carries its timestamps in its
deltas; the last delta's are the message's (as NautilusTrader's own ``OrderBookDeltas`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, TypeVar

import msgspec

from ringtape.nautilus.encoding import PayloadEncoding

TypeName = Callable[[bytes], str]
S = TypeVar("S", bound=msgspec.Struct)

_JSON_PREFIX: Final = b'{"type":"'
_MSGPACK_TYPE_KEY: Final = b"\xa4type"
_NAME_LIMIT: Final = 256  # type names are class names: anything longer is not one


class _TypeOnly(msgspec.Struct):
    type: str = ""


class _Timestamps(msgspec.Struct):
    ts_event: int | str = 0
    ts_init: int | str = 0


class DataHeader(msgspec.Struct):
    """The keys of a market-data payload that data markers need."""

    type: str = ""
    instrument_id: str = ""
    bar_type: str = ""
    ts_event: int | str | None = None
    ts_init: int | str | None = None
    deltas: list[_Timestamps] | None = None

    def timestamps(self) -> tuple[int, int]:
        """``(ts_event, ts_init)`` in ns (from the last delta for ``OrderBookDeltas``)."""
        if self.ts_event is None and self.deltas:
            last = self.deltas[-1]
            return to_ns(last.ts_event), to_ns(last.ts_init)
        return to_ns(self.ts_event), to_ns(self.ts_init)


class InstrumentHeader(msgspec.Struct):
    """The id of a serialised instrument (its ``id`` key) or of an order event's instrument."""

    type: str = ""
    id: str = ""
    instrument_id: str = ""


_JSON_TYPE: Final = msgspec.json.Decoder(_TypeOnly)
_MSGPACK_TYPE: Final = msgspec.msgpack.Decoder(_TypeOnly)


def _decoded_type_name(decode: Callable[[bytes], _TypeOnly], payload: bytes) -> str:
    try:
        return decode(payload).type
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def json_type_name(payload: bytes) -> str:
    """The ``type`` of a JSON payload (``""`` when it has none)."""
    if payload.startswith(_JSON_PREFIX):
        end = payload.find(b'"', 9, 9 + _NAME_LIMIT)
        if end > 9:
            name = payload[9:end]
            if b"\\" not in name:
                return name.decode("utf-8", "replace")
    return _decoded_type_name(_JSON_TYPE.decode, payload)


def msgpack_type_name(payload: bytes) -> str:
    """The ``type`` of a msgpack payload (``""`` when it has none)."""
    lead = payload[0] if payload else 0
    if 0x80 <= lead <= 0x8F:  # fixmap
        at = 1
    elif lead == 0xDE:  # map 16
        at = 3
    elif lead == 0xDF:  # map 32
        at = 5
    else:
        return _decoded_type_name(_MSGPACK_TYPE.decode, payload)
    if payload[at : at + 5] == _MSGPACK_TYPE_KEY and len(payload) > at + 5:
        tag = payload[at + 5]
        if 0xA0 <= tag <= 0xBF:  # fixstr
            start, size = at + 6, tag & 0x1F
        elif tag == 0xD9 and len(payload) > at + 6:  # str 8
            start, size = at + 7, payload[at + 6]
        else:
            start, size = 0, -1
        if size > 0 and start + size <= len(payload):
            try:
                return payload[start : start + size].decode("utf-8")
            except UnicodeDecodeError:
                pass
    return _decoded_type_name(_MSGPACK_TYPE.decode, payload)


def type_name_reader(encoding: PayloadEncoding) -> TypeName:
    """The type-name function for payloads in ``encoding``."""
    return msgpack_type_name if encoding.format == "msgpack" else json_type_name


def struct_reader(kind: type[S], encoding: PayloadEncoding) -> Callable[[bytes], S]:
    """A decoder of the struct ``kind`` for payloads in ``encoding`` (other keys skipped)."""
    if encoding.format == "msgpack":
        return msgspec.msgpack.Decoder(kind).decode
    return msgspec.json.Decoder(kind).decode


def data_header_reader(encoding: PayloadEncoding) -> Callable[[bytes], DataHeader]:
    """A decoder of :class:`DataHeader` for payloads in ``encoding``."""
    return struct_reader(DataHeader, encoding)


def instrument_header_reader(encoding: PayloadEncoding) -> Callable[[bytes], InstrumentHeader]:
    """A decoder of :class:`InstrumentHeader` for payloads in ``encoding``."""
    return struct_reader(InstrumentHeader, encoding)


def to_ns(value: int | str | None) -> int:
    """A NautilusTrader timestamp (int, integer string or ISO 8601 string) in ns; 0 if absent.

    ``ValueError`` for a string that is neither.
    """
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    return _iso_to_ns(value)


def _iso_to_ns(text: str) -> int:
    # NautilusTrader writes "2023-11-14T22:13:20.000000001Z"; datetime keeps only microseconds,
    # so the fraction is read on its own.
    body = text.removesuffix("Z")
    whole, _, fraction = body.partition(".")
    offset = ""
    for sign in ("+", "-"):
        if sign in fraction:
            fraction, _, rest = fraction.partition(sign)
            offset = sign + rest
    try:
        moment = datetime.fromisoformat(whole + offset)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if fraction and not fraction.isdigit():
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp")
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return int(moment.timestamp()) * 1_000_000_000 + nanos
