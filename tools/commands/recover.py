"""``ringtape recover BASE_DIR``: the boot sweep, run by hand, and what it did.

``storage/run/sweep.py``'s ``sweep_instance`` recovers every run a dead writer left
``running``: a clean run is sealed (``ended`` or ``crashed_recovered``, its torn tail cut and
kept in a ``.torn`` file), a damaged one is ``quarantined`` and left byte for byte as found.
Runs whose writer is alive are not touched. An open that never became durable (a run directory
with no manifest, nothing but its lock) is moved to ``<instance>/.aborted/`` once and reported.
The shared-memory rings that dead kernels left in /dev/shm (a kernel and its writer killed
together before the writer attached) are removed, as a boot of the store would.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ringtape.capture.liveness import owner_alive
from ringtape.capture.shm import remove_orphans
from ringtape.storage.run.recovery import RecoveryPlan
from ringtape.storage.run.status import RunStatus
from ringtape.storage.run.sweep import SweepReport, sweep_instance
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.common import instance_dirs


def _plan_line(plan: RecoveryPlan) -> str:
    cut = sum(c.size - c.offset for c in plan.cuts)
    parts = [
        f"{Path(plan.run_dir).name}: {plan.current} -> {plan.status}",
        f"high watermark {plan.high_watermark}",
    ]
    if plan.outcome is not None:
        parts.append(plan.outcome.value)
    if plan.cuts:
        files = ", ".join(Path(c.path).name for c in plan.cuts)
        parts.append(f"cut a torn tail of {cut} bytes from {files} (kept as .torn)")
    if plan.findings:
        kinds = sorted({str(f.get("kind")) for f in plan.findings})
        parts.append(f"{len(plan.findings)} finding(s): {', '.join(kinds)}")
    return "  recovered  " + ", ".join(parts)


def _lines(instance_dir: Path, report: SweepReport) -> list[str]:
    lines = [f"instance {instance_dir.name}:"]
    lines += [_plan_line(p) for p in report.recovered]
    lines += [
        f"  live       {r}: being written (its lock is held) or being opened; not touched"
        for r in report.live
    ]
    lines += [f"  skipped    {r}: {why} (left for the next sweep)" for r, why in report.skipped]
    lines += [
        f"  retired    {r}: an open that never became durable (no manifest); moved to {where}"
        for r, where in report.retired
    ]
    if len(lines) == 1:
        lines.append("  nothing to recover")
    return lines


def _to_dict(instance_dir: Path, report: SweepReport) -> dict[str, Any]:
    return {
        "instance": instance_dir.name,
        "recovered": [p.to_dict() for p in report.recovered],
        "live": list(report.live),
        "skipped": [{"run_id": r, "reason": why} for r, why in report.skipped],
        "retired": [{"run_id": r, "moved_to": where} for r, where in report.retired],
    }


def run(args: argparse.Namespace) -> int:
    targets = instance_dirs(args.base_dir, args.instance)
    # The sweep logs what it skips; the report below says it once, in full.
    logging.getLogger("ringtape.recovery").setLevel(logging.ERROR)
    reports = [(d, sweep_instance(d, owner_alive=owner_alive)) for d in targets]
    rings = remove_orphans()  # a dead run's ring, if its writer never attached to unlink it
    if args.json:
        out = {"instances": [_to_dict(d, r) for d, r in reports], "removed_rings": rings}
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for d, r in reports:
            print("\n".join(_lines(d, r)))
        for name in rings:
            print(f"removed /dev/shm/{name}: the ring of a dead kernel")
    trouble = any(
        r.skipped or any(p.status is RunStatus.QUARANTINED for p in r.recovered) for _, r in reports
    )
    return EXIT_FINDINGS if trouble else EXIT_OK
