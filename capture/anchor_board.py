"""The anchor board: where the kernel hands snapshots to the writer process, and learns their fate.

Theory of operation
-------------------
A snapshot anchor must cost the kernel's thread one memory copy and no more: no wait for
durability, no compression, no hashing, no file I/O. So ``anchor(snapshot)`` copies the bytes
into a *slot* of shared memory, appends the ``SnapshotAnchor`` entry, and returns. The writer
process takes the slot once it has taken that entry from the entry ring (the entries up to the
watermark are then in the same or an earlier commit), compresses and hashes the snapshot in a
thread of its own, writes the blob durably and reports the result in the board's log.

The board is a small shared region: a control block, ``SLOTS`` slots of ``SLOT_WORDS`` words,
then a log of results. Each slot's snapshot bytes live in a data region of their own, named
after the board and a region number (``capture/anchor_staging.py`` sizes them)::

    slot word  0 GEN            kernel: even while the slot is stable, odd while it writes it;
                                every fill advances it by 2
               1 PUBLISHED_GEN  kernel: the GEN whose anchor entry is appended (written last)
               2 ANCHOR_ID      3 ENTRY_SEQ   4 WATERMARK   5 SIZE          kernel, under GEN
               6 REGION         kernel: which data region holds the bytes (its number)
               7 CAPACITY       kernel: that region's size
               8 TAKEN_GEN      writer: the GEN it started on
               9 DONE_GEN       writer: the GEN it finished (its result is in the log)

    log        RESULT_COUNT, then LOG_ENTRIES entries of (slot, gen, result, stored bytes);
               entry ``i`` is at ``i % LOG_ENTRIES``; only the writer writes the log

Every word has exactly one writer, so no step needs an atomic read-modify-write across the
processes. A slot is *free* when the writer is not working on it and nothing waits in it
(``TAKEN_GEN == DONE_GEN == PUBLISHED_GEN``), *waiting* when a published anchor has not been
taken (``PUBLISHED_GEN > TAKEN_GEN``), *busy* otherwise.

The kernel fills a free slot (else, unless anchors are mandatory, refills a waiting one: the
anchor waiting there is superseded, keeps its entry and gets no blob; else it skips the
anchor), appends the entry, and publishes. The writer takes a published slot once it has taken
the anchor's entry from the entry ring: it sets ``TAKEN_GEN``, reads GEN, the fields and the
snapshot, then GEN again. GEN is a sequence lock: only a GEN that was even, equal to the
published one and unchanged across the read means the bytes are whole; otherwise the kernel
refilled the slot meanwhile and that gen is reported superseded. Results name the slot and gen,
never an anchor id the writer may have read half-written: the kernel knows which anchor each gen
of each slot held. A result can say DURABLE for an anchor the kernel counted superseded (the
writer had read it whole just before the refill); the kernel then counts it durable.
"""

from __future__ import annotations

from typing import Final

from ringtape.capture import control
from ringtape.capture.shm import SharedRegion

BOARD_MAGIC: Final = 0x3244524F42524E41  # "ANRBORD2"
SLOTS: Final = 2
SLOT_BASE: Final = control.CONTROL_WORDS
SLOT_WORDS: Final = 16
LOG_BASE: Final = SLOT_BASE + SLOTS * SLOT_WORDS
LOG_ENTRIES: Final = 16  # results between two collects: at most two gens per slot
LOG_ENTRY_WORDS: Final = 4
BOARD_BYTES: Final = (LOG_BASE + 1 + LOG_ENTRIES * LOG_ENTRY_WORDS) * 8

GEN: Final = 0
PUBLISHED_GEN: Final = 1
ANCHOR_ID: Final = 2
ENTRY_SEQ: Final = 3
WATERMARK: Final = 4
SIZE: Final = 5
REGION: Final = 6
CAPACITY: Final = 7
TAKEN_GEN: Final = 8
DONE_GEN: Final = 9

RESULT_COUNT: Final = LOG_BASE

DURABLE: Final = 1
ALIAS: Final = 2  # durable, as a small alias of an earlier blob with the same content
FAILED: Final = 3
SUPERSEDED: Final = 4

MIN_DATA_BYTES: Final = 1 << 16


def word(slot: int, field: int) -> int:
    """The board word of ``field`` in ``slot``."""
    return SLOT_BASE + slot * SLOT_WORDS + field


def log_word(index: int) -> int:
    """The first board word of result log entry ``index`` (slot, gen, result, stored bytes)."""
    return LOG_BASE + 1 + (index % LOG_ENTRIES) * LOG_ENTRY_WORDS


def data_prefix(board_name: str) -> str:
    """What the names of a board's data regions start with."""
    return f"{board_name}-s"


def data_name(board_name: str, slot: int, region: int) -> str:
    """The shared-memory name of ``slot``'s data region number ``region``."""
    return f"{data_prefix(board_name)}{slot}-{region}"


def data_capacity(size: int) -> int:
    """The data region size for a snapshot of ``size`` bytes: a power of two, at least 64 KiB."""
    return max(MIN_DATA_BYTES, 1 << max(0, (size - 1).bit_length()))


class BoardViews:
    """The board's words, as both sides map them."""

    def __init__(self, region: SharedRegion) -> None:
        self.region = region
        self.control = control.ControlBlock(region.buf)
        self.words = region.buf[:BOARD_BYTES].cast("Q")

    def init(self, producer_pid: int) -> None:
        self.control.init(BOARD_MAGIC, SLOTS, BOARD_BYTES, producer_pid)

    def release(self) -> None:
        self.words.release()
        self.control.release()
