"""``ringtape verify PATH``: check everything under a base, instance or run dir, or one segment.

The checking is ``storage.verify.verify_path``; this module chooses the number of worker
processes, draws the progress bar, and prints the report for people (a line per run, then
each finding with its file, byte offset, seq range and what it means) or as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Final

from storage.findings import INFORMATIONAL, KINDS, Finding, Kind
from storage.verify import RunSummary, VerifyReport, verify_path
from tools.cli_common import (
    EXIT_FINDINGS,
    EXIT_OK,
    CliError,
    byte_progress,
    check_path,
    choose_jobs,
    console,
    default_jobs,
    emit,
    format_ratio,
    format_seq_range,
    human_bytes,
    positive_int,
    progress_wanted,
    table,
)

HELP: Final = "check checksums, chains, sequences, manifests, anchors and markers"
DESCRIPTION: Final = """\
Verify everything under PATH: a base directory, an instance directory, a run directory or
a single segment file. Every frame is checked (header and data checksums, the frame chain,
decompression, every entry record), then each run as a whole (seq continuity across frames
and segments, the manifest against the data, RunStarted/RunEnded, snapshot anchors, the
marker stream, leftover and unexpected files). Nothing is ever written.

A torn tail in a run whose writer is still running is an append in progress, not a finding.

exit status: 0 intact, 1 findings, 2 could not run (no such path, permission denied, usage)"""
EPILOG: Final = """\
examples:
  ringtape verify ./ringtape-demo
  ringtape verify ./ringtape-demo/<instance>/<run> --jobs 2
  ringtape verify events-000003.seg
  ringtape verify /data/ringtape --json | jq '.findings[] | .kind'"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="base dir, instance dir, run dir or segment")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="segments verified in parallel (default: the number of cores, "
        f"{default_jobs()}, when there are 64 MiB or more to read, else 1)",
    )


def run(args: argparse.Namespace) -> int:
    path = check_path(args.path)
    jobs = choose_jobs(path, args.jobs)
    with byte_progress("verifying", progress_wanted(args.json)) as progress:
        report = verify_path(path, jobs=jobs, progress=progress)
    if not report.runs and all(f.kind is Kind.UNREADABLE for f in report.findings):
        why = report.findings[0].detail if report.findings else "no runs found"
        raise CliError(f"{args.path}: nothing to verify: {why}")
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(report)
    return EXIT_OK if report.ok else EXIT_FINDINGS


def _run_name(summary: RunSummary) -> str:
    # A loose segment file is shown by its path: its header's run id says less.
    return (
        summary.path if summary.status is None and summary.path.endswith(".seg") else summary.run_id
    )


def print_report(report: VerifyReport) -> None:
    """The report for people: one line per run, then the findings, then the verdict."""
    out = console()
    rows = [
        [
            _run_name(r),
            r.status or "-",
            f"{r.entries:,}",
            format_seq_range(r.first_seq, r.last_seq),
            f"{r.markers:,}",
            human_bytes(r.bytes_on_disk),
            format_ratio(r.compression_ratio),
            r.verdict,
        ]
        for r in report.runs
    ]
    columns = ["RUN", "STATUS", "ENTRIES", "SEQ", "MARKERS", "SIZE", "RATIO", "VERDICT"]
    emit(out, table(columns, rows, right=("ENTRIES", "MARKERS", "SIZE", "RATIO")))
    if report.findings:
        out.print()
        out.print(f"{len(report.findings)} finding(s):", markup=False)
        for f in report.findings:
            for line in describe_finding(f):
                out.print(line, markup=False)
    out.print()
    out.print(verdict_line(report), markup=False)


def describe_finding(f: Finding) -> list[str]:
    """A finding as people read it: kind, file, offset, seq range; what was found; what the
    kind means."""
    where = [f.path]
    if f.offset is not None:
        where.append(f"offset {f.offset}")
    if f.seq_from is not None or f.seq_to is not None:
        lo = "?" if f.seq_from is None else str(f.seq_from)
        hi = "" if f.seq_to is None else str(f.seq_to)
        where.append(f"seq {lo}" if f.seq_from == f.seq_to else f"seq {lo}..{hi}")
    note = " (informational)" if f.kind in INFORMATIONAL else ""
    return [
        f"  {f.kind}{note}: {', '.join(where)}",
        f"      {f.detail}",
        f"      meaning: {KINDS.get(f.kind, '')}",
    ]


def verdict_line(report: VerifyReport) -> str:
    runs = len(report.runs)
    entries = sum(r.entries for r in report.runs)
    serious = [f for f in report.findings if f.kind not in INFORMATIONAL]
    if report.ok:
        return f"intact: {runs} run(s), {entries:,} entries"
    damaged = len({f.path for f in serious})
    return f"FINDINGS: {len(serious)} finding(s) in {damaged} file(s) across {runs} run(s)"


def kinds_markdown() -> str:
    """The table of finding kinds for the README, generated from ``storage.findings.KINDS``."""
    lines = ["| kind | meaning |", "|---|---|"]
    for kind, sentence in KINDS.items():
        note = " (informational: does not fail a verification)" if kind in INFORMATIONAL else ""
        lines.append(f"| `{kind}` | {sentence}{note} |")
    return "\n".join(lines) + "\n"
