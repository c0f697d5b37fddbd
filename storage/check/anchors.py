"""Verification of a run's snapshot anchors (a ``ringtape.storage.check.verify`` run checker).

Each ``SnapshotAnchor`` entry must not point past the run's last entry nor at or after its own
seq, must not go back from the anchor before it, and a blob it names that is there must be the
one it names (format, anchor, watermark, size, content hash). An anchor whose blob is not there
never completed (a crash, a superseded snapshot) or was reclaimed: a note, not damage; so is
a blob no entry names. The manifest's anchor
index must match the stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.read.reader import CorruptionError
from ringtape.storage.read.replay import check_anchor, iter_anchors
from ringtape.storage.run.blobs import BLOB_NAME_V2, Anchor, BlobError, alias_target
from ringtape.storage.run.layout import BLOB_DIR

if TYPE_CHECKING:
    from ringtape.storage.check.verify import RunContext


def check_anchors(ctx: RunContext) -> Iterable[Finding]:
    if ctx.events.damage or not ctx.events.segments:
        return  # the damage is reported already; anchors cannot be read past it
    last = ctx.events.last_seq or 0
    where = str(ctx.run_dir)
    found = []
    named: set[str] = set()  # blobs the anchor entries name, aliases' targets included
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
            found.append(anchor.to_index())
            named.update(r for r in (anchor.blob_ref, alias_target(ctx.run_dir, anchor)) if r)
            check = check_anchor(ctx.run_dir, anchor, previous, last)
            if check.complete:
                previous = anchor.high_watermark
            elif check.damage:
                yield Finding(
                    Kind.ANCHOR_INVALID, where, None, anchor.seq, anchor.seq, check.problem or ""
                )
            else:
                yield Finding(
                    Kind.ANCHOR_INCOMPLETE,
                    where,
                    None,
                    anchor.seq,
                    anchor.seq,
                    f"{check.problem}; it is no restore point (an earlier complete one is used)",
                )
    except (CorruptionError, ValueError):
        return
    yield from _unnamed_blobs(ctx.run_dir, named)
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


def _unnamed_blobs(run_dir: Path, named: set[str]) -> Iterable[Finding]:
    """A blob no anchor entry names is no restore point, and not damage. The writer writes a
    blob only after its entry is durable, so this is a run assembled by hand (a copied or
    partly restored directory) or segments lost after the fact, which the stream checks
    report on their own."""
    try:
        names = sorted(os.listdir(run_dir / BLOB_DIR))
    except OSError:
        return  # no blobs/ (or an unreadable one, which check_files reports)
    for name in names:
        ref = f"{BLOB_DIR}/{name}"
        if BLOB_NAME_V2.match(name) and ref not in named:
            yield Finding(
                Kind.ANCHOR_INCOMPLETE,
                str(run_dir / ref),
                detail="no anchor entry names this blob; it is no restore point",
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
