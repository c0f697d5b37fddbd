"""``anchors``: what ``anchor()`` costs the kernel's thread, what appends cost meanwhile, and what
the blobs weigh and cost to read back.

``kernel_cost``
    For snapshots of 0.1, 1, 5 and 20 MB (JSON order-cache rows, seeded): ``anchor()`` timed
    with ``perf_counter_ns`` on the calling thread, each call on a free slot (the previous
    blob durable first), beside a plain copy of the same bytes into a warm buffer timed the
    same way: the floor. With the default staging reserve the first snapshot of each size larger
    than any before it also allocates its shared memory (``first_call_ns``); a store whose
    ``anchor_reserve_bytes`` covers the size never does (``prepared``).
``append_during_blob``
    Paced appends at 100k/s while the writer compresses and writes 20 MB blobs, beside the same
    loop on the same store with no blob in progress.
``blobs``
    Raw snapshot bytes over blob file bytes, per size; ``read_snapshot`` (read, zstd frame check,
    decompress, xxh3-128 check) in raw MB/s.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from ringtape.capture.config import Environment, EventStoreConfig, RegisteredComponents
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.storage.read.replay import iter_anchors
from ringtape.storage.run.blobs import read_snapshot
from ringtape.tools.bench.baselines import SHAPE_RECORD
from ringtape.tools.bench.common import (
    LATENCY_RATE,
    Run,
    judge,
    summarize,
    time_paced,
    wait_until,
)

SIZES: Final = (100_000, 1_000_000, 5_000_000, 20_000_000)
DURING_SIZE: Final = 20_000_000
TARGET_FIXED_NS: Final = 500_000  # anchor() <= this + one copy of the snapshot
TARGET_20MB_NS: Final = 5_000_000
TARGET_APPEND_P999_NS: Final = 30_000
TARGET_BLOB_RATIO: Final = 5.0
TARGET_READ_MB_S: Final = 200.0
CHUNK: Final = 1000  # appends per paced chunk while a blob is in progress


def cache_snapshot(size: int, seed: int) -> bytes:
    """``size`` bytes of an order cache as JSON lines: what a kernel's snapshot looks like."""
    rng = random.Random(seed)
    statuses = ("ACCEPTED", "FILLED", "PARTIALLY_FILLED", "CANCELED")
    instruments = [f"{s}USDT-PERP.BINANCE" for s in ("BTC", "ETH", "SOL", "XRP", "DOGE")]
    lines: list[bytes] = []
    total = 0
    i = 0
    while total < size:
        line = json.dumps(
            {
                "client_order_id": f"O-20261201-{i:07d}",
                "instrument_id": rng.choice(instruments),
                "side": rng.choice(("BUY", "SELL")),
                "quantity": f"{rng.randint(1, 500) / 100:.2f}",
                "price": f"{rng.uniform(0.1, 60000):.2f}",
                "status": rng.choice(statuses),
                "ts_last": 1_796_000_000_000_000_000 + rng.randrange(10**12),
            },
            separators=(",", ":"),
        ).encode()
        lines.append(line)
        total += len(line) + 1
        i += 1
    return b"\n".join(lines)[:size]


@contextmanager
def _store(base: Path, **options: Any) -> Iterator[EventStore]:
    store = EventStore(EventStoreConfig(base_dir=str(base)), options=StoreOptions(**options))
    try:
        store.open(uuid.uuid4(), RegisteredComponents(), Environment.LIVE)
        yield store
    finally:
        store.seal()


def _settle(store: EventStore) -> None:
    wait_until(lambda: store.anchors()[-1].state != "pending", 120, "a blob to become durable")


def _copy_ns(snapshot: bytes, reps: int) -> list[int]:
    buffer = bytearray(len(snapshot))
    buffer[:] = snapshot  # fault its pages in first
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        buffer[:] = snapshot
        out.append(time.perf_counter_ns() - t0)
    return out


def _kernel_cost(run: Run, reps: int) -> dict[str, Any]:
    bases = [cache_snapshot(max(SIZES), k) for k in range(reps)]
    snapshots = {n: [base[:n] for base in bases] for n in SIZES}
    first_call: dict[str, int] = {}
    with _store(run.tmp / "anchors-default") as store:  # default reserve: grows on demand
        anchor = store.snapshot_anchorer()
        assert anchor is not None
        for n in SIZES:
            store.append("events.bench", b"x")
            t0 = time.perf_counter_ns()
            anchor(snapshots[n][0])
            first_call[str(n)] = time.perf_counter_ns() - t0
            _settle(store)
    sizes: dict[str, Any] = {}
    reserve = max(SIZES)
    with _store(run.tmp / "anchors-prepared", anchor_reserve_bytes=reserve) as store:
        anchor = store.snapshot_anchorer()
        assert anchor is not None
        wait_until(lambda: store.anchor_capacity() >= reserve, 30, "staging to be prepared")
        for n in SIZES:
            calls = []
            for snap in snapshots[n]:
                store.append("events.bench", b"x")
                t0 = time.perf_counter_ns()
                anchor(snap)
                calls.append(time.perf_counter_ns() - t0)
                _settle(store)
            copies = _copy_ns(snapshots[n][0], reps)
            copy = statistics.median(copies)
            call = statistics.median(calls)
            targets: dict[str, float] = {"median_ns": TARGET_FIXED_NS + copy}
            if n == DURING_SIZE:
                targets["max_ns"] = TARGET_20MB_NS
            figures = {
                "median_ns": call,
                "min_ns": min(calls),
                "max_ns": max(calls),
                "copy_median_ns": copy,
                "copy_max_ns": max(copies),
                "over_copy_ns": call - copy,
                "first_call_ns_default_reserve": first_call[str(n)],
            }
            sizes[str(n)] = judge(figures, targets)
        records = store.anchors()
        run_dir = store.run_dir()
    assert run_dir is not None
    return {
        "method": "perf_counter_ns around anchor() on the calling thread; copy: the same bytes"
        " into a warm bytearray",
        "calls_per_size": reps,
        "prepared_reserve_bytes": reserve,
        "sizes": sizes,
        "blobs": _blobs(run_dir, records),
    }


