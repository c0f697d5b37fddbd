"""Tests of the seam config types against the serde JSON of `event_store.rs`.

The golden strings below are written by hand from the Rust declarations: fields in declaration
order, compact separators, non-ASCII kept as is, `Duration` as `{"secs":s,"nanos":n}`, enums
externally tagged, `None` as `null`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ringtape.capture.config import (
    DEFAULT_DATA_MARKER_CHANNEL_CAPACITY,
    DEFAULT_DATA_MARKER_SAFETY_FLUSH_INTERVAL,
    DataMarkerClass,
    DataMarkerConfig,
    EventStoreConfig,
    RegisteredComponents,
    RetentionMode,
    RunIdentity,
)

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_names(exc: pytest.ExceptionInfo[ValueError], path: str) -> None:
    """The error's label (text before the first ': ') is the field `path` or inside it."""
    label = str(exc.value).split(": ", 1)[0]
    ok = (
        label in (path, f"EventStoreConfig.{path}")
        or label.startswith((f"{path}.", f"{path}["))
        or label.startswith((f"EventStoreConfig.{path}.", f"EventStoreConfig.{path}["))
    )
    assert ok, f"{str(exc.value)!r} does not name {path!r}"


# --------------------------------------------------------------------------------------------
# 1. The seam's own Rust tests, ported
# --------------------------------------------------------------------------------------------


def test_event_store_config_serde_roundtrip() -> None:
    config = EventStoreConfig()
    restored = EventStoreConfig.from_json(config.to_json())

    assert restored.channel_capacity == config.channel_capacity
    assert restored.max_batch_entries == config.max_batch_entries
    assert restored.max_batch_latency == config.max_batch_latency
    assert restored.halt_threshold == config.halt_threshold
    assert restored.run_started_timeout == config.run_started_timeout
    assert restored.base_dir == config.base_dir
    assert restored.retention == config.retention
    assert restored.replay_from_run_id == config.replay_from_run_id
    assert restored.identity == config.identity
    assert restored.data_markers == config.data_markers
    assert restored == config


def test_data_marker_config_serde_roundtrip() -> None:
    config = EventStoreConfig(
        data_markers=DataMarkerConfig(
            classes=[DataMarkerClass.Quote, DataMarkerClass.BookDeltas],
            safety_flush_interval=timedelta(milliseconds=250),
            channel_capacity=512,
            high_fidelity=["ETHUSDT-PERP.BINANCE"],
        )
    )
    restored = EventStoreConfig.from_json(config.to_json())

    assert restored.data_markers == config.data_markers


@pytest.mark.parametrize(
    "mode",
    [RetentionMode.full(), RetentionMode.bounded(5), RetentionMode.snapshot_anchored()],
)
def test_retention_mode_serde_roundtrip(mode: RetentionMode) -> None:
    assert RetentionMode.from_json(mode.to_json()) == mode


def test_event_store_config_default_values() -> None:
    config = EventStoreConfig()

    assert config.channel_capacity == 10_000
    assert config.max_batch_entries == 100
    assert config.max_batch_latency == timedelta(milliseconds=5)
    assert config.halt_threshold == timedelta(milliseconds=250)
    assert config.run_started_timeout == timedelta(seconds=5)
    assert config.base_dir == ""  # PathBuf::new()
    assert config.retention == RetentionMode.full()
    assert config.replay_from_run_id is None
    assert config.identity == RunIdentity()
    assert config.data_markers is None


def test_data_markers_default_is_none() -> None:
    assert EventStoreConfig().data_markers is None


# --------------------------------------------------------------------------------------------
# 2. Golden JSON (hand-derived from the Rust declarations)
# --------------------------------------------------------------------------------------------

DEFAULT_JSON = (
    '{"base_dir":"",'
    '"identity":{"binary_hash":"","schema_version":0,"crate_versions":"","feature_flags":[],'
    '"adapter_versions":{},"config_hash":"","seed":null},'
    '"retention":"Full",'
    '"replay_from_run_id":null,'
    '"data_markers":null,'
    '"channel_capacity":10000,'
    '"max_batch_entries":100,'
    '"max_batch_latency":{"secs":0,"nanos":5000000},'
    '"halt_threshold":{"secs":0,"nanos":250000000},'
    '"run_started_timeout":{"secs":5,"nanos":0}}'
)

