"""The on-disk format and everything that reads or checks it; no processes, no shared memory.

Rooms: ``format/`` bytes and their layouts, ``segment/`` segment files (bounded reading, the
frame walk, appending), ``check/`` findings, scans and verification, ``run/`` a run directory
(layout, manifest, locks, status, recovery, retention, blobs), ``read/`` reading runs back.

Reading a run from Python starts here: :func:`open_run` and :func:`open_runs`
(``storage/read/run.py``). They are imported on first use, so that importing any
``ringtape.storage.*`` module (every child process does) imports nothing it does not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

# name -> the module that defines it
_EXPORTS: Final[dict[str, str]] = {
    "CorruptionError": "ringtape.storage.read.reader",
    "Run": "ringtape.storage.read.run",
    "RunNotFound": "ringtape.storage.read.run",
    "open_run": "ringtape.storage.read.run",
    "open_runs": "ringtape.storage.read.run",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from ringtape.storage.read.reader import CorruptionError as CorruptionError
    from ringtape.storage.read.run import (
        Run as Run,
        RunNotFound as RunNotFound,
        open_run as open_run,
        open_runs as open_runs,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ringtape.storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
