"""``paced``: what the background processes cost at the rates traders run, beside the floor.

At each rate (10k, 50k, 100k entries/s) a fresh run with data markers on: every entry is
preceded by one ``observe_data`` (a quote of one of four instruments, one of them high
fidelity), appended at a steady pace for the window. Reported per process (writer, sidecar;
all their threads, ``psutil`` user + system) as CPU µs per entry, with the append-to-durable
percentiles (``durable_seq()`` polled between the paced appends) and the commits the writer
made.

The floor is a bare loop in this process doing the same commits on a file of its own: the same
records grouped into the same number of batches, one zstd compress, one xxh3 and one
``os.write`` per frame, one ``fdatasync`` per batch, spaced as the writer's commits were (it
sleeps between them, as the writer sleeps while a batch fills); ``us_per_entry_back_to_back``
is the same loop without the sleeps, which on this kind of machine is several times cheaper per
commit: code that wakes every few ms runs on cold caches. Nothing can commit for less; the writer's
figure over the floor's is the overhead of everything else (the ring, the frame index, the
process's own wake-ups). The floor's ``fdatasync_wall`` percentiles are the disk's part of
the durable lag: on a virtual disk its p99 alone can exceed the 2 ms of slack the lag target
allows past ``max_batch_latency``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Final

import xxhash
import zstandard

from ringtape.capture.config import DataMarkerClass, DataMarkerConfig, EventStoreConfig
from ringtape.capture.store import EventStore
from ringtape.tools.bench.common import (
    TARGET_DURABLE_SLACK_NS,
    Run,
    describe_config,
    open_store,
    process_cpu,
    summarize,
)
from ringtape.tools.bench.durability import append_paced_until_durable

RATES: Final = (10_000, 50_000, 100_000)
# writer + sidecar CPU per entry (µs), by rate: the targets
TARGET_BACKGROUND_US: Final = {10_000: 4.0, 50_000: 2.0, 100_000: 1.5}
INSTRUMENTS: Final = (
    "BTCUSDT-PERP.BINANCE",
    "ETHUSDT-PERP.BINANCE",
    "SOLUSDT-PERP.BINANCE",
    "XRPUSDT-PERP.BINANCE",
)
HIGH_FIDELITY: Final = INSTRUMENTS[:1]  # one observation in four


def paced_config(base: Path) -> EventStoreConfig:
    markers = DataMarkerConfig(high_fidelity=list(HIGH_FIDELITY))
    return EventStoreConfig(base_dir=str(base), data_markers=markers)


def section_paced(run: Run) -> dict[str, Any]:
    seconds = max(0.5, run.plan.durable_s)
    rows = {str(rate): _one_rate(run, rate, seconds) for rate in RATES}
    return {
        "method": (
            "paced appends with one observe_data each; psutil CPU of the writer and the"
            " sidecar per entry; floor: the same commits by a bare loop in this process"
        ),
        "window_s": seconds,
        "rates": rows,
        "met": all(r["met"] for r in rows.values()),
    }


def _one_rate(run: Run, rate: int, seconds: float) -> dict[str, Any]:
    items = run.items
    count = int(rate * seconds)
    config = paced_config(run.tmp / f"paced-{rate}")
    run.log(f"paced: {count} appends at {rate}/s, markers on")
    quote = DataMarkerClass.Quote
    with open_store(config) as opened:
        store = opened.store
        channel = opened.channel(items)
        channel.warm()
        lane = store.marker_lane()
        sidecar_pid = None if lane is None else lane.sidecar_pid
        roles = {"writer": store.writer_pid(), "sidecar": sidecar_pid}
        procs = {r: [p for p in opened.children if p.pid == pid] for r, pid in roles.items()}
        syncs0 = _commits(store)
        observe = store.observe_data

        def one_quote(i: int, ts: int) -> None:
            observe(quote, INSTRUMENTS[i & 3], ts, ts)

        cpu0 = {r: process_cpu(p) for r, p in procs.items()}
        t0 = time.perf_counter_ns()
        lags = append_paced_until_durable(
            store, items, count, rate, channel.target + 1, before_append=one_quote
        )
        wall = (time.perf_counter_ns() - t0) / 1e9
        used = {r: process_cpu(p) - cpu0[r] for r, p in procs.items()}
        commits = _commits(store) - syncs0
    per_entry = {r: used[r] / count * 1e6 for r in used}
    background = sum(per_entry.values())
    level = store.options.compression_level
    floor = _floor(run, count, max(1, commits), config, level, wall / max(1, commits))
    lag = summarize(lags)
    max_batch_ns = int(config.max_batch_latency.total_seconds() * 1e9)
    lag_target = max_batch_ns + TARGET_DURABLE_SLACK_NS
    target = TARGET_BACKGROUND_US[rate]
    return {
        "rate_per_s": rate,
        "entries": count,
        "wall_s": wall,
        "config": describe_config(config),
        "sidecar_running": sidecar_pid is not None,
        "cpu_us_per_entry": per_entry,
        "background_us_per_entry": background,
        "percent_of_core": {r: used[r] / wall * 100 for r in used},
        "commits": commits,
        "entries_per_commit": count / max(1, commits),
        "durable_lag": lag,
        "floor": floor,
        "writer_over_floor": per_entry["writer"] / floor["us_per_entry"],
        "target": {"background_us_per_entry": target, "durable_lag_p99_ns": lag_target},
        "met": bool(background <= target and lag["p99_ns"] <= lag_target),
    }


def _commits(store: EventStore) -> int:
    stats = store.stats()
    return 0 if stats is None else stats.commits


def _floor(
    run: Run, count: int, commits: int, config: EventStoreConfig, level: int, spacing_s: float
) -> dict[str, Any]:
    """The same commits by a bare loop: per batch one compress, hash and write per frame of
    ``max_batch_entries`` records, then one ``fdatasync``; once spaced as the writer's were
    (a sleep between commits, as the writer sleeps while a batch fills) and once back to back.
    The two differ by more than the sleeps: after a few ms asleep the same code runs on cold
    caches."""
    items = [t.encode() + p for t, p in run.items]
    per_frame = config.max_batch_entries
    per_commit = max(1, count // commits)
    compressor = zstandard.ZstdCompressor(level=level)
    path = run.tmp / "paced-floor.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    mask = len(items) - 1
    sync_ns: list[int] = []

    def commit(i: int) -> int:
        left = per_commit
        while left > 0:
            n = min(per_frame, left)
            raw = b"".join(items[(i + k) & mask] for k in range(n))
            body = compressor.compress(raw)
            os.write(fd, xxhash.xxh3_64_digest(body) + body)
            i += n
            left -= n
        t0 = time.perf_counter_ns()
        os.fdatasync(fd)
        sync_ns.append(time.perf_counter_ns() - t0)
        return i

    try:
        cpu0 = time.process_time()
        i = 0
        due = time.monotonic()
        for _ in range(commits):
            due += spacing_s
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            i = commit(i)
        spaced = time.process_time() - cpu0
        cpu0 = time.process_time()
        j = 0
        for _ in range(commits):
            j = commit(j)
        back_to_back = time.process_time() - cpu0
    finally:
        os.close(fd)
        path.unlink()
    return {
        "commits": commits,
        "entries": i,
        "spacing_ms": spacing_s * 1e3,
        "us_per_entry": spaced / max(1, i) * 1e6,
        "us_per_commit": spaced / commits * 1e6,
        "us_per_entry_back_to_back": back_to_back / max(1, j) * 1e6,
        # the disk's own: no durable lag can be shorter than a batch window plus this
        "fdatasync_wall": summarize(sync_ns),
    }