# serde_json escapes only '"', '\\' and U+0000..U+001F (\b \t \n \f \r short forms, the rest as
# lowercase \u00XX); everything else, non-ASCII included, is written raw.
FULL_JSON = (
    '{"base_dir":"/var/lib/ringtape/τρέξιμο",'
    '"identity":{"binary_hash":"9f86d081884c7d65",'
    '"schema_version":3,'
    '"crate_versions":"c0ffee",'
    '"feature_flags":["retention=bounded","tab\\there \\"quoted\\" \\u001b"],'
    '"adapter_versions":{"BYBIT":"0.51.1","BINANCE":"0.52.0","東京":"Ωµ-1"},'
    '"config_hash":"ÆØÅ-κόσμε",'
    '"seed":18446744073709551615},'
    '"retention":{"Bounded":{"keep_last":7}},'
    '"replay_from_run_id":"1700000000000000000-a1b2c3d4",'
    '"data_markers":{"classes":["Quote","BookDeltas"],'
    '"safety_flush_interval":{"secs":0,"nanos":250000000},'
    '"channel_capacity":512,'
    '"high_fidelity":["ETHUSDT-PERP.BINANCE","BTCUSDT-PERP.BINANCE"]},'
    '"channel_capacity":4096,'
    '"max_batch_entries":64,'
    '"max_batch_latency":{"secs":0,"nanos":1500000},'
    '"halt_threshold":{"secs":2,"nanos":500000},'
    '"run_started_timeout":{"secs":86401,"nanos":0}}'
)


def full_config() -> EventStoreConfig:
    return EventStoreConfig(
        base_dir="/var/lib/ringtape/τρέξιμο",
        identity=RunIdentity(
            binary_hash="9f86d081884c7d65",
            schema_version=3,
            crate_versions="c0ffee",
            feature_flags=["retention=bounded", 'tab\there "quoted" \x1b'],
            adapter_versions={"BYBIT": "0.51.1", "BINANCE": "0.52.0", "東京": "Ωµ-1"},
            config_hash="ÆØÅ-κόσμε",
            seed=U64_MAX,
        ),
        retention=RetentionMode.bounded(7),
        replay_from_run_id="1700000000000000000-a1b2c3d4",
        data_markers=DataMarkerConfig(
            classes=[DataMarkerClass.Quote, DataMarkerClass.BookDeltas],
            safety_flush_interval=timedelta(milliseconds=250),
            channel_capacity=512,
            high_fidelity=["ETHUSDT-PERP.BINANCE", "BTCUSDT-PERP.BINANCE"],
        ),
        channel_capacity=4096,
        max_batch_entries=64,
        max_batch_latency=timedelta(microseconds=1500),
        halt_threshold=timedelta(seconds=2, microseconds=500),
        run_started_timeout=timedelta(days=1, seconds=1),
    )


def test_golden_default() -> None:
    assert EventStoreConfig().to_json() == DEFAULT_JSON
    loaded = EventStoreConfig.from_json(DEFAULT_JSON)
    assert loaded == EventStoreConfig()
    assert loaded.to_json() == DEFAULT_JSON


def test_golden_full() -> None:
    assert full_config().to_json() == FULL_JSON
    loaded = EventStoreConfig.from_json(FULL_JSON)
    assert loaded == full_config()
    assert loaded.to_json() == FULL_JSON
    assert EventStoreConfig.from_json(FULL_JSON.encode("utf-8")).to_json() == FULL_JSON
    # Map order is IndexMap insertion order, not sorted.
    assert list(loaded.identity.adapter_versions) == ["BYBIT", "BINANCE", "東京"]


def test_golden_parts() -> None:
    assert RunIdentity().to_json() == (
        '{"binary_hash":"","schema_version":0,"crate_versions":"","feature_flags":[],'
        '"adapter_versions":{},"config_hash":"","seed":null}'
    )
    assert DataMarkerConfig().to_json() == (
        '{"classes":["BookDeltas","BookDepth10","Quote","Trade","Bar"],'
        '"safety_flush_interval":{"secs":1,"nanos":0},'
        '"channel_capacity":10000,"high_fidelity":[]}'
    )
    assert RetentionMode.full().to_json() == '"Full"'
    assert RetentionMode.bounded(5).to_json() == '{"Bounded":{"keep_last":5}}'
    assert RetentionMode.snapshot_anchored().to_json() == '"SnapshotAnchored"'
    components_json = (
        '{"actors":{"a-1":"h1"},"strategies":{"S-2":"h2","S-1":"h3"},"algorithms":{},'
        '"subscriptions":["quotes:ETHUSDT"],"endpoints":["DataEngine.execute"]}'
    )
    components = RegisteredComponents(
        actors={"a-1": "h1"},
        strategies={"S-2": "h2", "S-1": "h3"},
        subscriptions=["quotes:ETHUSDT"],
        endpoints=["DataEngine.execute"],
    )
    assert components.to_json() == components_json
    assert RegisteredComponents.from_json(components_json) == components
    assert RegisteredComponents.from_json(components_json).to_json() == components_json


