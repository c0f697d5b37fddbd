"""``ringtape verify PATH``: check everything under a base, instance or run dir, or one segment.

The checking is ``storage/check/verify.py``'s ``verify_path``; this module chooses the number
of worker processes, draws the progress bar, and prints the report for people (a line per run, then
each finding with its file, byte offset, seq range and what it means) or as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from ringtape.storage.check.findings import KINDS, Finding, Kind
from ringtape.storage.check.verify import RunSummary, VerifyReport
from ringtape.storage.run.status import INFORMATIONAL
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.common import (
    CliError,
    byte_progress,
    check_path,
    choose_jobs,
    console,
    emit,
    format_ratio,
    format_seq_range,
    human_bytes,
    not_a_segment,
    progress_wanted,
    table,
)
from ringtape.tools.verify_pool import verify_in_workers


def run(args: argparse.Namespace) -> int:
    path = check_path(args.path)
    if path.is_file() and (why := not_a_segment(path)) is not None:
        raise CliError(why)
    jobs = choose_jobs(path, args.jobs)
    with byte_progress("verifying", progress_wanted(args.json)) as progress:
        report = verify_in_workers(path, jobs, progress)
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
    """The table of finding kinds for the README, generated from ``findings.KINDS``."""
    lines = ["| kind | meaning |", "|---|---|"]
    for kind, sentence in KINDS.items():
        note = " (informational: does not fail a verification)" if kind in INFORMATIONAL else ""
        lines.append(f"| `{kind}` | {sentence}{note} |")
    return "\n".join(lines) + "\n"
