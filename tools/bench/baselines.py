"""What ``ringtape bench`` compares the store against: the same messages, moved to a consumer
process by ``multiprocessing.Queue``, by ``faster_fifo.Queue``, and by a bare shared-memory ring.

The bare ring is the floor, "what Python itself costs": a single-producer single-consumer ring
in shared memory where a push is one cached ``struct.pack_into`` of the record and one index
store (``memoryview.cast("Q")``), and a consumer process copies each record out. It validates
nothing and never sleeps the producer, so it is only a yardstick, not a design to copy.

Every baseline has the same small surface, so the benchmark's loops treat them alike:

- ``send``: the call the benchmark times, called in the way ``shape`` names:
  ``SHAPE_RECORD`` is ``send(topic, payload, ts_init=ts)`` (like ``EventStore.append``),
  ``SHAPE_MESSAGE`` is ``send((topic, ts, payload))`` (one object, like ``Queue.put``);
- ``received()``: how many messages the consumer process has taken (read from shared memory);
- ``consumer_pid()``; ``stop()`` ends the stream, joins the consumer and frees everything.

Consumers run in ``spawn`` processes and exit on their own when the benchmark process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import struct
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Final, Protocol

SHAPE_RECORD: Final = "record"
SHAPE_MESSAGE: Final = "message"

_CTX: Final = multiprocessing.get_context("spawn")
_START_TIMEOUT_S: Final = 30.0
_PARENT_CHECK_S: Final = 0.2

# Shared counter block of the queue consumers: [received, ready].
_RECEIVED: Final = 0
_READY: Final = 1


class Baseline(Protocol):
    """A channel to a consumer process, as the benchmark drives it."""

    name: str
    shape: str
    send: Callable[..., object]

    def received(self) -> int: ...

    def consumer_pid(self) -> int | None: ...

    def stop(self, timeout: float = 30.0) -> None: ...


def _wait_ready(process: BaseProcess, is_ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not is_ready():
        if not process.is_alive():
            raise RuntimeError(f"{what} consumer exited at start (code {process.exitcode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} consumer did not start within {_START_TIMEOUT_S} s")
        time.sleep(0.005)


def _join(process: BaseProcess, timeout: float) -> None:
    process.join(timeout)
    if process.is_alive():
        process.terminate()
        process.join(5.0)
    if process.is_alive():
        process.kill()
        process.join()


# -- multiprocessing.Queue ---------------------------------------------------------------------


def _queue_consumer(q: Any, state: Any, parent: int) -> None:
    get = q.get
    count = 0
    state[_READY] = 1
    while True:
        try:
            message = get(timeout=_PARENT_CHECK_S)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if message is None:
            return
        count += 1
        state[_RECEIVED] = count


class _QueueConsumer:
    """A consumer process draining a queue and counting into a shared ``[ready, received]``."""

    name: str

    def _start(self, queue_obj: Any, target: Callable[..., None]) -> None:
        self._queue: Any = queue_obj
        self._state: Any = _CTX.RawArray(ctypes.c_uint64, 2)
        self._process = _CTX.Process(
            target=target,
            args=(self._queue, self._state, os.getpid()),
            name=f"bench-{self.name}-consumer",
            daemon=True,
        )
        self._process.start()
        _wait_ready(self._process, lambda: bool(self._state[_READY]), self.name)
        self.send: Callable[..., object] = self._queue.put

    def received(self) -> int:
        return int(self._state[_RECEIVED])

    def consumer_pid(self) -> int | None:
        return self._process.pid


class QueueBaseline(_QueueConsumer):
    """``multiprocessing.Queue`` (unbounded, the usual use): pickle + pipe + feeder thread."""

    name = "mp_queue"
    shape = SHAPE_MESSAGE

    def __init__(self) -> None:
        self._start(_CTX.Queue(), _queue_consumer)

    def stop(self, timeout: float = 30.0) -> None:
        if self._process.is_alive():
            self._queue.put(None)
        _join(self._process, timeout)
        # Whatever the consumer left unread is of no use: never wait on the feeder for it.
        self._queue.cancel_join_thread()
        self._queue.close()


# -- faster_fifo.Queue -------------------------------------------------------------------------


def _fifo_consumer(q: Any, state: Any, parent: int) -> None:
    count = 0
    state[_READY] = 1
    while True:
        try:
            messages = q.get_many(timeout=_PARENT_CHECK_S, max_messages_to_get=4096)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if messages[-1] is None:  # the end-of-stream marker is always the last message
            state[_RECEIVED] = count + len(messages) - 1
            return
        count += len(messages)
        state[_RECEIVED] = count


class FasterFifoBaseline(_QueueConsumer):
    """``faster_fifo.Queue``: pickle in ``put``, a C++ ring in shared memory behind a mutex."""

    name = "faster_fifo"
    shape = SHAPE_MESSAGE

    def __init__(self, max_size_bytes: int) -> None:
        import faster_fifo

        self.max_size_bytes = max_size_bytes
        self._start(faster_fifo.Queue(max_size_bytes=max_size_bytes), _fifo_consumer)

    def stop(self, timeout: float = 30.0) -> None:
        if self._process.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
        _join(self._process, timeout)


# -- the bare shared-memory ring ---------------------------------------------------------------

# Control words (u64): the producer's and the consumer's on separate cache lines.
_WRITE_POS: Final = 0
_STOP: Final = 1
_READ_POS: Final = 8
_COUNT: Final = 9
_CONSUMER_READY: Final = 10
_CTRL_WORDS: Final = 16
_CTRL_BYTES: Final = _CTRL_WORDS * 8

# record_len u32, topic_len u16, pad, seq u64, ts_init u64 | topic | payload
_RECORD_HEADER: Final = "<IHxxQQ"
_RECORD_LEN: Final = struct.Struct("<I")
_WRAP: Final = b"\0\0\0\0"  # record_len 0: the rest of the lap is empty, go to the next one


class BareRing:
    """The producer side of the floor ring: one ``pack_into`` and one index store per push."""

    def __init__(self, buf: memoryview, ring_bytes: int) -> None:
        self._ctrl = buf[:_CTRL_BYTES].cast("Q")
        self._data = buf[_CTRL_BYTES : _CTRL_BYTES + ring_bytes]
        self._size = ring_bytes
        self._mask = ring_bytes - 1
        self._pos = 0
        self._seq = 0
        self._limit = ring_bytes
        self._encoders: dict[tuple[str, int], tuple[Callable[..., None], int, int, bytes]] = {}

    def push(self, topic: str, payload: bytes, *, ts_init: int) -> None:
        plen = len(payload)
        encoder = self._encoders.get((topic, plen))
        if encoder is None:
            encoder = self._encoder(topic, plen)
        pack, n, tlen, text = encoder
        pos = self._pos
        off = pos & self._mask
        skip = off + n > self._size
        if skip:
            pos += self._size - off
        if pos + n > self._limit:
            self._wait_for_space(pos + n)
        if skip:
            if self._size - off >= 4:
                self._data[off : off + 4] = _WRAP
            off = 0
        seq = self._seq + 1
        pack(self._data, off, n, tlen, seq, ts_init, text, payload)
        self._seq = seq
        self._pos = pos + n
        self._ctrl[_WRITE_POS] = self._pos  # the commit

    def _encoder(self, topic: str, plen: int) -> tuple[Callable[..., None], int, int, bytes]:
        text = topic.encode()
        layout = struct.Struct(f"{_RECORD_HEADER}{len(text)}s{plen}s")
        encoder = (layout.pack_into, layout.size, len(text), text)
        self._encoders[(topic, plen)] = encoder
        return encoder

    def _wait_for_space(self, end: int) -> None:
        while True:
            self._limit = int(self._ctrl[_READ_POS]) + self._size
            if end <= self._limit:
                return
            os.sched_yield()

    def release(self) -> None:
        self._ctrl.release()
        self._data.release()


def _ring_consumer(shared: Any, ring_bytes: int, parent: int) -> None:
    buf = memoryview(shared).cast("B")
    ctrl = buf[:_CTRL_BYTES].cast("Q")
    data = buf[_CTRL_BYTES : _CTRL_BYTES + ring_bytes]
    unpack_len = _RECORD_LEN.unpack_from
    mask = ring_bytes - 1
    read = 0
    count = 0
    streak = 0
    ctrl[_CONSUMER_READY] = 1
    while True:
        write = ctrl[_WRITE_POS]
        if write == read:
            if ctrl[_STOP] and ctrl[_WRITE_POS] == read:
                break
            streak += 1
            if streak < 64:
                continue
            if streak < 320:
                os.sched_yield()
                continue
            if os.getppid() != parent:
                break
            time.sleep(0.0001)
            continue
        streak = 0
        while read < write:
            off = read & mask
            room = ring_bytes - off
            n = unpack_len(data, off)[0] if room >= 4 else 0
            if n == 0:
                read += room
                continue
            bytes(data[off : off + n])  # take a copy, as a queue's get hands one over
            count += 1
            read += n
        ctrl[_READ_POS] = read
        ctrl[_COUNT] = count
    ctrl.release()
    data.release()
    buf.release()


class BareRingBaseline:
    """The floor: a bare SPSC ring in shared memory, drained by a consumer process."""

    name = "bare_ring"
    shape = SHAPE_RECORD

    def __init__(self, ring_bytes: int) -> None:
        if ring_bytes & (ring_bytes - 1):
            raise ValueError(f"ring_bytes must be a power of two, got {ring_bytes}")
        self.ring_bytes = ring_bytes
        # A RawArray lives in an already unlinked file: nothing is ever left in /dev/shm.
        self._shared: Any = _CTX.RawArray(ctypes.c_uint8, _CTRL_BYTES + ring_bytes)
        self._buf = memoryview(self._shared).cast("B")
        self._ring = BareRing(self._buf, ring_bytes)
        self._ctrl = self._buf[:_CTRL_BYTES].cast("Q")
        self._process = _CTX.Process(
            target=_ring_consumer,
            args=(self._shared, ring_bytes, os.getpid()),
            name="bench-bare-ring-consumer",
            daemon=True,
        )
        self._process.start()
        _wait_ready(self._process, lambda: bool(self._ctrl[_CONSUMER_READY]), self.name)
        self.send: Callable[..., object] = self._ring.push

    def received(self) -> int:
        return int(self._ctrl[_COUNT])

    def consumer_pid(self) -> int | None:
        return self._process.pid

    def stop(self, timeout: float = 30.0) -> None:
        self._ctrl[_STOP] = 1
        _join(self._process, timeout)
        self._ring.release()
        self._ctrl.release()
        self._buf.release()
