"""``append_latency``: each call timed alone, at a paced rate, ringtape beside its baselines.

ringtape is measured in four ways: ``ts_init`` passed (the kernel's case), the store's own
clock, ``StoreOptions(producers="threads")`` (every call under a lock), and a stream of 2,000
topics with payloads of 32–2,048 bytes (``varied_shapes``; ``varied_over_fixed`` is its p50
and p99 over the fixed-shape stream's, target <= 1.2: no encoder cliff; its ``baseline`` is the
same ratio for the bare ring, whose records carry the same bytes with no encoder at all)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from ringtape.capture.store import StoreOptions
from ringtape.tools.bench.baselines import (
    SHAPE_MESSAGE,
    SHAPE_RECORD,
)
from ringtape.tools.bench.common import (
    LATENCY_RATE,
    SHAPE_RECORD_CLOCK,
    TARGET_APPEND_NS,
    VARIED_TOPICS,
    Run,
    baseline_makers,
    describe_config,
    empty_message,
    empty_record,
    judge,
    make_varied_messages,
    open_baseline,
    open_store,
    process_cpu,
    ratio,
    sidecar_supported,
    store_config,
    time_paced,
)

VARIED_SLACK: Final = 1.2  # varied-shape p50 and p99 over the fixed-shape stream's


def section_append_latency(run: Run) -> dict[str, Any]:
    items = run.items
    count = max(1000, int(run.plan.latency_s * LATENCY_RATE))
    overhead_count = max(1000, int(run.plan.overhead_s * LATENCY_RATE))

    def paced(
        send: Callable[..., object],
        shape: str,
        n: int = count,
        consumers: Sequence[Any] = (),
        pool: list[tuple[str, bytes]] = items,
    ) -> dict[str, Any]:
        cpu0 = process_cpu(consumers)
        result = time_paced(send, shape, pool, LATENCY_RATE, n)
        report = result.report(LATENCY_RATE)
        if consumers:
            used = process_cpu(consumers) - cpu0
            report["consumer_cpu_percent_of_core"] = used / result.seconds * 100
        return report

    run.log(f"append latency: timer overhead ({overhead_count} empty calls per shape)")
    overhead = {
        "record_call": paced(empty_record, SHAPE_RECORD, overhead_count),
        "message_call": paced(empty_message, SHAPE_MESSAGE, overhead_count),
    }
    config = store_config(run.tmp / "latency")
    run.log(f"append latency: ringtape ({count} appends per mode at {LATENCY_RATE}/s)")
    with open_store(config) as opened:
        channel = opened.channel(items)
        channel.warm()
        passed = paced(opened.store.append, SHAPE_RECORD, consumers=channel.consumers)
        channel.expect(count)
        own_clock = paced(opened.store.append, SHAPE_RECORD_CLOCK, consumers=channel.consumers)
        channel.expect(count)
        varied = make_varied_messages()
        run.log(f"append latency: ringtape, {VARIED_TOPICS} topics x 32-2048 B payloads")
        channel.items = varied
        channel.warm()
        shapes = paced(opened.store.append, SHAPE_RECORD, consumers=channel.consumers, pool=varied)
        channel.expect(count)
    run.log("append latency: ringtape, producers='threads' (append serialised by a lock)")
    with open_store(
        store_config(run.tmp / "latency-threads"), StoreOptions(producers="threads")
    ) as opened:
        channel = opened.channel(items)
        channel.warm()
        threads = paced(opened.store.append, SHAPE_RECORD, consumers=channel.consumers)
        channel.expect(count)
    ringtape: dict[str, Any] = {
        "config": describe_config(config),
        "sidecar_supported": sidecar_supported(),
        "sidecar_running": opened.sidecar_running,
        "ts_init_passed": judge(passed, TARGET_APPEND_NS),
        "default_clock": judge(own_clock, TARGET_APPEND_NS),
        "producers_threads": judge(threads, TARGET_APPEND_NS),
        "varied_shapes": judge(shapes, TARGET_APPEND_NS),
    }
    # No encoder cliff: the varied stream within VARIED_SLACK of the fixed-shape one.
    cliff = {k: ratio(shapes[k], passed[k]) for k in ("p50_ns", "p99_ns")}
    ringtape["varied_over_fixed"] = {
        **cliff,
        "target": {k: VARIED_SLACK for k in cliff},
        "met": all(v is not None and v <= VARIED_SLACK for v in cliff.values()),
    }
    baselines: dict[str, Any] = {}
    for make in baseline_makers():
        with open_baseline(make, items) as channel:
            run.log(f"append latency: {channel.name}")
            channel.warm()
            baselines[channel.name] = paced(
                channel.send, channel.shape, consumers=channel.consumers
            )
            channel.expect(count)
    # The floor on the same varied stream: what longer payloads cost a bare ring, no encoder.
    with open_baseline(baseline_makers()[-1], varied) as channel:
        run.log(f"append latency: {channel.name}, the varied-shape stream")
        channel.warm()
        bare = paced(channel.send, channel.shape, consumers=channel.consumers, pool=varied)
        channel.expect(count)
    fixed = baselines[channel.name]
    ringtape["varied_over_fixed"]["baseline"] = {
        "name": channel.name,
        "varied_shapes": bare,
        **{k: ratio(bare[k], fixed[k]) for k in ("p50_ns", "p99_ns")},
    }
    ratios = {
        mode: {
            name: {k: ratio(ringtape[mode][k], b[k]) for k in TARGET_APPEND_NS}
            for name, b in baselines.items()
        }
        for mode in ("ts_init_passed", "default_clock", "producers_threads")
    }
    return {
        "method": "perf_counter_ns around each call; paced by busy-wait on perf_counter_ns",
        "rate_per_s": LATENCY_RATE,
        "calls_per_measurement": count,
        "timer_overhead": overhead,
        "ringtape": ringtape,
        "baselines": baselines,
        "ratios_ringtape_over_baseline": ratios,
    }
