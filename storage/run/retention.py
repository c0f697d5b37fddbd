"""Retention: which files of an instance may be reclaimed, and reclaiming them safely.

Rules of this module:

1. Planning is pure: :func:`plan_retention` takes what is on disk (:class:`RunInfo` values) and
   a mode and returns a :class:`RetentionPlan`; nothing is touched. ``ringtape prune --dry-run``
   prints exactly this plan.
2. Never reclaimed, whatever the mode: a ``running`` run, a run whose writer lock is held, a
   ``quarantined`` run (evidence), and a run that a ``running`` run names as its parent (a live
   replay child may still need it). The mode decides everything else:

   ==================  ===========================================================
   ``Full``            keep everything
   ``Bounded(N)``      keep the newest N sealed runs and the newest restore point;
                       reclaim every other sealed run whole
   ``SnapshotAnchored``keep the newest restore point's manifest, its newest valid
                       anchor's blob and the segments holding entries after the
                       anchor; reclaim older sealed runs, older blobs of that run and
                       its segments that lie wholly at or before the anchor
   ==================  ===========================================================

   A *restore point* is a sealed run (``ended`` or ``crashed_recovered``) with a valid anchor
   (its blob present and its hash matching). With no restore point ``SnapshotAnchored``
   reclaims nothing: older data becomes reclaimable only once a newer anchor is durable.
3. Reclaiming is rename-then-delete: each victim is renamed into ``<instance>/.trash/``, the
   directories are fsynced, and only then is it unlinked; a crash in between leaves a
   recoverable trash entry, never a half-deleted run. Each victim is checked again (status,
   writer lock) immediately before it is moved.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringtape.storage.format.frame import SEGMENT_HEADER_SIZE, FormatError, decode_segment_header
from ringtape.storage.run.blobs import (
    BLOB_NAME_V1,
    BLOB_NAME_V2,
    Anchor,
    BlobError,
    alias_target,
    read_snapshot,
)
from ringtape.storage.run.layout import (
    BLOB_DIR,
    TRASH_DIR,
    fsync_dir,
    list_runs,
    list_segments,
    make_private_dir,
    open_regular,
    run_sort_key,
)
from ringtape.storage.run.lock import writer_alive
from ringtape.storage.run.manifest import ManifestError, read_manifest, write_manifest
from ringtape.storage.run.status import RunStatus, retention_keeps

log = logging.getLogger("ringtape.retention")


@dataclass(frozen=True)
class SegmentInfo:
    path: Path
    first_seq: int
    last_seq: int  # 0 when unknown (unreadable header)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    run_dir: Path
    status: RunStatus | None  # None: the manifest could not be read
    parent_run_id: str | None
    live: bool
    high_watermark: int
    newest_valid_anchor: Anchor | None
    blobs: tuple[str, ...]  # blob refs present on disk
    segments: tuple[SegmentInfo, ...]
    bytes_on_disk: int


@dataclass(frozen=True)
class Reclaim:
    """One thing to delete: a whole run, or files inside a run."""

    run_id: str
    paths: tuple[Path, ...]
    whole_run: bool
    reason: str
    bytes: int
    retained_from_seq: int = 1  # for partial reclaims: the first seq that stays


@dataclass
class RetentionPlan:
    mode: str
    keep: list[tuple[str, str]] = field(default_factory=list)  # (run_id, why)
    reclaim: list[Reclaim] = field(default_factory=list)

    @property
    def reclaim_bytes(self) -> int:
        return sum(r.bytes for r in self.reclaim)

    def lines(self) -> list[str]:
        out = [f"retention mode {self.mode}:"]
        out += [f"  keep     {run}  ({why})" for run, why in self.keep]
        for r in self.reclaim:
            what = "whole run" if r.whole_run else f"{len(r.paths)} file(s)"
            out.append(f"  reclaim  {r.run_id}  {what}, {r.bytes} bytes  ({r.reason})")
        out.append(f"  total reclaimable: {self.reclaim_bytes} bytes")
        return out


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _segments(run_dir: Path, high_watermark: int) -> tuple[SegmentInfo, ...]:
    firsts: list[tuple[Path, int]] = []
    for path in list_segments(run_dir, "events"):
        try:
            # Never a plain open(): a FIFO put in a segment's place would block it for good.
            head = open_regular(path, SEGMENT_HEADER_SIZE)[:SEGMENT_HEADER_SIZE]
            first = decode_segment_header(head).first_seq
        except (OSError, FormatError):
            first = 0
        firsts.append((path, first))
    out = []
    for i, (path, first) in enumerate(firsts):
        nxt = firsts[i + 1][1] if i + 1 < len(firsts) else high_watermark + 1
        last = nxt - 1 if first and nxt else 0
        out.append(SegmentInfo(path, first, last))
    return tuple(out)


def _newest_valid_anchor(run_dir: Path, anchors: list[dict[str, Any]]) -> Anchor | None:
    """The newest anchor of the manifest's index that is a restore point (its blob complete
    and the one it names)."""
    for raw in reversed(anchors):
        try:
            anchor = Anchor.from_index(raw)
            read_snapshot(run_dir, anchor)
        except BlobError:
            continue
        return anchor
    return None


def describe_run(run_dir: Path) -> RunInfo:
    """What retention needs to know about one run (reads manifests, headers and blobs)."""
    try:
        manifest = read_manifest(run_dir)
    except ManifestError:
        return RunInfo(run_dir.name, run_dir, None, None, writer_alive(run_dir), 0, None, (), (), 0)
    blob_dir = run_dir / BLOB_DIR
    names = os.listdir(blob_dir) if blob_dir.is_dir() else []
    blobs = tuple(
        sorted(f"{BLOB_DIR}/{n}" for n in names if BLOB_NAME_V1.match(n) or BLOB_NAME_V2.match(n))
    )
    return RunInfo(
        manifest.run_id,
        run_dir,
        manifest.status,
        manifest.parent_run_id,
        writer_alive(run_dir),
        manifest.high_watermark,
        _newest_valid_anchor(run_dir, manifest.anchors),
        blobs,
        _segments(run_dir, manifest.high_watermark),
        _size(run_dir),
    )


def describe_instance(instance_dir: Path) -> list[RunInfo]:
    """Every run of an instance, oldest first."""
    return [describe_run(instance_dir / run_id) for run_id in list_runs(instance_dir)]


def _protected(run: RunInfo, live_parents: set[str]) -> str | None:
    return retention_keeps(run.status, run.live, run.run_id in live_parents)


def plan_retention(runs: list[RunInfo], mode: str, keep_last: int | None = None) -> RetentionPlan:
    """The plan for ``mode`` ("Full", "Bounded" with ``keep_last``, "SnapshotAnchored")."""
    plan = RetentionPlan(mode if mode != "Bounded" else f"Bounded(keep_last={keep_last})")
    live_parents = {
        r.parent_run_id
        for r in runs
        if r.parent_run_id and (r.live or r.status is RunStatus.RUNNING)
    }
    candidates: list[RunInfo] = []
    for run in runs:
        why = _protected(run, live_parents)
        if why is not None:
            plan.keep.append((run.run_id, why))
        else:
            candidates.append(run)
    if mode == "Full":
        plan.keep += [(r.run_id, "Full keeps every run") for r in candidates]
        return plan
    restore = next((r for r in reversed(candidates) if r.newest_valid_anchor is not None), None)
    if mode == "Bounded":
        if keep_last is None or keep_last < 1:
            raise ValueError("Bounded retention needs keep_last >= 1")
        newest = {r.run_id for r in candidates[-keep_last:]}
        for run in candidates:
            if run.run_id in newest:
                plan.keep.append((run.run_id, f"one of the newest {keep_last} sealed runs"))
            elif restore is not None and run.run_id == restore.run_id:
                plan.keep.append((run.run_id, "newest restore point"))
            else:
                plan.reclaim.append(
                    Reclaim(
                        run.run_id, (run.run_dir,), True, "older than keep_last", run.bytes_on_disk
                    )
                )
        return plan
    if mode != "SnapshotAnchored":
        raise ValueError(f"unknown retention mode {mode!r}")
    if restore is None:
        plan.keep += [(r.run_id, "no restore point yet") for r in candidates]
        return plan
    for run in candidates:
        if run is restore:
            plan.keep.append((run.run_id, "newest restore point"))
            partial = _anchor_tail_reclaim(run)
            if partial is not None:
                plan.reclaim.append(partial)
        elif _older(run, restore):
            plan.reclaim.append(
                Reclaim(
                    run.run_id,
                    (run.run_dir,),
                    True,
                    "older than the restore point",
                    run.bytes_on_disk,
                )
            )
        else:
            plan.keep.append((run.run_id, "newer than the restore point"))
    return plan


def _older(run: RunInfo, than: RunInfo) -> bool:
    try:
        return run_sort_key(run.run_id) < run_sort_key(than.run_id)
    except ValueError:
        return False


def _anchor_tail_reclaim(run: RunInfo) -> Reclaim | None:
    """Segments wholly at or before the anchor, and blobs other than the anchor's."""
    anchor = run.newest_valid_anchor
    assert anchor is not None
    paths: list[Path] = []
    kept_from = 1
    for seg in run.segments:
        if seg.first_seq and seg.last_seq and seg.last_seq <= anchor.high_watermark:
            paths.append(seg.path)
            kept_from = seg.last_seq + 1
        else:
            break
    needed = {anchor.blob_ref, alias_target(run.run_dir, anchor)}
    paths += [run.run_dir / ref for ref in run.blobs if ref not in needed]
    if not paths:
        return None
    return Reclaim(
        run.run_id,
        tuple(paths),
        False,
        f"before the anchor at seq {anchor.high_watermark}",
        sum(_size(p) for p in paths),
        kept_from,
    )


