"""Is a process alive? The answers ``storage/`` needs about processes but may not ask itself.

A pid alone is not an identity (pids are reused), so an owner is ``pid`` plus its creation
time, as recorded in a run's ``writer.lock``.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from ringtape.storage.run.lock import read_owner


def process_created(pid: int | None = None) -> float:
    """The creation time of process ``pid`` (this one by default), as psutil reports it."""
    return float(psutil.Process(os.getpid() if pid is None else pid).create_time())


def owner_alive(run_dir: Path) -> bool:
    """Whether the kernel named in the run's ``writer.lock`` still runs (unknown: assume so)."""
    owner = read_owner(run_dir)
    if owner is None:
        return True
    pid, created = owner
    try:
        return abs(process_created(pid) - created) < 0.01
    except psutil.Error:
        return False
