"""The sidecar's two folds agree: the bulk fold (numpy, a chunk at a time) and the loop (one
observation at a time) produce the same marker records, byte for byte, and the same state; and
the sidecar's passes, which end at a short take, still fold everything a dead kernel published."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings, strategies as st

from ringtape.capture.doorbell import DoorbellListener, new_address
from ringtape.capture.marker_fold import MarkerFolder
from ringtape.capture.marker_ring import (
    KIND_NAME,
    KIND_OBS,
    KIND_STREAM,
    RECORD,
    RECORD_DTYPE,
    MarkerGeometry,
    MarkerViews,
)
from ringtape.capture.marker_sidecar import SidecarArgs, SidecarLoop
from ringtape.storage.format.entry import decode_entry
from ringtape.storage.format.frame import STREAM_MARKERS
from ringtape.storage.format.markers import MARKER_STREAM, REASON_SAFETY_FLUSH, TOPIC_CURSOR
from ringtape.storage.run.layout import MARKER_LOCK_NAME
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.segment.writer import SegmentWriter

NAMES = ["ETH.SIM", "BTC.SIM", "A-VERY-LONG-INSTRUMENT-ID-OVER-32-BYTES.VENUE", "X", "Y.Z"]
_QUAD = struct.Struct("<QQQQ")


def stream_definition(stream: int, name: str) -> list[tuple[int, ...]]:
    """The ring records that define ``stream`` (name chunks, then the definition)."""
    raw = name.encode()
    padded = raw + b"\0" * (-len(raw) % 32)
    rows = [(*_QUAD.unpack_from(padded, k), 0, KIND_NAME, 0) for k in range(0, len(padded), 32)]
    return [*rows, (1, len(raw), 0, 0, stream, KIND_STREAM, 0)]


def state(folder: MarkerFolder) -> dict[str, Any]:
    keys = ("next_seq", "count", "hi", "ordinal", "esb", "last_obs", "ts_init", "accounted")
    out = {k: getattr(folder, k) for k in keys}
    out.update(
        dirty=list(folder.dirty),
        dirty_since=folder.dirty_since,
        snapshots=folder.snapshots,
        gaps=(folder.gap_records, folder.gap_observations),
    )
    return out


def bulk_folds(folder: MarkerFolder) -> list[bool]:
    """Watch the folder's bulk fold: the list gets, per call, whether it took the chunk."""
    taken: list[bool] = []
    original = folder._fold_bulk

    def noted(*args: Any) -> bool:
        took = original(*args)
        taken.append(took)
        return took

    folder._fold_bulk = noted  # type: ignore[method-assign]
    return taken


step = st.tuples(
    st.integers(0, 4),  # stream (defined on first use)
    st.sampled_from([0, 0, 0, 1, 1, 2]),  # esb step: observations per entry vary
    st.sampled_from([0, 1, 1, 3]),  # ts_init step within the stream, ties included
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(step, min_size=64, max_size=600),
    gaps=st.sets(st.integers(0, 600), max_size=3),  # observation numbers jump there
    back=st.sets(st.integers(0, 600), max_size=2),  # a stream's ts_init goes back there
    cuts=st.lists(st.integers(1, 300), min_size=1, max_size=8),
    flush_after=st.sets(st.integers(0, 8)),
    hifi=st.sets(st.sampled_from(NAMES)),
    first_ts=st.sampled_from([1_000, 1_000, 2**63 - 300]),  # the last: past int64 on the way
)
def test_the_bulk_fold_writes_what_the_loop_writes(
    steps: list[tuple[int, int, int]],
    gaps: set[int],
    back: set[int],
    cuts: list[int],
    flush_after: set[int],
    hifi: set[str],
    first_ts: int,
) -> None:
    rows: list[tuple[int, ...]] = []
    defined: list[int] = []
    last_ts: dict[int, int] = {}
    esb, obs = 0, 0
    for i, (s, esb_step, ts_step) in enumerate(steps):
        if s not in defined:
            rows.extend(stream_definition(len(defined), NAMES[s]))
            defined.append(s)
        stream = defined.index(s)
        ts = max(0, last_ts.get(stream, first_ts) + (-2 if i in back else ts_step))
        last_ts[stream] = ts
        esb, obs = esb + esb_step, obs + (4 if i in gaps else 1)
        rows.append((ts - 7, ts, esb, obs, stream, KIND_OBS, 0))
    ring = np.array(rows, RECORD_DTYPE)
    bulk, loop = MarkerFolder(hifi), MarkerFolder(hifi, bulk=False)
    taken = bulk_folds(bulk)
    pos, k = 0, 0
    while pos < len(ring):
        size = cuts[k % len(cuts)]
        chunk = ring[pos : pos + size]
        for folder in (bulk, loop):
            folder.feed(chunk, now=float(k))
            if k in flush_after:
                folder.snapshot(REASON_SAFETY_FLUSH)
        assert state(bulk) == state(loop)
        a, b = bulk.take_output(), loop.take_output()
        assert a.data == b.data
        assert a.offsets.tolist() == b.offsets.tolist() and a.first_seq == b.first_seq
        pos, k = pos + size, k + 1
    for folder in (bulk, loop):
        folder.finish(obs + 2)
    assert bulk.take_output().data == loop.take_output().data
    assert state(bulk) == state(loop)
    event(f"chunks the bulk fold took: {'some' if any(taken) else 'none'}")


