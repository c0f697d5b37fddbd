"""Boot recovery time against the size of the crashed run: ``python -m ringtape.tools.bench.boot``.

Builds a run of ``--gib`` GiB of events segments (64 MiB each, written by the real segment
writer, so that it checkpoints at every roll), leaves it as a crash would — ``running``, its
last frame half written — and times the boot of a store for its instance (the recovery sweep
included), several times, restoring the crashed tail between boots. Side by side, the same boot
with the checkpoint moved away (the sweep then scans the whole stream, as before checkpoints).
Each boot is checked: the tail cut exactly where the torn frame starts, the cut bytes in the
``.torn`` file, the high watermark the last whole frame's last seq. ``--cold`` evicts the run's
files from the page cache (``posix_fadvise(DONTNEED)``) before each boot. JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ringtape.capture.config import EventStoreConfig
from ringtape.capture.store import EventStore
from ringtape.storage.format.entry import TOPIC_RUN_STARTED, encode_entry
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.run.layout import LOCK_NAME, RunPaths, checkpoint_name, list_segments
from ringtape.storage.run.manifest import Manifest, read_manifest, write_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.storage.segment.writer import DEFAULT_SEGMENT_BYTES, SegmentWriter

PER_FRAME = 100
PAYLOAD = 900


def build_crashed_run(base: Path, gib: float) -> tuple[Path, int, int]:
    """A crashed run of about ``gib`` GiB; returns (run dir, where the tail is torn, last seq
    of the last whole frame)."""
    iid = str(uuid.uuid4())
    ts0 = time.time_ns()
    paths = RunPaths(base, iid, f"{ts0}-{uuid.uuid4().hex[:8]}")
    paths.create()
    write_manifest(
        paths.run_dir,
        Manifest(paths.run_id, iid, RunStatus.RUNNING, start_ts_init=ts0),
    )
    (paths.run_dir / LOCK_NAME).touch()
    writer = SegmentWriter(paths.run_dir, paths.run_id, "events", STREAM_EVENTS)
    # A third random, the rest JSON-like text: about 3x compressible, as trading streams are.
    text = b'{"instrument_id":"BTCUSDT-PERP.BINANCE","side":"BUY","px":' * 20
    pool = [os.urandom(PAYLOAD // 3) + text[: PAYLOAD - PAYLOAD // 3] for _ in range(64)]
    target = int(gib * (1 << 30))
    seq = 1
    while writer.stored_bytes < target:
        recs = []
        for i in range(PER_FRAME):
            s = seq + i
            topic = TOPIC_RUN_STARTED if s == 1 else "data.quotes"
            recs.append(encode_entry(s, ts0 + s, ts0 + s, topic, pool[s % 64], "bin"))
        offsets = np.cumsum([0] + [len(r) for r in recs[:-1]], dtype=np.int64)
        writer.append(b"".join(recs), offsets, seq)
        seq += PER_FRAME
    writer.sync()
    last_whole = seq - 1
    last = list_segments(paths.run_dir, "events")[-1]
    torn_at = last.stat().st_size
    # The next frame, half written: the crash.
    recs = [encode_entry(seq + i, ts0, ts0, "data.quotes", pool[i], "bin") for i in range(10)]
    offsets = np.cumsum([0] + [len(r) for r in recs[:-1]], dtype=np.int64)
    writer.append(b"".join(recs), offsets, seq)
    writer.flush()
    full = last.stat().st_size
    os.truncate(last, torn_at + (full - torn_at) // 2)
    writer.close = lambda: None  # type: ignore[method-assign]  # it "died" here
    return paths.run_dir, torn_at, last_whole


def raw_bytes(entries: int) -> int:
    return entries * len(encode_entry(2, 0, 0, "data.quotes", bytes(PAYLOAD), "bin"))


def evict(run_dir: Path) -> None:
    for path in run_dir.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def boot_once(run_dir: Path, torn_at: int, last_whole: int, cold: bool) -> float:
    """Boot a store of the run's instance; check the cut; return the seconds the boot took."""
    if cold:
        evict(run_dir)
    started = time.perf_counter()
    store = EventStore(
        EventStoreConfig(base_dir=str(run_dir.parent.parent)), instance_id=run_dir.parent.name
    )
    took = time.perf_counter() - started
    assert store.last_sweep is not None and len(store.last_sweep.recovered) == 1
    last = list_segments(run_dir, "events")[-1]
    assert last.stat().st_size == torn_at, "the torn tail is cut exactly where its frame starts"
    assert (run_dir / f"{last.name}.torn").exists()
    manifest = read_manifest(run_dir)
    assert manifest.status is RunStatus.CRASHED_RECOVERED
    assert manifest.high_watermark == last_whole
    return took


def measure(base: Path, gib: float, repeat: int, cold: bool) -> dict[str, Any]:
    run_dir, torn_at, last_whole = build_crashed_run(base, gib)
    segments = list_segments(run_dir, "events")
    last = segments[-1]
    crashed_tail = last.read_bytes()[torn_at:]
    manifest = (run_dir / "manifest.json").read_bytes()
    checkpoint = run_dir / checkpoint_name("events")

    def crash_again() -> None:
        with open(last, "ab") as f:
            f.write(crashed_tail)
        (run_dir / "manifest.json").write_bytes(manifest)
        for torn in run_dir.glob("*.torn"):
            torn.unlink()

    with_checkpoint: list[float] = []
    full_scan: list[float] = []
    for _ in range(repeat):  # side by side, alternating
        with_checkpoint.append(boot_once(run_dir, torn_at, last_whole, cold))
        crash_again()
        shutil.move(checkpoint, base / "checkpoint.aside")
        full_scan.append(boot_once(run_dir, torn_at, last_whole, cold))
        shutil.move(base / "checkpoint.aside", checkpoint)
        crash_again()
    med_cp, med_full = statistics.median(with_checkpoint), statistics.median(full_scan)
    return {
        "segments_bytes": sum(p.stat().st_size for p in segments),
        "segments": len(segments),
        "segment_max_bytes": DEFAULT_SEGMENT_BYTES,
        "last_segment_bytes": torn_at,
        "entries": last_whole,
        "raw_over_stored": round(
            raw_bytes(last_whole) / sum(p.stat().st_size for p in segments), 2
        ),
        "cold_cache": cold,
        "boot_s_with_checkpoint": [round(t, 4) for t in with_checkpoint],
        "boot_s_full_scan": [round(t, 4) for t in full_scan],
        "median_boot_s_with_checkpoint": round(med_cp, 4),
        "median_boot_s_full_scan": round(med_full, 4),
        "ratio_full_over_checkpoint": round(med_full / med_cp, 1),
        "load_average": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ringtape.tools.bench.boot")
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringtape-boot-", dir=args.dir) as tmp:
        print(json.dumps(measure(Path(tmp), args.gib, args.repeat, args.cold), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
