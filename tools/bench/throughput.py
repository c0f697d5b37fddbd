"""``producer_cpu``, ``durable_throughput`` and ``compression``: unpaced runs, one channel at a
time."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ringtape.capture.store import StoreOptions
from ringtape.tools.bench.baselines import (
    SHAPE_MESSAGE,
    SHAPE_RECORD,
)
from ringtape.tools.bench.common import (
    CHANNEL_BYTES,
    POOL_SIZE,
    TARGET_CPU_US_PER_ENTRY,
    TARGET_DURABLE_PER_S,
    THROUGHPUT_CAPACITY,
    Channel,
    Run,
    baseline_makers,
    cpu_report,
    describe_config,
    drive,
    empty_message,
    empty_record,
    judge_value,
    open_baseline,
    open_store,
    ratio,
    store_config,
)
from ringtape.tools.demo.session import BusMessage, TradingSession


def trading_session_items(count: int) -> list[tuple[str, bytes]]:
    """``count`` bus messages of a seeded trading session, as (topic, payload)."""
    out: list[tuple[str, bytes]] = []
    for message in TradingSession(seed=11).messages(count):
        if isinstance(message, BusMessage):
            out.append((message.topic, message.payload))
            if len(out) == count:
                break
    return out


def segment_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.glob("events-*.seg"))


def section_unpaced(run: Run) -> dict[str, Any]:
    """Producer CPU, durable throughput and compression, one channel at a time."""
    n, reps, big = run.plan.cpu_entries, run.plan.cpu_repeats, run.plan.throughput_entries
    loop_overhead = {}
    for shape, fn in ((SHAPE_RECORD, empty_record), (SHAPE_MESSAGE, empty_message)):
        # Nothing consumes: progress() is always past the target.
        loop = Channel("loop", fn, shape, lambda: sys.maxsize, 0, run.items)
        loop_overhead[f"{shape}_call"] = cpu_report([drive(loop, n) for _ in range(reps)])

    config = store_config(run.tmp / "throughput", channel_capacity=THROUGHPUT_CAPACITY)
    run.log(f"cpu + throughput: ringtape ({reps} x {n} entries, then {big})")
    with open_store(config) as opened:
        channel = opened.channel(run.items)
        channel.warm()
        cpu_runs = [drive(channel, n) for _ in range(reps)]
        run_dir = opened.store.run_dir()
        assert run_dir is not None
        stored0 = segment_bytes(run_dir)
        first = channel.sent
        fast = drive(channel, big)
        stored = segment_bytes(run_dir) - stored0
    raw = run.messages.raw_bytes(first, big)
    # The same run over a realistic trading stream (orders, fills, positions as JSON), whose
    # compressibility, not the synthetic payloads' entropy, sets the writer's zstd cost.
    session_items = trading_session_items(POOL_SIZE)
    run.log(f"throughput: ringtape on the trading-session stream ({big})")
    with open_store(
        store_config(run.tmp / "session", channel_capacity=THROUGHPUT_CAPACITY)
    ) as opened:
        channel = opened.channel(session_items)
        channel.warm()
        session_run = drive(channel, big)
    ringtape_cpu = judge_value(cpu_report(cpu_runs), "us_per_entry", TARGET_CPU_US_PER_ENTRY)
    ringtape_throughput = judge_value(
        fast.throughput_report(), "entries_per_s", TARGET_DURABLE_PER_S, at_least=True
    )

    cpu_baselines: dict[str, Any] = {}
    throughput_baselines: dict[str, Any] = {}
    for make in baseline_makers():
        with open_baseline(make, run.items) as channel:
            run.log(f"cpu + throughput: {channel.name}")
            channel.warm()
            cpu_baselines[channel.name] = cpu_report([drive(channel, n) for _ in range(reps)])
            throughput_baselines[channel.name] = drive(channel, big).throughput_report()

    cpu = {
        "method": "getrusage(RUSAGE_SELF) user+system, every thread, over unpaced runs that fit"
        " the channel, until the consumer has everything; median of the runs",
        "entries_per_run": n,
        "runs": reps,
        "loop_overhead": loop_overhead,
        "ringtape": ringtape_cpu,
        "baselines": cpu_baselines,
        "ratios_ringtape_over_baseline": {
            k: ratio(ringtape_cpu["us_per_entry"], v["us_per_entry"])
            for k, v in cpu_baselines.items()
        },
    }
    throughput = {
        "method": "ringtape: first append until durable_seq() == last seq (fdatasync included);"
        " baselines: first send until the consumer process has received all (no disk)",
        "config": describe_config(config),
        "baseline_buffer_bytes": CHANNEL_BYTES,
        "ringtape": ringtape_throughput,
        "ringtape_session_stream": {
            **judge_value(
                session_run.throughput_report(),
                "entries_per_s",
                TARGET_DURABLE_PER_S,
                at_least=True,
            ),
            "payloads": "ringtape.tools.demo.session.TradingSession bus messages (JSON), pool of"
            f" {POOL_SIZE}, mean {sum(len(p) for _, p in session_items) / POOL_SIZE:.0f} B",
        },
        "baselines": throughput_baselines,
        "ratios_ringtape_over_baseline": {
            k: ratio(fast.per_s, v["entries_per_s"]) for k, v in throughput_baselines.items()
        },
    }
    compression = {
        "source": "raw entry record bytes vs the growth of events-*.seg over the throughput run",
        "entries": big,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": ratio(raw, stored),
        "raw_mb_per_s": raw / fast.seconds / 1e6,
        "stored_mb_per_s": stored / fast.seconds / 1e6,
        "compression_level": StoreOptions().compression_level,
    }
    return {"producer_cpu": cpu, "durable_throughput": throughput, "compression": compression}
