"""The record rules: the batched check agrees with the frame-by-frame explanation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from ringtape.storage.check.records import RecordBatch
from ringtape.storage.format.entry import (
    ENTRY_HEADER_SIZE,
    bad_record_runs,
    check_records,
    encode_entry,
    explain_records,
)
from ringtape.storage.format.frame import FrameHeader, build_body
from ringtape.storage.format.frame_index import frame_index


def frame(first_seq: int, sizes: list[int]) -> tuple[bytes, np.ndarray]:
    recs = [
        encode_entry(first_seq + i, 1, 2, "t" * (n % 5), b"p" * n, "pt"[: n % 3])
        for i, n in enumerate(sizes)
    ]
    return b"".join(recs), np.cumsum([0] + [len(r) for r in recs[:-1]]).astype(np.int64)


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=6), min_size=1, max_size=5),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
    header_only=st.booleans(),
)
def test_batch_check_matches_single_frame_checks(
    frames: list[list[int]], flips: list[tuple[int, int]], header_only: bool
) -> None:
    built = []
    seq = 1
    for sizes in frames:
        built.append(frame(seq, sizes))
        seq += len(sizes)
    buf = bytearray(b"".join(raw for raw, _ in built))
    starts = np.cumsum([0] + [len(raw) for raw, _ in built[:-1]]).astype(np.int64)
    for pos, x in flips:
        if header_only:  # aim at a record header, where the rules have something to say
            raw_start = int(starts[pos % len(built)])
            pos = raw_start + pos % ENTRY_HEADER_SIZE
        buf[pos % len(buf)] ^= x
    ends = starts + np.array([len(raw) for raw, _ in built])
    offsets = np.concatenate([offs + s for (_, offs), s in zip(built, starts, strict=True)])
    counts = np.array([len(offs) for _, offs in built], np.int64)
    firsts = np.cumsum([1] + [len(s) for s in frames[:-1]]).astype(np.int64)
    arr = np.frombuffer(bytes(buf), np.uint8)
    batched = set(bad_record_runs(arr, offsets, counts, starts, ends, firsts).tolist())
    for j, (raw, offs) in enumerate(built):
        body = bytes(buf[int(starts[j]) : int(ends[j])])
        single = check_records(body, offs, len(raw), int(firsts[j]))
        assert (single is not None) == (j in batched)
        assert (explain_records(body, offs, len(raw), int(firsts[j])) is None) == (single is None)


def test_a_clean_frame_and_obvious_faults() -> None:
    raw, offs = frame(7, [3, 0, 9])
    assert check_records(raw, offs, len(raw), 7) is None
    assert "seq" in (check_records(raw, offs, len(raw), 8) or "")
    assert check_records(raw, offs, len(raw) - 1, 7) is not None
    assert check_records(raw, offs[:2], len(raw), 7) is not None
    assert check_records(b"", np.zeros(0, np.int64), 0, 1) is None
    assert check_records(raw, np.zeros(0, np.int64), len(raw), 1) is not None


def _queued(ts_runs: list[list[int]]) -> RecordBatch:
    """A checked batch of one frame per list of ts_init values, seqs from 1."""
    batch, seq = RecordBatch(), 1
    for run in ts_runs:
        recs = [encode_entry(seq + i, ts, ts, "t", b"p") for i, ts in enumerate(run)]
        offsets = np.cumsum([0] + [len(r) for r in recs[:-1]]).astype(np.int64)
        body = build_body(b"".join(recs), offsets)
        index = frame_index(body, offsets)
        header = FrameHeader(1, len(run), len(body), 1, seq, 0, 0, 0, index)
        assert batch.add(0, header, b"", body)
        seq += len(run)
    assert batch.check() == {}
    return batch


@settings(max_examples=200, deadline=None)
@given(
    ts_runs=st.lists(st.lists(st.integers(0, 20), min_size=1, max_size=6), min_size=1, max_size=6),
    keep=st.lists(st.booleans(), min_size=6, max_size=6),
    last=st.none() | st.integers(0, 20),
)
def test_ts_backwards_of_some_frames_matches_a_count_entry_by_entry(
    ts_runs: list[list[int]], keep: list[bool], last: int | None
) -> None:
    batch = _queued(ts_runs)
    good = [j for j in range(len(ts_runs)) if keep[j]]
    seq_of = np.cumsum([1] + [len(r) for r in ts_runs]).tolist()
    back, first, prev = 0, None, last
    for j in good:
        for i, ts in enumerate(ts_runs[j]):
            if prev is not None and ts < prev:
                back += 1
                first = first if first is not None else seq_of[j] + i
            prev = ts
    assert batch.ts_backwards(good, last) == (back, first, prev)
