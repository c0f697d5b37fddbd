"""``ringtape inspect PATH``: what runs are there, as a table or JSON.

Inspect describes; it does not check (that is ``verify``). It reads each run's manifest and
walks its segments on frame headers alone (no decompression), so it is quick on big runs; the
marker stream is read to count its records by kind. A walk stops at the first frame that does
not check out and says so in the run's ``note``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from ringtape.storage.check.verify import find_runs
from ringtape.storage.format.frame import SEGMENT_HEADER_SIZE
from ringtape.storage.read.markers import iter_marker_entries
from ringtape.storage.run.layout import MARKER_LOCK_NAME, SEGMENT_RE, list_segments
from ringtape.storage.run.lock import read_live_stats, writer_alive
from ringtape.storage.run.manifest import ManifestError, read_manifest
from ringtape.storage.segment.file import SegmentFile
from ringtape.storage.segment.walk import Broken, Torn, next_frame, read_segment_header
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.common import (
    CliError,
    check_path,
    console,
    emit,
    format_ratio,
    format_seq_range,
    format_ts,
    human_bytes,
    not_a_segment,
    table,
)

# Walk frame headers only: a frame whose seqs all lie before this is not read (see next_frame).
_HEADERS_ONLY: Final = 1 << 64


@dataclass
class StreamTotals:
    """One stream of a run, from its frame headers."""

    segments: int = 0
    entries: int = 0
    raw_bytes: int = 0
    segment_bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    stopped: str | None = None  # why the walk stopped early
    torn: bool = False  # it stopped at a torn tail (an append in progress, if the run is live)

    @property
    def damaged(self) -> bool:
        """The walk stopped at something other than a torn tail."""
        return self.stopped is not None and not self.torn

    def walk(self, path: Path) -> None:
        """Add one segment file's frames; on damage or a torn tail, note it and stop there."""
        self.segments += 1
        try:
            f = SegmentFile.open(path)
        except OSError as exc:
            self.stopped = self.stopped or f"{path.name}: cannot read ({exc.strerror or exc})"
            return
        with f:
            self.segment_bytes += f.size
            header = read_segment_header(f)
            if isinstance(header, Torn | Broken):
                self.stopped = self.stopped or f"{path.name}: bad or torn segment header"
                return
            pos = SEGMENT_HEADER_SIZE
            version = header.version
            while (
                step := next_frame(f, pos, skip_before=_HEADERS_ONLY, version=version)
            ) is not None:
                if isinstance(step, Torn | Broken):
                    what = "torn tail" if isinstance(step, Torn) else "damage"
                    if self.stopped is None:
                        self.stopped = f"{path.name}: {what} at offset {pos}"
                        self.torn = isinstance(step, Torn)
                    return
                h = step.header
                self.entries += h.entry_count
                self.raw_bytes += h.entry_bytes
                if self.first_seq is None:
                    self.first_seq = h.first_seq
                self.last_seq = h.last_seq
                pos += h.size


@dataclass
class RunRow:
    """What ``inspect`` says about one run (or one loose segment file)."""

    run_id: str
    instance_id: str | None
    path: str
    parent_run_id: str | None
    status: str | None
    live: bool
    start_ts_init: int | None
    end_ts_init: int | None
    high_watermark: int | None
    entries: int
    first_seq: int | None
    last_seq: int | None
    segments: int
    bytes_on_disk: int
    raw_bytes: int
    compression_ratio: float | None
    anchors: int
    markers: dict[str, int] = field(default_factory=dict)
    note: str | None = None
    # The manifest is unreadable or a stream stopped at damage (not at a torn tail): the exit
    # status says so (1), as verify's would.
    damaged: bool = False
    live_stats: dict[str, Any] | None = None  # the writer's totals, while it runs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def marker_counts(run_dir: Path) -> dict[str, int]:
    """Marker records of a run by kind (``stream``, ``cursor``, ``hifi``, ``gap``), read up to
    the first damage; ``total`` is their sum."""
    counts: Counter[str] = Counter()
    for located in iter_marker_entries(run_dir):
        counts[located.entry.topic.removeprefix("marker.")] += 1
    return {"total": sum(counts.values()), **dict(sorted(counts.items()))}


