"""The boot sweep: recover every run of an instance that a dead writer left ``running``.

Run by the store at construction (the seam's boot) and by ``ringtape recover``. For each run
whose manifest says ``running`` and whose locks are free, it applies
``storage.run.recovery.recover_run`` (which scans each stream from its recovery checkpoint on,
seals the run in one manifest write and removes the temp files the crash left, all while holding
the run's locks). A run directory without a manifest whose open never became durable (nothing in
it but its lock file and temp manifests) is retired once: moved to ``<instance>/.aborted/`` and
reported, never warned about at every boot. A run it cannot handle (unreadable manifest,
permission error, anything unexpected) is skipped with the reason logged and reported, and left
for the next boot: the sweep never raises, so it never stops a kernel from booting.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ringtape.storage.run.layout import (
    ABORTED_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    fsync_dir,
    list_runs,
    make_private_dir,
)
from ringtape.storage.run.lock import LockHeldError, OwnerAlive, WriterLock
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.recovery import RecoveryPlan, recover_run
from ringtape.storage.run.status import RunStatus

log = logging.getLogger("ringtape.recovery")

# A run directory with not even a lock file in it may be an open() between its mkdir and its
# lock: only one this much older than that is taken for an aborted open.
EMPTY_DIR_GRACE_S: Final = 10.0


@dataclass
class SweepReport:
    recovered: list[RecoveryPlan] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # running runs with a live writer: untouched
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run_id, reason)
    # Opens that never became durable (no manifest), moved aside: (run_id, where to).
    retired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def newest_recovered(self) -> str | None:
        """The run id of the newest run this sweep sealed (the new run's parent)."""
        return Path(self.recovered[-1].run_dir).name if self.recovered else None


def sweep_instance(instance_dir: Path, *, owner_alive: OwnerAlive | None = None) -> SweepReport:
    """Recover the dead ``running`` runs of one instance, oldest first (``owner_alive``: see
    ``storage.run.lock.hold_run``)."""
    report = SweepReport()
    try:
        run_ids = list_runs(instance_dir)
    except OSError as exc:
        log.warning("recovery skipped %s (retried at next boot): %s", instance_dir, exc)
        return report
    for run_id in run_ids:
        run_dir = instance_dir / run_id
        try:
            if not os.path.lexists(run_dir / MANIFEST_NAME) and opening(run_dir):
                report.live.append(run_id)  # an open() between its mkdir and its lock, maybe
                continue
            if not os.path.lexists(run_dir / MANIFEST_NAME) and aborted_open(run_dir):
                where = retire_aborted_open(instance_dir, run_id)
                log.warning(
                    "retired %s: its open never became durable (no manifest); moved to %s",
                    run_id,
                    where,
                )
                report.retired.append((run_id, str(where)))
                continue
            if read_manifest(run_dir).status is not RunStatus.RUNNING:
                continue
            plan = recover_run(run_dir, owner_alive=owner_alive)
        except LockHeldError:
            report.live.append(run_id)
            continue
        except Exception as exc:  # whatever it is, it must not stop the kernel's boot
            log.warning("recovery skipped %s (retried at next boot): %s", run_id, exc)
            report.skipped.append((run_id, str(exc)))
            continue
        log.info(
            "recovered %s: %s, high watermark %d, %d finding(s), %d cut(s)",
            run_id,
            plan.status,
            plan.high_watermark,
            len(plan.findings),
            len(plan.cuts),
        )
        report.recovered.append(plan)
    return report


def opening(run_dir: Path) -> bool:
    """An empty run directory made less than ``EMPTY_DIR_GRACE_S`` ago: it may be an
    ``open()`` between its mkdir and its lock, so it is left alone for now."""
    young = time.time() - os.lstat(run_dir).st_mtime < EMPTY_DIR_GRACE_S
    return young and not os.listdir(run_dir)


def aborted_open(run_dir: Path) -> bool:
    """Is ``run_dir`` what an ``open()`` that never made its first manifest durable leaves?
    Nothing in it but ``writer.lock`` and temp manifests (or nothing at all, for a while): no
    segment, no blob, no manifest, so nothing was ever durable in it. (A temp manifest without
    the lock file: the lock's name was lost with the power, it is taken before any manifest.)"""
    names = os.listdir(run_dir)
    temps = [n for n in names if n.startswith(f".{MANIFEST_NAME}.") and n.endswith(".tmp")]
    rest = set(names) - set(temps) - {LOCK_NAME}
    if rest:
        return False  # anything else (a segment, say) is evidence for a person: skipped
    if not names:  # an open() may be between its mkdir and its lock: only an old one
        return not opening(run_dir)
    return True


def retire_aborted_open(instance_dir: Path, run_id: str) -> Path:
    """Move an aborted open aside, to ``<instance>/.aborted/<run_id>``, holding its lock (a live
    ``open()`` holds it from before its first manifest: ``LockHeldError`` then). Durable: both
    directories are fsynced."""
    run_dir = instance_dir / run_id
    aside = instance_dir / ABORTED_DIR
    existed = aside.is_dir()
    make_private_dir(aside)
    if not existed:
        fsync_dir(instance_dir)
    try:
        lock: WriterLock | None = WriterLock.acquire(run_dir, create=False)
    except FileNotFoundError:
        lock = None
    try:
        if lock is not None and not aborted_open(run_dir):
            raise LockHeldError(f"{run_dir} changed while it was being retired")
        target = aside / run_id
        os.rename(run_dir, target)
    finally:
        if lock is not None:
            lock.release()
    fsync_dir(instance_dir)
    fsync_dir(aside)
    return target
