"""``readback``: what reading a run back costs: ``ringtape verify`` and ``ringtape dump``.

The runs are the demo's (``ringtape demo``'s trading session: quotes and trades observed as
market data, one instrument high fidelity, orders and fills appended, the cache anchored every
2 s), captured into the bench's temporary directory. Then, on the first:

- ``verify``: the whole check (segments, markers, anchors and their blobs) in this process
  (``verify_path`` with one job, the median of three; the judged figure: raw entry bytes per
  second on one core), and through the command line, ``ringtape verify RUN --jobs 1``, whose
  wall time adds the interpreter's start and imports (a fixed ~0.2 s);
- ``dump``: ``ringtape dump RUN`` into a pipe this process reads and discards, wall time from
  the command's start to the end of its output (entries per second, interpreter included), and
  ``--since`` the last tenth of the run's time span, which skips frames on their headers;
- ``verify --jobs 1`` against ``--jobs 2`` on the base directory holding all the runs (the
  workers take a run each).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any, Final

from ringtape.storage.check.verify import verify_path
from ringtape.storage.run.manifest import read_manifest
from ringtape.tools.bench.common import Run
from ringtape.tools.demo.run import DEMO_INSTANCE, DemoOptions, capture_demo_run

TARGET_VERIFY_MB_S: Final = 400.0
TARGET_DUMP_PER_S: Final = 300_000.0
RUNS: Final = 3
REPEATS: Final = 3


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ringtape.tools.cli", *args]


def _timed_cli(*args: str) -> float:
    """Wall seconds of one ``ringtape`` command whose output is discarded; it must succeed."""
    t0 = time.perf_counter()
    done = subprocess.run(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"ringtape {' '.join(args)}: {done.stderr.decode().strip()}")
    return seconds


def _dump_into_pipe(*args: str) -> tuple[float, int]:
    """Wall seconds of ``ringtape dump ARGS`` read to its end through a pipe, and its lines."""
    t0 = time.perf_counter()
    with subprocess.Popen(_cli("dump", *args), stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        lines = 0
        while chunk := proc.stdout.read(1 << 20):
            lines += chunk.count(b"\n")
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ringtape dump {' '.join(args)} exited with {proc.returncode}")
    return seconds, lines


def section_readback(run: Run) -> dict[str, Any]:
    seconds = max(0.5, run.plan.durable_s * 2)  # 10 s, as `ringtape demo` captures
    base = run.tmp / "readback"
    run.log(f"readback: {RUNS} demo runs of {seconds:g} s, then verify and dump")
    runs = [
        capture_demo_run(DemoOptions(base_dir=base, seconds=seconds, seed=7 + i)).run_dir
        for i in range(RUNS)
    ]
    first = runs[0]
    report = verify_path(first)
    if not report.ok:
        raise RuntimeError(f"the demo run does not verify: {report.runs}")
    (summary,) = report.runs
    raw = summary.raw_bytes  # entry and marker records, uncompressed
    in_process = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        verify_path(first)
        in_process.append(time.perf_counter() - t0)
    cli = [_timed_cli("verify", str(first), "--jobs", "1") for _ in range(REPEATS)]
    dumps = [_dump_into_pipe(str(first)) for _ in range(REPEATS)]
    dump_s = statistics.median(d[0] for d in dumps)
    entries = dumps[0][1]
    manifest = read_manifest(first)
    start, end = manifest.start_ts_init, manifest.end_ts_init or manifest.start_ts_init
    since = end - (end - start) // 10
    since_s, since_lines = _dump_into_pipe(str(first), "--since", str(since))
    instance = base / str(DEMO_INSTANCE)
    jobs = {
        str(j): statistics.median(
            _timed_cli("verify", str(instance), "--jobs", str(j)) for _ in range(REPEATS)
        )
        for j in (1, 2)
    }
    verify_s = statistics.median(in_process)
    mb_s = raw / verify_s / 1e6
    per_s = entries / dump_s
    return {
        "method": (
            "demo runs captured here; verify_path in process (median of 3) and the ringtape"
            " command line (interpreter start included); dump read through a pipe"
        ),
        "run": {
            "entries": summary.entries,
            "marker_records": summary.markers,
            "raw_bytes": raw,
            "bytes_on_disk": summary.bytes_on_disk,
        },
        "verify": {
            "in_process_s": verify_s,
            "in_process_runs_s": in_process,
            "raw_mb_per_s": mb_s,
            "cli_s": statistics.median(cli),
            "cli_raw_mb_per_s": raw / statistics.median(cli) / 1e6,
            "target": {"raw_mb_per_s": TARGET_VERIFY_MB_S},
            "met": mb_s >= TARGET_VERIFY_MB_S,
        },
        "verify_jobs": {
            "runs": RUNS,
            "cli_s_by_jobs": jobs,
            "met": jobs["2"] < jobs["1"],
        },
        "dump": {
            "entries": entries,
            "cli_s": dump_s,
            "entries_per_s": per_s,
            "since_last_tenth_s": since_s,
            "since_last_tenth_entries": since_lines,
            "target": {"entries_per_s": TARGET_DUMP_PER_S},
            "met": per_s >= TARGET_DUMP_PER_S,
        },
    }
