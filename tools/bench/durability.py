"""``append_to_durable`` (paced appends, durable_seq polled between them) and ``idle_cpu``."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from ringtape.capture.store import EventStore
from ringtape.tools.bench.common import (
    DURABLE_RATE,
    TARGET_DURABLE_SLACK_NS,
    TARGET_IDLE_PERCENT,
    Run,
    cpu_seconds,
    describe_config,
    judge,
    open_store,
    process_cpu,
    store_config,
    summarize,
)


class DurableStamps:
    """When each entry ``first .. first + count - 1`` became durable (perf_counter_ns)."""

    def __init__(self, first: int, count: int, durable: int) -> None:
        self.first = first
        self.count = count
        self.seen = durable
        self.visible = [0] * count

    def update(self, durable: int, now: int) -> None:
        lo = max(self.seen, self.first - 1) + 1
        hi = min(durable, self.first + self.count - 1)
        for seq in range(lo, hi + 1):
            self.visible[seq - self.first] = now
        self.seen = durable


def append_paced_until_durable(
    store: EventStore,
    items: list[tuple[str, bytes]],
    count: int,
    rate: int,
    first_seq: int,
    before_append: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Append ``count`` entries (seqs from ``first_seq``) at ``rate``/s, ``durable_seq()``
    polled between them, then wait until all are durable; returns each entry's append-to-
    durable latency in ns. ``before_append(i, ts_init)`` runs before each append (untimed)."""
    pc = time.perf_counter_ns
    clock = time.time_ns
    period = 1_000_000_000 // rate
    mask = len(items) - 1
    appended = [0] * count
    stamps = DurableStamps(first_seq, count, store.durable_seq())
    gc.collect()
    t_next = pc()
    for i in range(count):
        t_next += period
        now = pc()
        while now < t_next:
            durable = store.durable_seq()
            now = pc()
            if durable != stamps.seen:
                stamps.update(durable, now)
        topic, payload = items[i & mask]
        ts = clock()
        if before_append is not None:
            before_append(i, ts)
        appended[i] = pc()
        store.append(topic, payload, ts_init=ts)
    last = first_seq + count - 1
    deadline = time.monotonic() + 60.0
    while stamps.seen < last:
        if store.is_halted() or time.monotonic() > deadline:
            raise RuntimeError(f"entries not durable (halt: {store.halt_reason()})")
        durable = store.durable_seq()
        if durable != stamps.seen:
            stamps.update(durable, pc())
    return [v - a for a, v in zip(appended, stamps.visible, strict=True)]


def section_append_to_durable(run: Run) -> dict[str, Any]:
    items = run.items
    count = max(500, int(run.plan.durable_s * DURABLE_RATE))
    config = store_config(run.tmp / "durable")
    run.log(f"append to durable: {count} appends at {DURABLE_RATE}/s")
    with open_store(config) as opened:
        channel = opened.channel(items)
        channel.warm()
        lags = append_paced_until_durable(
            opened.store, items, count, DURABLE_RATE, channel.target + 1
        )
    stats = summarize(lags)
    stats["rate_per_s"] = DURABLE_RATE
    max_batch_ns = int(config.max_batch_latency.total_seconds() * 1e9)
    return {
        "method": "durable_seq() polled between paced appends; latency = durable seen - append",
        "config": describe_config(config),
        "sidecar_running": opened.sidecar_running,
        "latency": judge(stats, {"p99_ns": max_batch_ns + TARGET_DURABLE_SLACK_NS}),
    }


def section_idle(run: Run) -> dict[str, Any]:
    config = store_config(run.tmp / "idle")
    run.log(f"idle cpu: {run.plan.idle_s:.1f} s")
    with open_store(config) as opened:
        time.sleep(run.plan.settle_s)
        procs = opened.children
        writer = opened.store.writer_pid()
        before = [process_cpu([p]) for p in procs]
        own0 = cpu_seconds()
        t0 = time.monotonic()
        time.sleep(run.plan.idle_s)
        wall = time.monotonic() - t0
        after = [process_cpu([p]) for p in procs]
        own = cpu_seconds() - own0
    rows = [
        {
            "role": "writer" if p.pid == writer else "sidecar",
            "pid": p.pid,
            "percent_of_core": (b - a) / wall * 100,
        }
        for p, a, b in zip(procs, before, after, strict=True)
    ]
    total = sum(r["percent_of_core"] for r in rows)
    return {
        "method": "psutil cpu_times (user+system) of the store's child processes, idle window",
        "window_s": wall,
        "settle_s": run.plan.settle_s,
        "sidecar_running": opened.sidecar_running,
        "processes": rows,
        "percent_of_core": total,
        "kernel_process_percent_of_core": own / wall * 100,
        "target": {"percent_of_core": TARGET_IDLE_PERCENT},
        "met": total < TARGET_IDLE_PERCENT,
    }
