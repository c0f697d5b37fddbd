"""Config types of the kernel seam, with the JSON the original serde types produce.

Rules of this module:

1. Field names, field order and defaults are those of the seam (`event_store.rs`). A config
   written by the Rust side loads here, and ``to_json`` of what loaded is byte-for-byte the
   compact ``serde_json::to_string`` text: fields in declaration order, no spaces, non-ASCII
   kept as is, ``Option::None`` as ``null``, ``Duration`` as ``{"secs": s, "nanos": n}``,
   enums externally tagged (``"Full"``, ``{"Bounded": {"keep_last": 5}}``).
2. As with serde, only fields marked ``#[serde(default)]`` in the seam (``data_markers`` and
   the four fields of ``DataMarkerConfig``) and ``Option`` fields (``replay_from_run_id``,
   ``identity.seed``; read as ``None``) may be missing on input. Unknown fields are ignored,
   as serde does by default.
3. Values are validated when the object is built: one ``ValueError`` naming the field.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

__all__ = [
    "DEFAULT_DATA_MARKER_CHANNEL_CAPACITY",
    "DEFAULT_DATA_MARKER_SAFETY_FLUSH_INTERVAL",
    "DataMarkerClass",
    "DataMarkerConfig",
    "Environment",
    "EventStoreConfig",
    "RegisteredComponents",
    "RetentionMode",
    "RunIdentity",
]

_U64_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1
_NANOS_PER_SEC = 1_000_000_000

DEFAULT_DATA_MARKER_SAFETY_FLUSH_INTERVAL = timedelta(seconds=1)
DEFAULT_DATA_MARKER_CHANNEL_CAPACITY = 10_000


def _dumps(value: Any) -> str:
    # serde_json::to_string: compact separators, UTF-8 kept, the same escapes as json.dumps.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _loads(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: not valid JSON: {exc}") from None


def _require_mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a JSON object, got {type(value).__name__}")
    return value


def _take(data: dict[str, Any], key: str, owner: str) -> Any:
    if key not in data:
        raise ValueError(f"{owner}.{key}: missing field")
    return data[key]


def _check_uint(value: Any, name: str, *, minimum: int = 0, maximum: int = _U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum or value > maximum:
        raise ValueError(f"{name}: must be between {minimum} and {maximum}, got {value}")
    return value


def _check_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A Rust String is valid UTF-8: lone surrogates ("\ud800") cannot be represented.
        raise ValueError(f"{name}: not valid UTF-8 (lone surrogate) in {value!r}") from None
    return value


def _check_str_map(value: Any, name: str) -> dict[str, str]:
    mapping = _require_mapping(value, name)
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise ValueError(f"{name}: keys must be strings, got {key!r}")
        _check_str(key, name)
        _check_str(item, f"{name}[{key!r}]")
    return dict(mapping)


def _check_str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{name}: expected a list of strings, got {value!r}")
    for i, item in enumerate(value):
        _check_str(item, f"{name}[{i}]")
    return list(value)


def duration_to_dict(value: timedelta) -> dict[str, int]:
    """Encode a duration the way serde encodes ``std::time::Duration``."""
    total_ns = (value.days * 86_400 + value.seconds) * _NANOS_PER_SEC + value.microseconds * 1000
    return {"secs": total_ns // _NANOS_PER_SEC, "nanos": total_ns % _NANOS_PER_SEC}


def duration_from_dict(value: Any, name: str) -> timedelta:
    """Decode serde's ``{"secs": s, "nanos": n}``; sub-microsecond nanos must be zero."""
    data = _require_mapping(value, name)
    secs = _check_uint(_take(data, "secs", name), f"{name}.secs")
    nanos = _check_uint(_take(data, "nanos", name), f"{name}.nanos", maximum=_NANOS_PER_SEC - 1)
    if nanos % 1000:
        raise ValueError(f"{name}.nanos: {nanos} has sub-microsecond precision, not representable")
    try:
        return timedelta(seconds=secs, microseconds=nanos // 1000)
    except OverflowError:
        raise ValueError(f"{name}: {secs} s is out of range") from None


def _check_duration(value: Any, name: str) -> timedelta:
    if not isinstance(value, timedelta):
        raise ValueError(f"{name}: expected a timedelta, got {value!r}")
    if value < timedelta(0):
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


class _JsonMixin:
    """``to_json``/``from_json`` on top of ``to_dict``/``from_dict``."""

    _json_name: ClassVar[str]

    def to_dict(self) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Any) -> Self:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def to_json(self) -> str:
        """The compact JSON ``serde_json::to_string`` writes for the Rust type."""
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """Parse JSON written by ``to_json`` or by the Rust side; ``ValueError`` when invalid."""
        return cls.from_dict(_loads(text, cls._json_name))


