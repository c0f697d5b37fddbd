"""What every section of ``ringtape bench`` shares: the plan, the messages, the timed loops,
statistics and targets, CPU accounting, and the channels (ringtape and its baselines) the loops
drive."""

from __future__ import annotations

import contextlib
import gc
import os
import random
import resource
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import psutil

from ringtape.capture.config import (
    DataMarkerConfig,
    Environment,
    EventStoreConfig,
    RegisteredComponents,
)
from ringtape.capture.ring import RingGeometry
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.storage.format.entry import ENTRY_HEADER_SIZE
from ringtape.tools.arguments import BENCH_SEED
from ringtape.tools.bench.baselines import (
    SHAPE_MESSAGE,
    SHAPE_RECORD,
    BareRingBaseline,
    Baseline,
    FasterFifoBaseline,
    QueueBaseline,
)

SCHEMA: Final = "ringtape-bench/1"
SHAPE_RECORD_CLOCK: Final = "record_clock"  # send(topic, payload): the store's own clock

LATENCY_RATE: Final = 100_000
DURABLE_RATE: Final = 10_000
POOL_SIZE: Final = 4096  # a power of two: the loops index it with a mask
PAYLOAD_MIN: Final = 128
PAYLOAD_MAX: Final = 256
THROUGHPUT_CAPACITY: Final = 65_536
# The queues' buffers match the byte budget of ringtape's ring at THROUGHPUT_CAPACITY.
CHANNEL_BYTES: Final = RingGeometry.for_capacity(THROUGHPUT_CAPACITY).ring_bytes

TARGET_APPEND_NS: Final = {"p50_ns": 1_000, "p99_ns": 3_000, "p99_9_ns": 15_000}
TARGET_CPU_US_PER_ENTRY: Final = 1.5
TARGET_DURABLE_PER_S: Final = 1_000_000
TARGET_DURABLE_SLACK_NS: Final = 2_000_000  # p99 append-to-durable <= max_batch_latency + this
TARGET_IDLE_PERCENT: Final = 2.0

BASELINE_NAMES: Final = ("mp_queue", "faster_fifo", "bare_ring")
SECTIONS: Final = (
    "append_latency",
    "producer_cpu",
    "durable_throughput",
    "append_to_durable",
    "idle_cpu",
    "compression",
    "anchors",
    "paced",
    "lifecycle",
    "readback",
)

TOPICS: Final = (
    "data.quotes.BINANCE.BTCUSDT-PERP",
    "data.quotes.BINANCE.ETHUSDT-PERP",
    "data.trades.BINANCE.BTCUSDT-PERP",
    "data.book.deltas.BINANCE.BTCUSDT-PERP",
    "events.order.S-001",
    "events.position.S-001",
    "commands.trading.S-001",
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """What to run: ``quick`` is a smoke run; ``seconds`` scales every duration and count."""

    quick: bool = False
    seconds: float = 1.0
    seed: int = BENCH_SEED
    work_dir: Path | None = None  # default: ./.bench-tmp
    progress: bool = True  # one line per step on stderr

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"seconds: must be > 0, got {self.seconds}")


@dataclass(frozen=True)
class Plan:
    latency_s: float  # per channel and mode
    overhead_s: float  # per timer-overhead shape
    cpu_entries: int
    cpu_repeats: int
    throughput_entries: int
    durable_s: float
    idle_s: float
    settle_s: float

    @classmethod
    def from_options(cls, options: BenchOptions) -> Plan:
        s = options.seconds
        if options.quick:
            return cls(
                latency_s=0.1 * s,
                overhead_s=0.05 * s,
                cpu_entries=max(1000, int(5000 * s)),
                cpu_repeats=2,
                throughput_entries=max(1000, int(20_000 * s)),
                durable_s=0.5 * s,
                idle_s=1.0 * s,
                settle_s=0.2,
            )
        return cls(
            latency_s=2.0 * s,
            overhead_s=1.0 * s,
            cpu_entries=max(1000, int(50_000 * s)),
            cpu_repeats=5,
            throughput_entries=max(1000, int(1_000_000 * s)),
            durable_s=5.0 * s,
            idle_s=5.0 * s,
            settle_s=0.5,
        )