def _ratio(raw: int, stored: int) -> float | None:
    return round(raw / stored, 3) if stored else None


def describe_run(run_dir: Path) -> RunRow:
    """A run's row: its manifest, its segments' frame headers, its marker stream."""
    events, markers = StreamTotals(), StreamTotals()
    for path in list_segments(run_dir, "events"):
        events.walk(path)
    for path in list_segments(run_dir, "markers"):
        markers.walk(path)
    live = writer_alive(run_dir)
    appending = {"events": live, "markers": writer_alive(run_dir, MARKER_LOCK_NAME)}
    # A torn tail of a stream whose appender is alive is an append in progress: no note.
    notes = [
        s.stopped
        for name, s in (("events", events), ("markers", markers))
        if s.stopped and not (s.torn and appending[name])
    ]
    try:
        manifest = read_manifest(run_dir)
    except ManifestError as exc:
        manifest = None
        notes.insert(0, f"manifest: {exc}")
    stored = events.segment_bytes + markers.segment_bytes
    raw = events.raw_bytes + markers.raw_bytes
    return RunRow(
        run_id=run_dir.name,
        instance_id=None if manifest is None else manifest.instance_id,
        path=str(run_dir),
        parent_run_id=None if manifest is None else manifest.parent_run_id,
        status=None if manifest is None else str(manifest.status),
        live=live,
        start_ts_init=None if manifest is None else manifest.start_ts_init,
        end_ts_init=None if manifest is None else manifest.end_ts_init,
        high_watermark=None if manifest is None else manifest.high_watermark,
        entries=events.entries,
        first_seq=events.first_seq,
        last_seq=events.last_seq,
        segments=events.segments + markers.segments,
        bytes_on_disk=_dir_bytes(run_dir),
        raw_bytes=raw,
        compression_ratio=_ratio(raw, stored),
        anchors=0 if manifest is None else len(manifest.anchors),
        markers=marker_counts(run_dir) if markers.segments else {"total": 0},
        note="; ".join(notes) or None,
        damaged=manifest is None or events.damaged or markers.damaged,
        live_stats=live_stats(run_dir) if live else None,
    )


