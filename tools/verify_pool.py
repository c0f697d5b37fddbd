"""``ringtape verify`` in worker processes: whole runs, or the segments of one run.

A path that holds several runs is verified a run per worker (``verify_in_workers``): the
marker check and the run checks run there too, which is most of the time on a marker-heavy
run. One run is verified in this process with its segments' deep scans in the workers (a
``storage.check.verify.Scanner``). A worker that dies (a crash on a hostile file) breaks the
pool; every scan (or run) it took down is done again alone: a run through the guarded segment
scans, a segment in a fresh worker, and a file that kills that one too becomes a finding about
the file. This process takes its share of the runs (or scans) too, from the back of the list,
as ``--jobs 1`` does them all (so without a worker's isolation): it works while the workers
start. Workers are spawned (never forked from a process that may hold threads).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

from ringtape.storage.check.scan import SegmentScan
from ringtape.storage.check.verify import (
    STREAMS,
    ProgressFn,
    Scanner,
    ScanProgress,
    VerifyReport,
    failed_scan,
    file_size,
    find_runs,
    scan_guarded,
    scan_sequentially,
    verify_path,
)
from ringtape.storage.run.layout import list_segments

T = TypeVar("T")


def verify_in_workers(path: Path, jobs: int, progress: ProgressFn | None = None) -> VerifyReport:
    """``verify_path(path)`` with ``jobs`` worker processes: a run per worker when ``path``
    holds several runs, else the segments of the one run in parallel. The report is the same
    as ``verify_path``'s, in the same order."""
    runs, loose, odd = find_runs(path)
    if jobs <= 1 or len(runs) < 2:
        return verify_path(path, scan=scanner(jobs), progress=progress)
    sizes = {r: sum(file_size(p) for s in STREAMS for p in list_segments(r, s)) for r in runs}
    total = sum(sizes.values()) + sum(file_size(p) for p in loose)
    tracker = ScanProgress(total, progress)
    reports, retry = _map_in_workers(
        verify_path, runs, jobs, lambda r: tracker(sizes[r]), sizes.__getitem__
    )
    for r in retry:  # verified again here, each segment guarded on its own
        reports[r] = verify_path(r, scan=scanner(jobs))
        tracker(sizes[r])
    for seg in loose:
        reports[seg] = verify_path(seg)
        tracker(file_size(seg))
    ordered = [reports[p] for p in (*runs, *loose)]
    return VerifyReport(
        tuple(s for rep in ordered for s in rep.runs),
        (*odd, *(f for rep in ordered for f in rep.findings)),
    )


def scanner(jobs: int) -> Scanner:
    """Scan in ``jobs`` worker processes (one job: in this process)."""
    if jobs <= 1:
        return scan_sequentially

    def scan_in_workers(paths: Sequence[Path], progress: ScanProgress) -> dict[Path, SegmentScan]:
        if len(paths) <= 1:
            return scan_sequentially(paths, progress)
        return _scan_in_workers(paths, jobs, progress)

    return scan_in_workers


def _scan_in_workers(
    paths: Sequence[Path], jobs: int, progress: ScanProgress
) -> dict[Path, SegmentScan]:
    out, retry = _map_in_workers(
        scan_guarded, paths, jobs, lambda p: progress(file_size(p)), file_size
    )
    ctx = multiprocessing.get_context("spawn")
    for p in sorted(retry):
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as alone:
            try:
                out[p] = alone.submit(scan_guarded, p).result()
            except BrokenProcessPool:
                out[p] = failed_scan(p, "the scan worker died reading this file")
        progress(file_size(p))
    return out


def _map_in_workers(
    fn: Callable[[Path], T],
    paths: Sequence[Path],
    jobs: int,
    done: Callable[[Path], None],
    size: Callable[[Path], int],
) -> tuple[dict[Path, T], list[Path]]:
    """``fn(p)`` for every path, ``done(p)`` as each one finishes: the results, and the paths
    whose worker died (the caller does them again).

    ``jobs - 1`` spawned workers and this process share the paths, largest first: the workers
    take them from the front, this process from the back. A spawned worker spends a few
    hundred ms starting and importing before its first path; this process works meanwhile
    instead of waiting, so ``--jobs 2`` does not lose that start-up to one job, and a worker
    that is done waits at most for one of the smallest paths before it gets its next. When the
    pool breaks, the paths not handed out yet are done here. The paths done here have no
    worker's isolation: a file that crashed the interpreter (no decoder here is known to: each
    raises on bad input) would take the command down, as with ``--jobs 1``."""
    out: dict[Path, T] = {}
    lost: list[Path] = []
    todo = deque(sorted(paths, key=size, reverse=True))
    workers = min(jobs - 1, len(paths) - 1)
    ctx = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        if workers >= 1
        else contextlib.nullcontext()
    ) as pool:
        running: dict[Future[T], Path] = {}
        broken = False

        def collect(ready: Iterable[Future[T]]) -> None:
            nonlocal broken
            for fut in list(ready):
                p = running.pop(fut)
                try:
                    out[p] = fut.result()
                except BrokenProcessPool:
                    lost.append(p)
                    broken = True
                    continue
                done(p)

        def hand_out() -> None:
            nonlocal broken
            while pool is not None and not broken and todo and len(running) < workers:
                p = todo.popleft()
                try:
                    running[pool.submit(fn, p)] = p
                except BrokenProcessPool:  # a worker died just now: the rest is done here
                    todo.appendleft(p)
                    broken = True

        hand_out()
        while todo:
            p = todo.pop()
            out[p] = fn(p)
            done(p)
            collect(f for f in running if f.done())
            hand_out()
        while running:
            collect(wait(running, return_when=FIRST_COMPLETED).done)
    return out, lost
