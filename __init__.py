"""ringtape: durable capture of a trading kernel's run history, and offline proof that it is whole.

User code starts here::

    import ringtape

    store = ringtape.EventStore(ringtape.EventStoreConfig(base_dir="runs"), instance_id=...)

This module is the kernel-side public API: the store (:class:`EventStore`,
:func:`event_store_factory`, :class:`StoreOptions`), the seam's config types and the errors.
Names are imported on first use, so that ``import ringtape`` (and every child process, every
``ringtape --help``) stays cheap. Reading runs back lives in :mod:`ringtape.storage`, the
command line in :mod:`ringtape.tools`.

The repository root is this package: ``capture/``, ``storage/`` and ``tools/`` beside this file
are ``ringtape.capture``, ``ringtape.storage`` and ``ringtape.tools`` (see the README's layout).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

__version__: Final = "0.2.0"

# name -> the module that defines it
_EXPORTS: Final[dict[str, str]] = {
    "AnchorRefused": "ringtape.capture.errors",
    "Clock": "ringtape.capture.store",
    "DataMarkerClass": "ringtape.capture.config",
    "DataMarkerConfig": "ringtape.capture.config",
    "EntryTooLarge": "ringtape.capture.errors",
    "Environment": "ringtape.capture.config",
    "EventStore": "ringtape.capture.store",
    "EventStoreConfig": "ringtape.capture.config",
    "EventStoreError": "ringtape.capture.errors",
    "WrongThread": "ringtape.capture.errors",
    "HaltReason": "ringtape.capture.errors",
    "RegisteredComponents": "ringtape.capture.config",
    "ReplayError": "ringtape.capture.errors",
    "RetentionMode": "ringtape.capture.config",
    "RunIdentity": "ringtape.capture.config",
    "RunStartedTimeout": "ringtape.capture.errors",
    "StoreHalted": "ringtape.capture.errors",
    "StoreNotOpen": "ringtape.capture.errors",
    "StoreOptions": "ringtape.capture.store",
    "StoreStats": "ringtape.capture.session",
    "SystemClock": "ringtape.capture.store",
    "event_store_factory": "ringtape.capture.store",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from ringtape.capture.config import (
        DataMarkerClass as DataMarkerClass,
        DataMarkerConfig as DataMarkerConfig,
        Environment as Environment,
        EventStoreConfig as EventStoreConfig,
        RegisteredComponents as RegisteredComponents,
        RetentionMode as RetentionMode,
        RunIdentity as RunIdentity,
    )
    from ringtape.capture.errors import (
        AnchorRefused as AnchorRefused,
        EntryTooLarge as EntryTooLarge,
        EventStoreError as EventStoreError,
        HaltReason as HaltReason,
        ReplayError as ReplayError,
        RunStartedTimeout as RunStartedTimeout,
        StoreHalted as StoreHalted,
        StoreNotOpen as StoreNotOpen,
        WrongThread as WrongThread,
    )
    from ringtape.capture.session import StoreStats as StoreStats
    from ringtape.capture.store import (
        Clock as Clock,
        EventStore as EventStore,
        StoreOptions as StoreOptions,
        SystemClock as SystemClock,
        event_store_factory as event_store_factory,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ringtape' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
