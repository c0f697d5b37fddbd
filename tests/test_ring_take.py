"""The entry ring in one process: the producer's refusals and bell, the writer's two take paths.

A real shared-memory region, the real ``Producer`` and the real ``RingConsumer``; the test plays
the writer by taking (and so freeing space) at the points it chooses, which is how records land
at every ring position, wraps included.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ringtape.capture.errors import EntryTooLarge, StoreHalted
from ringtape.capture.producer import BUCKET, Producer
from ringtape.capture.ring import (
    WAKE_NEVER,
    WAKE_SEQ,
    WALK_MAX,
    RingConsumer,
    RingGeometry,
    RingViews,
    count_ts_backwards,
    stamp_publish_time,
)
from ringtape.capture.shm import SharedRegion, unlink_name
from ringtape.storage.format.entry import (
    ENTRY_HEADER_SIZE,
    MAX_PAYLOAD_LEN,
    check_records,
    decode_entry,
)
from ringtape.storage.format.frame import build_body
from ringtape.storage.format.frame_index import frame_index

TOPIC = "data.quotes.SIM.AUD/USD"
TYPE = "QuoteTick"
FIXED = ENTRY_HEADER_SIZE + len(TOPIC) + len(TYPE)


class _Host:
    """The store's side of the slow path: never halted; a stall is an error here."""

    def halted_error(self) -> StoreHalted | None:
        return None

    def stall(self, stalled_for_s: float) -> StoreHalted:
        raise AssertionError(f"the ring stayed full for {stalled_for_s:.3f} s")


@contextmanager
def ring(capacity: int = 64) -> Iterator[tuple[Producer, RingConsumer, RingViews, list[int]]]:
    """A producer and a consumer on a fresh ring; the list counts doorbell rings."""
    g = RingGeometry.for_capacity(capacity)
    region = SharedRegion.create(g.region_size, tag="test")
    unlink_name(region.name)
    views = RingViews(region.buf, g)
    views.init_control(os.getpid())
    bells: list[int] = []
    producer = Producer(g, time.time_ns, _Host(), 0.05)
    producer.bind(views, lambda: bells.append(producer.seq), threading.current_thread())
    consumer = RingConsumer(views)
    try:
        yield producer, consumer, views, bells
    finally:
        producer.unbind()
        views.release()
        region.close()


def _take_both(consumer: RingConsumer, limit: int) -> tuple[object, object]:
    """What the walk and the vectorised path make of the same ring state (neither commits)."""
    walked = consumer._walk(limit, 0, 7)
    vectorised = consumer._take_vectorised(limit, 0)
    if vectorised is not None:
        stamp_publish_time(vectorised, 7)
        count_ts_backwards(vectorised, consumer.last_ts_init)

    def shape(batch: object) -> object:
        if batch is None:
            return None
        b = batch  # type: ignore[assignment]
        return (b.first_seq, bytes(b.records), b.offsets.tolist(), b.end_pos)  # type: ignore[attr-defined]

    return shape(walked), shape(vectorised)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 9000), min_size=1, max_size=120),
    takes=st.lists(st.integers(1, 40), min_size=1, max_size=10),
    corrupt=st.sampled_from(["none", "seq", "length", "slot"]),
)
def test_the_walk_and_the_vectorised_take_agree(
    sizes: list[int], takes: list[int], corrupt: str
) -> None:
    """Both take paths accept the same records, cut at the same point and copy the same bytes,
    wrapped or not, and both stop at a record that does not validate."""
    with ring(capacity=64) as (producer, consumer, views, _):
        taken = 0
        for i, size in enumerate(sizes):
            want = takes[i % len(takes)]
            if consumer.read_seq + want <= producer.seq:  # free space the way a writer would
                batch = consumer.take(want, 0, 1)
                assert batch is not None
                taken += batch.count
            producer.append(TOPIC, bytes([i % 251]) * size, payload_type=TYPE, ts_init=i)
        if corrupt != "none" and producer.seq > consumer.read_seq:
            seq = producer.seq  # the newest record, published: spoil it after the fact
            pos = int(views.index[seq & (views.geometry.slots - 1)])
            phys = pos & (views.geometry.ring_bytes - 1)
            if corrupt == "seq":
                views.data[phys + 16 : phys + 24] = struct.pack("<Q", seq + 1)
            elif corrupt == "length":
                views.data[phys : phys + 4] = struct.pack("<I", 1)
            else:
                views.index[seq & (views.geometry.slots - 1)] = pos + 8
        limit = min(WALK_MAX, producer.seq - consumer.read_seq + 1)
        walked, vectorised = _take_both(consumer, limit)
        assert walked == vectorised
        if corrupt == "none" and producer.seq > consumer.read_seq:
            assert walked is not None and walked[0] == consumer.read_seq + 1  # type: ignore[index]


