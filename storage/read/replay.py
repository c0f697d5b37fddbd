"""Replay a sealed run into a cache: newest valid anchor's snapshot, then the tail in seq order.

Rules of this module:

1. Only a sealed run (``ended`` or ``crashed_recovered``) is a source; ``running`` and
   ``quarantined`` runs are refused with :class:`ReplaySourceError`, before anything is read.
2. The anchor used is the newest *complete* one: its entry is in the stream, its watermark is
   not past the run's high watermark nor behind an earlier anchor, and its blob exists and is
   the one the entry names (storage/run/blobs.py). A newer anchor that never completed (a crash
   before its blob was durable, an anchor superseded by the next) or whose blob is wrong is
   skipped (and reported), never trusted.
3. Entries ``anchor.high_watermark + 1 ..= high_watermark`` are applied in seq order, every
   frame verified on the way (``storage.read.reader``); the first damage stops the replay
   with :class:`~ringtape.storage.read.reader.CorruptionError`. Replay never writes anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from ringtape.storage.format.entry import TOPIC_SNAPSHOT_ANCHOR, Entry
from ringtape.storage.read.reader import iter_entries, iter_frames
from ringtape.storage.run.blobs import Anchor, BlobError, BlobMissing, blob_header, read_snapshot
from ringtape.storage.run.manifest import ManifestError, read_manifest
from ringtape.storage.run.status import REPLAY_REFUSALS

_ANCHOR_TOPIC = TOPIC_SNAPSHOT_ANCHOR.encode()


class ReplaySourceError(ValueError):
    """The run cannot be replayed from (missing, not sealed, quarantined)."""


class ReplayTarget(Protocol):
    def restore(self, blob: bytes) -> None: ...

    def apply(self, entry: Entry) -> None: ...


@dataclass
class ReplayResult:
    run_id: str
    anchor: Anchor | None
    applied: int
    high_watermark: int
    skipped_anchors: list[str] = field(default_factory=list)


def iter_anchors(run_dir: Path) -> Iterator[Anchor]:
    """Every anchor entry of the run's stream, in seq order (frames without one are skipped
    with a byte search rather than decoded)."""
    try:
        start = read_manifest(run_dir).retained_from_seq  # retention may have cut the start
    except ManifestError:
        start = 1
    for frame in iter_frames(run_dir, from_seq=start):
        if _ANCHOR_TOPIC not in frame.body:
            continue
        for entry in frame.entries():
            if entry.topic == TOPIC_SNAPSHOT_ANCHOR:
                try:
                    yield Anchor.from_payload(entry.payload, entry.seq)
                except BlobError:
                    continue


class AnchorCheck(NamedTuple):
    """Whether an anchor is a restore point, and if not, why (``damage``: its blob is there
    but not the one the anchor names, or the anchor breaks a rule; otherwise it simply never
    completed, or retention reclaimed its blob)."""

    complete: bool
    problem: str | None = None
    damage: bool = False


def check_anchor(
    run_dir: Path, anchor: Anchor, previous: int, high_watermark: int, *, deep: bool = True
) -> AnchorCheck:
    """Check one anchor against the rules (FORMAT.md, "Snapshot anchors"). ``deep``
    decompresses the blob and checks its hash; otherwise only its header (or, for a format 1
    blob, its bytes) are checked."""
    where = f"anchor at seq {anchor.seq}"
    if anchor.high_watermark > high_watermark:
        return AnchorCheck(False, f"{where} points past the high watermark {high_watermark}", True)
    if anchor.seq and anchor.high_watermark >= anchor.seq:
        return AnchorCheck(
            False, f"{where} claims watermark {anchor.high_watermark}, not before it", True
        )
    if anchor.high_watermark < previous:
        return AnchorCheck(
            False, f"{where} goes back from {previous} to {anchor.high_watermark}", True
        )
    try:
        if deep or anchor.format == 1:
            read_snapshot(run_dir, anchor)
        else:
            header = blob_header(run_dir, anchor.blob_ref)
            if (header.anchor_id, header.high_watermark) != (
                anchor.anchor_id,
                anchor.high_watermark,
            ):
                raise BlobError(f"blob {anchor.blob_ref} is another anchor's")
    except BlobMissing as exc:
        return AnchorCheck(False, f"{where} never completed (or was reclaimed): {exc}")
    except BlobError as exc:
        return AnchorCheck(False, str(exc), True)
    return AnchorCheck(True)


def newest_valid_anchor(
    run_dir: Path, high_watermark: int, upto: int | None = None, *, deep: bool = True
) -> tuple[Anchor | None, list[str]]:
    """The anchor a replay starts from (the newest restore point whose watermark is at most
    ``upto``), and why the anchors after it up to ``upto`` are not restore points."""
    best: Anchor | None = None
    problems: list[str] = []
    previous = 0
    for anchor in iter_anchors(run_dir):
        check = check_anchor(run_dir, anchor, previous, high_watermark, deep=deep)
        wanted = upto is None or anchor.high_watermark <= upto
        if check.complete:
            previous = anchor.high_watermark
            if wanted:
                best = anchor
                problems.clear()  # only what lies after the anchor used matters to a replay
        elif check.problem is not None and wanted:
            problems.append(check.problem)
    return best, problems


def open_source(run_dir: Path) -> int:
    """Check that ``run_dir`` may be replayed from; returns its high watermark."""
    try:
        manifest = read_manifest(run_dir)
    except ManifestError as exc:
        raise ReplaySourceError(f"replay source {run_dir.name}: {exc}") from None
    refusal = REPLAY_REFUSALS.get(manifest.status)
    if refusal is not None:
        raise ReplaySourceError(f"replay source {manifest.run_id} is {refusal}")
    return manifest.high_watermark


def replay_run(run_dir: Path, cache: ReplayTarget, to_seq: int | None = None) -> ReplayResult:
    """Restore ``cache`` to the state at the end of the sealed run in ``run_dir``, or as of
    entry ``to_seq`` (the newest restore point at or before it, then the entries up to it)."""
    run_end = high_watermark = open_source(run_dir)
    if to_seq is not None:
        if to_seq > run_end:
            raise ReplaySourceError(f"replay to seq {to_seq}: {run_dir.name} ends at seq {run_end}")
        high_watermark = to_seq
    # Blob headers only here: the one snapshot used is read (and checked whole) below.
    anchor, skipped = newest_valid_anchor(run_dir, run_end, high_watermark, deep=False)
    start = 1
    if anchor is not None:
        snapshot: bytes | None = None
        while anchor is not None and snapshot is None:
            try:
                snapshot = read_snapshot(run_dir, anchor)
            except BlobError as exc:  # its header was right, its content is not: choose again
                skipped.append(str(exc))
                anchor, more = newest_valid_anchor(
                    run_dir, run_end, anchor.high_watermark - 1, deep=False
                )
                skipped += more
        if anchor is not None and snapshot is not None:
            cache.restore(snapshot)
            start = anchor.high_watermark + 1
    applied = 0
    if start <= high_watermark:
        for entry in iter_entries(run_dir, from_seq=start, to_seq=high_watermark, strict=True):
            cache.apply(entry)
            applied += 1
    expected = high_watermark - start + 1 if start <= high_watermark else 0
    if applied != expected:
        raise ReplaySourceError(
            f"replay of {run_dir.name} applied {applied} entries, expected {expected}"
            f" ({start}..{high_watermark}): the run ends early"
        )
    return ReplayResult(run_dir.name, anchor, applied, high_watermark, skipped)
