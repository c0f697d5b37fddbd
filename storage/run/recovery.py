"""Recovery of a run left ``running`` by a crash: a pure scan returning a plan, then a small act.

Rules of this module:

1. The scan computes an :class:`~ringtape.storage.run.status.Outcome`; the status it seals the
   run with is ``storage/run/status.py``'s table ``RECOVERY_VERDICTS``. Code here never picks a
   status itself.
2. :func:`scan_run` only reads. :func:`apply_plan` is the only function that changes a run, and
   it changes exactly three things: the torn tail at the end of a stream's last segment (kept
   in a ``<segment>.torn`` side file, fsynced, before the segment is cut), the manifest
   (rewritten atomically, once: status, watermarks, findings and the anchor index together, so
   a crash leaves the old manifest or the whole new one), and then the temp files of writes the
   crash interrupted (manifest, checkpoint and blob temps: never data). It never cuts a frame
   that checks out, and it changes nothing but the manifest in a run it quarantines: those
   bytes are evidence.
3. Neither function touches a run whose writer or marker sidecar still holds its lock
   (``LockHeldError``). The caller decides which runs to sweep; a run whose manifest cannot be
   read is refused (``RecoveryError``) and left for a person or the next sweep.
4. Only ``running`` runs change. The plan of a run already ``ended``, ``crashed_recovered`` or
   ``quarantined`` changes nothing, which is what makes a second recovery a no-op; a recovery
   interrupted half-way is finished by the next one (a ``.torn`` file that already holds the
   same bytes is reused).

Theory of operation: each stream is scanned from its recovery checkpoint on
(``storage/run/checkpoint.py``): the segments the writer rolled past were fsynced before the
checkpoint named them, so only what follows (normally the last segment) is read and checked
here, deeply; ``ringtape verify`` checks the rest. A missing or disagreeing checkpoint means a
scan of the whole stream. The events stream decides the verdict. Damage anywhere in it (any finding
but the torn tail at its very end) quarantines the run. Otherwise a stream with no entries, one
that ends in ``RunEnded``, and one that does not are the three clean outcomes. The ``markers``
stream never decides the verdict: its damage is recorded in the manifest's findings (marked
``"stream": "markers"``) and its torn tail is cut like the events stream's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.check.stream import StreamScan, scan_stream
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED
from ringtape.storage.read.reader import CorruptionError
from ringtape.storage.read.replay import iter_anchors
from ringtape.storage.run.blobs import Anchor, BlobError
from ringtape.storage.run.checkpoint import Checkpoint, checkpoint_start, read_checkpoint
from ringtape.storage.run.layout import (
    BLOB_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    MARKER_LOCK_NAME,
    TORN_FILE_RE,
    TORN_SUFFIX,
    create_private_file,
    fsync_dir,
)
from ringtape.storage.run.lock import LockHeldError, OwnerAlive, hold_run, writer_alive
from ringtape.storage.run.manifest import Manifest, ManifestError, read_manifest, write_manifest
from ringtape.storage.run.status import (
    NOT_DAMAGE_IN_RECOVERY,
    RECOVERABLE,
    RECOVERY_VERDICTS,
    Outcome,
    RunStatus,
    check_transition,
)

COPY_CHUNK: Final = 1 << 20


class RecoveryError(RuntimeError):
    """A run this recovery will not touch (unreadable manifest, plan out of date)."""


@dataclass(frozen=True)
class Cut:
    """Cut a segment to ``offset`` bytes (``0``: the file is only a torn header; remove it)."""

    path: str
    stream: str
    offset: int
    size: int  # the file's size when scanned; a different size means the plan is stale

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RecoveryPlan:
    """What :func:`apply_plan` will do to one run, decided by :func:`scan_run`."""

    run_dir: str
    current: RunStatus
    outcome: Outcome | None  # None: the run is settled already and was not scanned
    status: RunStatus
    high_watermark: int  # last seq of the events stream's good frames
    end_ts_init: int | None  # ts_init of that last entry
    marker_high_watermark: int
    cuts: tuple[Cut, ...]
    findings: tuple[dict[str, Any], ...]  # as the manifest will record them
    ts_init_backwards: int = 0  # counted by the scan (the writer's own count died with it)
    # The anchor index the manifest will record (None: keep the manifest's, as for a run that
    # is quarantined or settled already).
    anchors: tuple[dict[str, Any], ...] | None = None
    # Segments the scan started after, per stream (a checkpoint's; -1: scanned from the first).
    checkpointed: tuple[tuple[str, int], ...] = ()

    @property
    def changes_anything(self) -> bool:
        return self.current in RECOVERABLE

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "current": str(self.current),
            "outcome": None if self.outcome is None else self.outcome.value,
            "status": str(self.status),
            "high_watermark": self.high_watermark,
            "end_ts_init": self.end_ts_init,
            "marker_high_watermark": self.marker_high_watermark,
            "cuts": [c.to_dict() for c in self.cuts],
            "findings": list(self.findings),
            "ts_init_backwards": self.ts_init_backwards,
            "anchors": None if self.anchors is None else len(self.anchors),
            "checkpointed": dict(self.checkpointed),
        }


def classify(
    events: StreamScan, checkpoint: Checkpoint | None = None
) -> tuple[Outcome, list[Finding]]:
    """The outcome of an events stream scan (of the part after ``checkpoint``, if given), and
    the damage findings that decided it."""
    damage = [f for f in events.findings if f.kind not in NOT_DAMAGE_IN_RECOVERY]
    first, last = events.first_entry, events.last_entry
    if first is not None and first.seq == 1 and first.topic != TOPIC_RUN_STARTED:
        where = events.segments[0].path
        damage.append(
            Finding(Kind.MISSING_RUN_STARTED, where, None, 1, 1, f"seq 1 has topic {first.topic!r}")
        )
    if damage:
        return Outcome.DAMAGED, damage
    if last is None and checkpoint is not None and checkpoint.last_seq:
        # Nothing after the checkpoint: its last entry is the run's, and it is not RunEnded
        # (the writer rolls only to append another frame, and nothing follows RunEnded).
        return Outcome.CLEAN_OPEN, damage
    if last is None:
        return Outcome.EMPTY, damage
    if last.topic == TOPIC_RUN_ENDED:
        return Outcome.CLEAN_ENDED, damage
    return Outcome.CLEAN_OPEN, damage


def _leftovers(run_dir: Path) -> list[tuple[str, Finding]]:
    """``.torn`` files an earlier recovery of this run kept (it may have been interrupted)."""
    out = []
    for name in sorted(os.listdir(run_dir)):
        m = TORN_FILE_RE.match(name)
        if m:
            stream = m.group(2)
            detail = f"bytes cut from {m.group(1)} by an earlier recovery"
            out.append((stream, Finding(Kind.LEFTOVER_TORN, str(run_dir / name), detail=detail)))
    return out


def _as_recorded(run_dir: Path, stream: str, finding: Finding) -> dict[str, Any]:
    """A finding as the manifest keeps it: path relative to the run, and which stream."""
    d = finding.to_dict()
    d["path"] = os.path.relpath(finding.path, run_dir)
    d["stream"] = stream
    return d


def _cut(stream: StreamScan) -> Cut | None:
    if stream.torn is None:
        return None
    last = stream.segments[-1]
    assert last.torn_at is not None  # a stream's torn tail is in its last segment
    return Cut(last.path, stream.stream, last.torn_at, last.size)


def _refuse_if_live(run_dir: Path) -> None:
    for name in (LOCK_NAME, MARKER_LOCK_NAME):
        if writer_alive(run_dir, name):
            raise LockHeldError(f"{run_dir}: a live process holds {name}; it is not recovered")


def _ts_init_backwards(events: StreamScan, checkpoint: Checkpoint | None) -> int:
    """Entries whose ts_init went back: the checkpoint's count for the segments it covers, the
    scan's for the rest, and the first entry after the checkpoint against its last."""
    count = events.ts_backwards[0]
    if checkpoint is None:
        return count
    first = next((s.first_entry for s in events.segments if s.first_entry is not None), None)
    boundary = first is not None and first.ts_init < checkpoint.last_ts_init
    return checkpoint.ts_init_backwards + count + int(boundary)


