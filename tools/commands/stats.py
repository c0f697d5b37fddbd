"""``ringtape stats RUN``: per-topic counts, bytes and rates, and how long entries waited.

Everything is computed from the columns (``storage/read/columns.py``), a batch of frames at a
time, so memory stays bounded: per topic the entries and payload bytes, the run's ``ts_init``
span (for rates), a histogram of ``ts_publish − ts_init`` on log-spaced bins (percentiles are
read from it, to within one bin: about 2 %) and the entry count per second of ``ts_init`` for
``--plot``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from ringtape.storage.read.columns import Columns, iter_columns
from ringtape.storage.read.reader import CorruptionError
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.commands.dump import first_seq
from ringtape.tools.common import CliError, console, emit, human_bytes, run_dir_arg, table
from ringtape.tools.jsonlines import LineEncoder

# Latency bins: 0, then 1 ns .. ~10^12 ns in steps of 2 % (log-spaced).
_EDGES: Final = np.concatenate(([0.0], np.geomspace(1, 1e12, 1400)))
PERCENTILES: Final = (50, 90, 99, 99.9, 100)


@dataclass
class Stats:
    entries: int = 0
    payload_bytes: int = 0
    topics: Counter[str] = field(default_factory=Counter)
    topic_bytes: Counter[str] = field(default_factory=Counter)
    first_ts: int | None = None
    last_ts: int | None = None
    latency: np.ndarray = field(default_factory=lambda: np.zeros(len(_EDGES) - 1, np.int64))
    negative: int = 0  # entries whose ts_publish is before their ts_init (clocks apart)
    per_second: Counter[int] = field(default_factory=Counter)

    def add(self, cols: Columns, names: list[str]) -> None:
        self.entries += len(cols)
        self.payload_bytes += int(cols.payload_len.sum())
        codes = {name: i for i, name in enumerate(dict.fromkeys(names))}
        index = np.array([codes[n] for n in names], np.int64)
        counts = np.bincount(index, minlength=len(codes))
        sizes = np.bincount(index, weights=cols.payload_len, minlength=len(codes))
        for name, i in codes.items():
            self.topics[name] += int(counts[i])
            self.topic_bytes[name] += int(sizes[i])
        ts = cols.ts_init.astype(np.int64, copy=False)
        lo, hi = int(cols.ts_init.min()), int(cols.ts_init.max())
        self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
        self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)
        wait = cols.ts_publish.astype(np.float64) - cols.ts_init.astype(np.float64)
        self.negative += int((wait < 0).sum())
        self.latency += np.histogram(np.maximum(wait, 0), _EDGES)[0]
        secs, n = np.unique(ts // 1_000_000_000, return_counts=True)
        for s, c in zip(secs.tolist(), n.tolist(), strict=True):
            self.per_second[s] += c

    @property
    def span_s(self) -> float:
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return (self.last_ts - self.first_ts) / 1e9

    def percentile(self, q: float) -> float | None:
        total = int(self.latency.sum())
        if not total:
            return None
        rank = q / 100 * total
        i = int(np.searchsorted(np.cumsum(self.latency), max(rank, 1)))
        return float(_EDGES[min(i + 1, len(_EDGES) - 1)])

    def to_dict(self, run_id: str) -> dict[str, Any]:
        span = self.span_s
        return {
            "run_id": run_id,
            "entries": self.entries,
            "payload_bytes": self.payload_bytes,
            "first_ts_init": self.first_ts,
            "last_ts_init": self.last_ts,
            "span_s": span,
            "rate_per_s": self.entries / span if span > 0 else None,
            "topics": [
                {
                    "topic": name,
                    "entries": n,
                    "payload_bytes": self.topic_bytes[name],
                    "share": n / self.entries,
                    "rate_per_s": n / span if span > 0 else None,
                }
                for name, n in self.topics.most_common()
            ],
            "publish_minus_init_ns": {f"p{q:g}": self.percentile(q) for q in PERCENTILES}
            | {"negative": self.negative},
        }


def _names(cols: Columns, encoder: LineEncoder) -> tuple[Columns, list[str]]:
    """The columns of the entries whose topic matches, and their topics."""
    data = cols.buf.tobytes()
    starts, lens = cols.topic_start.tolist(), cols.topic_len.tolist()
    cache: dict[bytes, tuple[str, bool]] = {}
    names, keep = [], []
    for a, n in zip(starts, lens, strict=True):
        raw = data[a : a + n]
        hit = cache.get(raw)
        if hit is None:
            text = raw.decode("utf-8")
            globs = encoder.globs
            hit = (text, globs is None or any(fnmatch.fnmatchcase(text, g) for g in globs))
            cache[raw] = hit
        keep.append(hit[1])
        if hit[1]:
            names.append(hit[0])
    mask = np.array(keep, bool)
    return (cols if mask.all() else cols.take(mask)), names


def collect(run_dir: Path, args: argparse.Namespace) -> tuple[Stats, str | None]:
    """The stats of the wanted entries, and why reading stopped early (damage), if it did."""
    stats = Stats()
    encoder = LineEncoder(args.topic)
    try:
        for cols in iter_columns(
            run_dir,
            from_seq=first_seq(run_dir, None),
            since=args.since,
            until=args.until,
            topics=args.topic,
        ):
            kept, names = _names(cols, encoder)
            if names:
                stats.add(kept, names)
    except CorruptionError as exc:
        return stats, str(exc.finding)
    return stats, None


def _ns(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} ns"


def plot(stats: Stats, path: str, title: str) -> None:
    """The latency histogram and the entry rate over time, to a PNG."""
    from ringtape.storage.read.arrow import MissingDependency, require

    try:
        matplotlib = require("matplotlib", "plot")
    except MissingDependency as exc:
        raise CliError(str(exc)) from None
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "plot")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    nz = np.flatnonzero(stats.latency)
    if nz.size:
        lo, hi = nz[0], nz[-1] + 1
        left.stairs(stats.latency[lo:hi], _EDGES[lo : hi + 1] / 1e6, fill=True)
        left.set_xscale("log")
    left.set_xlabel("ts_publish - ts_init (ms)")
    left.set_ylabel("entries")
    left.set_title("how long entries waited")
    if stats.per_second:
        secs = sorted(stats.per_second)
        t0 = secs[0]
        right.plot([s - t0 for s in secs], [stats.per_second[s] for s in secs])
    right.set_xlabel("seconds since the first entry")
    right.set_ylabel("entries per second")
    right.set_title("rate")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    run_dir = run_dir_arg(args.run, args.run_id)
    stats, stopped = collect(run_dir, args)
    summary = stats.to_dict(run_dir.name)
    if stopped is not None:
        summary["stopped_at_damage"] = stopped
    if args.plot:
        plot(stats, args.plot, run_dir.name)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = console()
        rate = summary["rate_per_s"]
        out.print(
            f"{run_dir.name}: {stats.entries:,} entries, {human_bytes(stats.payload_bytes)} of"
            f" payload over {stats.span_s:,.2f} s of ts_init"
            + (f" ({rate:,.0f}/s)" if rate else ""),
            markup=False,
        )
        rows = [
            [
                t["topic"],
                f"{t['entries']:,}",
                f"{t['share'] * 100:.1f}%",
                human_bytes(t["payload_bytes"]),
                "-" if t["rate_per_s"] is None else f"{t['rate_per_s']:,.1f}",
            ]
            for t in summary["topics"]
        ]
        emit(
            out,
            table(
                ["TOPIC", "ENTRIES", "SHARE", "PAYLOAD", "PER SECOND"],
                rows,
                right=("ENTRIES", "SHARE", "PAYLOAD", "PER SECOND"),
            ),
        )
        lat = summary["publish_minus_init_ns"]
        out.print(
            "ts_publish - ts_init: "
            + "  ".join(f"p{q:g} {_ns(lat[f'p{q:g}'])}" for q in PERCENTILES[:-1])
            + f"  max {_ns(lat['p100'])}"
            + (f"  ({stats.negative:,} negative)" if stats.negative else ""),
            markup=False,
        )
        if args.plot:
            out.print(f"plot: {args.plot}", markup=False)
    if stopped is not None:
        print(f"ringtape: stats stopped at damage: {stopped}", file=sys.stderr)
        return EXIT_FINDINGS
    return EXIT_OK
