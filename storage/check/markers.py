"""Verification of a run's data-marker stream (a ``ringtape.storage.check.verify`` run checker).

The segments themselves are checked by the scan like any stream; this checks what the marker
records say (see ``storage.format.markers.check_marker_stream``): every observation accounted
for by a record or a gap, gaps that do not overlap, cursors that never go back, and no
``event_seq_before`` past the entries on disk. In a live run entries may still be in flight,
so that last rule is not applied there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from ringtape.storage.check.findings import Finding
from ringtape.storage.format.markers import check_marker_stream
from ringtape.storage.run.status import entries_complete

if TYPE_CHECKING:
    from ringtape.storage.check.verify import RunContext

_UNBOUNDED = 1 << 63


def check_markers(ctx: RunContext) -> Iterable[Finding]:
    if not ctx.markers.segments:
        return []
    # Entries may be missing for reasons already reported or expected: still in flight (a
    # live run), lost with a crashed writer (the marker lane went on observing), or behind
    # damage. Markers pointing past them are then no finding of their own.
    complete = entries_complete(ctx.status, bool(ctx.events.damage), ctx.live)
    watermark = (ctx.events.last_seq or 0) if complete else _UNBOUNDED
    return coalesce(check_marker_stream(ctx.run_dir, watermark))


def coalesce(findings: Iterable[Finding], limit: int = 100) -> list[Finding]:
    """One finding per run of the same kind at consecutive seqs, and at most ``limit`` in
    all (a damaged stream must not produce a finding per record, nor unbounded memory)."""
    out: list[Finding] = []
    dropped = 0
    for f in findings:
        last = out[-1] if out else None
        if (
            last is not None
            and last.kind == f.kind
            and last.seq_to is not None
            and f.seq_from is not None
            and f.seq_from <= last.seq_to + 1
        ):
            out[-1] = replace(last, seq_to=max(last.seq_to, f.seq_to or f.seq_from))
        elif len(out) < limit:
            out.append(f)
        else:
            dropped += 1
    if dropped:
        tail = out[-1]
        out[-1] = replace(tail, detail=f"{tail.detail} (and {dropped} more marker findings)")
    return out
