"""The bulk marker proof agrees with the record checker: clean exactly when it finds nothing.

Random marker streams that keep every rule (stream definitions, observations of plain and
high-fidelity streams, entry boundaries, dropped observations and their gaps, snapshots, a
gap to the end), then
one random change (a byte of a record's payload or seq, a record dropped, duplicated or moved),
written as real segments; ``marker_stream_clean`` must be ``True`` exactly when
``check_records`` finds nothing, in both directions.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from conftest import write_stream
from hypothesis import HealthCheck, given, settings, strategies as st

from ringtape.storage.check.marker_bulk import marker_stream_clean
from ringtape.storage.check.markers import check_records
from ringtape.storage.format.markers import (
    GAP_OVERFLOW,
    REASON_BOUNDARY,
    encode_cursor,
    encode_gap,
    encode_hifi,
    encode_stream,
    fingerprint,
)
from ringtape.storage.read.markers import iter_marker_entries
from ringtape.storage.run.layout import RunPaths

INSTANCE = "5b0f3c9e-8a51-4c1e-9d7a-2f6b1e0c4d3a"


def valid_stream(rng: random.Random, ops: int) -> tuple[list[bytes], int]:
    """Marker records that keep every rule, and the entry high watermark they stay within."""
    out: list[bytes] = []
    hifi: list[bool] = []
    count: list[int] = []
    hi: list[int] = []
    ordinal: list[int] = []
    dirty: dict[int, None] = {}
    obs = esb = 0
    ts = 1_000

    def seq() -> int:
        return len(out) + 1

    def snapshot() -> None:
        items: list[int] = []
        for s in dirty:
            items += [s, ordinal[s], count[s], hi[s]]
        out.append(encode_cursor(seq(), ts, obs, esb, REASON_BOUNDARY, items))
        dirty.clear()

    for _ in range(ops):
        op = rng.random()
        if op < 0.08 or not count:
            s = len(count)
            hifi.append(rng.random() < 0.4)
            count.append(0)
            hi.append(0)
            ordinal.append(0)
            out.append(encode_stream(seq(), ts, s, "Quote", f"I{s}.SIM", hifi[s]))
        elif op < 0.7:
            s = rng.randrange(len(count))
            obs += 1
            ts += rng.choice((0, 1, 5))
            count[s] += 1
            if ts > hi[s]:
                hi[s], ordinal[s] = ts, 0
            else:
                ordinal[s] += 1
            dirty[s] = None
            if hifi[s]:
                fp = fingerprint("Quote", f"I{s}.SIM", ts - 3, ts)
                out.append(encode_hifi(seq(), ts, obs, esb, s, ordinal[s], ts - 3, fp))
        elif op < 0.85:
            esb += 1
            if dirty:
                snapshot()
        elif op < 0.92:
            k = rng.randint(1, 4)
            out.append(encode_gap(seq(), ts, obs + 1, obs + k, GAP_OVERFLOW, esb))
            obs += k
        else:
            snapshot()
    if dirty:
        snapshot()
    if rng.random() < 0.2:  # observations dropped at the end, how many unknown: a gap "to the end"
        out.append(encode_gap(seq(), ts, obs + 1, None, GAP_OVERFLOW, esb))
    return out, esb


def mutate(rng: random.Random, recs: list[bytes]) -> list[bytes]:
    recs = list(recs)
    i = rng.randrange(len(recs))
    kind = rng.randrange(5)
    if kind == 0 and len(recs) > 1:
        del recs[i]
    elif kind == 1:
        recs.insert(i, recs[i])
    elif kind == 2 and len(recs) > 1:
        j = rng.randrange(len(recs))
        recs[i], recs[j] = recs[j], recs[i]
        return recs  # seqs move with their records
    else:
        rec = bytearray(recs[i])
        topic_len = int.from_bytes(rec[8:10], "little")
        type_len = int.from_bytes(rec[10:12], "little")
        body = 40 + topic_len + type_len
        payload = body < len(rec) and kind != 3
        where = rng.randrange(body, len(rec)) if payload else rng.randrange(16, 24)
        rec[where] ^= 1 << rng.randrange(8)
        recs[i] = bytes(rec)
        return recs
    return [r[:16] + n.to_bytes(8, "little") + r[24:] for n, r in enumerate(recs, 1)]


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1), broken=st.booleans(), per_frame=st.sampled_from([1, 3, 64]))
def test_the_bulk_proof_agrees_with_the_record_checker(
    tmp_path: Path, seed: int, broken: bool, per_frame: int
) -> None:
    rng = random.Random(seed)
    recs, hwm = valid_stream(rng, rng.randint(5, 300))
    if broken:
        recs = mutate(rng, recs)
    base = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example: tmp_path is shared
    paths = RunPaths(base, INSTANCE, f"1700000000-{seed:08x}")
    paths.create()
    write_stream(paths.run_dir, paths.run_id, recs, per_frame=per_frame, stream="markers")
    slack = rng.choice((0, 0, 3, -1))  # -1: the last boundary is past the entries on disk
    hwm += slack
    findings = check_records(iter_marker_entries(paths.run_dir), hwm)
    assert marker_stream_clean(paths.run_dir, hwm) == (findings == []), findings
    if not broken and slack >= 0:
        assert findings == []  # the generator keeps every rule
