"""ringtape live side: config types, shared-memory ring, writer process, EventStore."""

from capture.config import (
    DataMarkerClass,
    DataMarkerConfig,
    Environment,
    EventStoreConfig,
    RegisteredComponents,
    RetentionMode,
    RunIdentity,
)
from capture.errors import (
    AnchorRefused,
    EntryTooLarge,
    EventStoreError,
    HaltReason,
    ReplayError,
    RunStartedTimeout,
    StoreHalted,
    StoreNotOpen,
)
from capture.store import Clock, EventStore, StoreOptions, SystemClock, event_store_factory

__all__ = [
    "AnchorRefused",
    "Clock",
    "DataMarkerClass",
    "DataMarkerConfig",
    "EntryTooLarge",
    "Environment",
    "EventStore",
    "EventStoreConfig",
    "EventStoreError",
    "HaltReason",
    "RegisteredComponents",
    "ReplayError",
    "RetentionMode",
    "RunIdentity",
    "RunStartedTimeout",
    "StoreHalted",
    "StoreNotOpen",
    "StoreOptions",
    "SystemClock",
    "event_store_factory",
]
