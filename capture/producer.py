"""The producer: the kernel thread's hot path into the entry ring.

``append`` reads top to bottom: check the thread, look up the entry's encoder, reserve room
(the slow path only at a lap end, when the consumer's last known position is reached, or after
a halt or a close), encode the whole record in place with one ``pack_into``, publish its
position in the index slot, and ring the doorbell only if the writer asked to be woken at this
seq. No system call, no lock, no allocation beyond Python's own.

Rules of this module:

1. One thread produces (``EventStore.open``'s caller, the *owner*). A call from any other thread
   raises :class:`~ringtape.capture.errors.WrongThread` before anything is reserved or written,
   and the owner goes on as if nothing happened. A store opened with
   ``StoreOptions(producers="threads")`` serialises its callers with a lock instead, making each
   caller the owner for the length of its call.
2. Every refusal is decided by the entry and the config alone, before anything is written:
   ``EntryTooLarge`` (topic, type or payload over the format's limits, or a record over the
   ring's), ``ValueError``/``TypeError`` for a bad field (a negative or non-integer ``ts_init``).
3. The doorbell rings at most once per writer sleep: the writer names the seq it wants to be
   woken at (``WAKE_SEQ``, a new value per sleep), and the producer rings once per value.

Encoding: a record is the 40-byte header, the topic and payload type (``text``), and the
payload. Encoders are cached per (topic, payload type); the struct that writes a record depends
only on the text's length and a 64-byte bucket of the payload's length, so a stream whose
payload lengths vary by a few bytes (JSON, msgpack) reuses a handful of structs. The struct
writes the payload zero-padded to its bucket: the padding lands in free ring space after the
record (room is reserved for it), where the next record overwrites it. Payloads of
``LARGE_PAYLOAD`` bytes or more are copied with a slice assignment instead.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from ringtape.capture.errors import EntryTooLarge, StoreHalted, StoreNotOpen, WrongThread
from ringtape.capture.ring import READ_POS, READ_SEQ, WAKE_NEVER, WAKE_SEQ, RingGeometry, RingViews
from ringtape.storage.format.entry import (
    ENTRY_HEADER_SIZE,
    MAX_PAYLOAD_LEN,
    MAX_PAYLOAD_TYPE_LEN,
    MAX_TOPIC_LEN,
)

BUCKET_SHIFT: Final = 6
BUCKET: Final = 1 << BUCKET_SHIFT  # payload lengths are padded up to a multiple of this
LARGE_PAYLOAD: Final = 64 * BUCKET  # and from this size on copied by slice assignment
_HEAD: Final = struct.Struct("<HHB3x")  # topic_len, payload_type_len, flags (bytes 8..16)
_SEQ_BYTES: Final = slice(16, 24)

# (max payload, fixed bytes, bytes 8..16 of the header, text, packers by payload bucket)
_Encoder = tuple[int, int, bytes, bytes, list[Any]]


class Host(Protocol):
    """What the producer asks of its store on the slow path."""

    def halted_error(self) -> StoreHalted | None:
        """The error to raise when the store has halted (``None``: it has not)."""
        ...

    def stall(self, stalled_for_s: float) -> StoreHalted:
        """The ring stayed full past the halt threshold: halt (with the right reason)."""
        ...


def _no_bell() -> None:
    return None


class Producer:
    """The entry ring's producer side (see the module docstring)."""

    __slots__ = (
        "_bell",
        "_by_text_len",
        "_ctrl",
        "_data",
        "_encoders",
        "_fast_limit",
        "_geometry",
        "_host",
        "_index",
        "_now",
        "_rang",
        "_rmask",
        "_seq_limit",
        "_smask",
        "_threshold_s",
        "owner",
        "owner_thread",
        "pos",
        "seq",
    )
    _ctrl: Any
    _index: Any
    _data: Any
    _bell: Callable[[], None]

    def __init__(
        self, geometry: RingGeometry, now: Callable[[], int], host: Host, threshold_s: float
    ) -> None:
        self._geometry = geometry
        self._rmask = geometry.ring_bytes - 1
        self._smask = geometry.slots - 1
        self._now = now
        self._host = host
        self._threshold_s = threshold_s
        self._encoders: dict[tuple[str, str], _Encoder] = {}
        self._by_text_len: dict[int, list[Any]] = {}
        self.owner = -1  # no thread may append until bind()
        self.owner_thread: threading.Thread | None = None
        self.unbind()

    # -- lifecycle ------------------------------------------------------------------------

    def bind(self, views: RingViews, bell: Callable[[], None], owner: threading.Thread) -> None:
        """Produce into a fresh ring from seq 1, as thread ``owner``."""
        self._ctrl = views.ctrl
        self._index = views.index
        self._data = views.data
        self._bell = bell
        self._rang = 0
        self.seq = 0
        self.pos = views.first_position
        self.take_over(owner)
        self._fast_limit = self.pos + self._geometry.ring_bytes
        self._seq_limit = self._geometry.capacity

    def unbind(self) -> None:
        """No ring: every append takes the slow path, which says why it cannot append."""
        self.stop()
        self._ctrl = None
        self._index = None
        self._data = None
        self._bell = _no_bell
        self._rang = 0
        self.seq = 0
        self.pos = 0

    def take_over(self, thread: threading.Thread) -> None:
        """Make ``thread`` the producer (``open()``; ``seal()`` once the owner has ended)."""
        self.owner_thread = thread
        self.owner = thread.ident if thread.ident is not None else -1

    def stop(self) -> None:
        """Send every later append to the slow path (a halt or a close; any thread may)."""
        self._fast_limit = -1
        self._seq_limit = -1

    # -- the hot path ---------------------------------------------------------------------

    def append(
        self, topic: str, payload: bytes, *, payload_type: str = "", ts_init: int | None = None
    ) -> int:
        """Append one entry; returns its seq (see ``EventStore.append``)."""
        if threading.get_ident() != self.owner:
            raise self.wrong_thread()
        if ts_init is None:
            ts_init = self._now()
        plen = len(payload)
        try:
            max_plen, fixed, head, text, packs = self._encoders[(topic, payload_type)]
        except KeyError:
            max_plen, fixed, head, text, packs = self._encoder(topic, payload_type)
        if plen > max_plen:
            raise self._too_large(topic, payload_type, plen)
        n = fixed + plen
        pos = self.pos
        seq = self.seq + 1
        if pos + n + BUCKET > self._fast_limit or seq > self._seq_limit:
            pos = self._make_room(pos, n + BUCKET, seq)
        try:
            pack = packs[plen >> BUCKET_SHIFT]
            pack(self._data, pos & self._rmask, n, plen, head, seq, ts_init, text, payload)
        except (IndexError, TypeError, struct.error) as exc:
            self._write_slowly(exc, packs, pos, n, plen, head, seq, ts_init, text, payload)
        self._index[seq & self._smask] = pos  # the commit: the consumer trusts nothing before
        self.seq = seq
        self.pos = pos + n
        wake = self._ctrl[WAKE_SEQ]
        if seq >= wake and wake != self._rang:
            self._rang = wake
            self._bell()
        return seq

    def append_record(self, record: bytes) -> int:
        """Append a record encoded elsewhere (``encode_entry``: linked ids, say); its seq is
        filled in here. The general path: a slice copy, no encoder."""
        if threading.get_ident() != self.owner:
            raise self.wrong_thread()
        n = len(record)
        if n > self._geometry.max_record:
            raise EntryTooLarge(self._ring_limit_text(n))
        pos = self.pos
        seq = self.seq + 1
        if pos + n > self._fast_limit or seq > self._seq_limit:
            pos = self._make_room(pos, n, seq)
        off = pos & self._rmask
        data = self._data
        data[off : off + n] = record
        data[off + 16 : off + 24] = seq.to_bytes(8, "little")
        self._index[seq & self._smask] = pos
        self.seq = seq
        self.pos = pos + n
        wake = self._ctrl[WAKE_SEQ]
        if seq >= wake and wake != self._rang:
            self._rang = wake
            self._bell()
        return seq

    # -- encoders -------------------------------------------------------------------------

    def _encoder(self, topic: str, payload_type: str) -> _Encoder:
        if not isinstance(topic, str) or not isinstance(payload_type, str):
            raise TypeError(
                f"topic and payload_type must be str, got {type(topic).__name__} and"
                f" {type(payload_type).__name__}"
            )
        t = topic.encode()
        pt = payload_type.encode()
        if len(t) > MAX_TOPIC_LEN or len(pt) > MAX_PAYLOAD_TYPE_LEN:
            raise EntryTooLarge(
                f"topic ({len(t)} B) or payload_type ({len(pt)} B) over the format's limits"
                f" ({MAX_TOPIC_LEN} B, {MAX_PAYLOAD_TYPE_LEN} B)"
            )
        text = t + pt
        fixed = ENTRY_HEADER_SIZE + len(text)
        # The ring's limit counts the record and the padding the struct writes after it.
        max_plen = min(MAX_PAYLOAD_LEN, self._geometry.max_record - fixed - BUCKET)
        packs = self._by_text_len.setdefault(len(text), [None] * (LARGE_PAYLOAD >> BUCKET_SHIFT))
        encoder = (max_plen, fixed, _HEAD.pack(len(t), len(pt), 0), text, packs)
        self._encoders[(topic, payload_type)] = encoder
        return encoder

    def _write_slowly(
        self,
        exc: Exception,
        packs: list[Any],
        pos: int,
        n: int,
        plen: int,
        head: bytes,
        seq: int,
        ts_init: int,
        text: bytes,
        payload: bytes,
    ) -> None:
        """The first record of a new (text length, payload bucket) shape, a large payload, or a
        bad field (raised as a clear error; nothing is published)."""
        off = pos & self._rmask
        bucket = plen >> BUCKET_SHIFT
        if isinstance(exc, TypeError) and bucket < len(packs) and packs[bucket] is None:
            size = (bucket + 1) << BUCKET_SHIFT
            layout = struct.Struct(f"<II8sQQ8x{len(text)}s{size}s")
            packs[bucket] = layout.pack_into
        elif not isinstance(exc, IndexError):
            raise _bad_field(exc, ts_init, payload) from None
        try:
            if bucket < len(packs):
                packs[bucket](self._data, off, n, plen, head, seq, ts_init, text, payload)
                return
            layout = struct.Struct(f"<II8sQQ8x{len(text)}s")
            layout.pack_into(self._data, off, n, plen, head, seq, ts_init, text)
            start = off + ENTRY_HEADER_SIZE + len(text)
            self._data[start : start + plen] = payload
        except (TypeError, ValueError, struct.error) as again:
            raise _bad_field(again, ts_init, payload) from None

    # -- the slow path --------------------------------------------------------------------

    def _make_room(self, pos: int, n: int, seq: int) -> int:
        """Skip to the next lap if ``n`` bytes do not fit before the ring's end, refresh the
        limits from the consumer, and wait while full — then halt. Returns the position to
        write at; ``_fast_limit`` lets the hot path skip all this until the next lap end or
        the consumer's last known read position."""
        error = self._host.halted_error()
        if error is not None:
            raise error
        ctrl = self._ctrl
        if ctrl is None:
            raise StoreNotOpen("no run is open: call open() first")
        ring_bytes = self._geometry.ring_bytes
        if (pos & self._rmask) + n > ring_bytes:
            pos = (pos + self._rmask) & ~self._rmask  # no room before the end: next lap
        lap_end = (pos & ~self._rmask) + ring_bytes
        started = 0.0
        tries = 0
        while True:
            pos_limit = int(ctrl[READ_POS]) + ring_bytes
            self._seq_limit = int(ctrl[READ_SEQ]) + self._geometry.capacity
            if pos + n <= pos_limit and seq <= self._seq_limit:
                self._fast_limit = min(pos_limit, lap_end)
                error = self._host.halted_error()
                if error is not None:  # halted meanwhile (the monitor thread): stay stopped
                    self.stop()
                    raise error
                return pos
            error = self._host.halted_error()
            if error is not None:
                raise error
            wake = ctrl[WAKE_SEQ]
            if wake != WAKE_NEVER and wake != self._rang:
                self._rang = wake
                self._bell()
            now = time.monotonic()
            if not started:
                started = now
            elif now - started >= self._threshold_s:
                self.stop()
                raise self._host.stall(now - started)
            tries += 1
            if tries < 64:
                os.sched_yield()
            else:
                time.sleep(0.0001)

    # -- refusals -------------------------------------------------------------------------

    def wrong_thread(self) -> WrongThread:
        if self.owner == -1:
            return WrongThread("no run is open: call open() first (on the thread that appends)")
        return WrongThread(
            f"this store's producer is thread {self.owner} (the one that called open());"
            f" thread {threading.get_ident()} may not append to it. Nothing was written. Open"
            ' it with StoreOptions(producers="threads") to append from several threads.'
        )

    def _ring_limit_text(self, n: int) -> str:
        g = self._geometry
        return (
            f"entry of {n} bytes exceeds the ring's limit of {g.max_record} bytes"
            f" (channel_capacity {g.capacity})"
        )

    def _too_large(self, topic: str, payload_type: str, plen: int) -> EntryTooLarge:
        if plen > MAX_PAYLOAD_LEN:
            return EntryTooLarge(
                f"payload of {plen} bytes is over the format's limit of {MAX_PAYLOAD_LEN} bytes"
            )
        n = ENTRY_HEADER_SIZE + len(topic.encode()) + len(payload_type.encode()) + plen
        return EntryTooLarge(self._ring_limit_text(n + BUCKET))


def _bad_field(exc: Exception, ts_init: object, payload: object) -> Exception:
    """A clear error for an entry ``pack_into`` refused (nothing was published)."""
    if not isinstance(ts_init, int) or isinstance(ts_init, bool):
        return TypeError(f"ts_init must be an int (ns since the epoch), got {ts_init!r}")
    if not 0 <= ts_init < 1 << 64:
        return ValueError(f"ts_init must be >= 0 (ns since the epoch), got {ts_init}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        return TypeError(f"payload must be bytes, got {type(payload).__name__}")
    return ValueError(f"the entry could not be encoded: {exc}")
