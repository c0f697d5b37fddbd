"""Shared fixtures and helpers: leak checks for every test, stores that always get released,
and runs built on disk with the real segment writer, entry by entry."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from pipeline_support import pid_alive, shm_names

from ringtape.capture.store import EventStore
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED, encode_entry
from ringtape.storage.format.frame import STREAM_EVENTS, STREAM_MARKERS
from ringtape.storage.format.markers import encode_cursor, encode_stream
from ringtape.storage.run.layout import RunPaths
from ringtape.storage.run.manifest import Manifest, write_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.storage.segment.writer import SegmentWriter

INSTANCE = "5b0f3c9e-8a51-4c1e-9d7a-2f6b1e0c4d3a"


@pytest.fixture(autouse=True)
def no_leaked_shm() -> Iterator[None]:
    """Every test: no shared memory this process created may outlive the test (names carry
    the creator's pid, so other processes' regions never count)."""
    before = shm_names(os.getpid())
    yield
    leaked = shm_names(os.getpid()) - before
    for name in leaked:
        os.unlink(f"/dev/shm/{name}")
    assert not leaked, f"shared memory left behind: {leaked}"


@pytest.fixture
def stores() -> Iterator[list[EventStore]]:
    """Stores a test opens; whatever happens, their writers and rings are released."""
    made: list[EventStore] = []
    yield made
    for store in made:
        pid = store.writer_pid()
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGCONT)  # a test may have stopped it
        store.close()


TS0 = 1_700_000_000_000_000_000


def records(n: int, *, ended: bool = True, first: int = 1, ts0: int = TS0) -> list[bytes]:
    """``n`` encoded entries from seq ``first``: RunStarted first, RunEnded last if ``ended``."""
    out = []
    for seq in range(first, first + n):
        topic = f"data.quotes.SIM-{seq % 3}"
        if seq == 1:
            topic = TOPIC_RUN_STARTED
        elif ended and seq == first + n - 1:
            topic = TOPIC_RUN_ENDED
        payload = (b"q" * (seq % 7)) + seq.to_bytes(8, "little")
        out.append(encode_entry(seq, ts0 + seq, ts0 + seq + 5, topic, payload, "Quote"))
    return out


def marker_records(n: int, ts0: int = TS0) -> list[bytes]:
    """``n`` valid marker records: a stream definition, then one cursor snapshot per
    observation of that stream (all before entry 1)."""
    out = [encode_stream(1, ts0, 0, "Quote", "SIM-0", False)]
    for seq in range(2, n + 1):
        obs = seq - 1
        out.append(encode_cursor(seq, ts0 + obs, obs, 1, 0, [0, 0, obs, ts0 + obs]))
    return out


def write_stream(
    run_dir: Path,
    run_id: str,
    recs: Sequence[bytes],
    *,
    per_frame: int = 4,
    stream: str = "events",
    segment_bytes: int = 1 << 20,
) -> None:
    """Append ``recs`` (consecutive seqs) in frames of ``per_frame`` with the real writer."""
    kind = STREAM_EVENTS if stream == "events" else STREAM_MARKERS
    writer = SegmentWriter(run_dir, run_id, stream, kind, max_segment_bytes=segment_bytes)
    first = int.from_bytes(recs[0][16:24], "little") if recs else 1
    for i in range(0, len(recs), per_frame):
        batch = recs[i : i + per_frame]
        offsets = np.cumsum([0] + [len(r) for r in batch[:-1]], dtype=np.int64)
        writer.append(b"".join(batch), offsets, first + i)
    writer.close()


def make_run(
    base: Path,
    n: int = 20,
    *,
    status: RunStatus = RunStatus.ENDED,
    ended: bool | None = None,
    per_frame: int = 4,
    segment_bytes: int = 1 << 20,
    markers: int = 0,
    start_ts: int = TS0,
) -> Path:
    """A run dir with ``n`` entries, a manifest that matches them, optional marker stream."""
    ended = status is RunStatus.ENDED if ended is None else ended
    paths = RunPaths(base, INSTANCE, f"{start_ts + 1}-{uuid.uuid4().hex[:8]}")
    paths.create()
    recs = records(n, ended=ended, ts0=start_ts)
    if recs:
        write_stream(
            paths.run_dir, paths.run_id, recs, per_frame=per_frame, segment_bytes=segment_bytes
        )
    if markers:
        write_stream(paths.run_dir, paths.run_id, marker_records(markers), stream="markers")
    sealed = status is not RunStatus.RUNNING
    manifest = Manifest(
        run_id=paths.run_id,
        instance_id=INSTANCE,
        status=status,
        start_ts_init=start_ts + 1,
        high_watermark=n if sealed else 0,
        end_ts_init=start_ts + n if sealed and n else None,
        marker_high_watermark=markers if sealed else 0,
    )
    write_manifest(paths.run_dir, manifest)
    return paths.run_dir