def test_the_bulk_fold_takes_interleaved_entries_and_many_quotes_per_entry() -> None:
    """Not only the property above: the common shapes really go through the bulk fold."""
    for per_entry in (1, 5):
        rows = [r for s in range(4) for r in stream_definition(s, NAMES[s])]
        n = 4096
        rows += [(10 * i, 10 * i + 3, i // per_entry, i + 1, i % 4, KIND_OBS, 0) for i in range(n)]
        ring = np.array(rows, RECORD_DTYPE)
        folder = MarkerFolder(NAMES[:1])
        reference = MarkerFolder(NAMES[:1], bulk=False)
        taken = bulk_folds(folder)
        for f in (folder, reference):
            for start in range(0, len(ring), 2048):
                f.feed(ring[start : start + 2048], 0.0)
        assert sum(taken) >= 2
        out = folder.take_output()
        assert out.data == reference.take_output().data
        cursors = [decode_entry(r, 0) for r in out.records()]
        snapshots = [e for e in cursors if e.topic == TOPIC_CURSOR]
        assert len(snapshots) == (n - 1) // per_entry  # one per boundary; the last still open


def test_a_stream_past_int64_leaves_the_next_chunks_to_the_loop() -> None:
    """A ts_init_hi the loop took past int64 (one row: too few for the bulk fold) does not stop
    the next chunk, of another stream, from folding as the loop folds it."""
    rows = stream_definition(0, "A.X") + stream_definition(1, "B.X")
    past = [(0, (1 << 63) + 5, 0, 1, 0, KIND_OBS, 0)]
    then = [(0, 1_000 + i, 0, 2 + i, 1, KIND_OBS, 0) for i in range(40)]
    outputs = []
    for folder in (MarkerFolder([]), MarkerFolder([], bulk=False)):
        for chunk in (rows, past, then):
            folder.feed(np.array(chunk, RECORD_DTYPE), 0.0)
        folder.finish(41)
        outputs.append((folder.take_output().data, state(folder)))
    assert outputs[0] == outputs[1]


@pytest.mark.timeout(30)  # a loop whose kernel never goes would run on
def test_a_sidecar_whose_kernel_is_gone_folds_all_it_published(tmp_path: Path) -> None:
    """A pass ends at its first short take; when the kernel is found gone, what it published
    during that last take is still taken and folded before the stream ends. The sidecar's loop
    runs here in process, over a real marker ring layout, segment writer, lock and doorbell;
    the kernel publishes 50 more observations while the first take is folded, then is gone."""
    geometry = MarkerGeometry.for_capacity(16_384)
    views = MarkerViews(memoryview(bytearray(geometry.region_size)), geometry)
    views.init_control(os.getpid())
    published = 0

    def publish(rows: list[tuple[int, ...]]) -> None:
        nonlocal published
        for a, b, esb, obs, stream, kind, _ in rows:
            published += 1
            slot = (published & (geometry.slots - 1)) * RECORD.size
            RECORD.pack_into(views.data, slot, a, b, esb, obs, stream, kind, published)

    def observations(first: int, n: int) -> list[tuple[int, ...]]:
        return [(i, 1_000 + i, i // 3, i, 0, KIND_OBS, 0) for i in range(first, first + n)]

    publish(stream_definition(0, "BTC.SIM"))
    publish(observations(1, 100))
    address = new_address()
    args = SidecarArgs(
        shm_name="unused", capacity=geometry.capacity, run_dir=str(tmp_path), run_id="r",
        doorbell=address, parent_pid=os.getppid(), segment_max_bytes=1 << 20,
        compression_level=1,
    )  # fmt: skip
    segments = SegmentWriter(tmp_path, "r", MARKER_STREAM, STREAM_MARKERS)
    lock = WriterLock.acquire(tmp_path, MARKER_LOCK_NAME)
    loop = SidecarLoop(args, views, segments, DoorbellListener(address), lock)
    feed = loop.folder.feed
    fired: list[int] = []  # how far the ring was taken when the kernel went

    def feed_then_go(rows: np.ndarray, now: float) -> None:
        feed(rows, now)
        if not fired:
            fired.append(loop.ring.read)
            publish(observations(101, 50))  # during the first take's fold
            loop.stop_requested = True  # the kernel is gone (as os.getppid() would say)

    loop.folder.feed = feed_then_go  # type: ignore[method-assign]
    try:
        assert loop.run() is False  # ended for the kernel's death, not a close request
    finally:
        loop.close()
        views.release()
    assert fired and fired[0] < published  # it went while records were still to be taken
    assert loop.ring.read == published
    assert loop.folder.last_obs == 150 and loop.folder.gap_records == 0