def _scan_from_checkpoint(
    run_dir: Path, stream: str, retained: int
) -> tuple[StreamScan, Checkpoint | None]:
    """The stream after its checkpoint (the whole stream without a usable one)."""
    checkpoint = read_checkpoint(run_dir, stream) if retained <= 1 else None
    start = None if checkpoint is None else checkpoint_start(run_dir, checkpoint)
    if start is None:
        return scan_stream(run_dir, stream, deep=True, retained_from_seq=retained), None
    return scan_stream(run_dir, stream, deep=True, start=start), checkpoint


def _anchor_index(
    run_dir: Path, events: StreamScan, checkpoint: Checkpoint | None
) -> tuple[dict[str, Any], ...]:
    """The anchors of the stream as the manifest indexes them: the checkpoint's, then those
    the scan passed after it."""
    found: list[dict[str, Any]] = [] if checkpoint is None else list(checkpoint.anchors)
    if not events.anchors_complete:  # a pathological number of anchors: read them again
        try:
            return tuple(a.to_index() for a in iter_anchors(run_dir))
        except CorruptionError:
            return tuple(found)
    for entry in events.anchors:
        try:
            found.append(Anchor.from_payload(entry.payload, entry.seq).to_index())
        except BlobError:
            continue  # not a restore point; verify reports it
    return tuple(found)


