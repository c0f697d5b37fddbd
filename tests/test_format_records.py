"""The record rules: the batched check agrees with the frame-by-frame explanation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from ringtape.storage.format.entry import (
    ENTRY_HEADER_SIZE,
    bad_record_runs,
    check_records,
    encode_entry,
    explain_records,
)


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