def test_a_take_checks_out_and_stamps_every_record() -> None:
    with ring(capacity=1024) as (producer, consumer, _, _):
        for i in range(600):  # more than WALK_MAX: the first take is vectorised
            producer.append(TOPIC, b"p" * (i % 300), payload_type=TYPE, ts_init=1000 - (i % 3))
        seen = 0
        while (batch := consumer.take(512, 0, 42)) is not None:
            end = len(batch.records)
            assert check_records(batch.records, batch.offsets, end, batch.first_seq) is None
            for off in batch.offsets.tolist():
                assert decode_entry(batch.records, off).ts_publish == 42
            seen += batch.count
        assert seen == 600
        # ts_init goes 1000, 999, 998, 1000, ...: back at every step but each third
        assert consumer.read_seq == 600


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "a", "data.x", "data.quotes.SIM.AUD/USD"]), st.integers(0, 40)
        ),
        min_size=1,
        max_size=120,
    ),
    st.integers(1, 50),
)
def test_the_walks_frame_index_is_the_frames_own(
    shapes: list[tuple[str, int]], per_frame: int
) -> None:
    """The index the walk gathers on its way equals the one computed from each frame's body,
    short records (whose key runs past them: the walk then leaves it to the frame) included."""
    with ring(capacity=256) as (producer, consumer, _, _):
        for i, (topic, size) in enumerate(shapes):
            producer.append(topic, bytes([65 + i % 26]) * size, ts_init=(i * 7919) % 1000)
        batch = consumer._walk(len(shapes), 0, 1)
        assert batch is not None
        short = any(ENTRY_HEADER_SIZE + len(t) + n < 48 for t, n in shapes)
        assert (batch.ts_inits is None) == short
        for first_seq, records, offsets in batch.frames(per_frame):
            own = batch.frame_index(first_seq, len(offsets))
            if own is not None:
                assert own == frame_index(build_body(records, offsets), offsets)


def test_ts_init_going_backwards_is_counted_by_both_paths() -> None:
    for n in (10, WALK_MAX + 50):
        with ring(capacity=1024) as (producer, consumer, _, _):
            for i in range(n):
                producer.append(TOPIC, b"x", payload_type=TYPE, ts_init=100 + (i % 4))
            back = 0
            while (batch := consumer.take(1024, 0, None)) is not None:
                back += batch.ts_backwards
                if batch.ts_backwards_first:
                    assert batch.ts_backwards_first % 4 == 1  # seqs 5, 9, ...: ts 103 -> 100
            assert back == (n - 1) // 4


def test_an_invalid_next_record_is_named_with_its_seq_and_position() -> None:
    with ring() as (producer, consumer, views, _):
        producer.append(TOPIC, b"ok", payload_type=TYPE, ts_init=1)
        assert consumer.frontier_problem() is None  # published and valid
        pos = int(views.index[1])
        assert pos == views.first_position
        phys = pos % views.geometry.ring_bytes
        views.data[phys + 16 : phys + 24] = struct.pack("<Q", 99)
        problem = consumer.frontier_problem()
        assert problem == f"seq 1 at ring position {pos}: the record there says seq 99"
        assert consumer.take(10, 0, 1) is None
    with ring() as (producer, consumer, views, _):
        assert consumer.frontier_problem() is None  # nothing published: not a problem