def test_input_field_order_and_unknown_fields() -> None:
    # serde accepts any field order and ignores unknown fields; output is canonical.
    data = json.loads(FULL_JSON)
    shuffled = {k: data[k] for k in reversed(list(data))}
    shuffled["not_a_field"] = {"anything": [1, 2]}
    shuffled["identity"] = dict(reversed(list(data["identity"].items())))
    assert EventStoreConfig.from_json(json.dumps(shuffled)).to_json() == FULL_JSON


def test_missing_data_markers_loads_as_none() -> None:
    data = json.loads(DEFAULT_JSON)
    del data["data_markers"]
    loaded = EventStoreConfig.from_json(json.dumps(data))
    assert loaded.data_markers is None
    assert loaded.to_json() == DEFAULT_JSON


def test_empty_data_markers_loads_defaults() -> None:
    data = json.loads(DEFAULT_JSON)
    data["data_markers"] = {}
    loaded = EventStoreConfig.from_json(json.dumps(data))
    assert loaded.data_markers == DataMarkerConfig()
    assert loaded.data_markers.classes == DataMarkerClass.all()
    assert loaded.data_markers.safety_flush_interval == DEFAULT_DATA_MARKER_SAFETY_FLUSH_INTERVAL
    assert loaded.data_markers.channel_capacity == DEFAULT_DATA_MARKER_CHANNEL_CAPACITY
    assert loaded.data_markers.high_fidelity == []


@pytest.mark.parametrize(
    ("key", "default"),
    [
        ("classes", DataMarkerClass.all()),
        ("safety_flush_interval", timedelta(seconds=1)),
        ("channel_capacity", 10_000),
        ("high_fidelity", []),
    ],
)
def test_missing_data_marker_field_loads_default(key: str, default: Any) -> None:
    data = json.loads(FULL_JSON)
    del data["data_markers"][key]
    loaded = EventStoreConfig.from_json(json.dumps(data))
    assert loaded.data_markers is not None
    assert getattr(loaded.data_markers, key) == default
    expected = full_config()
    assert expected.data_markers is not None
    setattr(expected.data_markers, key, default)
    assert loaded == expected


REQUIRED_PATHS = [
    ("base_dir",),
    ("identity",),
    ("retention",),
    ("channel_capacity",),
    ("max_batch_entries",),
    ("max_batch_latency",),
    ("halt_threshold",),
    ("run_started_timeout",),
    ("identity", "binary_hash"),
    ("identity", "schema_version"),
    ("identity", "crate_versions"),
    ("identity", "feature_flags"),
    ("identity", "adapter_versions"),
    ("identity", "config_hash"),
    ("retention", "Bounded", "keep_last"),
    ("max_batch_latency", "secs"),
    ("halt_threshold", "nanos"),
    ("data_markers", "safety_flush_interval", "secs"),
    ("data_markers", "safety_flush_interval", "nanos"),
]


@pytest.mark.parametrize("path", REQUIRED_PATHS, ids=".".join)
def test_missing_required_field_raises(path: tuple[str, ...]) -> None:
    data = json.loads(FULL_JSON)
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    with pytest.raises(ValueError) as exc:
        EventStoreConfig.from_json(json.dumps(data))
    assert_names(exc, ".".join(path))


@pytest.mark.parametrize("path", [("replay_from_run_id",), ("identity", "seed")], ids=".".join)
def test_missing_option_field_reads_as_none(path: tuple[str, ...]) -> None:
    # serde_derive reads a missing Option<T> field as None; so do we.
    data = json.loads(FULL_JSON)
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    config = EventStoreConfig.from_json(json.dumps(data))
    value = config.replay_from_run_id if path == ("replay_from_run_id",) else config.identity.seed
    assert value is None