def scan_run(run_dir: Path, *, locked: bool = False) -> RecoveryPlan:
    """Scan a run (both streams, deeply, from their checkpoints) and decide its recovery;
    reads only.

    ``locked``: the caller holds the run's locks (``ringtape.storage.run.lock.hold_run``)."""
    if not locked:
        _refuse_if_live(run_dir)
    try:
        manifest = read_manifest(run_dir)
    except ManifestError as exc:
        raise RecoveryError(f"{run_dir}: manifest unreadable, run left as it is: {exc}") from None
    if manifest.status not in RECOVERABLE:
        # Settled already (by seal() or an earlier recovery): the plan keeps it as it is.
        return RecoveryPlan(
            str(run_dir), manifest.status, None, manifest.status, manifest.high_watermark,
            manifest.end_ts_init, manifest.marker_high_watermark, (), tuple(manifest.findings),
            manifest.ts_init_backwards,
        )  # fmt: skip
    retained = int(getattr(manifest, "retained_from_seq", 1))
    events, events_cp = _scan_from_checkpoint(run_dir, "events", retained)
    markers, markers_cp = _scan_from_checkpoint(run_dir, "markers", 1)
    outcome, damage = classify(events, events_cp)
    last = events.last_entry
    recorded = [("events", f) for f in events.findings if f.kind in NOT_DAMAGE_IN_RECOVERY]
    recorded += [("events", f) for f in damage]
    recorded += [("markers", f) for f in markers.findings] + _leftovers(run_dir)
    damaged = outcome is Outcome.DAMAGED
    cuts = () if damaged else tuple(filter(None, (_cut(events), _cut(markers))))
    if last is not None:
        high, end_ts = last.seq, last.ts_init
    elif events_cp is not None and events_cp.last_seq:
        high, end_ts = events_cp.last_seq, events_cp.last_ts_init
    else:
        high, end_ts = 0, None
    marker_high = markers.last_seq or (0 if markers_cp is None else markers_cp.last_seq)
    return RecoveryPlan(
        run_dir=str(run_dir),
        current=manifest.status,
        outcome=outcome,
        status=RECOVERY_VERDICTS[outcome],
        high_watermark=high,
        end_ts_init=end_ts,
        marker_high_watermark=marker_high,
        cuts=cuts,
        ts_init_backwards=_ts_init_backwards(events, events_cp),
        findings=tuple(_as_recorded(run_dir, stream, f) for stream, f in recorded),
        anchors=None if damaged else _anchor_index(run_dir, events, events_cp),
        checkpointed=tuple(
            (name, -1 if cp is None else cp.segment)
            for name, cp in (("events", events_cp), ("markers", markers_cp))
        ),
    )


# -- acting on a plan -----------------------------------------------------------------------------


def _same_bytes(fd: int, start: int, size: int, path: Path) -> bool:
    """Does the file at ``path`` hold exactly bytes ``start..size`` of ``fd``?"""
    try:
        other = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(other).st_size != size - start:
            return False
        pos = start
        while pos < size:
            n = min(COPY_CHUNK, size - pos)
            if os.pread(fd, n, pos) != os.pread(other, n, pos - start):
                return False
            pos += n
        return True
    finally:
        os.close(other)


def _keep_tail(fd: int, cut: Cut, run_dir: Path) -> None:
    """Copy bytes ``cut.offset..cut.size`` of the segment to a fresh ``.torn`` file, fsynced."""
    base = Path(cut.path).name
    for k in range(1000):
        name = f"{base}{TORN_SUFFIX}" if k == 0 else f"{base}.{k}{TORN_SUFFIX}"
        target = run_dir / name
        if _same_bytes(fd, cut.offset, cut.size, target):
            return  # an interrupted recovery already kept these bytes
        if not os.path.lexists(target):
            break
    else:
        raise RecoveryError(f"no free name for the torn tail of {cut.path}")
    out = create_private_file(target)
    try:
        pos = cut.offset
        while pos < cut.size:
            chunk = os.pread(fd, min(COPY_CHUNK, cut.size - pos), pos)
            if not chunk:
                raise RecoveryError(f"{cut.path} shrank while its torn tail was copied")
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
            pos += len(chunk)
        os.fsync(out)
    finally:
        os.close(out)
    fsync_dir(run_dir)