class Environment(enum.StrEnum):
    """The kernel environment a run is captured in."""

    BACKTEST = "backtest"
    SANDBOX = "sandbox"
    LIVE = "live"

    @classmethod
    def parse(cls, value: Environment | str) -> Environment:
        """Accept an ``Environment``, its value or its name, in any case, or another
        enum's member whose value is one of those (a kernel's own ``Environment``)."""
        if isinstance(value, Environment):
            return value
        if isinstance(value, enum.Enum):
            value = value.value
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(e.value for e in cls)
            raise ValueError(f"environment: expected one of {choices}, got {value!r}") from None


class DataMarkerClass(enum.Enum):
    """Market-data class enabled for data-marker capture (serialised by variant name)."""

    # Members are singletons compared by identity; Enum's own __hash__ runs in Python and
    # costs ~150 ns on the observe_data hot path, the identity hash costs nothing.
    __hash__ = object.__hash__

    BookDeltas = "BookDeltas"
    BookDepth10 = "BookDepth10"
    Quote = "Quote"
    Trade = "Trade"
    Bar = "Bar"

    @classmethod
    def all(cls) -> list[DataMarkerClass]:
        """All builtin classes in canonical order."""
        return list(cls)

    @classmethod
    def parse(cls, value: Any, name: str = "DataMarkerClass") -> DataMarkerClass:
        if isinstance(value, DataMarkerClass):
            return value
        try:
            return cls(value)
        except (ValueError, TypeError):
            choices = ", ".join(c.value for c in cls)
            raise ValueError(f"{name}: expected one of {choices}, got {value!r}") from None


@dataclass(frozen=True)
class RetentionMode(_JsonMixin):
    """How the supervisor prunes sealed runs: ``Full``, ``Bounded(keep_last)`` or
    ``SnapshotAnchored``. Build with the class methods."""

    _json_name: ClassVar[str] = "RetentionMode"
    kind: str = "Full"
    keep_last: int | None = None

    _KINDS: ClassVar[tuple[str, ...]] = ("Full", "Bounded", "SnapshotAnchored")

    def __post_init__(self) -> None:
        if self.kind not in self._KINDS:
            raise ValueError(f"retention: unknown mode {self.kind!r}")
        if self.kind == "Bounded":
            _check_uint(self.keep_last, "retention.Bounded.keep_last", minimum=1)
        elif self.keep_last is not None:
            raise ValueError(f"retention.keep_last: only Bounded has keep_last ({self.kind})")

    @classmethod
    def full(cls) -> RetentionMode:
        return cls("Full")

    @classmethod
    def bounded(cls, keep_last: int) -> RetentionMode:
        return cls("Bounded", keep_last)

    @classmethod
    def snapshot_anchored(cls) -> RetentionMode:
        return cls("SnapshotAnchored")

    @property
    def feature_flag(self) -> str:
        """The manifest feature flag that records this mode."""
        return {"Full": "retention=full", "Bounded": "retention=bounded"}.get(
            self.kind, "retention=snapshot"
        )

    def to_dict(self) -> Any:
        if self.kind == "Bounded":
            return {"Bounded": {"keep_last": self.keep_last}}
        return self.kind

    @classmethod
    def from_dict(cls, data: Any) -> RetentionMode:
        if isinstance(data, str):
            if data == "Bounded":
                raise ValueError("retention.Bounded: missing keep_last")
            return cls(data)
        mapping = _require_mapping(data, "retention")
        if len(mapping) != 1:
            raise ValueError(f"retention: expected one variant, got {sorted(mapping)}")
        ((kind, body),) = mapping.items()
        if kind != "Bounded":
            raise ValueError(f"retention: {kind!r} is not a struct variant")
        body = _require_mapping(body, "retention.Bounded")
        keep_last = _take(body, "keep_last", "retention.Bounded")
        return cls("Bounded", keep_last)


