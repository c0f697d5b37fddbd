"""How a NautilusTrader kernel encodes the payloads its MessageBus hands to listeners.

A kernel serialises every published message with its ``MsgSpecSerializer``: JSON with integer
timestamps when it has no ``MessageBusConfig``; under a ``MessageBusConfig``, JSON or msgpack
(``MessageBusConfig.encoding``) with timestamps as integer strings, or as ISO 8601 strings
(``timestamps_as_iso8601``). Reading the payloads back needs a serializer with the same three
settings (a mismatch fails inside NautilusTrader), so :class:`PayloadEncoding` is recorded in
the run's ``RunStarted`` (``extra.nautilus.encoding``) and in every cache snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
from nautilus_trader.serialization.serializer import MsgSpecSerializer

FORMATS: Final = ("json", "msgpack")


class EncodingError(ValueError):
    """A serializer or a recorded encoding that ringtape cannot read back."""


@dataclass(frozen=True)
class PayloadEncoding:
    """The settings of the ``MsgSpecSerializer`` that wrote a run's payloads."""

    format: str = "json"  # "json" or "msgpack"
    timestamps_as_str: bool = False
    timestamps_as_iso8601: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise EncodingError(f"payload format {self.format!r} is not one of {FORMATS}")

    @classmethod
    def of(cls, serializer: Any) -> PayloadEncoding:
        """The encoding of a kernel's serializer (``kernel.msgbus.serializer``).

        The format is not an attribute of ``MsgSpecSerializer``; it is read off what the
        serializer makes of the integer 0 (JSON ``0``, msgpack ``\\x00``).
        """
        if not isinstance(serializer, MsgSpecSerializer):
            raise EncodingError(
                f"the message bus serializer is a {type(serializer).__name__}, not a"
                " MsgSpecSerializer: its payloads cannot be read back"
            )
        probe = serializer.serialize(0)
        if probe == b"0":
            fmt = "json"
        elif probe == b"\x00":
            fmt = "msgpack"
        else:
            raise EncodingError(f"unknown serializer format: 0 serialises as {probe!r}")
        return cls(fmt, bool(serializer.timestamps_as_str), bool(serializer.timestamps_as_iso8601))

    def serializer(self) -> MsgSpecSerializer:
        """A serializer that reads (and writes) payloads exactly as the kernel's did."""
        codec = msgspec.msgpack if self.format == "msgpack" else msgspec.json
        return MsgSpecSerializer(
            encoding=codec,
            timestamps_as_str=self.timestamps_as_str,
            timestamps_as_iso8601=self.timestamps_as_iso8601,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "timestamps_as_str": self.timestamps_as_str,
            "timestamps_as_iso8601": self.timestamps_as_iso8601,
        }

    @classmethod
    def from_dict(cls, data: Any) -> PayloadEncoding:
        if not isinstance(data, dict):
            raise EncodingError(f"encoding: expected an object, got {data!r}")
        fmt = data.get("format")
        flags = [data.get("timestamps_as_str", False), data.get("timestamps_as_iso8601", False)]
        if not isinstance(fmt, str) or not all(isinstance(f, bool) for f in flags):
            raise EncodingError(f"encoding: malformed {data!r}")
        return cls(fmt, flags[0], flags[1])