def test_missing_registered_components_field_raises() -> None:
    for key in ("actors", "strategies", "algorithms", "subscriptions", "endpoints"):
        data = RegisteredComponents().to_dict()
        del data[key]
        with pytest.raises(ValueError) as exc:
            RegisteredComponents.from_dict(data)
        assert_names(exc, f"components.{key}")


def test_require_base_dir() -> None:
    with pytest.raises(ValueError) as exc:
        EventStoreConfig().require_base_dir()
    assert_names(exc, "base_dir")
    assert EventStoreConfig(base_dir="/tmp/x").require_base_dir() == Path("/tmp/x")
    assert EventStoreConfig(base_dir=Path("/tmp/y")).base_dir == "/tmp/y"
    # Building a config without a base dir is fine; only opening needs one.
    assert EventStoreConfig.from_json(DEFAULT_JSON).base_dir == ""


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", "null", '"x"', "{}", b"\xff\xfe{"],
)
def test_not_a_config_raises_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        EventStoreConfig.from_json(text)


def test_lone_surrogate_rejected() -> None:
    # serde_json rejects "\ud800"; a Rust String cannot hold it.
    data = json.loads(FULL_JSON)
    data["identity"]["config_hash"] = "\ud800"
    with pytest.raises(ValueError) as exc:
        EventStoreConfig.from_json(json.dumps(data))
    assert_names(exc, "identity.config_hash")
    with pytest.raises(ValueError) as exc:
        EventStoreConfig(base_dir="/x/\udcff")
    assert_names(exc, "base_dir")


def test_non_string_map_key_rejected() -> None:
    with pytest.raises(ValueError) as exc:
        RunIdentity(adapter_versions={1: "x"})  # type: ignore[dict-item]
    assert_names(exc, "identity.adapter_versions")
    with pytest.raises(ValueError) as exc:
        RegisteredComponents(actors={("a",): "x"})  # type: ignore[dict-item]
    assert_names(exc, "components.actors")


# --------------------------------------------------------------------------------------------
# 3. Property tests
# --------------------------------------------------------------------------------------------

# st.text() never yields surrogates, so every string is a valid Rust String.
texts = st.text(max_size=12)
u64s = st.integers(min_value=0, max_value=U64_MAX)
positive_usizes = st.integers(min_value=1, max_value=U64_MAX)
durations = st.one_of(
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(seconds=10)),
    st.timedeltas(min_value=timedelta(0)),
)
str_maps = st.dictionaries(texts, texts, max_size=4)
str_lists = st.lists(texts, max_size=4)

retention_modes = st.one_of(
    st.just(RetentionMode.full()),
    st.just(RetentionMode.snapshot_anchored()),
    st.builds(RetentionMode.bounded, positive_usizes),
)
identities = st.builds(
    RunIdentity,
    binary_hash=texts,
    schema_version=st.integers(min_value=0, max_value=U32_MAX),
    crate_versions=texts,
    feature_flags=str_lists,
    adapter_versions=str_maps,
    config_hash=texts,
    seed=st.none() | u64s,
)
marker_configs = st.builds(
    DataMarkerConfig,
    classes=st.lists(st.sampled_from(DataMarkerClass), max_size=7),
    safety_flush_interval=durations,
    channel_capacity=positive_usizes,
    high_fidelity=str_lists,
)
configs = st.builds(
    EventStoreConfig,
    base_dir=texts,
    identity=identities,
    retention=retention_modes,
    replay_from_run_id=st.none() | texts,
    data_markers=st.none() | marker_configs,
    channel_capacity=positive_usizes,
    max_batch_entries=positive_usizes,
    max_batch_latency=durations,
    halt_threshold=durations,
    run_started_timeout=durations,
)
components = st.builds(
    RegisteredComponents,
    actors=str_maps,
    strategies=str_maps,
    algorithms=str_maps,
    subscriptions=str_lists,
    endpoints=str_lists,
)


@FAST
@given(configs)
def test_property_json_roundtrip(config: EventStoreConfig) -> None:
    text = config.to_json()
    restored = EventStoreConfig.from_json(text)
    assert restored == config
    assert restored.to_json() == text
    # Compact, declaration-ordered, UTF-8 encodable.
    assert list(json.loads(text)) == [f.name for f in dataclasses.fields(EventStoreConfig)]
    assert json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False) == text
    text.encode("utf-8")