@dataclass(frozen=True)
class Messages:
    items: list[tuple[str, bytes]]  # POOL_SIZE (topic, payload) pairs
    record_bytes: list[int]  # the ringtape entry record each one becomes

    def raw_bytes(self, start: int, count: int) -> int:
        """Record bytes of ``count`` consecutive sends starting at pool index ``start``."""
        laps, rest = divmod(count, POOL_SIZE)
        total = laps * sum(self.record_bytes)
        for i in range(start, start + rest):
            total += self.record_bytes[i % POOL_SIZE]
        return total

    def describe(self) -> dict[str, Any]:
        sizes = [len(p) for _, p in self.items]
        return {
            "pool": POOL_SIZE,
            "payload_bytes_min": min(sizes),
            "payload_bytes_max": max(sizes),
            "payload_bytes_mean": sum(sizes) / len(sizes),
            "record_bytes_mean": sum(self.record_bytes) / len(self.record_bytes),
            "topics": list(TOPICS),
            "content": "JSON-like text of synthetic bus messages (random field values)",
        }


def _field(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return f'"price":"{rng.uniform(20_000, 70_000):.2f}"'
    if kind == 1:
        return f'"size":"{rng.uniform(0, 5):.4f}"'
    if kind == 2:
        return f'"ts_event":{1_700_000_000_000_000_000 + rng.randrange(10**15)}'
    if kind == 3:
        return f'"side":"{rng.choice(("BUY", "SELL"))}"'
    return f'"id":"{rng.getrandbits(64):016x}"'


def make_messages(seed: int) -> Messages:
    rng = random.Random(seed)
    items = []
    for _ in range(POOL_SIZE):
        topic = rng.choice(TOPICS)
        size = rng.randint(PAYLOAD_MIN, PAYLOAD_MAX)
        text = '{"type":"' + topic.split(".")[1] + '"'
        while len(text) < size:
            text += "," + _field(rng)
        items.append((topic, text.encode()[:size]))
    records = [ENTRY_HEADER_SIZE + len(t.encode()) + len(p) for t, p in items]
    return Messages(items, records)


VARIED_TOPICS: Final = 2000
VARIED_PAYLOAD_MIN: Final = 32
VARIED_PAYLOAD_MAX: Final = 2048


def make_varied_messages(seed: int = BENCH_SEED) -> list[tuple[str, bytes]]:
    """``POOL_SIZE`` messages over 2,000 topics with payloads of 32–2,048 bytes: every
    message a shape (topic, length) of its own, as a real engine's JSON or msgpack is."""
    rng = random.Random(seed + 1)
    topics = [
        f"data.{rng.choice(('quotes', 'trades', 'book.deltas'))}.VENUE{i % 7}.SYM{i:04d}"
        for i in range(VARIED_TOPICS)
    ]
    items = []
    for _ in range(POOL_SIZE):
        size = rng.randint(VARIED_PAYLOAD_MIN, VARIED_PAYLOAD_MAX)
        text = '{"type":"bus"'
        while len(text) < size:
            text += "," + _field(rng)
        items.append((rng.choice(topics), text.encode()[:size]))
    return items


def empty_record(topic: str, payload: bytes, *, ts_init: int | None = None) -> None:
    return None


def empty_message(message: object) -> None:
    return None


@dataclass
class Paced:
    latencies_ns: list[int]
    late_slots: int
    seconds: float

    def report(self, rate: int) -> dict[str, Any]:
        out = summarize(self.latencies_ns)
        out["rate_per_s"] = rate
        out["achieved_rate_per_s"] = len(self.latencies_ns) / self.seconds
        out["late_slots"] = self.late_slots
        return out


def time_paced(
    send: Callable[..., object], shape: str, items: list[tuple[str, bytes]], rate: int, count: int
) -> Paced:
    """Call ``send`` ``count`` times at ``rate``/s, timing each call alone."""
    pc = time.perf_counter_ns
    clock = time.time_ns
    period = 1_000_000_000 // rate
    mask = len(items) - 1
    lat = [0] * count
    late = 0
    record = shape == SHAPE_RECORD
    own_clock = shape == SHAPE_RECORD_CLOCK
    gc.collect()
    start = t_next = pc()
    for i in range(count):
        t_next += period
        now = pc()
        while now < t_next:
            now = pc()
        if now - t_next > period:
            late += 1
            t_next = now
        topic, payload = items[i & mask]
        ts = clock()
        if record:
            t0 = pc()
            send(topic, payload, ts_init=ts)
            t1 = pc()
        elif own_clock:
            t0 = pc()
            send(topic, payload)
            t1 = pc()
        else:
            message = (topic, ts, payload)
            t0 = pc()
            send(message)
            t1 = pc()
        lat[i] = t1 - t0
    return Paced(lat, late, (pc() - start) / 1e9)


def send_unpaced(
    send: Callable[..., object], shape: str, items: list[tuple[str, bytes]], count: int, start: int
) -> None:
    """Call ``send`` ``count`` times as fast as possible (pool index from ``start``)."""
    mask = len(items) - 1
    ts0 = time.time_ns()
    if shape == SHAPE_MESSAGE:
        for i in range(start, start + count):
            topic, payload = items[i & mask]
            send((topic, ts0 + i, payload))
    else:
        for i in range(start, start + count):
            topic, payload = items[i & mask]
            send(topic, payload, ts_init=ts0 + i)


def summarize(samples: Sequence[int]) -> dict[str, Any]:
    a = np.asarray(samples, dtype=np.int64)
    p50, p90, p99, p999 = (float(x) for x in np.percentile(a, [50, 90, 99, 99.9]))
    return {
        "count": len(a),
        "mean_ns": float(a.mean()),
        "min_ns": int(a.min()),
        "p50_ns": p50,
        "p90_ns": p90,
        "p99_ns": p99,
        "p99_9_ns": p999,
        "max_ns": int(a.max()),
    }


def judge(stats: dict[str, Any], targets: Mapping[str, float]) -> dict[str, Any]:
    """Add ``target`` and ``met`` (all targets), with each one in ``met_detail``."""
    detail = {k: bool(stats[k] <= v) for k, v in targets.items()}
    stats["target"] = dict(targets)
    stats["met"] = all(detail.values())
    stats["met_detail"] = detail
    return stats


def judge_value(
    report: dict[str, Any], key: str, target: float, *, at_least: bool = False
) -> dict[str, Any]:
    """Add ``target`` and ``met`` for one figure (``at_least``: higher is better)."""
    value = report[key]
    report["target"] = {key: target}
    report["met"] = bool(value >= target if at_least else value <= target)
    return report


def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:.0f} s")
        time.sleep(0.0002)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def process_cpu(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


@dataclass
class Channel:
    """One producer-consumer pair as the loops drive it.

    ``progress()`` counts what the consumer side has finished (ringtape: the durable seq;
    baselines: messages received); ``target`` is what it reaches once everything sent is done.
    """

    name: str
    send: Callable[..., object]
    shape: str
    progress: Callable[[], int]
    target: int
    items: list[tuple[str, bytes]]
    consumers: list[psutil.Process] = field(default_factory=list)
    sent: int = 0  # pool index of the next unpaced push

    def push(self, count: int) -> None:
        send_unpaced(self.send, self.shape, self.items, count, self.sent)
        self.sent += count
        self.target += count

    def drain(self, timeout: float = 120.0) -> None:
        wait_until(lambda: self.progress() >= self.target, timeout, f"{self.name} drain")

    def expect(self, count: int) -> None:
        """``count`` more were sent by someone else (a timed loop); wait for them too."""
        self.target += count
        self.drain()

    def warm(self) -> None:
        """One pass over the pool (struct caches, feeder threads), then drain."""
        self.push(POOL_SIZE)
        self.drain()


@dataclass
class OpenStore:
    store: EventStore
    children: list[psutil.Process]  # the processes open() started: writer, sidecar
    sidecar_running: bool

    def channel(self, items: list[tuple[str, bytes]]) -> Channel:
        store = self.store

        def progress() -> int:
            if store.is_halted():
                raise RuntimeError(f"the store halted: {store.halt_reason()}")
            return store.durable_seq()

        return Channel("ringtape", store.append, SHAPE_RECORD, progress, 1, items, self.children)


def sidecar_supported() -> bool:
    return hasattr(EventStore, "observe_data")


def store_config(base: Path, **overrides: Any) -> EventStoreConfig:
    markers = DataMarkerConfig() if sidecar_supported() else None
    return EventStoreConfig(base_dir=str(base), data_markers=markers, **overrides)


def describe_config(config: EventStoreConfig) -> dict[str, Any]:
    return {
        "channel_capacity": config.channel_capacity,
        "max_batch_entries": config.max_batch_entries,
        "max_batch_latency_ms": config.max_batch_latency.total_seconds() * 1e3,
        "halt_threshold_ms": config.halt_threshold.total_seconds() * 1e3,
        "data_markers": config.data_markers is not None,
    }


@contextlib.contextmanager
def open_store(
    config: EventStoreConfig, options: StoreOptions | None = None
) -> Iterator[OpenStore]:
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    store = EventStore(config, options=options)
    try:
        store.open(uuid.uuid4(), RegisteredComponents(), Environment.LIVE)
        children = [p for p in me.children() if p.pid not in before]
        writer = store.writer_pid()
        yield OpenStore(store, children, any(p.pid != writer for p in children))
    finally:
        store.seal()


@contextlib.contextmanager
def open_baseline(
    make: Callable[[], Baseline], items: list[tuple[str, bytes]]
) -> Iterator[Channel]:
    b = make()
    try:
        pid = b.consumer_pid()
        consumers = [psutil.Process(pid)] if pid is not None else []
        yield Channel(b.name, b.send, b.shape, b.received, 0, items, consumers)
    finally:
        b.stop()


def baseline_makers() -> list[Callable[[], Baseline]]:
    return [
        QueueBaseline,
        lambda: FasterFifoBaseline(CHANNEL_BYTES),
        lambda: BareRingBaseline(CHANNEL_BYTES),
    ]


@dataclass(frozen=True)
class Run:
    """What every section needs: the plan, the run's temporary directory, the messages."""

    plan: Plan
    tmp: Path
    messages: Messages
    log: Log

    @property
    def items(self) -> list[tuple[str, bytes]]:
        return self.messages.items


@dataclass(frozen=True)
class Unpaced:
    entries: int
    send_s: float
    seconds: float
    producer_cpu_s: float
    consumer_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.entries / self.seconds

    def throughput_report(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "seconds": self.seconds,
            "send_seconds": self.send_s,
            "entries_per_s": self.per_s,
            "producer_cpu_us_per_entry": self.producer_cpu_s / self.entries * 1e6,
            "consumer_cpu_us_per_entry": self.consumer_cpu_s / self.entries * 1e6,
        }


def drive(channel: Channel, count: int) -> Unpaced:
    """Send ``count`` unpaced and wait until the consumer side has finished them."""
    gc.collect()
    consumer0 = process_cpu(channel.consumers)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter_ns()
    channel.push(count)
    t1 = time.perf_counter_ns()
    channel.drain(timeout=60.0 + count / 10_000)
    t2 = time.perf_counter_ns()
    cpu1 = cpu_seconds()
    consumer1 = process_cpu(channel.consumers)
    return Unpaced(count, (t1 - t0) / 1e9, (t2 - t0) / 1e9, cpu1 - cpu0, consumer1 - consumer0)


def cpu_report(runs: list[Unpaced]) -> dict[str, Any]:
    per = [r.producer_cpu_s / r.entries * 1e6 for r in runs]
    consumer = [r.consumer_cpu_s / r.entries * 1e6 for r in runs]
    return {
        "us_per_entry": float(np.median(per)),
        "us_per_entry_min": min(per),
        "us_per_entry_runs": per,
        "consumer_us_per_entry": float(np.median(consumer)),
    }


@dataclass(frozen=True)
class MachineCpu:
    """Machine-wide CPU seconds (``/proc/stat``) against this process tree's own."""

    wall: float
    busy: float  # user + nice + system + irq + softirq, every CPU
    steal: float
    ours: float  # this process and its reaped children (writers, consumers)

    @classmethod
    def now(cls) -> MachineCpu:
        busy = steal = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
            jiffies = [int(x) for x in first[1:9]]
            hz = os.sysconf("SC_CLK_TCK")
            busy = (sum(jiffies[:3]) + jiffies[5] + jiffies[6]) / hz
            steal = jiffies[7] / hz
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return cls(time.monotonic(), busy, steal, ours)

    def since(self, start: MachineCpu) -> dict[str, float]:
        wall = self.wall - start.wall
        other = max(0.0, (self.busy - start.busy) - (self.ours - start.ours))
        return {
            "wall_s": wall,
            "other_processes_cores": other / wall,
            "steal_cores": (self.steal - start.steal) / wall,
        }