def test_entry_too_large_is_decided_by_the_entry_alone() -> None:
    """The same entry is refused (or accepted) wherever the ring happens to be."""
    with ring(capacity=100) as (producer, consumer, _, _):
        limit = producer._geometry.max_record - FIXED - BUCKET  # the largest payload accepted
        verdicts = []
        for step in range(40):
            try:
                producer.append(TOPIC, b"z" * (limit + 1), payload_type=TYPE, ts_init=step)
                verdicts.append("accepted")
            except EntryTooLarge:
                verdicts.append("refused")
            producer.append(TOPIC, b"y" * limit, payload_type=TYPE, ts_init=step)  # always fits
            producer.append(TOPIC, b"w" * (step * 997 % 5000), payload_type=TYPE, ts_init=step)
            while consumer.take(64, 0, 1) is not None:
                pass
        assert set(verdicts) == {"refused"}
        with pytest.raises(EntryTooLarge, match="format's limit"):
            producer.append(TOPIC, bytes(MAX_PAYLOAD_LEN + 1), payload_type=TYPE, ts_init=1)
        with pytest.raises(EntryTooLarge, match="topic"):
            producer.append("t" * 2000, b"", payload_type=TYPE, ts_init=1)


@settings(max_examples=40, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 20_000), min_size=1, max_size=30),
    margin=st.integers(-3 * BUCKET, 3 * BUCKET),
)
def test_a_size_near_the_limit_gets_the_same_verdict_at_any_ring_position(
    offsets: list[int], margin: int
) -> None:
    with ring(capacity=100) as (producer, consumer, _, _):
        limit = producer._geometry.max_record - FIXED - BUCKET
        size = max(0, limit + margin)
        verdicts = set()
        for filler in offsets:
            producer.append(TOPIC, bytes(filler), payload_type=TYPE, ts_init=1)
            while consumer.take(64, 0, 1) is not None:
                pass
            try:
                producer.append(TOPIC, bytes(size), payload_type=TYPE, ts_init=1)
                verdicts.add(True)
            except EntryTooLarge:
                verdicts.add(False)
            while consumer.take(64, 0, 1) is not None:
                pass
        assert verdicts == {size <= limit}


def test_a_bad_ts_init_is_refused_before_anything_is_published() -> None:
    with ring() as (producer, consumer, _, _):
        for bad, error in (
            (-1, ValueError),
            (1.5, TypeError),
            ("7", TypeError),
            (1 << 64, ValueError),
        ):
            with pytest.raises(error, match="ts_init"):
                producer.append(TOPIC, b"x", payload_type=TYPE, ts_init=bad)  # type: ignore[arg-type]
            assert producer.seq == 0 and consumer.take(10, 0, 1) is None
        with pytest.raises(TypeError, match="payload must be bytes"):
            producer.append(TOPIC, "text", payload_type=TYPE, ts_init=1)  # type: ignore[arg-type]
        assert producer.append(TOPIC, b"x", payload_type=TYPE, ts_init=1) == 1


def test_the_bell_rings_once_per_sleep_in_a_burst_after_idle() -> None:
    """The writer sleeps asking for a bell at the next seq; a 5,000-append burst rings once. A
    later sleep (a new WAKE_SEQ) gets its own single bell."""
    with ring(capacity=8192) as (producer, consumer, views, bells):
        views.ctrl[WAKE_SEQ] = 1  # the writer sleeps, waiting for seq 1
        for i in range(5000):
            producer.append(TOPIC, b"burst", payload_type=TYPE, ts_init=i)
        assert bells == [1]
        views.ctrl[WAKE_SEQ] = WAKE_NEVER  # it woke, took everything, and sleeps again
        while consumer.take(8192, 0, 1) is not None:
            pass
        views.ctrl[WAKE_SEQ] = consumer.read_seq + 1
        for i in range(3000):
            producer.append(TOPIC, b"burst", payload_type=TYPE, ts_init=i)
        assert bells == [1, 5001]


def test_a_second_thread_is_refused_and_writes_nothing() -> None:
    with ring() as (producer, consumer, _, _):
        producer.append(TOPIC, b"owner", payload_type=TYPE, ts_init=1)
        errors: list[BaseException] = []

        def intruder() -> None:
            try:
                producer.append(TOPIC, b"intruder", payload_type=TYPE, ts_init=2)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=intruder)
        thread.start()
        thread.join()
        assert len(errors) == 1 and type(errors[0]).__name__ == "WrongThread"
        assert "Nothing was written" in str(errors[0])
        assert producer.append(TOPIC, b"owner again", payload_type=TYPE, ts_init=3) == 2
        batch = consumer.take(10, 0, 1)
        assert batch is not None and batch.count == 2
        payloads = [decode_entry(batch.records, o).payload for o in batch.offsets.tolist()]
        assert payloads == [b"owner", b"owner again"]