@FAST
@given(configs)
def test_property_dict_roundtrip(config: EventStoreConfig) -> None:
    data = config.to_dict()
    assert EventStoreConfig.from_dict(copy.deepcopy(data)) == config
    assert EventStoreConfig.from_dict(data).to_dict() == data


@FAST
@given(identities, components, marker_configs, retention_modes)
def test_property_parts_roundtrip(
    identity: RunIdentity,
    comps: RegisteredComponents,
    markers: DataMarkerConfig,
    retention: RetentionMode,
) -> None:
    for value in (identity, comps, markers, retention):
        text = value.to_json()
        restored = type(value).from_json(text)
        assert restored == value
        assert restored.to_json() == text
        assert type(value).from_dict(value.to_dict()) == value


@FAST
@given(durations)
def test_property_duration_encoding(value: timedelta) -> None:
    config = EventStoreConfig(max_batch_latency=value)
    encoded = config.to_dict()["max_batch_latency"]
    assert list(encoded) == ["secs", "nanos"]
    assert 0 <= encoded["nanos"] < 1_000_000_000
    assert encoded["nanos"] % 1000 == 0
    total_us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    assert encoded["secs"] * 1_000_000 + encoded["nanos"] // 1000 == total_us


# Invalid JSON-level values: (path into the dict, strategy of bad values, expected field label).
bad_uint = st.one_of(
    st.just(-1),
    st.integers(max_value=-1),
    st.integers(min_value=U64_MAX + 1, max_value=U64_MAX * 4),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    texts,
    st.none(),
    st.lists(st.integers(), max_size=2),
)
bad_positive_uint = st.one_of(st.just(0), bad_uint)
bad_scalar = st.one_of(st.integers(), st.booleans(), st.floats())
bad_text = bad_scalar | st.lists(texts, max_size=2)  # for string fields
bad_list = bad_scalar | texts | st.dictionaries(texts, texts, max_size=2)  # for list fields
bad_map = bad_scalar | texts | st.lists(texts, max_size=2)  # for map fields
bad_nanos = st.one_of(
    st.integers(min_value=1, max_value=999_999_999).filter(lambda n: n % 1000 != 0),
    st.integers(min_value=1_000_000_000, max_value=U64_MAX),
    bad_uint,
)
bad_duration = st.one_of(
    st.none(), st.integers(), texts, st.lists(st.integers(), max_size=2), st.just({})
)
unknown_variant = st.one_of(
    st.sampled_from(["Bounded", "bounded", "full", "Nope", "", "Full ", "snapshot_anchored"]),
    st.just({"Nope": {"keep_last": 5}}),
    st.just({"Full": {"keep_last": 5}}),
    st.just({"Bounded": {"keep_last": 1}, "Full": None}),
    st.just({}),
    st.just({"Bounded": 5}),
    st.integers(),
    st.none(),
)
bad_class = st.one_of(
    st.sampled_from(["quote", "Book", "Bars", "", "BOOKDELTAS"]), st.integers(), st.none()
)

