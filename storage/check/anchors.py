"""Verification of a run's snapshot anchors (a ``ringtape.storage.check.verify`` run checker).

Each ``SnapshotAnchor`` entry must name a blob that exists inside the run and hashes to the
recorded value, must not point past the run's last entry nor at or after its own seq, and must
not go back from the anchor before it. The manifest's anchor index must match the stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.read.reader import CorruptionError
from ringtape.storage.read.replay import anchor_problem, iter_anchors
from ringtape.storage.run.blobs import Anchor, BlobError

if TYPE_CHECKING:
    from ringtape.storage.check.verify import RunContext


def check_anchors(ctx: RunContext) -> Iterable[Finding]:
    if ctx.events.damage or not ctx.events.segments:
        return  # the damage is reported already; anchors cannot be read past it
    last = ctx.events.last_seq or 0
    where = str(ctx.run_dir)
    found = []
    previous = 0
    # The deep scan kept the anchor entries it passed; read the stream again only if it had
    # to stop keeping them (a pathological number of anchors).
    entries = ctx.events.anchors if ctx.events.anchors_complete else None
    try:
        anchors = (
            iter_anchors(ctx.run_dir)
            if entries is None
            else (_decode(e.payload, e.seq, where) for e in entries)
        )
        for anchor in anchors:
            if isinstance(anchor, Finding):
                yield anchor
                continue
            found.append(asdict(anchor))
            problem = anchor_problem(ctx.run_dir, anchor, previous, last)
            if problem is not None:
                yield Finding(Kind.ANCHOR_INVALID, where, None, anchor.seq, anchor.seq, problem)
            else:
                previous = anchor.high_watermark
    except (CorruptionError, ValueError):
        return
    manifest = ctx.manifest
    # Retention may have reclaimed the segments that held older anchors' entries.
    kept = (
        []
        if manifest is None
        else [a for a in manifest.anchors if int(a.get("seq", 0)) >= ctx.retained_from_seq]
    )
    if manifest is not None and manifest.status.is_sealed and kept != found:
        yield Finding(
            Kind.MANIFEST_MISMATCH,
            str(ctx.run_dir / "manifest.json"),
            None,
            None,
            None,
            f"manifest lists {len(kept)} anchor(s) from seq {ctx.retained_from_seq} on, the"
            f" stream has {len(found)}: {_first_difference(kept, found)}",
        )


def _decode(payload: bytes, seq: int, where: str) -> Anchor | Finding:
    try:
        return Anchor.from_payload(payload, seq)
    except BlobError as exc:
        return Finding(Kind.ANCHOR_INVALID, where, None, seq, seq, str(exc))


def _first_difference(listed: list[dict[str, object]], found: list[dict[str, object]]) -> str:
    for i, (a, b) in enumerate(zip(listed, found, strict=False)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return (
                    f"anchor {i}: {key} is {a.get(key)!r} in the manifest, {b.get(key)!r} on disk"
                )
    return "the lists differ in length"
