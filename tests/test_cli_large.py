"""``ringtape verify`` of a large run under bounded memory (peak RSS measured with psutil).

The run is written with ``ringtape.storage.segment.writer.SegmentWriter`` directly (the format the
writer process produces, without the live pipeline's time): a pool of encoded trading-session
entries is cycled through, each frame's seq and timestamps patched in, so frames compress like
real ones. :func:`make_large_run` is also what the throughput figures in the notes were
measured on.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
from test_cli_support import command

from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED, encode_entry
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.run.layout import RunPaths
from ringtape.storage.run.manifest import Manifest, write_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.storage.segment.writer import SegmentWriter
from ringtape.tools.demo.session import BusMessage, TradingSession

INSTANCE = "7c9a4e21-3b5d-4f60-8a1e-2d3c4b5a6f70"
START_TS = 1_700_000_000_000_000_000
_SEQ_TS = struct.Struct("<QQQ")  # seq, ts_init, ts_publish at offset 16 of an entry record
PER_FRAME = 100


def _pool(records: int, seed: int) -> tuple[bytes, np.ndarray]:
    """Encoded session entries (``records``, a multiple of PER_FRAME) and their offsets."""
    out: list[bytes] = []
    session = TradingSession(seed)
    while len(out) < records:
        for m in session.messages(1000):
            if isinstance(m, BusMessage):
                out.append(encode_entry(0, 0, 0, m.topic, m.payload, m.payload_type))
    out = out[:records]
    offsets = np.cumsum([0] + [len(r) for r in out], dtype=np.int64)
    return b"".join(out), offsets


def make_large_run(
    base: Path, raw_target: int, *, segment_bytes: int = 64 << 20, seed: int = 7
) -> tuple[Path, int]:
    """An ended run of at least ``raw_target`` raw entry bytes; returns (run dir, raw bytes)."""
    paths = RunPaths(base, INSTANCE, f"{START_TS}-{uuid.uuid4().hex[:8]}")
    paths.create()
    writer = SegmentWriter(
        paths.run_dir, paths.run_id, "events", STREAM_EVENTS, max_segment_bytes=segment_bytes
    )

    def ts(seq: int) -> int:
        return START_TS + (seq - 1) * 1000

    def single(seq: int, topic: str) -> int:
        rec = encode_entry(seq, ts(seq), ts(seq) + 5, topic, b"{}", "json")
        writer.append(rec, np.zeros(1, dtype=np.int64), seq)
        return len(rec)

    pool, offsets = _pool(20 * PER_FRAME, seed)
    frames_in_pool = (len(offsets) - 1) // PER_FRAME
    raw = single(1, TOPIC_RUN_STARTED)
    seq = 2
    i = 0
    while raw < raw_target:
        lo, hi = offsets[i * PER_FRAME], offsets[(i + 1) * PER_FRAME]
        block = bytearray(pool[lo:hi])
        rel = offsets[i * PER_FRAME : (i + 1) * PER_FRAME] - lo
        for k, at in enumerate(rel.tolist()):
            s = seq + k
            _SEQ_TS.pack_into(block, at + 16, s, ts(s), ts(s) + 5)
        writer.append(block, rel, seq)
        raw += len(block)
        seq += PER_FRAME
        i = (i + 1) % frames_in_pool
    raw += single(seq, TOPIC_RUN_ENDED)
    writer.close()
    manifest = Manifest(
        run_id=paths.run_id,
        instance_id=INSTANCE,
        status=RunStatus.ENDED,
        start_ts_init=START_TS,
        high_watermark=seq,
        end_ts_init=ts(seq),
    )
    write_manifest(paths.run_dir, manifest)
    return paths.run_dir, raw


def peak_rss(argv: list[str], out: Path) -> tuple[int, int]:
    """Run ``argv`` (stdout to ``out``); returns (exit status, peak RSS of it and its children).

    RSS is sampled every 5 ms and each process's own high-water mark (VmHWM) is read too; the
    larger of the summed samples and the summed marks is returned (an upper bound).
    """
    with out.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak_sum = 0
    hwm: dict[int, int] = {}
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
        except psutil.Error:
            break
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
                hwm[p.pid] = max(hwm.get(p.pid, 0), _vm_hwm(p.pid))
            except (psutil.Error, OSError):
                continue
        peak_sum = max(peak_sum, total)
        time.sleep(0.005)
    _, err = proc.communicate(timeout=300)
    assert b"Traceback" not in err, err
    return proc.returncode, max(peak_sum, sum(hwm.values()))


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_verify_of_a_large_run_stays_in_bounded_memory(tmp_path: Path) -> None:
    big, raw = make_large_run(tmp_path / "big", 110 << 20, segment_bytes=8 << 20)
    small, _ = make_large_run(tmp_path / "small", 1 << 20, segment_bytes=64 << 10)
    assert raw >= 100 << 20
    assert len(list(big.glob("*.seg"))) >= 2 and len(list(small.glob("*.seg"))) >= 2
    for jobs in ("1", "2"):
        verify = ["verify", "--json", "--jobs", jobs]
        code, baseline = peak_rss(command(*verify, small), tmp_path / "s")
        assert code == 0
        code, peak = peak_rss(command(*verify, big), tmp_path / "b")
        report = json.loads((tmp_path / "b").read_text())
        assert code == 0 and report["ok"] and report["runs"][0]["raw_bytes"] == raw
        # Memory grows with the largest frame and the scan window, not with the run: well
        # under a tenth of the raw bytes above what verifying a 1 MiB run takes.
        assert peak - baseline < raw // 10, (jobs, peak, baseline, raw)