def _apply_cut(run_dir: Path, cut: Cut) -> None:
    path = Path(cut.path)
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != cut.size:
            raise RecoveryError(f"{path} changed size since it was scanned; scan again")
        if cut.size > cut.offset:
            _keep_tail(fd, cut, run_dir)
        if cut.offset > 0:
            os.ftruncate(fd, cut.offset)
            os.fsync(fd)
    finally:
        os.close(fd)
    if cut.offset == 0:  # nothing but a torn segment header: the file goes, its bytes are kept
        path.unlink()
        fsync_dir(run_dir)


def cut_torn_tail(run_dir: Path, stream: str) -> Cut | None:
    """Cut one stream's torn tail (its bytes kept in a ``.torn`` file first) in a run whose
    other stream lives on: the marker lane's, when its sidecar died and the run is sealed
    without it. The caller makes sure that stream's appender is gone. A stream with damage
    before its tail is left exactly as it is (verify reports it)."""
    scan = scan_stream(run_dir, stream, deep=True)
    if scan.damage:
        return None
    cut = _cut(scan)
    if cut is not None:
        _apply_cut(run_dir, cut)
    return cut


def apply_plan(
    run_dir: Path,
    plan: RecoveryPlan,
    *,
    locked: bool = False,
    before_rename: Callable[[], None] | None = None,
) -> None:
    """Carry out ``plan``: keep and cut torn tails, rewrite the manifest atomically, then remove
    the temp files the crash left (``before_rename``: see ``write_manifest``)."""
    if not locked:
        _refuse_if_live(run_dir)
    try:
        manifest = read_manifest(run_dir)
    except ManifestError as exc:
        raise RecoveryError(f"{run_dir}: manifest unreadable: {exc}") from None
    if manifest.status is not plan.current:
        raise RecoveryError(f"{run_dir} is {manifest.status} now, the plan was for {plan.current}")
    if not plan.changes_anything:
        return
    check_transition(manifest.status, plan.status)
    for cut in plan.cuts:
        _apply_cut(run_dir, cut)
    sealed: Manifest = replace(
        manifest,
        status=plan.status,
        high_watermark=plan.high_watermark,
        end_ts_init=plan.end_ts_init,
        marker_high_watermark=plan.marker_high_watermark,
        ts_init_backwards=plan.ts_init_backwards,
        findings=list(plan.findings),
        anchors=manifest.anchors if plan.anchors is None else list(plan.anchors),
    )
    # Temps go first (a quarantined run is evidence: left exactly as found): once the
    # manifest says sealed, no sweep looks at the run again, so nothing would remove them.
    if plan.status.is_sealed:
        remove_stale_temps(run_dir)
    # The one manifest write of a recovery: a crash before the rename leaves the run
    # `running` (the next sweep starts over), after it the run is sealed whole.
    write_manifest(run_dir, sealed, before_rename=before_rename)


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Temp files of manifest, checkpoint or blob writes a crash interrupted, removed (and the
    directories fsynced). Never data: a manifest temp was never renamed into place (recovery
    writes the manifest from the scan), nor was a checkpoint temp, and a blob temp is a blob
    write that never completed."""
    found = [
        *run_dir.glob(f".{MANIFEST_NAME}.*.tmp"),
        *run_dir.glob(".*.checkpoint.*.tmp"),
        *run_dir.glob(f"{BLOB_DIR}/.*.tmp"),
    ]
    for path in found:
        path.unlink(missing_ok=True)
    for directory in {p.parent for p in found}:
        fsync_dir(directory)
    return found


def recover_run(
    run_dir: Path, *, orphan_wait_s: float = 10.0, owner_alive: OwnerAlive | None = None
) -> RecoveryPlan:
    """Scan one run and apply the plan, holding its locks throughout; returns the plan.

    Raises ``LockHeldError`` for a live run. If the kernel that owned it is dead
    (``owner_alive``, see ``hold_run``) but its writer still drains, waits up to
    ``orphan_wait_s`` for the writer to finish first.
    """
    with hold_run(run_dir, orphan_wait_s=orphan_wait_s, owner_alive=owner_alive):
        plan = scan_run(run_dir, locked=True)
        apply_plan(run_dir, plan, locked=True)
    return plan
