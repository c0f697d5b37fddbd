"""The boot sweep: recover every run of an instance that a dead writer left ``running``.

Run by the store at construction (the seam's boot) and by ``ringtape recover``. For each run
whose manifest says ``running`` and whose writer lock is free, it applies
``storage.run.recovery.recover_run``. A run it cannot handle (unreadable manifest, permission
error, anything unexpected) is skipped with the reason logged and reported, and left for the
next boot: the sweep never raises, so it never stops a kernel from booting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ringtape.storage.read.reader import CorruptionError
from ringtape.storage.read.replay import iter_anchors
from ringtape.storage.run.layout import BLOB_DIR, MANIFEST_NAME, fsync_dir, list_runs
from ringtape.storage.run.lock import LockHeldError, OwnerAlive
from ringtape.storage.run.manifest import read_manifest, write_manifest
from ringtape.storage.run.recovery import RecoveryPlan, recover_run
from ringtape.storage.run.status import RunStatus

log = logging.getLogger("ringtape.recovery")


@dataclass
class SweepReport:
    recovered: list[RecoveryPlan] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # running runs with a live writer: untouched
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run_id, reason)

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
            if read_manifest(run_dir).status is not RunStatus.RUNNING:
                continue
            plan = recover_run(run_dir, owner_alive=owner_alive)
            if plan.status.is_sealed:  # a quarantined run is evidence: left exactly as found
                _index_anchors(run_dir)
                _remove_stale_temps(run_dir)
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


def _index_anchors(run_dir: Path) -> None:
    """Record the run's anchors in its manifest (what seal() does for a clean run), so that
    retention can see the restore points of recovered runs too."""
    try:
        anchors = [a.to_index() for a in iter_anchors(run_dir)]
    except CorruptionError as exc:
        log.warning("anchors of %s not indexed: %s", run_dir.name, exc)
        return
    manifest = read_manifest(run_dir)
    if anchors != manifest.anchors:
        manifest.anchors = anchors
        write_manifest(run_dir, manifest)


def _remove_stale_temps(run_dir: Path) -> None:
    """Temp files of a manifest or blob write the crash interrupted. Never data: the manifest
    was just rewritten by recovery, and a blob no anchor entry names was never anchored."""
    candidates = [*run_dir.glob(f".{MANIFEST_NAME}.*.tmp"), *run_dir.glob(f"{BLOB_DIR}/.*.tmp")]
    for path in candidates:
        path.unlink(missing_ok=True)
        log.info("removed %s left by an interrupted write", path)
    if candidates:
        fsync_dir(run_dir)
