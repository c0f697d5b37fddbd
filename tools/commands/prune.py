"""``ringtape prune BASE_DIR``: apply the retention mode, or show what it would reclaim.

The plan is ``ringtape.storage.run.retention.plan_retention`` (pure); reclaiming is ``apply_plan``
(rename into ``.trash``, fsync, then delete). The mode comes from ``--mode`` or, by default,
from the instance's newest readable manifest (its ``retention`` field, with ``Bounded``'s
``keep_last``; or, in manifests without it, the ``retention=…`` feature flag, in which case a
bounded mode needs ``--keep-last``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ringtape.storage.run.layout import list_runs
from ringtape.storage.run.manifest import ManifestError, read_manifest
from ringtape.storage.run.retention import (
    RetentionPlan,
    apply_plan,
    describe_instance,
    plan_retention,
)
from ringtape.tools.arguments import EXIT_OK, RETENTION_MODES
from ringtape.tools.common import CliError, instance_dirs

# Command-line names of the modes, and how manifests record them (RetentionMode.feature_flag).
FLAG_PREFIX: Final = "retention="


@dataclass
class InstancePlan:
    instance_dir: Path
    mode: str  # a key of RETENTION_MODES
    plan: RetentionPlan


def recorded_keep_last(instance_dir: Path) -> int | None:
    """``keep_last`` of a Bounded mode recorded in the newest readable manifest."""
    for run_id in reversed(list_runs(instance_dir)):
        try:
            recorded = read_manifest(instance_dir / run_id).retention
        except ManifestError:
            continue
        if isinstance(recorded, dict) and isinstance(recorded.get("Bounded"), dict):
            keep = recorded["Bounded"].get("keep_last")
            return keep if isinstance(keep, int) and keep >= 1 else None
        return None
    return None


def recorded_mode(instance_dir: Path) -> str | None:
    """The mode in the ``retention=`` feature flag of the newest readable manifest."""
    for run_id in reversed(list_runs(instance_dir)):
        try:
            flags = read_manifest(instance_dir / run_id).feature_flags
        except ManifestError:
            continue
        for flag in flags:
            if isinstance(flag, str) and flag.startswith(FLAG_PREFIX):
                return flag.removeprefix(FLAG_PREFIX)
        return None
    return None


def _mode_for(instance_dir: Path, args: argparse.Namespace) -> str:
    mode = args.mode or recorded_mode(instance_dir)
    if mode is None:
        raise CliError(
            f"instance {instance_dir.name}: no manifest records a retention mode; pass --mode"
        )
    if mode not in RETENTION_MODES:
        raise CliError(f"instance {instance_dir.name}: unknown retention mode {mode!r}")
    if mode == "bounded" and args.keep_last is None and recorded_keep_last(instance_dir) is None:
        raise CliError(
            f"instance {instance_dir.name}: bounded retention needs --keep-last N"
            " (its manifests do not record N)"
        )
    if mode != "bounded" and args.keep_last is not None:
        raise CliError(f"--keep-last applies to bounded retention only, the mode is {mode}")
    return mode


def make_plans(targets: list[Path], args: argparse.Namespace) -> list[InstancePlan]:
    """Every instance's plan, decided before anything is touched."""
    plans = []
    for d in targets:
        mode = _mode_for(d, args)
        keep = (args.keep_last or recorded_keep_last(d)) if mode == "bounded" else None
        try:
            plan = plan_retention(describe_instance(d), RETENTION_MODES[mode], keep)
        except ValueError as exc:
            raise CliError(f"instance {d.name}: {exc}") from None
        plans.append(InstancePlan(d, mode, plan))
    return plans


def _plan_dict(p: InstancePlan, reclaimed: list[str] | None) -> dict[str, Any]:
    return {
        "instance": p.instance_dir.name,
        "mode": p.plan.mode,
        "keep": [{"run_id": r, "why": why} for r, why in p.plan.keep],
        "reclaim": [
            {
                "run_id": r.run_id,
                "whole_run": r.whole_run,
                "paths": [str(x) for x in r.paths],
                "bytes": r.bytes,
                "reason": r.reason,
            }
            for r in p.plan.reclaim
        ],
        "reclaim_bytes": p.plan.reclaim_bytes,
        "reclaimed": reclaimed,
    }


def run(args: argparse.Namespace) -> int:
    plans = make_plans(instance_dirs(args.base_dir, args.instance), args)
    logging.getLogger("ringtape.retention").setLevel(logging.ERROR)
    results: list[dict[str, Any]] = []
    for p in plans:
        if not args.json:
            print(f"instance {p.instance_dir.name}:")
            print("\n".join("  " + line for line in p.plan.lines()))
        reclaimed: list[str] | None = None
        if not args.dry_run and p.plan.reclaim:
            done = apply_plan(p.instance_dir, p.plan)
            reclaimed = [r.run_id for r in done]
            if not args.json:
                freed = sum(r.bytes for r in done)
                print(f"  reclaimed {len(done)} of {len(p.plan.reclaim)} item(s), {freed} bytes")
                skipped = len(p.plan.reclaim) - len(done)
                if skipped:
                    print(f"  {skipped} item(s) changed since planning and were left alone")
        elif args.dry_run and not args.json:
            print("  dry run: nothing was changed")
        results.append(_plan_dict(p, reclaimed))
    if args.json:
        json.dump({"dry_run": args.dry_run, "instances": results}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return EXIT_OK
