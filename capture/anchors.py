"""Snapshot anchors, kernel side: hand a snapshot to the writer in one copy, and track its fate.

Rules of this module:

1. ``fill`` costs the caller one ``memcpy`` of the snapshot into a slot of shared memory and a
   few word stores; it never waits for the writer or the disk. Data regions are sized ahead of
   need by a thread (``capture/anchor_staging.py``); only a snapshot larger than anything
   prepared makes the caller allocate a region (its pages) in that call.
2. It never halts the store: a snapshot that finds no slot free supersedes an anchor waiting
   untaken in one, and is skipped when the writer is busy with both. Each fate is counted and
   visible (:meth:`AnchorStage.records`). Only a store whose anchors are mandatory waits for a
   slot (at most ``halt_threshold``) and halts if none frees up.
3. Anchor ids number a run's anchors from 1, in the order ``anchor()`` was called; a skipped
   anchor takes no id.

The board's layout and the writer's half of the protocol: ``capture/anchor_board.py`` and
``capture/blob_writer.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Final

from ringtape.capture import anchor_board as board
from ringtape.capture.anchor_staging import StagingRegions
from ringtape.capture.shm import SharedRegion, unlink_name

PENDING: Final = "pending"
DURABLE: Final = "durable"
SUPERSEDED: Final = "superseded"
SKIPPED: Final = "skipped"
FAILED: Final = "failed"


@dataclass(frozen=True)
class AnchorRecord:
    """One ``anchor()`` call of the open run and what became of it.

    ``state``: ``pending`` (handed to the writer), ``durable`` (a restore point: blob and
    entries durable), ``superseded`` (a newer snapshot took its slot before the writer did),
    ``skipped`` (both slots were busy: no entry, no blob), ``failed`` (the blob could not be
    written: ``detail`` says why)."""

    anchor_id: int  # 0 for a skipped anchor
    high_watermark: int
    size: int
    seq: int  # the SnapshotAnchor entry (0: none)
    state: str
    detail: str = ""
    stored_bytes: int = 0


class AnchorStage:
    """The kernel's end of the anchor board of one run."""

    def __init__(self, reserve_bytes: int = 0) -> None:
        self.region = SharedRegion.create(board.BOARD_BYTES, tag="anchors")
        self.views = board.BoardViews(self.region)
        self.views.init(os.getpid())
        self.staging = StagingRegions(self.region.name, reserve_bytes)
        self._gens = [0] * board.SLOTS  # the GEN each slot was last filled with
        self._anchor_of: dict[tuple[int, int], int] = {}  # (slot, gen) -> anchor id, unresolved
        self._waiting: list[int] = [0] * board.SLOTS  # the anchor id a published slot holds
        self._records: dict[int, AnchorRecord] = {}
        self._skipped: list[AnchorRecord] = []
        self._seen_results = 0
        self.next_id = 1

    @property
    def name(self) -> str:
        return self.region.name

    # -- the kernel's calls -----------------------------------------------------------------

    def free_slot(self, *, supersede: bool = True) -> int | None:
        """A slot the next snapshot may go to: a free one, else (``supersede``) one whose
        anchor waits untaken (that anchor is then superseded), else ``None`` (busy)."""
        self.collect()
        words = self.views.words
        w = board.word
        waiting = None
        for s in range(board.SLOTS):
            taken = int(words[w(s, board.TAKEN_GEN)])
            if taken != int(words[w(s, board.DONE_GEN)]):
                continue  # busy: the writer is reading or writing it; never touched
            if taken >= int(words[w(s, board.PUBLISHED_GEN)]):
                return s
            if waiting is None:
                waiting = s
        return waiting if supersede else None

    def fill(self, slot: int, snapshot: bytes | bytearray | memoryview, watermark: int) -> int:
        """Copy ``snapshot`` into ``slot`` for the next anchor id; returns that id. Publish it
        with :meth:`publish` once its entry is appended."""
        words = self.views.words
        w = board.word
        gen = self._gens[slot] + 2
        words[w(slot, board.GEN)] = gen - 1  # odd: being written (a reader now discards)
        superseded = self._waiting[slot]
        if superseded:  # the writer's result for it, if it read it whole first, still counts
            self._finish(superseded, SUPERSEDED, "a newer snapshot took its slot first")
            self._waiting[slot] = 0
        size = len(snapshot)
        data = self.staging.region_for(slot, size)
        anchor_id = self.next_id
        self.next_id += 1
        data.buf[:size] = snapshot
        words[w(slot, board.ANCHOR_ID)] = anchor_id
        words[w(slot, board.WATERMARK)] = watermark
        words[w(slot, board.SIZE)] = size
        words[w(slot, board.REGION)] = self.staging.numbers[slot]
        words[w(slot, board.CAPACITY)] = data.size
        words[w(slot, board.GEN)] = gen  # even again: stable
        self._gens[slot] = gen
        self._anchor_of[(slot, gen)] = anchor_id
        # Two fills back is settled: a slot is refilled only while the writer is not on it.
        self._anchor_of.pop((slot, gen - 4), None)
        self._records[anchor_id] = AnchorRecord(anchor_id, watermark, size, 0, PENDING)
        self.staging.plan_ahead(size)
        return anchor_id

    def publish(self, slot: int, anchor_id: int, entry_seq: int) -> None:
        """The anchor's entry is appended (seq ``entry_seq``): the writer may take the slot."""
        words = self.views.words
        words[board.word(slot, board.ENTRY_SEQ)] = entry_seq
        words[board.word(slot, board.PUBLISHED_GEN)] = self._gens[slot]  # last: it publishes
        self._waiting[slot] = anchor_id
        self._records[anchor_id] = replace(self._records[anchor_id], seq=entry_seq)

    def skip(self, watermark: int, size: int, why: str) -> None:
        self._skipped.append(AnchorRecord(0, watermark, size, 0, SKIPPED, why))

    # -- what became of them ----------------------------------------------------------------

    def collect(self) -> None:
        """Take in the results the writer logged since the last call."""
        words = self.views.words
        count = int(words[board.RESULT_COUNT])
        # The log holds the last LOG_ENTRIES results; more than that between two calls cannot
        # happen (each slot has at most two unresolved gens, and every fill collects first).
        for i in range(max(self._seen_results, count - board.LOG_ENTRIES), count):
            base = board.log_word(i)
            slot, gen, result, stored = (int(words[base + k]) for k in range(4))
            anchor_id = self._anchor_of.pop((slot, gen), 0)
            record = self._records.get(anchor_id)
            if record is None:
                continue
            if self._waiting[slot] == anchor_id:
                self._waiting[slot] = 0
            if result in (board.DURABLE, board.ALIAS):
                self._records[anchor_id] = replace(
                    record, state=DURABLE, detail="", stored_bytes=stored
                )
            elif result == board.SUPERSEDED:
                self._finish(anchor_id, SUPERSEDED, "a newer snapshot took its slot as it was read")
            else:
                self._finish(anchor_id, FAILED, self.views.control.error_text())
        self._seen_results = count

    def records(self) -> list[AnchorRecord]:
        """Every anchor of the run so far, in call order, states as last reported."""
        self.collect()
        out = [*self._records.values(), *self._skipped]
        return sorted(out, key=lambda r: (r.high_watermark, r.anchor_id or 1 << 62))

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def close(self) -> None:
        """Free the board and the data regions (the writer has mapped what it needed)."""
        self.staging.close()
        self.views.release()
        self.region.close()
        unlink_name(self.region.name)

    def _finish(self, anchor_id: int, state: str, detail: str) -> None:
        record = self._records.get(anchor_id)
        if record is not None and record.state == PENDING:
            self._records[anchor_id] = replace(record, state=state, detail=detail)
