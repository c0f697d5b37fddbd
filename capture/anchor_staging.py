"""The data regions that carry snapshots to the writer, sized ahead of need off the kernel thread.

A slot's snapshot must fit its data region. Allocating a region (``posix_fallocate`` of tmpfs
pages, then mapping them all) costs about a millisecond per few MiB, tens of milliseconds for a
large snapshot: too much for the kernel's thread. So a thread of the kernel process keeps every
slot a step ahead:

1. at construction, each slot gets a region of ``reserve_bytes`` (when that is not 0);
2. after each snapshot of ``n`` bytes, every slot whose region (or the one prepared for it)
   could not take a snapshot of ``n + n / GROWTH_HEADROOM`` bytes gets a larger one prepared;
3. a region the kernel stops using is unmapped and unlinked by the thread too.

The thread spends its time in ``posix_fallocate``, ``mmap`` and ``munmap``, which release the
GIL, so appends on the kernel thread go on meanwhile. Only a snapshot larger than anything
prepared (the first large one, without a reserve) makes the kernel allocate a region itself.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Final

from ringtape.capture import anchor_board as board
from ringtape.capture.shm import SharedRegion, unlink_name

GROWTH_HEADROOM: Final = 4  # prepare for a snapshot a quarter larger than the last one


class StagingRegions:
    """The data regions of one anchor board (see the module docstring)."""

    def __init__(self, board_name: str, reserve_bytes: int = 0) -> None:
        self.board_name = board_name
        self.current: list[SharedRegion | None] = [None] * board.SLOTS
        self.numbers = [0] * board.SLOTS  # the region number of each slot's current region
        self.allocated_by_kernel = 0  # regions the kernel had to allocate on its own thread
        self._last_number = [0] * board.SLOTS
        self._ready: list[SharedRegion | None] = [None] * board.SLOTS
        self._ready_numbers = [0] * board.SLOTS
        self._wanted = [0] * board.SLOTS  # capacity asked of the thread, per slot
        self._retired: list[SharedRegion] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if reserve_bytes > 0:
            for slot in range(board.SLOTS):
                self._want(slot, board.data_capacity(reserve_bytes))

    def region_for(self, slot: int, size: int) -> SharedRegion:
        """The region ``slot`` holds a snapshot of ``size`` bytes in: the current one, the one
        prepared for it, or (when neither is large enough) one allocated now."""
        current = self.current[slot]
        if current is not None and current.size >= size:
            return current
        with self._cv:
            fresh = self._ready[slot]
            number = self._ready_numbers[slot]
            if fresh is not None and fresh.size >= size:
                self._ready[slot] = None
            else:
                fresh = None
                number = self._number(slot)
        if fresh is None:
            self.allocated_by_kernel += 1
            fresh = SharedRegion.create(
                board.data_capacity(size), name=board.data_name(self.board_name, slot, number)
            )
        with self._cv:
            if current is not None:
                self._retired.append(current)
                self._cv.notify()
        self.current[slot] = fresh
        self.numbers[slot] = number
        return fresh

    def capacity(self) -> int:
        """The largest snapshot every slot takes without allocating on the caller's thread."""
        with self._cv:
            return min(
                max(
                    current.size if current is not None else 0,
                    ready.size if ready is not None else 0,
                )
                for current, ready in zip(self.current, self._ready, strict=True)
            )

    def plan_ahead(self, size: int) -> None:
        """After a snapshot of ``size`` bytes: have every slot ready for a somewhat larger one."""
        capacity = board.data_capacity(size + size // GROWTH_HEADROOM)
        for slot in range(board.SLOTS):
            self._want(slot, capacity)

    def close(self) -> None:
        """Stop the thread; unmap and unlink every region."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
        regions = [*self.current, *self._ready, *self._retired]
        self.current = [None] * board.SLOTS
        self._ready = [None] * board.SLOTS
        self._retired = []
        for region in regions:
            if region is not None:
                _free(region)

    # -- the thread -------------------------------------------------------------------------

    def _want(self, slot: int, capacity: int) -> None:
        current = self.current[slot]
        with self._cv:
            ready = self._ready[slot]
            have = max(
                current.size if current is not None else 0,
                ready.size if ready is not None else 0,
                self._wanted[slot],
            )
            if have >= capacity:
                return
            self._wanted[slot] = capacity
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="anchor-staging", daemon=True
                )
                self._thread.start()
            self._cv.notify()

    def _number(self, slot: int) -> int:
        """The next region number of ``slot`` (call with the lock held)."""
        self._last_number[slot] += 1
        return self._last_number[slot]

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._retired and not self._pending():
                    self._cv.wait()
                if self._stopping:
                    return
                retired, self._retired = self._retired, []
                job = self._pending()
                if job is not None:
                    slot, capacity = job
                    number = self._number(slot)
            for region in retired:
                _free(region)
            if job is None:
                continue
            try:
                fresh = SharedRegion.create(
                    capacity, name=board.data_name(self.board_name, slot, number)
                )
            except OSError:  # /dev/shm full: the kernel allocates on demand, and fails then
                with self._cv:
                    self._wanted[slot] = 0
                    self._cv.wait(1.0)  # not in a tight loop
                continue
            with self._cv:
                old = self._ready[slot]
                self._ready[slot] = fresh
                self._ready_numbers[slot] = number
                if old is not None:
                    self._retired.append(old)

    def _pending(self) -> tuple[int, int] | None:
        """A slot whose wanted capacity is not prepared yet (call with the lock held)."""
        for slot in range(board.SLOTS):
            ready = self._ready[slot]
            have = ready.size if ready is not None else 0
            current = self.current[slot]
            if current is not None:
                have = max(have, current.size)
            if self._wanted[slot] > have:
                return slot, self._wanted[slot]
        return None


def _free(region: SharedRegion) -> None:
    region.close()
    with contextlib.suppress(OSError):
        unlink_name(region.name)  # gone already once the writer has mapped it