@dataclass
class RunIdentity(_JsonMixin):
    """Per-run identification data the kernel populates from build metadata."""

    _json_name: ClassVar[str] = "RunIdentity"
    binary_hash: str = ""
    schema_version: int = 0
    crate_versions: str = ""
    feature_flags: list[str] = field(default_factory=list)
    adapter_versions: dict[str, str] = field(default_factory=dict)
    config_hash: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        p = "identity"
        _check_str(self.binary_hash, f"{p}.binary_hash")
        _check_uint(self.schema_version, f"{p}.schema_version", maximum=_U32_MAX)
        _check_str(self.crate_versions, f"{p}.crate_versions")
        self.feature_flags = _check_str_list(self.feature_flags, f"{p}.feature_flags")
        self.adapter_versions = _check_str_map(self.adapter_versions, f"{p}.adapter_versions")
        _check_str(self.config_hash, f"{p}.config_hash")
        if self.seed is not None:
            _check_uint(self.seed, f"{p}.seed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "binary_hash": self.binary_hash,
            "schema_version": self.schema_version,
            "crate_versions": self.crate_versions,
            "feature_flags": list(self.feature_flags),
            "adapter_versions": dict(self.adapter_versions),
            "config_hash": self.config_hash,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RunIdentity:
        d = _require_mapping(data, "identity")
        return cls(
            binary_hash=_take(d, "binary_hash", "identity"),
            schema_version=_take(d, "schema_version", "identity"),
            crate_versions=_take(d, "crate_versions", "identity"),
            feature_flags=_take(d, "feature_flags", "identity"),
            adapter_versions=_take(d, "adapter_versions", "identity"),
            config_hash=_take(d, "config_hash", "identity"),
            seed=d.get("seed"),  # serde reads a missing Option as None
        )


@dataclass
class RegisteredComponents(_JsonMixin):
    """The component manifest captured into the ``RunStarted`` entry."""

    _json_name: ClassVar[str] = "RegisteredComponents"
    actors: dict[str, str] = field(default_factory=dict)
    strategies: dict[str, str] = field(default_factory=dict)
    algorithms: dict[str, str] = field(default_factory=dict)
    subscriptions: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = "components"
        self.actors = _check_str_map(self.actors, f"{p}.actors")
        self.strategies = _check_str_map(self.strategies, f"{p}.strategies")
        self.algorithms = _check_str_map(self.algorithms, f"{p}.algorithms")
        self.subscriptions = _check_str_list(self.subscriptions, f"{p}.subscriptions")
        self.endpoints = _check_str_list(self.endpoints, f"{p}.endpoints")

    def to_dict(self) -> dict[str, Any]:
        return {
            "actors": dict(self.actors),
            "strategies": dict(self.strategies),
            "algorithms": dict(self.algorithms),
            "subscriptions": list(self.subscriptions),
            "endpoints": list(self.endpoints),
        }

    @classmethod
    def from_dict(cls, data: Any) -> RegisteredComponents:
        d = _require_mapping(data, "components")
        return cls(**{f.name: _take(d, f.name, "components") for f in fields(cls)})


@dataclass
class DataMarkerConfig(_JsonMixin):
    """Opt-in data-marker sidecar settings for a run."""

    _json_name: ClassVar[str] = "DataMarkerConfig"
    classes: list[DataMarkerClass] = field(default_factory=DataMarkerClass.all)
    safety_flush_interval: timedelta = DEFAULT_DATA_MARKER_SAFETY_FLUSH_INTERVAL
    channel_capacity: int = DEFAULT_DATA_MARKER_CHANNEL_CAPACITY
    high_fidelity: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = "data_markers"
        if not isinstance(self.classes, list):
            raise ValueError(f"{p}.classes: expected a list, got {self.classes!r}")
        self.classes = [
            DataMarkerClass.parse(c, f"{p}.classes[{i}]") for i, c in enumerate(self.classes)
        ]
        _check_duration(self.safety_flush_interval, f"{p}.safety_flush_interval")
        _check_uint(self.channel_capacity, f"{p}.channel_capacity", minimum=1)
        self.high_fidelity = _check_str_list(self.high_fidelity, f"{p}.high_fidelity")

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [c.value for c in self.classes],
            "safety_flush_interval": duration_to_dict(self.safety_flush_interval),
            "channel_capacity": self.channel_capacity,
            "high_fidelity": list(self.high_fidelity),
        }

    @classmethod
    def from_dict(cls, data: Any) -> DataMarkerConfig:
        p = "data_markers"
        d = _require_mapping(data, p)
        kwargs: dict[str, Any] = {}
        if "classes" in d:
            if not isinstance(d["classes"], list):
                raise ValueError(f"{p}.classes: expected a list, got {d['classes']!r}")
            kwargs["classes"] = [
                DataMarkerClass.parse(c, f"{p}.classes[{i}]") for i, c in enumerate(d["classes"])
            ]
        if "safety_flush_interval" in d:
            kwargs["safety_flush_interval"] = duration_from_dict(
                d["safety_flush_interval"], f"{p}.safety_flush_interval"
            )
        if "channel_capacity" in d:
            kwargs["channel_capacity"] = d["channel_capacity"]
        if "high_fidelity" in d:
            kwargs["high_fidelity"] = d["high_fidelity"]
        return cls(**kwargs)


