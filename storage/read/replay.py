"""Replay a sealed run into a cache: newest valid anchor's snapshot, then the tail in seq order.

Rules of this module:

1. Only a sealed run (``ended`` or ``crashed_recovered``) is a source; ``running`` and
   ``quarantined`` runs are refused with :class:`ReplaySourceError`, before anything is read.
2. The anchor used is the newest *valid* one: its entry is in the stream, its watermark is not
   past the run's high watermark nor behind an earlier anchor, and its blob exists and hashes
   to the recorded value. An invalid newer anchor is skipped (and reported), never trusted.
3. Entries ``anchor.high_watermark + 1 ..= high_watermark`` are applied in seq order, every
   frame verified on the way (``storage.read.reader``); the first damage stops the replay
   with :class:`~ringtape.storage.read.reader.CorruptionError`. Replay never writes anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ringtape.storage.format.entry import TOPIC_SNAPSHOT_ANCHOR, Entry
from ringtape.storage.read.reader import iter_entries, iter_frames
from ringtape.storage.run.blobs import Anchor, BlobError, read_blob
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


def anchor_problem(run_dir: Path, anchor: Anchor, previous: int, high_watermark: int) -> str | None:
    """Why an anchor cannot be used (``None``: it is valid)."""
    if anchor.high_watermark > high_watermark:
        return f"anchor at seq {anchor.seq} points past the high watermark {high_watermark}"
    if anchor.seq and anchor.high_watermark >= anchor.seq:
        return f"anchor at seq {anchor.seq} claims watermark {anchor.high_watermark}, not before it"
    if anchor.high_watermark < previous:
        return f"anchor at seq {anchor.seq} goes back from {previous} to {anchor.high_watermark}"
    try:
        read_blob(run_dir, anchor)
    except BlobError as exc:
        return str(exc)
    return None


def newest_valid_anchor(
    run_dir: Path, high_watermark: int, upto: int | None = None
) -> tuple[Anchor | None, list[str]]:
    """The anchor replay starts from (the newest valid one whose watermark is at most ``upto``),
    and why newer ones were skipped."""
    best: Anchor | None = None
    problems: list[str] = []
    previous = 0
    for anchor in iter_anchors(run_dir):
        problem = anchor_problem(run_dir, anchor, previous, high_watermark)
        if problem is None:
            previous = anchor.high_watermark
            if upto is None or anchor.high_watermark <= upto:
                best = anchor
        else:
            problems.append(problem)
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
    entry ``to_seq`` (the newest valid anchor at or before it, then the entries up to it)."""
    run_end = high_watermark = open_source(run_dir)
    if to_seq is not None:
        if to_seq > run_end:
            raise ReplaySourceError(f"replay to seq {to_seq}: {run_dir.name} ends at seq {run_end}")
        high_watermark = to_seq
    anchor, skipped = newest_valid_anchor(run_dir, run_end, high_watermark)
    start = 1
    if anchor is not None:
        cache.restore(read_blob(run_dir, anchor))
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
