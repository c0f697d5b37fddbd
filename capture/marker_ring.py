"""The data-marker ring: layout, record format, and the sidecar's validated bulk takes.

Theory of operation
-------------------
The region is a control block and a ring of fixed 48-byte records::

    [control: 64 u64 words][slots × record]
    record: u64 a | u64 b | u64 event_seq_before | u64 obs | u32 stream | u32 kind | u64 rseq

``rseq`` numbers the ring's records from 1 and is written last (the one ``pack_into`` writes the
fields in order): it is the commit. The sidecar reads the ``rseq`` words of a window first,
accepts the prefix that carries the expected numbers, only then copies those records, and
returns ``READ_SEQ`` to free them. Kinds:

- ``KIND_OBS``: one observation; ``a`` = ts_event, ``b`` = ts_init, ``obs`` its number.
- ``KIND_NAME``: 32 bytes of an instrument id in ``a..obs`` (chunks precede their stream).
- ``KIND_STREAM``: defines ``stream`` (a slot the kernel assigns densely from 0): ``a`` = class
  code (index in ``DataMarkerClass.all()``), ``b`` = byte length of the id in the chunks before.

A new (class, instrument) stream costs one dictionary miss and its definition records, written
all together or not at all; the kernel's dict maps it to its slot from then on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ringtape.capture import control

# Control block words (capture/control.py has the layout both rings share).
WAKE_SEQ: Final = control.WAKE_SEQ  # a marker-ring rseq here
WAKE_NEVER: Final = control.WAKE_NEVER
# producer line
CLOSE_REQUEST: Final = (
    control.CLOSE_REQUEST
)  # 1: drain up to FINAL_RSEQ, account up to FINAL_OBS, seal, exit
FINAL_OBS: Final = 9
FINAL_RSEQ: Final = 10
# consumer line
READ_SEQ: Final = control.READ_SEQ
DURABLE_MARKER_SEQ: Final = control.DURABLE  # highest marker seq fdatasync'd
DURABLE_OBS: Final = 19  # every observation up to here is accounted for by durable records
SIDECAR_STATE: Final = control.STATE
SIDECAR_ERRNO: Final = control.ERRNO
SIDECAR_PID: Final = control.CHILD_PID
GAP_RECORDS: Final = 24  # gap records the sidecar wrote
GAP_OBSERVATIONS: Final = 25  # observations those gaps cover
CONTROL_BYTES: Final = control.CONTROL_BYTES
MARKER_MAGIC: Final = 0x524E54504D41524B  # "KRAMPTNR"

KIND_OBS: Final = 1
KIND_STREAM: Final = 2
KIND_NAME: Final = 3

RECORD: Final = struct.Struct("<QQQQIIQ")
RECORD_SIZE: Final = RECORD.size  # 48
NAME_RECORD: Final = struct.Struct("<32sIIQ")
NAME_CHUNK: Final = 32
MAX_INSTRUMENT_BYTES: Final = 1024
RECORD_DTYPE: Final = np.dtype(
    [
        ("a", "<u8"),
        ("b", "<u8"),
        ("esb", "<u8"),
        ("obs", "<u8"),
        ("stream", "<u4"),
        ("kind", "<u4"),
        ("rseq", "<u8"),
    ]
)
assert RECORD_DTYPE.itemsize == RECORD_SIZE

MAX_TAKE: Final = 8192


class ProtocolError(RuntimeError):
    """The ring holds something the kernel side never writes."""


@dataclass(frozen=True)
class MarkerGeometry:
    """``capacity`` records may be in flight; ``slots`` (a power of two) hold them."""

    capacity: int
    slots: int

    @classmethod
    def for_capacity(cls, capacity: int) -> MarkerGeometry:
        return cls(capacity, 1 << max(0, (capacity - 1).bit_length()))

    @property
    def region_size(self) -> int:
        return CONTROL_BYTES + self.slots * RECORD_SIZE


class MarkerViews:
    """Typed views of a mapped marker region; both sides build one."""

    def __init__(self, buf: memoryview, geometry: MarkerGeometry) -> None:
        self.geometry = geometry
        self.control = control.ControlBlock(buf)
        self.ctrl = self.control.words
        self.data = buf[CONTROL_BYTES : geometry.region_size]
        self.records = np.frombuffer(self.data, dtype=RECORD_DTYPE)
        self.rseq = self.records["rseq"]  # the commit words

    def init_control(self, producer_pid: int) -> None:
        g = self.geometry
        self.control.init(MARKER_MAGIC, g.slots, g.capacity, producer_pid)

    def mismatch(self, producer_pid: int) -> str | None:
        g = self.geometry
        return self.control.mismatch(MARKER_MAGIC, g.slots, g.capacity, producer_pid)

    def release(self) -> None:
        del self.records, self.rseq
        self.data.release()
        self.control.release()


class MarkerRingReader:
    """The consumer's side of the marker ring: validated bulk takes (see capture/markers.py)."""

    def __init__(self, views: MarkerViews) -> None:
        self.v = views
        g = views.geometry
        self.smask = g.slots - 1
        self.mask = np.uint64(g.slots - 1)
        self.max_take = min(MAX_TAKE, g.capacity)
        self.read = int(views.ctrl[READ_SEQ])

    def has(self, rseq: int) -> bool:
        """Whether record ``rseq`` (> read) is published: one look at its commit word."""
        return int(self.v.rseq[rseq & self.smask]) == rseq

    def frontier_problem(self) -> str | None:
        """Why the next slot holds a commit word the kernel never writes there (``None``: the
        next record is published, or not yet: the slot then holds the record of the lap
        before, or nothing)."""
        nxt = self.read + 1
        found = int(self.v.rseq[nxt & self.smask])
        if found in (nxt, max(0, nxt - self.v.geometry.slots)):
            return None
        return f"marker ring record {nxt}: its slot holds record {found}"

    def has_next(self) -> bool:
        nxt = self.read + 1
        return int(self.v.rseq[nxt & self.smask]) == nxt

    def take(self) -> npt.NDArray[np.void] | None:
        """Copy out the published records after ``read`` and free their slots."""
        if not self.has_next():
            return None
        window = min(256, self.max_take)
        while True:  # widen the look-ahead geometrically while everything in it is published
            first = self.read + 1
            seqs = np.arange(first, first + window, dtype=np.uint64)
            idx = (seqs & self.mask).astype(np.intp)
            ok = self.v.rseq[idx] == seqs  # the commit words first, then the bodies
            n = window if bool(ok.all()) else int(np.argmin(ok))
            if n < window or window == self.max_take:
                break
            window = min(self.max_take, window * 4)
        rows = self.v.records[idx[:n]]
        if not bool(np.all(rows["rseq"] == seqs[:n])):
            raise ProtocolError(f"ring records after {self.read} changed while being read")
        self.read += n
        self.v.ctrl[READ_SEQ] = self.read
        return rows