INVALID: list[tuple[tuple[str | int, ...], st.SearchStrategy[Any], str]] = [
    (("base_dir",), bad_text | st.none(), "base_dir"),
    (("channel_capacity",), bad_positive_uint, "channel_capacity"),
    (("max_batch_entries",), bad_positive_uint, "max_batch_entries"),
    (("max_batch_latency", "secs"), bad_uint, "max_batch_latency.secs"),
    (("max_batch_latency", "nanos"), bad_nanos, "max_batch_latency.nanos"),
    (("halt_threshold", "secs"), bad_uint, "halt_threshold.secs"),
    (("halt_threshold", "nanos"), bad_nanos, "halt_threshold.nanos"),
    (("run_started_timeout",), bad_duration, "run_started_timeout"),
    (("retention",), unknown_variant, "retention"),
    (("retention", "Bounded", "keep_last"), bad_positive_uint, "retention.Bounded.keep_last"),
    (("replay_from_run_id",), bad_text, "replay_from_run_id"),
    (("identity",), bad_text | st.none(), "identity"),
    (("identity", "binary_hash"), bad_text | st.none(), "identity.binary_hash"),
    (
        ("identity", "schema_version"),
        st.one_of(bad_uint, st.integers(min_value=U32_MAX + 1, max_value=U64_MAX)),
        "identity.schema_version",
    ),
    (("identity", "seed"), bad_uint.filter(lambda v: v is not None), "identity.seed"),
    (("identity", "feature_flags"), bad_list | st.none(), "identity.feature_flags"),
    (("identity", "feature_flags", 0), bad_text | st.none(), "identity.feature_flags"),
    (("identity", "adapter_versions"), bad_map | st.none(), "identity.adapter_versions"),
    (("identity", "adapter_versions", "BYBIT"), bad_text, "identity.adapter_versions"),
    (("data_markers",), bad_text.filter(lambda v: v is not None), "data_markers"),
    (("data_markers", "classes"), bad_list | st.none(), "data_markers.classes"),
    (("data_markers", "classes", 1), bad_class, "data_markers.classes"),
    (("data_markers", "channel_capacity"), bad_positive_uint, "data_markers.channel_capacity"),
    (
        ("data_markers", "safety_flush_interval", "nanos"),
        bad_nanos,
        "data_markers.safety_flush_interval.nanos",
    ),
    (
        ("data_markers", "safety_flush_interval"),
        bad_duration,
        "data_markers.safety_flush_interval",
    ),
    (("data_markers", "high_fidelity", 0), bad_text | st.none(), "data_markers.high_fidelity"),
]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_invalid_json_value_names_field(data: st.DataObject) -> None:
    path, bad_values, label = data.draw(st.sampled_from(INVALID), label="case")
    bad = data.draw(bad_values, label="bad value")
    doc = json.loads(FULL_JSON)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    with pytest.raises(ValueError) as exc:
        EventStoreConfig.from_dict(doc)
    assert_names(exc, label)
    with pytest.raises(ValueError) as exc:
        EventStoreConfig.from_json(json.dumps(doc))
    assert_names(exc, label)


negative_durations = st.timedeltas(max_value=-timedelta(microseconds=1))
INVALID_FIELDS: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("channel_capacity", bad_positive_uint),
    ("max_batch_entries", bad_positive_uint),
    ("max_batch_latency", negative_durations | bad_text | st.none()),
    ("halt_threshold", negative_durations | bad_text | st.none()),
    ("run_started_timeout", negative_durations | bad_text | st.none()),
    ("base_dir", bad_text | st.none()),
    ("identity", bad_text | st.none()),
    ("retention", bad_text | st.none() | st.just("Full")),
    ("replay_from_run_id", bad_text),
    ("data_markers", bad_text | st.just(DataMarkerClass.Quote)),
]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_property_invalid_constructor_value_names_field(data: st.DataObject) -> None:
    name, bad_values = data.draw(st.sampled_from(INVALID_FIELDS), label="field")
    bad = data.draw(bad_values, label="bad value")
    with pytest.raises(ValueError) as exc:
        dataclasses.replace(full_config(), **{name: bad})
    assert_names(exc, name)


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just("safety_flush_interval"), negative_durations | bad_text),
        st.tuples(st.just("channel_capacity"), bad_positive_uint),
        st.tuples(st.just("classes"), bad_list),
        st.tuples(st.just("classes"), st.lists(bad_class, min_size=1, max_size=2)),
        st.tuples(st.just("high_fidelity"), bad_list),
        st.tuples(st.just("high_fidelity"), st.lists(bad_text, min_size=1, max_size=2)),
    )
)
def test_property_invalid_data_marker_value_names_field(case: tuple[str, Any]) -> None:
    name, bad = case
    with pytest.raises(ValueError) as exc:
        DataMarkerConfig(**{name: bad})
    assert_names(exc, f"data_markers.{name}")