@dataclass
class EventStoreConfig(_JsonMixin):
    """Configuration of the run lifecycle; the defaults are the seam's."""

    _json_name: ClassVar[str] = "EventStoreConfig"
    base_dir: str | os.PathLike[str] = ""
    identity: RunIdentity = field(default_factory=RunIdentity)
    retention: RetentionMode = field(default_factory=RetentionMode.full)
    replay_from_run_id: str | None = None
    data_markers: DataMarkerConfig | None = None
    channel_capacity: int = 10_000
    max_batch_entries: int = 100
    max_batch_latency: timedelta = timedelta(milliseconds=5)
    halt_threshold: timedelta = timedelta(milliseconds=250)
    run_started_timeout: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        # Kept as text: PathBuf "" and "." are different values, Path() would merge them.
        if not isinstance(self.base_dir, str | os.PathLike):
            raise ValueError(f"base_dir: expected a path, got {self.base_dir!r}")
        self.base_dir = _check_str(os.fspath(self.base_dir), "base_dir")
        if not isinstance(self.identity, RunIdentity):
            raise ValueError(f"identity: expected RunIdentity, got {self.identity!r}")
        if not isinstance(self.retention, RetentionMode):
            raise ValueError(f"retention: expected RetentionMode, got {self.retention!r}")
        if self.replay_from_run_id is not None:
            _check_str(self.replay_from_run_id, "replay_from_run_id")
        if self.data_markers is not None and not isinstance(self.data_markers, DataMarkerConfig):
            raise ValueError(f"data_markers: expected DataMarkerConfig, got {self.data_markers!r}")
        _check_uint(self.channel_capacity, "channel_capacity", minimum=1)
        _check_uint(self.max_batch_entries, "max_batch_entries", minimum=1)
        for name in ("max_batch_latency", "halt_threshold", "run_started_timeout"):
            _check_duration(getattr(self, name), name)

    @property
    def base_path(self) -> Path:
        return Path(self.base_dir)

    def require_base_dir(self) -> Path:
        """The base directory, or ``ValueError`` when it is unset (opening needs one)."""
        if not self.base_dir:
            raise ValueError("base_dir: must be set to open a run")
        return Path(self.base_dir)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_dir": self.base_dir,
            "identity": self.identity.to_dict(),
            "retention": self.retention.to_dict(),
            "replay_from_run_id": self.replay_from_run_id,
            "data_markers": None if self.data_markers is None else self.data_markers.to_dict(),
            "channel_capacity": self.channel_capacity,
            "max_batch_entries": self.max_batch_entries,
            "max_batch_latency": duration_to_dict(self.max_batch_latency),
            "halt_threshold": duration_to_dict(self.halt_threshold),
            "run_started_timeout": duration_to_dict(self.run_started_timeout),
        }

    @classmethod
    def from_dict(cls, data: Any) -> EventStoreConfig:
        o = "EventStoreConfig"
        d = _require_mapping(data, o)
        markers = d.get("data_markers")
        base_dir = _check_str(_take(d, "base_dir", o), "base_dir")
        return cls(
            base_dir=base_dir,
            identity=RunIdentity.from_dict(_take(d, "identity", o)),
            retention=RetentionMode.from_dict(_take(d, "retention", o)),
            replay_from_run_id=d.get("replay_from_run_id"),  # a missing Option is None
            data_markers=None if markers is None else DataMarkerConfig.from_dict(markers),
            channel_capacity=_take(d, "channel_capacity", o),
            max_batch_entries=_take(d, "max_batch_entries", o),
            max_batch_latency=duration_from_dict(
                _take(d, "max_batch_latency", o), "max_batch_latency"
            ),
            halt_threshold=duration_from_dict(_take(d, "halt_threshold", o), "halt_threshold"),
            run_started_timeout=duration_from_dict(
                _take(d, "run_started_timeout", o), "run_started_timeout"
            ),
        )