def live_stats(run_dir: Path) -> dict[str, Any] | None:
    """The live writer's totals (``writer.lock``'s second line, rewritten once a second) with
    what they mean: ring fill, durable lag, commits per second."""
    line = read_live_stats(run_dir)
    if line is None:
        return None
    try:
        stats: dict[str, Any] = json.loads(line)
        published, taken = int(stats["published_seq"]), int(stats["taken_seq"])
        durable, capacity = int(stats["durable_seq"]), int(stats["capacity"])
        running_s = (int(stats["updated_ns"]) - int(stats["started_ns"])) / 1e9
        commits = int(stats["commits"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    stats["in_ring"] = published - taken
    stats["ring_fill"] = (published - taken) / capacity if capacity else None
    stats["durable_lag"] = published - durable
    stats["commits_per_s"] = commits / running_s if running_s > 0 else None
    stats["age_s"] = max(0.0, time.time() - int(stats["updated_ns"]) / 1e9)
    return stats


def _live_line(row: RunRow) -> str | None:
    s = row.live_stats
    if s is None:
        return None
    rate = s["commits_per_s"]
    return (
        f"live {row.run_id}: ring {s['in_ring']:,} of {s['capacity']:,} entries"
        f" ({(s['ring_fill'] or 0) * 100:.1f}% full), durable lag {s['durable_lag']:,} entries,"
        f" {'-' if rate is None else f'{rate:,.0f}'} commits/s,"
        f" {human_bytes(s['bytes_raw'])} raw -> {human_bytes(s['bytes_stored'])} stored"
        f" (as of {s['age_s']:.1f} s ago)"
    )


def describe_segment(path: Path) -> RunRow:
    """A row for one segment file given on its own."""
    totals = StreamTotals()
    totals.walk(path)
    try:
        with SegmentFile.open(path) as f:
            header = read_segment_header(f)
    except OSError:
        header = None
    run_id = header.run_id if header is not None and not isinstance(header, Torn | Broken) else ""
    m = SEGMENT_RE.match(path.name)
    is_markers = m is not None and m.group(1) == "markers"
    return RunRow(
        run_id=run_id,
        instance_id=None,
        path=str(path),
        parent_run_id=None,
        status=None,
        live=False,
        start_ts_init=None,
        end_ts_init=None,
        high_watermark=None,
        entries=0 if is_markers else totals.entries,
        first_seq=totals.first_seq,
        last_seq=totals.last_seq,
        segments=1,
        bytes_on_disk=totals.segment_bytes,
        raw_bytes=totals.raw_bytes,
        compression_ratio=_ratio(totals.raw_bytes, totals.segment_bytes),
        anchors=0,
        markers={"total": totals.entries} if is_markers else {"total": 0},
        note=totals.stopped,
        damaged=totals.damaged,
    )


def collect(path: Path) -> list[RunRow]:
    """Rows for everything under ``path``; ``CliError`` when there is nothing to describe."""
    if path.is_file() and (why := not_a_segment(path)) is not None:
        raise CliError(f"nothing to inspect: {why}")
    runs, loose, findings = find_runs(path)
    if not runs and not loose:
        why = findings[0].detail if findings else "no runs found"
        raise CliError(f"{path}: nothing to inspect: {why}")
    return [describe_run(r) for r in runs] + [describe_segment(p) for p in loose]


def _markers_cell(counts: dict[str, int]) -> str:
    total = counts.get("total", 0)
    gaps = counts.get("gap", 0)
    return f"{total:,}" + (f" ({gaps} gap{'s' if gaps != 1 else ''})" if gaps else "")


def _status_cell(row: RunRow) -> str:
    status = row.status or "?"
    return f"{status} (live)" if row.live else status


def run(args: argparse.Namespace) -> int:
    rows = collect(check_path(args.path))
    if args.json:
        json.dump({"runs": [r.to_dict() for r in rows]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return _status(rows)
    columns = [
        "RUN", "INSTANCE", "PARENT", "STATUS", "STARTED (UTC)", "ENDED (UTC)", "ENTRIES", "SEQ",
        "SEGMENTS", "DISK", "RATIO", "ANCHORS", "MARKERS", "PATH",
    ]  # fmt: skip
    cells = [
        [
            row.path if row.status is None and row.path.endswith(".seg") else row.run_id,
            row.instance_id or "-",
            row.parent_run_id or "-",
            _status_cell(row),
            format_ts(row.start_ts_init),
            format_ts(row.end_ts_init),
            f"{row.entries:,}",
            format_seq_range(row.first_seq, row.last_seq),
            str(row.segments),
            human_bytes(row.bytes_on_disk),
            format_ratio(row.compression_ratio),
            str(row.anchors),
            _markers_cell(row.markers),
            row.path,
        ]
        for row in rows
    ]
    right = ("ENTRIES", "SEGMENTS", "DISK", "RATIO", "ANCHORS", "MARKERS")
    out = console()
    emit(out, table(columns, cells, right=right))
    for row in rows:
        if row.note:
            out.print(f"note: {row.run_id or row.path}: {row.note}", markup=False)
        line = _live_line(row)
        if line is not None:
            out.print(line, markup=False)
    return _status(rows)


def _status(rows: list[RunRow]) -> int:
    """Findings (1) when a manifest could not be read or a stream stopped at damage."""
    return EXIT_FINDINGS if any(r.damaged for r in rows) else EXIT_OK