@pytest.mark.parametrize("keep_last", [0, -1, True, 1.0, "5", None, U64_MAX + 1])
def test_invalid_keep_last(keep_last: Any) -> None:
    with pytest.raises(ValueError) as exc:
        RetentionMode("Bounded", keep_last)
    assert_names(exc, "retention")
    with pytest.raises(ValueError) as exc:
        RetentionMode.from_json(json.dumps({"Bounded": {"keep_last": keep_last}}))
    assert_names(exc, "retention.Bounded.keep_last")


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({"schema_version": U32_MAX + 1}, "identity.schema_version"),
        ({"schema_version": -1}, "identity.schema_version"),
        ({"seed": -1}, "identity.seed"),
        ({"seed": U64_MAX + 1}, "identity.seed"),
        ({"seed": 1.5}, "identity.seed"),
        ({"feature_flags": ("a",)}, "identity.feature_flags"),
        ({"feature_flags": [1]}, "identity.feature_flags"),
        ({"adapter_versions": {"a": 1}}, "identity.adapter_versions"),
        ({"binary_hash": None}, "identity.binary_hash"),
    ],
)
def test_invalid_identity(kwargs: dict[str, Any], label: str) -> None:
    with pytest.raises(ValueError) as exc:
        RunIdentity(**kwargs)
    assert_names(exc, label)


@pytest.mark.parametrize(
    "value",
    [
        "Bounded",
        "bounded",
        "full",
        "Nope",
        "",
        "snapshot_anchored",
        {"Nope": {"keep_last": 5}},
        {"Full": {"keep_last": 5}},
        {"SnapshotAnchored": {}},
        {"Bounded": {"keep_last": 1}, "Full": None},
        {},
        {"Bounded": 5},
        {"Bounded": {}},
        5,
        None,
        ["Full"],
    ],
)
def test_unknown_retention_variant(value: Any) -> None:
    with pytest.raises(ValueError) as exc:
        RetentionMode.from_json(json.dumps(value))
    assert_names(exc, "retention")
    doc = json.loads(DEFAULT_JSON)
    doc["retention"] = value
    with pytest.raises(ValueError) as exc:
        EventStoreConfig.from_json(json.dumps(doc))
    assert_names(exc, "retention")
    if isinstance(value, str):
        with pytest.raises(ValueError) as exc:
            RetentionMode(value)
        assert_names(exc, "retention")


@pytest.mark.parametrize("value", ["quote", "BOOKDELTAS", "Bars", "", 0, None, ["Quote"]])
def test_unknown_data_marker_class(value: Any) -> None:
    doc = json.loads(FULL_JSON)
    doc["data_markers"]["classes"] = ["Trade", value]
    with pytest.raises(ValueError) as exc:
        EventStoreConfig.from_json(json.dumps(doc))
    assert_names(exc, "data_markers.classes")
    with pytest.raises(ValueError) as exc:
        DataMarkerConfig(classes=[value])
    assert_names(exc, "data_markers.classes")


@pytest.mark.parametrize(
    "name",
    [
        "max_batch_latency",
        "halt_threshold",
        "run_started_timeout",
        "data_markers.safety_flush_interval",
    ],
)
@pytest.mark.parametrize(
    ("duration", "label"),
    [
        ({"secs": 0, "nanos": 1}, "nanos"),
        ({"secs": 1, "nanos": 999_999_999}, "nanos"),
        ({"secs": 0, "nanos": 1_000_000_000}, "nanos"),
        ({"secs": -1, "nanos": 0}, "secs"),
        ({"secs": 0, "nanos": -1000}, "nanos"),
        ({"secs": 1.5, "nanos": 0}, "secs"),
        ({"secs": "1", "nanos": 0}, "secs"),
        ({"secs": 0, "nanos": None}, "nanos"),
        ({"secs": U64_MAX + 1, "nanos": 0}, "secs"),
        ({"secs": U64_MAX, "nanos": 0}, ""),  # valid u64, beyond timedelta's range
    ],
)
def test_invalid_duration(name: str, duration: dict[str, Any], label: str) -> None:
    doc = json.loads(FULL_JSON)
    node = doc
    *parents, leaf = name.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = duration
    with pytest.raises(ValueError) as exc:
        EventStoreConfig.from_json(json.dumps(doc))
    assert_names(exc, f"{name}.{label}" if label else name)


@pytest.mark.parametrize("name", ["max_batch_latency", "halt_threshold", "run_started_timeout"])
def test_negative_duration_rejected(name: str) -> None:
    with pytest.raises(ValueError) as exc:
        EventStoreConfig(**{name: timedelta(microseconds=-1)})
    assert_names(exc, name)
    with pytest.raises(ValueError) as exc:
        DataMarkerConfig(safety_flush_interval=timedelta(days=-1))
    assert_names(exc, "data_markers.safety_flush_interval")
    assert EventStoreConfig(**{name: timedelta(0)}).to_dict()[name] == {"secs": 0, "nanos": 0}