def _empty_trash(trash: Path) -> None:
    for target in trash.iterdir():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


def apply_plan(instance_dir: Path, plan: RetentionPlan) -> list[Reclaim]:
    """Reclaim what the plan says, re-checking each run first; returns what was reclaimed."""
    trash = instance_dir / TRASH_DIR
    make_private_dir(trash)
    _empty_trash(trash)  # what a crash left between rename and delete was already decided
    done = []
    for item in plan.reclaim:
        run_dir = instance_dir / item.run_id
        try:
            manifest = read_manifest(run_dir)
        except ManifestError as exc:
            log.warning("retention: skipping %s: %s", item.run_id, exc)
            continue
        if not manifest.status.is_sealed or writer_alive(run_dir):
            log.warning("retention: %s is %s now; not touched", item.run_id, manifest.status)
            continue
        if not item.whole_run:
            # Record what is about to go before it goes: verify then knows the gap is deliberate.
            manifest.retained_from_seq = max(manifest.retained_from_seq, item.retained_from_seq)
            write_manifest(run_dir, manifest)
        moved = []
        for path in item.paths:
            target = (
                trash / f"{item.run_id}-{path.name}" if not item.whole_run else trash / path.name
            )
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue
            moved.append(target)
        fsync_dir(trash)
        fsync_dir(instance_dir)
        if not item.whole_run:
            fsync_dir(run_dir)
            if (run_dir / BLOB_DIR).is_dir():
                fsync_dir(run_dir / BLOB_DIR)
        for target in moved:
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        log.info("retention: reclaimed %s (%s, %d bytes)", item.run_id, item.reason, item.bytes)
        done.append(item)
    fsync_dir(trash)
    return done
