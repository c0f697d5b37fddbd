"""``ringtape tail RUN [--follow]``: a run's last entries, then (``--follow``) each new one as it
becomes durable, until the run is sealed.

Rules of this module:

1. Never past what is durable. While a run is live, an entry is printed only once it is known
   to be fdatasync'd: at or below the durable seq the writer reports in ``writer.lock`` (about
   once a second), or in a segment that a later one follows (the writer syncs a segment before
   it starts the next). A sealed run is durable to its high watermark.
2. Whole, checked frames only: entries come through the checked reader (``iter_columns``), which
   stops quietly at a live run's torn tail and raises at damage (exit status 1).
3. The end: a sealed run ends the follow (exit 0, after its last entry). A ``running`` run whose
   writer lock is free has lost its writer: tail prints what was reported durable and stops with
   exit status 1 (the recovery sweep, or ``ringtape recover``, seals the run).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import BinaryIO

from ringtape.storage.read.columns import iter_columns
from ringtape.storage.read.reader import CorruptionError, segment_first_seq
from ringtape.storage.run.layout import list_segments
from ringtape.storage.run.lock import read_live_stats, writer_alive
from ringtape.storage.run.manifest import Manifest, ManifestError, read_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.common import CliError, run_dir_arg
from ringtape.tools.jsonlines import LineEncoder


def _manifest(run_dir: Path) -> Manifest | None:
    try:
        return read_manifest(run_dir)
    except ManifestError:
        return None


def durable_seq(run_dir: Path, manifest: Manifest | None) -> int:
    """The highest seq known to be durable now (rule 1)."""
    if manifest is not None and manifest.status is not RunStatus.RUNNING:
        return manifest.high_watermark
    best = 0
    line = read_live_stats(run_dir)
    if line is not None:
        try:
            best = int(json.loads(line)["durable_seq"])
        except (ValueError, KeyError, TypeError):
            best = 0
    segments = list_segments(run_dir, "events")
    if len(segments) > 1:
        first = segment_first_seq(segments[-1])
        if first is not None:
            best = max(best, first - 1)
    return best


class Tail:
    """Prints a run's entries from ``next_seq`` up to a bound, remembering where it stopped."""

    def __init__(self, run_dir: Path, out: BinaryIO, topics: list[str] | None) -> None:
        self.run_dir = run_dir
        self.out = out
        self.encoder = LineEncoder(topics)
        self.topics = topics
        self.next_seq = 1

    def print_to(self, bound: int, keep: int | None = None) -> None:
        """Entries ``next_seq..bound`` (only the last ``keep`` lines of them, if given)."""
        if bound < self.next_seq:
            return
        kept: collections.deque[bytes] | None = (
            None if keep is None else collections.deque(maxlen=max(keep, 0))
        )
        for cols in iter_columns(
            self.run_dir,
            from_seq=self.next_seq,
            to_seq=bound,
            topics=self.topics,
            strict=False,
            from_segment=True,
        ):
            lines = self.encoder.lines(cols)
            self.next_seq = int(cols.seq[-1]) + 1
            if kept is not None:
                kept.extend(lines)
            elif lines:
                self.out.write(b"\n".join(lines) + b"\n")
                self.out.flush()
        if kept:
            self.out.write(b"\n".join(kept) + b"\n")
            self.out.flush()
        self.next_seq = max(self.next_seq, bound + 1)


def _start(run_dir: Path, bound: int, lines: int, filtered: bool) -> int:
    if filtered:
        return 1
    first = 1
    manifest = _manifest(run_dir)
    if manifest is not None:
        first = max(1, manifest.retained_from_seq)
    return max(first, bound - lines + 1)


def run(args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise CliError(f"--lines {args.lines} is negative")
    run_dir = run_dir_arg(args.run, args.run_id)
    out = sys.stdout.buffer
    tail = Tail(run_dir, out, args.topic)
    try:
        manifest = _manifest(run_dir)
        bound = durable_seq(run_dir, manifest)
        tail.next_seq = _start(run_dir, bound, args.lines, args.topic is not None)
        tail.print_to(bound, keep=args.lines)
        while args.follow:
            sealed = manifest is not None and manifest.status is not RunStatus.RUNNING
            if sealed:
                return EXIT_OK
            if not writer_alive(run_dir):
                manifest = _manifest(run_dir)  # sealed just now (seal releases the lock last)?
                if manifest is not None and manifest.status is not RunStatus.RUNNING:
                    tail.print_to(durable_seq(run_dir, manifest))
                    return EXIT_OK
                tail.print_to(durable_seq(run_dir, manifest))
                print(
                    f"ringtape: tail: the writer of {run_dir.name} is gone and the run was not"
                    f" sealed; stopped after seq {tail.next_seq - 1}, the last it reported"
                    " durable (`ringtape recover` seals the run)",
                    file=sys.stderr,
                )
                return EXIT_FINDINGS
            time.sleep(args.poll)
            manifest = _manifest(run_dir)
            tail.print_to(durable_seq(run_dir, manifest))
    except CorruptionError as exc:
        out.flush()
        print(f"ringtape: tail stopped at damage: {exc.finding}", file=sys.stderr)
        return EXIT_FINDINGS
    return EXIT_OK
