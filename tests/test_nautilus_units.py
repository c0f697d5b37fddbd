"""ringtape.nautilus pieces that need no engine: payload type names (JSON and msgpack), data
headers and timestamps, topic routes, identity, encodings, and the capture's own checks."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import msgspec
import pytest
from nautilus_trader.common import Environment as NautilusEnvironment
from nautilus_trader.serialization.serializer import MsgSpecSerializer

from ringtape.capture.config import (
    DataMarkerClass,
    DataMarkerConfig,
    Environment,
    EventStoreConfig,
    RegisteredComponents,
)
from ringtape.capture.store import EventStore
from ringtape.nautilus import PayloadEncoding, RingtapeCapture, instance_id_for
from ringtape.nautilus.encoding import EncodingError
from ringtape.nautilus.payload import data_header_reader, to_ns, type_name_reader
from ringtape.nautilus.routes import Kind, route
from ringtape.tools.jsonlines import payload_json

QUOTE = {
    "type": "QuoteTick",
    "instrument_id": "AUD/USD.SIM",
    "bid_price": "0.64998",
    "ask_price": "0.65000",
    "bid_size": "1000000",
    "ask_size": "1000000",
    "ts_event": 1_700_000_000_000_000_000,
    "ts_init": 1_700_000_000_000_000_001,
}


json_type_name = type_name_reader(PayloadEncoding("json"))
msgpack_type_name = type_name_reader(PayloadEncoding("msgpack"))


def test_json_type_name_is_read_wherever_the_key_is() -> None:
    assert json_type_name(msgspec.json.encode(QUOTE)) == "QuoteTick"
    assert json_type_name(b'{"state":"RUNNING","type":"ComponentStateChanged"}') == (
        "ComponentStateChanged"
    )
    assert json_type_name(b'{"type":"Odd\\"Name","x":1}') == 'Odd"Name'
    for primitive in (b'"hello"', b"42", b"1.5", b"\x00\x01raw", b"", b'{"type":7}'):
        assert json_type_name(primitive) == ""


def test_msgpack_type_name_reads_small_and_large_maps_and_long_names() -> None:
    assert msgpack_type_name(msgspec.msgpack.encode(QUOTE)) == "QuoteTick"  # fixmap, fixstr
    wide = {"type": "OrderFilled", **{f"k{i}": i for i in range(20)}}  # map 16
    assert msgspec.msgpack.encode(wide)[0] == 0xDE
    assert msgpack_type_name(msgspec.msgpack.encode(wide)) == "OrderFilled"
    long_name = "T" * 40  # str 8
    assert msgpack_type_name(msgspec.msgpack.encode({"type": long_name})) == long_name
    assert msgpack_type_name(msgspec.msgpack.encode({"a": 1, "type": "Late"})) == "Late"
    for other in (msgspec.msgpack.encode("hello"), msgspec.msgpack.encode(42), b"", b"\x81"):
        assert msgpack_type_name(other) == ""


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_a_data_header_holds_instrument_and_timestamps(fmt: str) -> None:
    codec = msgspec.msgpack if fmt == "msgpack" else msgspec.json
    read = data_header_reader(PayloadEncoding(fmt))
    header = read(codec.encode(QUOTE))
    assert (header.type, header.instrument_id) == ("QuoteTick", "AUD/USD.SIM")
    assert header.timestamps() == (QUOTE["ts_event"], QUOTE["ts_init"])
    as_strings = {**QUOTE, "ts_event": "5", "ts_init": "6"}  # under a MessageBusConfig
    assert read(codec.encode(as_strings)).timestamps() == (5, 6)
    deltas = {
        "type": "OrderBookDeltas",
        "instrument_id": "AAPL.XNAS",
        "deltas": [{"ts_event": 1, "ts_init": 2}, {"ts_event": 3, "ts_init": 4}],
    }
    assert read(codec.encode(deltas)).timestamps() == (3, 4)  # the last delta's


def test_timestamps_as_iso8601_keep_nanoseconds() -> None:
    assert to_ns("2023-11-14T22:13:20.000000001Z") == 1_700_000_000_000_000_001
    assert to_ns("2023-11-14T22:13:20Z") == 1_700_000_000_000_000_000
    assert to_ns("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000
    assert to_ns(None) == 0
    with pytest.raises(ValueError, match="ISO 8601"):
        to_ns("yesterday")


@pytest.mark.parametrize(
    ("topic", "kind", "marker", "key"),
    [
        ("data.quotes.SIM.AUD/USD", Kind.DATA, DataMarkerClass.Quote, "AUD/USD.SIM"),
        ("data.trades.GLBX.ESZ4.XCME", Kind.DATA, DataMarkerClass.Trade, "ESZ4.XCME.GLBX"),
        ("data.bars.AUD/USD.SIM-100-TICK-MID-INTERNAL", Kind.DATA, DataMarkerClass.Bar,
         "AUD/USD.SIM-100-TICK-MID-INTERNAL"),
        ("data.book.deltas.XCME.ESZ4*", Kind.DATA, DataMarkerClass.BookDeltas, None),
        ("data.book.depth.XNAS.AAPL", Kind.DATA, DataMarkerClass.BookDepth10, None),
        ("historical.data.quotes.SIM.AUD/USD", Kind.OTHER, None, None),
        ("data.quotes.SIM", Kind.OTHER, None, None),
        ("events.system.TRADER-001", Kind.SYSTEM, None, None),
        ("events.order.EMACross-000", Kind.ORDER, None, None),
        ("data.instrument.SIM.AUD/USD", Kind.INSTRUMENT, None, None),
        ("events.fills.AUD/USD.SIM", Kind.OTHER, None, None),
    ],
)  # fmt: skip
def test_topics_route_to_their_marker_class_and_key(
    topic: str, kind: Kind, marker: DataMarkerClass | None, key: str | None
) -> None:
    where = route(topic)
    assert (where.kind, where.marker, where.key) == (kind, marker, key)


def test_the_instance_id_is_stable_per_trader_and_the_environment_is_accepted() -> None:
    first = instance_id_for("TRADER-001")
    assert (
        first
        == instance_id_for("TRADER-001")
        == uuid.uuid5(uuid.NAMESPACE_URL, "ringtape:TRADER-001")
    )
    assert first != instance_id_for("TRADER-002")
    assert Environment.parse(NautilusEnvironment.BACKTEST) is Environment.BACKTEST
    assert Environment.parse(NautilusEnvironment.LIVE) is Environment.LIVE


def test_the_encoding_is_read_off_the_kernels_serializer() -> None:
    assert PayloadEncoding.of(MsgSpecSerializer(msgspec.json)) == PayloadEncoding("json")
    msgpack_config = MsgSpecSerializer(msgspec.msgpack, timestamps_as_str=True)
    assert PayloadEncoding.of(msgpack_config) == PayloadEncoding("msgpack", True, False)
    iso = PayloadEncoding.of(MsgSpecSerializer(msgspec.json, timestamps_as_iso8601=True))
    assert PayloadEncoding.from_dict(iso.to_dict()) == iso
    with pytest.raises(EncodingError, match="not a MsgSpecSerializer"):
        PayloadEncoding.of(object())
    with pytest.raises(EncodingError, match="malformed"):
        PayloadEncoding.from_dict({"format": "json", "timestamps_as_str": "yes"})
    with pytest.raises(EncodingError, match="not one of"):
        PayloadEncoding("cbor")


def test_a_capture_refuses_bad_settings_when_built(tmp_path: Path) -> None:
    config = EventStoreConfig(base_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"markers_only: needs config\.data_markers"):
        RingtapeCapture(config, markers_only=True)
    with pytest.raises(ValueError, match="anchor_every"):
        RingtapeCapture(config, anchor_every=0)
    with pytest.raises(ValueError, match="producers"):
        RingtapeCapture(config, producers="many")
    with pytest.raises(ValueError, match="base_dir"):
        RingtapeCapture(EventStoreConfig())
    with pytest.raises(TypeError, match="EventStoreConfig"):
        RingtapeCapture({"base_dir": "x"})  # type: ignore[arg-type]
    RingtapeCapture(
        EventStoreConfig(base_dir=str(tmp_path), data_markers=DataMarkerConfig()),
        markers_only=True,
    )


def test_open_refuses_extra_that_is_not_json_before_it_creates_a_run(tmp_path: Path) -> None:
    store = EventStore(EventStoreConfig(base_dir=str(tmp_path)))
    iid = uuid.uuid4()
    with pytest.raises(ValueError, match="extra: not JSON-serialisable"):
        store.open(iid, RegisteredComponents(), "backtest", extra={"x": object()})
    with pytest.raises(TypeError, match="extra: expected a mapping"):
        store.open(iid, RegisteredComponents(), "backtest", extra=[1])  # type: ignore[arg-type]
    assert not (tmp_path / str(iid)).exists() or not any((tmp_path / str(iid)).iterdir())


def test_dump_shows_msgpack_payloads_as_json_and_keeps_json_and_base64() -> None:
    encoding, body = payload_json(msgspec.msgpack.encode(QUOTE))
    assert (encoding, json.loads(body)) == (b"msgpack", QUOTE)
    encoding, body = payload_json(msgspec.json.encode(QUOTE))
    assert (encoding, json.loads(body)) == (b"json", QUOTE)
    for raw in (b"\x01\x02\x03", b"\x81", msgspec.msgpack.encode(7), b"\xc4\x01x"):
        assert payload_json(raw)[0] == b"base64", raw
    with_bytes = msgspec.msgpack.encode({"type": "X", "blob": b"\x00\x01"})
    assert payload_json(with_bytes)[0] == b"base64"  # bin is not JSON: kept exact
