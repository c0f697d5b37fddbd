"""Snapshot blobs, writer side: a thread of the writer process that turns anchor slots into blobs.

The writer's loop calls :meth:`BlobWriter.poll` after each commit, and when it wakes idle,
with the last seq it took (and made durable): a slot whose anchor entry is among them (so every
entry up to its watermark is durable too) is queued. The thread then, for each queued slot
(``capture/anchor_board.py`` has the protocol):

1. marks the published gen taken (the kernel now keeps off the slot), checks the sequence lock
   and maps the slot's data region (once per region);
2. hashes the snapshot (xxh3-128) and compresses it (zstd, with content size and checksum);
   both release the GIL, so the writer's own loop goes on draining the ring meanwhile, and the
   thread runs at a lower priority (nice 10), so the kernel and the writer's loop win the CPU;
3. checks the sequence lock again: a slot the kernel refilled meanwhile was superseded;
4. writes ``blobs/anchor-<id>.blob`` durably (temp file, fsync, rename, fsync ``blobs/``), or a
   small alias blob naming an earlier blob of this run with the same content;
5. logs the result for that slot and gen and frees the slot. A blob that cannot be written
   fails that anchor only (the error text goes to the board); the entries go on.

With ``SnapshotAnchored`` retention the thread also keeps the run's blob space bounded: once an
anchor's blob is durable, blobs older than the anchor before it are removed (an older anchor is
then no restore point, which a newer one supersedes anyway).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from pathlib import Path
from typing import Final

from ringtape.capture import anchor_board as board
from ringtape.capture.faults import FaultInjector
from ringtape.capture.shm import SharedRegion, unlink_family
from ringtape.storage.format.blob import (
    CODEC_ALIAS,
    CODEC_ZSTD,
    BlobHeader,
    compressor,
    encode_blob_header,
    snapshot_hash,
)
from ringtape.storage.run.blobs import blob_ref, write_blob_file
from ringtape.storage.run.layout import BLOB_DIR

KEEP_BLOBS: Final = 2  # complete blobs a SnapshotAnchored run keeps while it runs
COMPRESSION_LEVEL: Final = 3
# Compressing a large snapshot keeps a core busy for tens of milliseconds; on a small machine
# the kernel's thread must win that core whenever it wants it.
BLOB_THREAD_NICE: Final = 10


class BlobWriter:
    """The blob thread of one writer process (see the module docstring)."""

    def __init__(
        self,
        board_name: str,
        run_dir: Path,
        run_id: str,
        faults: FaultInjector,
        *,
        prune: bool,
    ) -> None:
        self.region = SharedRegion.attach(board_name)
        self.views = board.BoardViews(self.region)
        self.board_name = board_name
        self.run_dir = run_dir
        self.run_id = run_id
        self.faults = faults
        self.prune = prune
        self._data: dict[tuple[int, int], SharedRegion] = {}
        self._queued: set[int] = set()
        self._queue: deque[tuple[int, int]] = deque()  # (slot, taken seq when queued)
        self._cv = threading.Condition()
        self._stopping = False
        self._final_seq = 0  # the last seq taken, once close() was called
        self._by_hash: dict[bytes, str] = {}  # content hash -> a complete blob of this run
        self._complete: list[tuple[int, str, str]] = []  # (anchor id, ref, target ref)
        self._compressor = compressor(COMPRESSION_LEVEL)
        self._thread = threading.Thread(target=self._run, name="blob-writer", daemon=True)
        self._thread.start()

    # -- the writer loop's side -------------------------------------------------------------

    def poll(self, taken_seq: int) -> None:
        """Queue every slot holding a published anchor whose entry is at or before
        ``taken_seq`` (so every entry up to its watermark is in a commit)."""
        words = self.views.words
        for s in range(board.SLOTS):
            if s in self._queued:
                continue
            if int(words[board.word(s, board.PUBLISHED_GEN)]) <= self._taken_gen(s):
                continue
            # ENTRY_SEQ is written before PUBLISHED_GEN: read after it, it is this gen's entry
            # or a newer one's, never an older one's.
            entry = int(words[board.word(s, board.ENTRY_SEQ)])
            if entry and entry <= taken_seq:
                with self._cv:
                    self._queued.add(s)
                    self._queue.append((s, taken_seq))
                    self._cv.notify()

    def close(self, taken_seq: int) -> None:
        """Finish every anchor whose entry was taken, then end the thread and unmap."""
        with self._cv:
            self._final_seq = taken_seq
            self._stopping = True
            self._cv.notify()
        self._thread.join()
        for data in self._data.values():
            data.close()
        self._data.clear()
        # Regions the kernel prepared that were never used: a kernel that died cannot unlink
        # them, and nobody else will map them now.
        unlink_family(board.data_prefix(self.board_name))
        self.views.release()
        self.region.close()

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # Linux: a thread's nice value is its own
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BLOB_THREAD_NICE)
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                stopping = not self._queue
            if stopping:
                # Polled here, not in close(): a slot being taken then would have been passed
                # over. Each gen is taken once, so this ends.
                self.poll(self._final_seq)
                if not self._queue:
                    return
            with self._cv:
                slot, taken_seq = self._queue.popleft()
            try:
                self._take(slot, taken_seq)
            finally:
                with self._cv:
                    self._queued.discard(slot)

    def _taken_gen(self, slot: int) -> int:
        return int(self.views.words[board.word(slot, board.TAKEN_GEN)])

    def _take(self, slot: int, taken_seq: int) -> None:
        """Take the anchor published in ``slot`` (if its entry is taken) and finish it."""
        words = self.views.words

        def field(name: int) -> int:
            return int(words[board.word(slot, name)])

        published = field(board.PUBLISHED_GEN)
        if published <= self._taken_gen(slot) or field(board.ENTRY_SEQ) > taken_seq:
            return  # nothing new, or a newer anchor whose entry is not taken yet: poll again
        words[board.word(slot, board.TAKEN_GEN)] = published  # busy: the kernel keeps off
        if field(board.GEN) != published:  # refilled after it was published
            self._finish(slot, published, board.SUPERSEDED, 0)
            return
        anchor_id, watermark, size = (
            field(board.ANCHOR_ID),
            field(board.WATERMARK),
            field(board.SIZE),
        )
        data = self._region(slot, field(board.REGION), field(board.CAPACITY))
        self.faults.blob_point("blob_taken", anchor_id)
        view = data.buf[:size]
        try:
            digest = snapshot_hash(view)
            target = self._by_hash.get(digest)
            stored = target.encode() if target else self._compressor.compress(view)
        finally:
            view.release()
        if field(board.GEN) != published:  # refilled while read: what was read is not whole
            self._finish(slot, published, board.SUPERSEDED, 0)
            return
        ref = blob_ref(anchor_id)
        header = BlobHeader(
            CODEC_ALIAS if target else CODEC_ZSTD, anchor_id, watermark, size, len(stored), digest,
            self.run_id,
        )  # fmt: skip
        try:
            written = write_blob_file(
                self.run_dir,
                ref,
                [encode_blob_header(header), stored],
                hook=self.faults.blob_write_hook(anchor_id),
            )
            self.faults.blob_point("blob_durable", anchor_id)
        except OSError as exc:
            self.views.control.set_error_text(f"anchor {anchor_id}: {exc}")
            self._finish(slot, published, board.FAILED, 0)
            return
        if target is None:
            self._by_hash[digest] = ref
        self._complete.append((anchor_id, ref, target or ref))
        self._finish(slot, published, board.ALIAS if target else board.DURABLE, written)
        if self.prune:
            self._prune()

    def _finish(self, slot: int, gen: int, result: int, stored: int) -> None:
        """Log the result of ``gen`` of ``slot``, then free the slot (DONE_GEN, last)."""
        words = self.views.words
        count = int(words[board.RESULT_COUNT])
        base = board.log_word(count)
        for k, value in enumerate((slot, gen, result, stored)):
            words[base + k] = value
        words[board.RESULT_COUNT] = count + 1
        words[board.word(slot, board.DONE_GEN)] = gen

    def _region(self, slot: int, number: int, capacity: int) -> SharedRegion:
        key = (slot, number)
        data = self._data.get(key)
        if data is None:
            for old in [k for k in self._data if k[0] == slot]:
                self._data.pop(old).close()
            data = SharedRegion.attach(board.data_name(self.board_name, slot, number))
            if data.size < capacity:
                raise OSError(f"anchor data region {number} of slot {slot} is short")
            self._data[key] = data
        return data

    def _prune(self) -> None:
        """Keep the newest ``KEEP_BLOBS`` complete anchors' blobs (and what they alias)."""
        if len(self._complete) <= KEEP_BLOBS:
            return
        kept = self._complete[-KEEP_BLOBS:]
        needed = {ref for _, ref, _ in kept} | {target for _, _, target in kept}
        dropped = self._complete[:-KEEP_BLOBS]
        self._complete = kept
        removed = False
        for _, ref, _ in dropped:
            if ref in needed:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.run_dir / ref)
                removed = True
            self._by_hash = {h: r for h, r in self._by_hash.items() if r != ref}
        if removed:
            fd = os.open(self.run_dir / BLOB_DIR, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
