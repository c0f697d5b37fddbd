"""The retention supervisor: a separate process that applies the instance's retention mode.

Started by the store (``StoreOptions.retention_interval_s``) or on its own::

    python -m ringtape.capture.retention_supervisor BASE_DIR INSTANCE_ID --mode '"SnapshotAnchored"'

Every interval it plans (``storage.run.retention.plan_retention``) and reclaims; it never
touches a running, live-locked or quarantined run. It exits when its parent (the kernel) is gone, or
after one pass with ``--once``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ringtape.capture.child import spawn_child
from ringtape.capture.config import RetentionMode
from ringtape.storage.run.retention import apply_plan, describe_instance, plan_retention

log = logging.getLogger("ringtape.retention")


def run_once(instance_dir: Path, mode: RetentionMode) -> int:
    """Plan and reclaim once; returns the bytes reclaimed."""
    plan = plan_retention(describe_instance(instance_dir), mode.kind, mode.keep_last)
    if not plan.reclaim:
        return 0
    return sum(item.bytes for item in apply_plan(instance_dir, plan))


@dataclass(frozen=True)
class SupervisorArgs:
    base_dir: str
    instance_id: str
    mode: str  # RetentionMode JSON
    interval_s: float
    parent_pid: int


def spawn_supervisor(
    base_dir: Path, instance_id: str, mode: RetentionMode, interval_s: float
) -> subprocess.Popen[bytes]:
    """Start the supervisor as a ringtape child process (``capture/child.py``)."""
    args = SupervisorArgs(str(base_dir), instance_id, mode.to_json(), interval_s, os.getpid())
    return spawn_child(__name__, "supervisor_main", args)


def supervisor_main(args: SupervisorArgs, fds: tuple[int, ...]) -> None:
    """The spawned supervisor's entry point."""
    argv = [
        args.base_dir,
        args.instance_id,
        "--mode",
        args.mode,
        "--interval",
        str(args.interval_s),
    ]
    sys.exit(main([*argv, "--parent-pid", str(args.parent_pid)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ringtape.capture.retention_supervisor")
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("instance_id")
    parser.add_argument("--mode", required=True, help="RetentionMode JSON, e.g. '\"Full\"'")
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        mode = RetentionMode.from_json(args.mode)
    except ValueError as exc:
        print(f"ringtape retention: {exc}", file=sys.stderr)
        return 2
    instance_dir = args.base_dir / args.instance_id
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        try:
            run_once(instance_dir, mode)
        except OSError as exc:  # a transient disk problem: try again next interval
            log.warning("retention pass failed: %s", exc)
        if args.once:
            break
        deadline = time.monotonic() + args.interval
        while not stop and time.monotonic() < deadline:
            if args.parent_pid and os.getppid() != args.parent_pid:
                return 0
            time.sleep(min(0.5, args.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
