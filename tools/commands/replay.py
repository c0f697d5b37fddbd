"""``ringtape replay RUN [--to-seq N]``: rebuild the reference cache from a sealed run and say
what was rebuilt.

The replay is ``storage/read/replay.py``'s (the newest valid anchor at or before the target,
then the entries after it, every frame checked) into ``capture/cache.py``'s
:class:`~ringtape.capture.cache.ReferenceCache`: orders, positions and accounts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

from ringtape.capture.cache import ReferenceCache
from ringtape.storage.read.replay import ReplaySourceError, replay_run
from ringtape.tools.arguments import EXIT_OK
from ringtape.tools.common import CliError, run_dir_arg


def summary(cache: ReferenceCache) -> dict[str, Any]:
    """What the cache holds: counts, and orders by their last event."""
    return {
        "orders": len(cache.orders),
        "orders_by_last_event": dict(
            Counter(str(o.get("last_event", "?")) for o in cache.orders.values()).most_common()
        ),
        "positions": len(cache.positions),
        "accounts": len(cache.accounts),
    }


def run(args: argparse.Namespace) -> int:
    run_dir = run_dir_arg(args.run, args.run_id)
    cache = ReferenceCache()
    started = time.perf_counter()
    try:
        result = replay_run(run_dir, cache, args.to_seq)
    except ReplaySourceError as exc:
        raise CliError(str(exc)) from None
    elapsed = time.perf_counter() - started
    anchor = result.anchor
    report: dict[str, Any] = {
        "run_id": result.run_id,
        "to_seq": result.high_watermark,
        "anchor": None
        if anchor is None
        else {"seq": anchor.seq, "high_watermark": anchor.high_watermark, "blob": anchor.blob_ref},
        "applied": result.applied,
        "skipped_anchors": result.skipped_anchors,
        "seconds": round(elapsed, 3),
        "cache": summary(cache),
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    start = (
        "the start of the run"
        if anchor is None
        else (f"the anchor at seq {anchor.seq} (state as of seq {anchor.high_watermark})")
    )
    c = summary(cache)
    print(f"replayed {result.run_id} to seq {result.high_watermark} in {elapsed:.2f} s")
    print(f"  from {start}, then {result.applied:,} entries")
    last = ", ".join(f"{n:,} {k}" for k, n in c["orders_by_last_event"].items())
    print(f"  rebuilt: {c['orders']:,} orders ({last or 'none'}), {c['positions']:,} positions,"
          f" {c['accounts']:,} accounts")  # fmt: skip
    for problem in result.skipped_anchors:
        print(f"  skipped an anchor: {problem}")
    return EXIT_OK
