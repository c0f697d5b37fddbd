"""Is a process alive? The answers ``storage/`` needs about processes but may not ask itself.

A pid alone is not an identity (pids are reused), so an owner is ``pid`` plus its creation
time, as recorded in a run's ``writer.lock``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

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


_SIGKILL_BIT: Final = 1 << (9 - 1)  # SIGKILL in /proc's pending-signal masks


def child_dying(pid: int) -> int | None:
    """How an unreaped child of ours ended, from ``/proc`` before its exit is reported
    (``None``: it has not). A killed process stays visible for a while after its main thread
    became a zombie or the kill was delivered: its other threads are still exiting, and on a
    loaded machine that can take longer than a halt threshold; its pidfd and ``waitpid`` only
    report it after the last one. The result is a ``Popen.returncode``: ``-signal`` or a
    status. A pid is never reused before it is reaped, so for our own child this is exact."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return None  # gone: reaped already (poll() says how)
    state, exit_code = fields[0], int(fields[-1])
    if state in (b"Z", b"X"):
        return -(exit_code & 0x7F) if exit_code & 0x7F else exit_code >> 8
    for line in status.splitlines():
        if line.startswith((b"ShdPnd:", b"SigPnd:")) and int(line.split()[1], 16) & _SIGKILL_BIT:
            return -9
    return None
