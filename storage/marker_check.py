"""Verification of a run's data-marker stream (a ``storage.verify`` run checker).

The segments themselves are checked by the scan like any stream; this checks what the marker
records say (see ``storage.markers.check_marker_stream``): every observation accounted for by a
record or a gap, gaps that do not overlap, cursors that never go back, and no
``event_seq_before`` past the entries on disk. In a live run entries may still be in flight,
so that last rule is not applied there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from storage.findings import Finding
from storage.markers import check_marker_stream

if TYPE_CHECKING:
    from storage.verify import RunContext

_UNBOUNDED = 1 << 63


def check_markers(ctx: RunContext) -> Iterable[Finding]:
    if not ctx.markers.segments:
        return []
    watermark = _UNBOUNDED if ctx.live else (ctx.events.last_seq or 0)
    return check_marker_stream(ctx.run_dir, watermark)
