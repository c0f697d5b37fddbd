"""Round trip: random entry batches through the real writer read back identical."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from ringtape.storage.check.stream import scan_stream
from ringtape.storage.format.entry import Entry, encode_entry
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.read.reader import iter_entries
from ringtape.storage.segment.writer import SegmentWriter

RUN_ID = "1700000000000000001-c0ffee00"

ids = st.none() | st.uuids(version=4)
entry_fields = st.tuples(
    st.text(min_size=0, max_size=40),  # topic
    st.text(max_size=20),  # payload_type
    st.binary(max_size=600),  # payload
    ids,  # correlation
    ids,  # causation
    st.integers(0, 2**64 - 1),  # ts_init
    st.integers(0, 2**64 - 1),  # ts_publish
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    fields=st.lists(entry_fields, min_size=1, max_size=120),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=60),
    segment_bytes=st.integers(4096, 20_000),
)
def test_written_entries_read_back_identical(
    tmp_path: Path, fields: list[tuple[object, ...]], cuts: list[int], segment_bytes: int
) -> None:
    run_dir = tmp_path / uuid.uuid4().hex / RUN_ID
    run_dir.mkdir(parents=True)
    try:
        entries = [
            Entry(seq, ts, tp, topic, ptype, payload, corr, caus)  # type: ignore[arg-type]
            for seq, (topic, ptype, payload, corr, caus, ts, tp) in enumerate(fields, start=1)
        ]
        writer = SegmentWriter(
            run_dir, RUN_ID, "events", STREAM_EVENTS, max_segment_bytes=segment_bytes
        )
        i = 0
        for n in cuts * (len(entries) // len(cuts) + 1):
            batch = entries[i : i + n]
            if not batch:
                break
            recs = [
                encode_entry(
                    e.seq,
                    e.ts_init,
                    e.ts_publish,
                    e.topic,
                    e.payload,
                    e.payload_type,
                    e.correlation_id,
                    e.causation_id,
                )
                for e in batch
            ]
            offsets = np.cumsum([0] + [len(r) for r in recs[:-1]], dtype=np.int64)
            writer.append(b"".join(recs), offsets, batch[0].seq)
            i += n
        writer.close()
        assert list(iter_entries(run_dir, strict=True)) == entries
        stream = scan_stream(run_dir, "events")
        assert stream.findings == () and stream.entries == len(entries)
        assert stream.last_seq == len(entries)
    finally:
        shutil.rmtree(run_dir.parent)
