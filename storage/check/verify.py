"""``ringtape verify``: say, for any path, exactly what is intact and what is not.

Rules of this module:

1. It never writes, never follows a symlink out of what it was given, never lets an exception
   escape for anything found on disk (a path that does not exist at all is the only error), and
   never allocates from a length field (the scans are bounded; see storage/scan.py).
2. Segments are deep-scanned (every frame decompressed, every record checked) by a
   :data:`Scanner` the caller chooses (this package knows no processes: the command line's
   scans in worker processes); everything after that works on the small scan values.
3. Run-level rules are small functions in :data:`RUN_CHECKERS`, each taking a
   :class:`RunContext` and returning findings. New rules (snapshot anchors, the marker stream)
   are added by appending to that list; nothing else needs to change.
4. A torn tail is excused only in a run whose manifest says ``running`` while the stream's
   appender (the writer, or the marker sidecar) still holds its lock: that tail is an append in
   progress. Anywhere else it is a finding.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ringtape.storage.check.anchors import check_anchors
from ringtape.storage.check.findings import Finding, Kind
from ringtape.storage.check.markers import check_markers
from ringtape.storage.check.scan import SegmentScan, scan_segment
from ringtape.storage.check.stream import StreamScan, check_stream, header_mismatch
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED
from ringtape.storage.format.frame import STREAM_NAMES
from ringtape.storage.run.blobs import BLOB_NAME_V1, BLOB_NAME_V2
from ringtape.storage.run.layout import (
    BLOB_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    MARKER_LOCK_NAME,
    RUN_ID_RE,
    SEGMENT_RE,
    TORN_FILE_RE,
    checkpoint_name,
    is_run_id,
    list_segments,
    run_sort_key,
)
from ringtape.storage.run.lock import writer_alive
from ringtape.storage.run.manifest import Manifest, ManifestError, read_manifest
from ringtape.storage.run.status import INFORMATIONAL, RunFacts, RunStatus, verify_verdict

STREAMS: Final = tuple(STREAM_NAMES.values())
BLOB_NAMES: Final = (BLOB_NAME_V1, BLOB_NAME_V2)
TEMP_MANIFEST_RE: Final = re.compile(r"^\." + re.escape(MANIFEST_NAME) + r"\..*\.tmp$")
TEMP_CHECKPOINT_RE: Final = re.compile(r"^\.(events|markers)\.checkpoint\..*\.tmp$")
# Names ringtape writes in a run directory besides segments, blobs/ and leftovers.
RUN_FILES: Final = frozenset(
    {
        MANIFEST_NAME,
        LOCK_NAME,
        MARKER_LOCK_NAME,
        *(checkpoint_name(s) for s in STREAM_NAMES.values()),
    }
)

ProgressFn = Callable[[int, int], None]

# The lock each stream's live appender holds.
STREAM_LOCKS: Final = {"events": LOCK_NAME, "markers": MARKER_LOCK_NAME}


@dataclass(frozen=True)
class RunContext:
    """Everything the run-level checkers may look at; built once per run."""

    run_dir: Path
    manifest: Manifest | None
    manifest_error: str | None
    events: StreamScan
    markers: StreamScan
    live: bool  # manifest says running and a writer holds the lock

    @property
    def status(self) -> RunStatus | None:
        return None if self.manifest is None else self.manifest.status

    @property
    def retained_from_seq(self) -> int:
        return _retained(self.manifest)


def _retained(manifest: Manifest | None) -> int:
    """The first events seq retention kept (1: nothing was reclaimed)."""
    return 1 if manifest is None else int(getattr(manifest, "retained_from_seq", 1))


RunChecker = Callable[[RunContext], Iterable[Finding]]


def _file_type(e: os.DirEntry[str]) -> str:
    """What a directory entry is, in words (``"a regular file"``, ``"a FIFO"``, …)."""
    try:
        mode = e.stat(follow_symlinks=False).st_mode
    except OSError:
        return "gone"
    for test, words in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def _wrong_type(path: str, what: str, found: str) -> Finding:
    return Finding(
        Kind.WRONG_FILE_TYPE,
        path,
        detail=f"{what} should be here, found {found}; ringtape neither follows nor reads it",
    )


def check_files(ctx: RunContext) -> Iterable[Finding]:
    """Every name in a run directory is one ringtape writes, and of the type it writes.

    A FIFO, socket, device, symlink or directory under one of ringtape's names is a finding
    (``wrong_file_type``); a name ringtape never writes (``notes.txt``) is a note
    (``unexpected_file``, informational); leftovers of a crash or a recovery are named as such.
    """
    try:
        entries = list(os.scandir(ctx.run_dir))
    except OSError as exc:
        yield Finding(
            Kind.UNREADABLE, str(ctx.run_dir), None, None, None, f"cannot list: {exc.strerror}"
        )
        return
    for e in sorted(entries, key=lambda e: e.name):
        path = str(ctx.run_dir / e.name)
        kind = _file_type(e)
        regular = kind == "a regular file"
        if e.name in RUN_FILES or SEGMENT_RE.match(e.name):
            if not regular:
                yield _wrong_type(path, f"ringtape's {e.name} (a regular file)", kind)
        elif e.name == BLOB_DIR:
            if kind != "a directory":
                yield _wrong_type(path, "the snapshot blob directory", kind)
            else:
                yield from _check_blob_dir(Path(path))
        elif TORN_FILE_RE.match(e.name):
            if not regular:
                yield _wrong_type(path, "bytes a recovery cut from a torn tail", kind)
                continue
            size = e.stat(follow_symlinks=False).st_size
            yield Finding(
                Kind.LEFTOVER_TORN,
                path,
                None,
                None,
                None,
                f"{size} bytes a recovery cut from a torn tail; keep it to inspect or delete it",
            )
        elif TEMP_MANIFEST_RE.match(e.name) or TEMP_CHECKPOINT_RE.match(e.name):
            what = "manifest" if TEMP_MANIFEST_RE.match(e.name) else "recovery checkpoint"
            yield Finding(
                Kind.LEFTOVER_TEMP,
                path,
                None,
                None,
                None,
                f"a {what} update was interrupted; the file it was to replace holds the previous"
                " version",
            )
        else:
            yield Finding(
                Kind.UNEXPECTED_FILE,
                path,
                None,
                None,
                None,
                f"{kind} ringtape did not write (a note: not part of the record, not damage)",
            )


def _check_blob_dir(blob_dir: Path) -> Iterable[Finding]:
    """Only blob files (``anchor-<id>.blob``, or format 1's ``<32 hex>.snap``) belong in
    ``blobs/``; a ``.<name>.tmp`` is a blob write a crash interrupted (never complete)."""
    try:
        entries = sorted(os.scandir(blob_dir), key=lambda e: e.name)
    except OSError as exc:
        yield Finding(Kind.UNREADABLE, str(blob_dir), detail=f"cannot list: {exc.strerror}")
        return
    for e in entries:
        path = str(blob_dir / e.name)
        kind = _file_type(e)
        if any(r.match(e.name) for r in BLOB_NAMES):
            if kind != "a regular file":
                yield _wrong_type(path, "a snapshot blob (a regular file)", kind)
        elif e.name.startswith(".") and e.name.endswith(".tmp"):
            yield Finding(Kind.LEFTOVER_TEMP, path, detail="a snapshot blob write was interrupted")
        else:
            yield Finding(
                Kind.UNEXPECTED_FILE,
                path,
                detail=f"{kind} ringtape did not write (a note: not a snapshot blob, not damage)",
            )


def check_manifest(ctx: RunContext) -> Iterable[Finding]:
    """The manifest is readable, names this run, and (once sealed) matches the entries."""
    where = str(ctx.run_dir / MANIFEST_NAME)
    m = ctx.manifest
    if m is None:
        yield Finding(Kind.UNREADABLE, where, None, None, None, ctx.manifest_error or "no manifest")
        return

    def mismatch(detail: str) -> Finding:
        return Finding(Kind.MANIFEST_MISMATCH, where, None, None, None, detail)

    name = ctx.run_dir.name
    if m.run_id != name:
        yield mismatch(f"run_id is {m.run_id!r}, the directory is {name!r}")
    parent = ctx.run_dir.parent.name
    if _is_uuid(parent) and m.instance_id != parent:
        yield mismatch(f"instance_id is {m.instance_id!r}, the directory is {parent!r}")
    if m.parent_run_id is not None and not is_run_id(m.parent_run_id):
        yield mismatch(f"parent_run_id {m.parent_run_id!r} is not a run id")
    match = RUN_ID_RE.match(m.run_id)
    if match and int(match.group(1)) != m.start_ts_init:
        yield mismatch(f"start_ts_init {m.start_ts_init} but the run id starts {match.group(1)}")
    first, last = ctx.events.first_entry, ctx.events.last_entry
    started = first if first is not None and first.topic == TOPIC_RUN_STARTED else None
    if started is not None and started.seq == 1 and started.ts_init != m.start_ts_init:
        yield mismatch(f"start_ts_init {m.start_ts_init}, RunStarted's ts_init {started.ts_init}")
    if not m.status.is_sealed:
        return  # a running run's manifest trails its data; a quarantined one is evidence
    if not ctx.events.damage:
        on_disk = ctx.events.last_seq or 0
        if m.high_watermark != on_disk:
            yield mismatch(f"high_watermark {m.high_watermark}, the last entry is seq {on_disk}")
        if last is not None and m.end_ts_init != last.ts_init:
            yield mismatch(f"end_ts_init {m.end_ts_init}, the last entry's ts_init {last.ts_init}")
    if not ctx.markers.damage:
        on_disk = ctx.markers.last_seq or 0
        if m.marker_high_watermark != on_disk:
            yield mismatch(
                f"marker_high_watermark {m.marker_high_watermark}, the last marker is seq {on_disk}"
            )


def check_lifecycle(ctx: RunContext) -> Iterable[Finding]:
    """RunStarted is seq 1; an ended run's last entry is RunEnded."""
    events = ctx.events
    first, last = events.first_entry, events.last_entry
    where = events.segments[0].path if events.segments else str(ctx.run_dir)
    if first is not None and first.seq == 1 and first.topic != TOPIC_RUN_STARTED:
        yield Finding(
            Kind.MISSING_RUN_STARTED, where, None, 1, 1, f"seq 1 has topic {first.topic!r}"
        )
    if ctx.events.damage:
        return  # the last entry is behind damage already reported: nothing more to say
    if ctx.status is RunStatus.ENDED and (last is None or last.topic != TOPIC_RUN_ENDED):
        where = events.segments[-1].path if events.segments else str(ctx.run_dir)
        found = "no entries" if last is None else f"seq {last.seq} has topic {last.topic!r}"
        yield Finding(
            Kind.MISSING_RUN_ENDED,
            where,
            None,
            None if last is None else last.seq,
            None,
            f"status is ended but {found}",
        )


def check_clock(ctx: RunContext) -> Iterable[Finding]:
    """A note (not damage) when ts_init goes back between consecutive entries: the kernel's
    clock did, and a replay that orders by ts_init must know."""
    count, first = ctx.events.ts_backwards
    if not count:
        return
    where = ctx.events.segments[0].path if ctx.events.segments else str(ctx.run_dir)
    recorded = (
        "" if ctx.manifest is None else f" (the manifest counts {ctx.manifest.ts_init_backwards})"
    )
    yield Finding(
        Kind.TS_INIT_BACKWARDS,
        where,
        None,
        first,
        first,
        f"{count} entries have a ts_init below the entry before them, the first at seq"
        f" {first}{recorded}",
    )


# Run-level rules, in report order. Append a checker to add a rule.
RUN_CHECKERS: Final[list[RunChecker]] = [
    check_files,
    check_manifest,
    check_lifecycle,
    check_clock,
    check_anchors,
    check_markers,
]


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """One run (or one loose segment file) as the report shows it."""

    run_id: str
    path: str
    status: str | None
    entries: int  # events stream
    first_seq: int | None
    last_seq: int | None
    markers: int  # marker stream entries
    segments: int  # both streams
    bytes_on_disk: int
    raw_bytes: int
    compression_ratio: float | None  # raw entry bytes / bytes on disk
    verdict: str
    findings: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VerifyReport:
    """What a verification found. ``ok``: no finding other than informational ones."""

    runs: tuple[RunSummary, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.kind not in INFORMATIONAL for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "runs": [r.to_dict() for r in self.runs],
            "findings": [f.to_dict() for f in self.findings],
        }


# -- what the path is -------------------------------------------------------------------------


def _is_uuid(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


def _subdirs(path: Path, keep: Callable[[str], bool], odd: list[Finding]) -> list[Path]:
    """Real (not symlinked) subdirectories whose names pass ``keep``; an entry with such a name
    that is not a real directory (a symlink, a FIFO, a file) is added to ``odd`` as a finding:
    never followed, never silently left out."""
    try:
        with os.scandir(path) as it:
            entries = [e for e in it if keep(e.name)]
    except OSError as exc:
        odd.append(Finding(Kind.UNREADABLE, str(path), detail=f"cannot list: {exc.strerror}"))
        return []
    out = []
    for e in entries:
        kind = _file_type(e)
        if kind == "a directory":
            out.append(path / e.name)
        else:
            what = "a run directory" if is_run_id(e.name) else "an instance directory"
            odd.append(_wrong_type(str(path / e.name), what, kind))
    return out


def _is_run_dir(path: Path) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return MANIFEST_NAME in names or any(SEGMENT_RE.match(n) for n in names)


def find_runs(path: Path) -> tuple[list[Path], list[Path], list[Finding]]:
    """``(run dirs, loose segment files, findings)`` for a base, instance or run dir or a file.

    Raises ``OSError`` only when ``path`` itself cannot be looked at.
    """
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode):
        return [], [path], []
    if not stat.S_ISDIR(st.st_mode):
        return (
            [],
            [],
            [Finding(Kind.UNREADABLE, str(path), None, None, None, "not a file or directory")],
        )
    if is_run_id(path.name) or _is_run_dir(path):
        return [path], [], []
    odd: list[Finding] = []
    runs = _subdirs(path, is_run_id, odd)
    if runs or odd or _is_uuid(path.name):
        return sorted(runs, key=lambda p: run_sort_key(p.name)), [], odd
    instances = sorted(_subdirs(path, _is_uuid, odd))
    if instances or odd:
        found = [
            r
            for i in instances
            for r in sorted(_subdirs(i, is_run_id, odd), key=lambda p: run_sort_key(p.name))
        ]
        return found, [], odd
    return (
        [],
        [],
        [
            Finding(
                Kind.UNREADABLE,
                str(path),
                None,
                None,
                None,
                "not a ringtape base, instance or run directory, nor a segment file",
            )
        ],
    )


# -- scanning -------------------------------------------------------------------------------------


class ScanProgress:
    """Bytes scanned so far, reported to ``fn(done, total)``."""

    def __init__(self, total: int, fn: ProgressFn | None) -> None:
        self.total, self.done, self.fn = total, 0, fn

    def __call__(self, n: int) -> None:
        self.done += n
        if self.fn is not None:
            self.fn(min(self.done, self.total), self.total)


def file_size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def scan_guarded(path: Path, progress: ScanProgress | None = None) -> SegmentScan:
    """A deep scan that turns even an unforeseen failure into a finding about the file."""
    try:
        return scan_segment(path, deep=True, progress=progress)
    except Exception as exc:  # a scan must never take the whole verification down
        return failed_scan(path, f"the scan failed: {exc!r}")


def failed_scan(path: Path, detail: str) -> SegmentScan:
    return SegmentScan.unreadable(str(path), detail, size=file_size(path))


def scan_sequentially(paths: Sequence[Path], progress: ScanProgress) -> dict[Path, SegmentScan]:
    """Deep scans of ``paths``, one after the other (the default :data:`Scanner`)."""
    out: dict[Path, SegmentScan] = {}
    for p in paths:
        before = progress.done
        out[p] = scan_guarded(p, progress)
        progress(max(0, file_size(p) - (progress.done - before)))
    return out


# How a verification gets its deep scans: ``(paths, progress) -> {path: scan}``. Sequential by
# default; the command line passes one that scans in worker processes (tools/verify_pool.py).
Scanner = Callable[[Sequence[Path], ScanProgress], dict[Path, SegmentScan]]


def _manifest(run_dir: Path) -> tuple[Manifest | None, str | None]:
    try:
        return read_manifest(run_dir), None
    except ManifestError as exc:
        return None, str(exc)


def _live_filter(stream: StreamScan, live: bool) -> StreamScan:
    if not live or stream.torn is None:
        return stream
    kept = tuple(f for f in stream.findings if f.kind is not Kind.TORN_TAIL)
    return StreamScan(stream.stream, stream.segments, kept)


def _verdict(ctx: RunContext, findings: Sequence[Finding]) -> str:
    serious = [f for f in findings if f.kind not in INFORMATIONAL]
    damage = sum(1 for f in serious if f.kind is not Kind.TORN_TAIL)
    return verify_verdict(RunFacts(ctx.live, ctx.status, len(serious), damage))


def _summary(
    run_id: str, path: Path, status: str | None, streams: Sequence[StreamScan], verdict: str, n: int
) -> RunSummary:
    events = next((s for s in streams if s.stream == "events"), None)
    markers = next((s for s in streams if s.stream == "markers"), None)
    disk = sum(s.bytes_on_disk for s in streams)
    raw = sum(s.raw_bytes for s in streams)
    return RunSummary(
        run_id=run_id,
        path=str(path),
        status=status,
        entries=0 if events is None else events.entries,
        first_seq=None if events is None else events.first_seq,
        last_seq=None if events is None else events.last_seq,
        markers=0 if markers is None else markers.entries,
        segments=sum(len(s.segments) for s in streams),
        bytes_on_disk=disk,
        raw_bytes=raw,
        compression_ratio=round(raw / disk, 3) if disk else None,
        verdict=verdict,
        findings=n,
    )


def _stream_live(run_dir: Path, manifest: Manifest | None, stream: str) -> bool:
    """Is the stream still being appended to? (running, and its writer holds its lock)"""
    running = manifest is not None and manifest.status is RunStatus.RUNNING
    return running and writer_alive(run_dir, STREAM_LOCKS[stream])


def _check_run(run_dir: Path, scans: dict[Path, SegmentScan]) -> tuple[RunSummary, list[Finding]]:
    manifest, error = _manifest(run_dir)
    retained = _retained(manifest)
    streams = {}
    for name in STREAMS:
        seg = [scans[p] for p in list_segments(run_dir, name) if p in scans]
        keep_from = retained if name == "events" else 1
        stream = check_stream(name, seg, run_dir.name, retained_from_seq=keep_from)
        streams[name] = _live_filter(stream, _stream_live(run_dir, manifest, name))
    live = _stream_live(run_dir, manifest, "events")
    ctx = RunContext(run_dir, manifest, error, streams["events"], streams["markers"], live)
    findings = [f for s in streams.values() for f in s.findings]
    for checker in RUN_CHECKERS:
        findings.extend(checker(ctx))
    status = None if manifest is None else str(manifest.status)
    verdict = _verdict(ctx, findings)
    summary = _summary(
        run_dir.name, run_dir, status, list(streams.values()), verdict, len(findings)
    )
    return summary, findings


def _check_loose(path: Path, scan: SegmentScan) -> tuple[RunSummary, list[Finding]]:
    """One segment file on its own: its frames, and its header against its name and directory."""
    m = SEGMENT_RE.match(path.name)
    h = scan.header
    stream = m.group(1) if m else STREAM_NAMES.get(h.stream_kind, "events") if h else "events"
    run_dir = path.parent
    run_id = run_dir.name if is_run_id(run_dir.name) else None
    findings = list(scan.findings)
    if m is not None:
        mismatch = header_mismatch(scan, stream, int(m.group(2)), run_id)
        if mismatch is not None:
            findings.append(mismatch)
    if scan.torn_at is not None and run_id is not None:
        siblings = list_segments(run_dir, stream)
        last = bool(siblings) and siblings[-1].name == path.name
        if last and _stream_live(run_dir, _manifest(run_dir)[0], stream):
            findings = [f for f in findings if f.kind is not Kind.TORN_TAIL]
    serious = [f for f in findings if f.kind not in INFORMATIONAL]
    verdict = "intact" if not serious else f"DAMAGED: {len(serious)} findings"
    one = StreamScan(stream, (scan,), tuple(findings))
    name = h.run_id if h is not None else ""
    return _summary(name, path, None, [one], verdict, len(findings)), findings


def verify_path(
    path: Path, *, scan: Scanner = scan_sequentially, progress: ProgressFn | None = None
) -> VerifyReport:
    """Verify everything under ``path``: a base dir, an instance dir, a run dir or a segment file.

    ``scan`` does the deep scans of the segment files (see :data:`Scanner`);
    ``progress(done, total)`` is called with bytes as the scan advances. Raises ``OSError`` only
    if ``path`` cannot be looked at at all; everything found inside is a finding.
    """
    runs, loose, findings = find_runs(path)
    segments = [p for r in runs for s in STREAMS for p in list_segments(r, s)] + loose
    tracker = ScanProgress(sum(file_size(p) for p in segments), progress)
    scans = scan(segments, tracker)
    summaries: list[RunSummary] = []
    for run_dir in runs:
        summary, found = _check_run(run_dir, scans)
        summaries.append(summary)
        findings.extend(found)
    for seg in loose:
        summary, found = _check_loose(seg, scans[seg])
        summaries.append(summary)
        findings.extend(found)
    return VerifyReport(tuple(summaries), tuple(findings))
