"""``ringtape dump RUN``: a run's entries (or its marker records) as JSON lines, streamed.

The line format is ``tools/jsonlines.py``'s (JSON payloads as recorded, msgpack maps shown as
JSON when msgspec is installed, anything else base64). Every frame is checked on the way
(``storage/read/reader.py``); the dump stops at the first damage, exit status 1. Frames that a
time window or a topic glob rules out are skipped on their headers (format version 2's frame
index), so ``--since`` the last minute of a long run reads little more than its headers. A long
dump draws a progress bar on stderr when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

from ringtape.storage.read.columns import iter_columns
from ringtape.storage.read.markers import iter_marker_records
from ringtape.storage.read.reader import CorruptionError, Progress
from ringtape.storage.run.layout import list_segments
from ringtape.storage.run.manifest import ManifestError, read_manifest
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.common import CliError, byte_progress, progress_wanted, run_dir_arg
from ringtape.tools.jsonlines import LineEncoder

# Marker lines are written in batches: one write per batch rather than per record.
_BATCH: Final = 512
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _in_time(ts: int, args: argparse.Namespace) -> bool:
    return (args.since is None or ts >= args.since) and (args.until is None or ts <= args.until)


def first_seq(run_dir: Path, requested: int | None) -> int:
    """``requested``, else the first seq retention kept."""
    if requested is not None:
        return requested
    try:
        return read_manifest(run_dir).retained_from_seq
    except ManifestError:
        return 1


def write_entries(
    run_dir: Path, args: argparse.Namespace, out: BinaryIO, progress: Progress | None
) -> None:
    """Write the wanted entries as JSON lines, a batch of frames at a time; what was read
    before a failure is written before the failure propagates."""
    topics = args.topic
    encoder = LineEncoder(topics)
    for cols in iter_columns(
        run_dir,
        from_seq=first_seq(run_dir, args.from_seq),
        to_seq=args.to_seq,
        since=args.since,
        until=args.until,
        topics=topics,
        progress=progress,
    ):
        lines = encoder.lines(cols)
        if lines:
            lines.append(b"")
            out.write(b"\n".join(lines))


def _markers(run_dir: Path, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    for rec in iter_marker_records(run_dir):
        seq = int(rec.get("marker_seq", 0))
        if args.from_seq is not None and seq < args.from_seq:
            continue
        if args.to_seq is not None and seq > args.to_seq:
            return
        ts = rec.get("ts_init")
        if not isinstance(ts, int) or _in_time(ts, args):
            yield rec


def write_lines(objects: Iterable[dict[str, Any]], out: BinaryIO) -> None:
    """Write one JSON object per line, a batch at a time; what was read before a failure is
    written before the failure propagates."""
    batch: list[str] = []
    try:
        for obj in objects:
            batch.append(_ENCODER.encode(obj))
            if len(batch) >= _BATCH:
                out.write(("\n".join(batch) + "\n").encode())
                batch.clear()
    finally:
        if batch:
            out.write(("\n".join(batch) + "\n").encode())


def _stream_bytes(run_dir: Path, stream: str) -> int:
    total = 0
    for path in list_segments(run_dir, stream):
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total


def run(args: argparse.Namespace) -> int:
    if args.to_seq is not None and args.from_seq is not None and args.to_seq < args.from_seq:
        raise CliError(f"--to-seq {args.to_seq} is before --from-seq {args.from_seq}")
    if args.markers and args.topic is not None:
        raise CliError("--topic does not apply to --markers (marker records have no topic)")
    run_dir = run_dir_arg(args.run, args.run_id)
    out = sys.stdout.buffer
    try:
        if args.markers:
            write_lines(_markers(run_dir, args), out)
        else:
            with byte_progress("dumping", progress_wanted(False)) as bar:
                progress = None
                if bar is not None:
                    total, done = _stream_bytes(run_dir, "events"), [0]

                    def progress(n: int) -> None:
                        done[0] += n
                        bar(done[0], total)

                write_entries(run_dir, args, out, progress)
    except CorruptionError as exc:
        out.flush()
        print(f"ringtape: dump stopped at damage: {exc.finding}", file=sys.stderr)
        return EXIT_FINDINGS
    except UnicodeDecodeError as exc:  # records that check out but hold a topic not in UTF-8
        out.flush()
        print(f"ringtape: dump stopped at damage: text that is not UTF-8 ({exc})", file=sys.stderr)
        return EXIT_FINDINGS
    except ValueError as exc:  # a range before what retention kept
        raise CliError(str(exc)) from None
    finally:
        out.flush()
    return EXIT_OK
