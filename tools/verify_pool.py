"""Deep scans for ``ringtape verify`` in worker processes (a ``storage.check.verify.Scanner``).

A worker that dies (a crash on a hostile file) breaks the pool; every scan it took down is
retried alone in a fresh worker, and a file that kills that one too becomes a finding about the
file. Workers are spawned (never forked from a process that may hold threads).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ringtape.storage.check.scan import SegmentScan
from ringtape.storage.check.verify import (
    Scanner,
    ScanProgress,
    failed_scan,
    file_size,
    scan_guarded,
    scan_sequentially,
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
    out: dict[Path, SegmentScan] = {}
    ctx = multiprocessing.get_context("spawn")
    retry: list[Path] = []
    with ProcessPoolExecutor(max_workers=min(jobs, len(paths)), mp_context=ctx) as pool:
        futures = {pool.submit(scan_guarded, p): p for p in paths}
        for fut in as_completed(futures):
            p = futures[fut]
            try:
                out[p] = fut.result()
            except BrokenProcessPool:
                retry.append(p)
                continue
            progress(file_size(p))
    for p in sorted(retry):
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as alone:
            try:
                out[p] = alone.submit(scan_guarded, p).result()
            except BrokenProcessPool:
                out[p] = failed_scan(p, "the scan worker died reading this file")
        progress(file_size(p))
    return out
