"""Verification of a run's data-marker stream (a ``storage/check/verify.py`` run checker).

The segments themselves are checked by the scan like any stream; this checks what the marker
records say (the invariants in ``storage/format/markers.py``): every observation accounted for
by a record or a gap, gaps that do not overlap, cursors that never go back, and no
``event_seq_before`` past the entries on disk. In a live run entries may still be in flight,
so that last rule is not applied there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.check.marker_bulk import marker_stream_clean
from ringtape.storage.format.markers import (
    Cursor,
    CursorSnapshot,
    HiFiMarker,
    MarkerFormatError,
    MarkerGap,
    StreamDef,
    decode_marker,
)
from ringtape.storage.read.markers import LocatedEntry, iter_marker_entries
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


class _Checker:
    """Walks the marker stream once, checking the invariants in the module docstring."""

    def __init__(self, entry_high_watermark: int) -> None:
        self.hwm = entry_high_watermark
        self.findings: list[Finding] = []
        self.streams: dict[int, StreamDef] = {}
        self.cursors: dict[int, Cursor] = {}
        self.hifi_seen: dict[int, int] = {}
        self.counted = 0  # sum of all cursor counts
        self.gapped = 0  # observations covered by gap records
        self.open_gap: MarkerGap | None = None  # a gap "to the end"
        self.last_obs = 0  # highest obs any record named
        self.last_esb = 0
        self.next_seq: int | None = None

    def note(self, kind: Kind, where: LocatedEntry, detail: str) -> None:
        seq = where.entry.seq
        self.findings.append(Finding(kind, str(where.path), where.frame_offset, seq, seq, detail))

    def visit(self, where: LocatedEntry) -> None:
        entry = where.entry
        if self.next_seq is not None and entry.seq != self.next_seq:
            self.note(
                Kind.MARKER_GAP_UNRECORDED,
                where,
                f"marker seq {entry.seq} follows {self.next_seq - 1}",
            )
        self.next_seq = entry.seq + 1
        try:
            rec = decode_marker(entry)
        except MarkerFormatError as exc:
            self.note(Kind.DECODE_ERROR, where, str(exc))
            return
        esb = rec.event_seq_before if not isinstance(rec, StreamDef) else self.last_esb
        if esb > self.hwm:
            self.note(
                Kind.MARKER_EVENT_SEQ_AHEAD,
                where,
                f"event_seq_before {esb} is past the entry stream's high watermark {self.hwm}",
            )
        if esb < self.last_esb:
            self.note(
                Kind.MARKER_CURSOR_BACKWARDS,
                where,
                f"event_seq_before goes back from {self.last_esb} to {esb}",
            )
        self.last_esb = max(self.last_esb, esb)
        if isinstance(rec, StreamDef):
            if rec.stream in self.streams:
                self.note(Kind.DECODE_ERROR, where, f"stream {rec.stream} is defined twice")
            self.streams[rec.stream] = rec
        elif isinstance(rec, CursorSnapshot):
            self.snapshot(where, rec)
        elif isinstance(rec, HiFiMarker):
            self.hifi(where, rec)
        else:
            self.gap(where, rec)

    def known(self, where: LocatedEntry, slot: int) -> bool:
        if slot in self.streams:
            return True
        self.note(Kind.DECODE_ERROR, where, f"stream {slot} is used before it is defined")
        return False

    def obs_forward(self, where: LocatedEntry, obs: int, strict: bool) -> None:
        if obs < self.last_obs or (strict and obs == self.last_obs):
            self.note(
                Kind.MARKER_CURSOR_BACKWARDS,
                where,
                f"observation {obs} comes after observation {self.last_obs}",
            )
        self.last_obs = max(self.last_obs, obs)

    def snapshot(self, where: LocatedEntry, rec: CursorSnapshot) -> None:
        self.obs_forward(where, rec.obs, strict=False)
        for slot, cur in rec.cursors:
            if not self.known(where, slot):
                continue
            old = self.cursors.get(slot, Cursor(0, 0, 0))
            if cur.count < old.count or cur.ts_init_hi < old.ts_init_hi:
                d = self.streams[slot]
                self.note(
                    Kind.MARKER_CURSOR_BACKWARDS,
                    where,
                    f"cursor {d.data_class} {d.instrument_id} goes back from count {old.count},"
                    f" ts_init_hi {old.ts_init_hi} to count {cur.count},"
                    f" ts_init_hi {cur.ts_init_hi}",
                )
            self.counted += cur.count - old.count
            self.cursors[slot] = cur
            if self.streams[slot].high_fidelity and self.hifi_seen.get(slot, 0) != cur.count:
                d = self.streams[slot]
                self.note(
                    Kind.MARKER_GAP_UNRECORDED,
                    where,
                    f"high-fidelity stream {d.data_class} {d.instrument_id} counts {cur.count}"
                    f" observations but has {self.hifi_seen.get(slot, 0)} hifi markers",
                )
                self.hifi_seen[slot] = cur.count  # report each discrepancy once
        accounted = self.counted + self.gapped
        if accounted != rec.obs:
            what = "neither counted nor in a gap record" if accounted < rec.obs else "over-counted"
            self.note(
                Kind.MARKER_GAP_UNRECORDED,
                where,
                f"snapshot at observation {rec.obs}: {self.counted} counted + {self.gapped} in"
                f" gap records = {accounted}; {abs(rec.obs - accounted)} observations {what}",
            )
            self.counted = rec.obs - self.gapped  # re-base so one loss is reported once

    def hifi(self, where: LocatedEntry, rec: HiFiMarker) -> None:
        self.obs_forward(where, rec.obs, strict=True)
        if not self.known(where, rec.stream):
            return
        self.hifi_seen[rec.stream] = self.hifi_seen.get(rec.stream, 0) + 1
        d = self.streams[rec.stream]
        if not d.high_fidelity:
            self.note(
                Kind.DECODE_ERROR,
                where,
                f"hifi marker for {d.data_class} {d.instrument_id}, not a high-fidelity stream",
            )

    def gap(self, where: LocatedEntry, rec: MarkerGap) -> None:
        if rec.obs_from <= self.last_obs or self.open_gap is not None:
            self.note(
                Kind.MARKER_GAP_OVERLAP,
                where,
                f"gap {rec.obs_from}..{rec.obs_to} overlaps observations already accounted for"
                f" (up to {self.last_obs})",
            )
        if rec.obs_to is None:
            self.open_gap = rec
        else:
            self.gapped += rec.obs_to - rec.obs_from + 1
            self.last_obs = max(self.last_obs, rec.obs_to)


def check_records(located: Iterable[LocatedEntry], entry_high_watermark: int) -> list[Finding]:
    """The marker findings for a sequence of marker-stream entries (see the module docstring)."""
    checker = _Checker(entry_high_watermark)
    for where in located:
        checker.visit(where)
    return checker.findings


def check_marker_stream(run_dir: Path, entry_high_watermark: int) -> list[Finding]:
    """Marker findings for a run: observations no record accounts for
    (``marker_gap_unrecorded``), gap records that overlap (``marker_gap_overlap``), cursors,
    observation numbers or ``event_seq_before`` going back (``marker_cursor_backwards``),
    ``event_seq_before`` past ``entry_high_watermark`` (``marker_event_seq_ahead``) and records
    that do not decode (``decode_error``). Damage to the segments themselves is the segment
    scan's to report; this reads the intact prefix of the stream.

    A clean stream is proven clean in bulk first (``storage/check/marker_bulk.py``); only a
    stream that proof does not clear is checked record by record, for the findings."""
    if marker_stream_clean(run_dir, entry_high_watermark):
        return []
    return check_records(iter_marker_entries(run_dir), entry_high_watermark)