def _blobs(run_dir: Path, records: list[Any]) -> dict[str, Any]:
    by_size: dict[str, Any] = {}
    for n in SIZES:
        done = [r for r in records if r.size == n and r.state == "durable"]
        raw = sum(r.size for r in done)
        stored = sum(r.stored_bytes for r in done)
        by_size[str(n)] = {"ratio": raw / stored if stored else None, "blobs": len(done)}
    biggest = [a for a in iter_anchors(run_dir) if a.size == max(SIZES)]
    reads = []
    for anchor in biggest:
        t0 = time.perf_counter_ns()
        data = read_snapshot(run_dir, anchor)
        reads.append(time.perf_counter_ns() - t0)
        assert len(data) == anchor.size
    read_ns = statistics.median(reads)
    ratio = min(v["ratio"] or 0.0 for v in by_size.values())
    mb_s = max(SIZES) / 1e6 / (read_ns / 1e9)
    return {
        "ratio_by_size": by_size,
        "min_ratio": ratio,
        "read_snapshot_mb_per_s": mb_s,
        "read_snapshot_bytes": max(SIZES),
        "target": {"min_ratio": TARGET_BLOB_RATIO, "read_snapshot_mb_per_s": TARGET_READ_MB_S},
        "met": ratio >= TARGET_BLOB_RATIO and mb_s >= TARGET_READ_MB_S,
        "met_detail": {
            "min_ratio": ratio >= TARGET_BLOB_RATIO,
            "read_snapshot_mb_per_s": mb_s >= TARGET_READ_MB_S,
        },
    }


def _append_during_blob(run: Run, rounds: int) -> dict[str, Any]:
    items = run.items
    base = cache_snapshot(DURING_SIZE, 100)
    # Distinct contents (an unchanged snapshot would be stored as an alias, not compressed).
    snapshots = [b"%08d" % k + base[8:] for k in range(rounds)]
    during: list[int] = []
    quiet: list[int] = []
    blob_ms: list[float] = []
    with _store(run.tmp / "anchors-during", anchor_reserve_bytes=DURING_SIZE) as store:
        anchor = store.snapshot_anchorer()
        assert anchor is not None
        wait_until(lambda: store.anchor_capacity() >= DURING_SIZE, 30, "staging to be prepared")
        time_paced(store.append, SHAPE_RECORD, items, LATENCY_RATE, 20_000)  # warm
        for snap in snapshots:
            quiet += time_paced(
                store.append, SHAPE_RECORD, items, LATENCY_RATE, 10 * CHUNK
            ).latencies_ns
            anchor(snap)
            t0 = time.perf_counter()
            while store.anchors()[-1].state == "pending":
                paced = time_paced(store.append, SHAPE_RECORD, items, LATENCY_RATE, CHUNK)
                during += paced.latencies_ns
            blob_ms.append((time.perf_counter() - t0) * 1e3)
    report = {"during_blob_write": summarize(during), "no_blob_in_progress": summarize(quiet)}
    p999 = report["during_blob_write"]["p99_9_ns"]
    return {
        "method": f"paced appends at {LATENCY_RATE}/s in chunks of {CHUNK} while a"
        f" {DURING_SIZE / 1e6:.0f} MB anchor was pending (compressed, written, fsynced by the"
        " writer), beside chunks on the same store with none pending",
        "rounds": rounds,
        "blob_pending_ms": {"median": statistics.median(blob_ms), "max": max(blob_ms)},
        **report,
        "target": {"p99_9_ns": TARGET_APPEND_P999_NS},
        "met": p999 <= TARGET_APPEND_P999_NS,
    }


def section_anchors(run: Run) -> dict[str, Any]:
    quick = run.plan.cpu_repeats < 5
    reps = 3 if quick else 7
    run.log(f"anchors: kernel cost of anchor() for {len(SIZES)} sizes, {reps} calls each")
    out = _kernel_cost(run, reps)
    rounds = 2 if quick else 6
    run.log(f"anchors: appends during {rounds} blob writes of {DURING_SIZE / 1e6:.0f} MB")
    out["append_during_blob"] = _append_during_blob(run, rounds)
    return out
