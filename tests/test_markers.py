"""The data-marker lane in process: the kernel's encoding, the ring reader and the folder driven
directly (no sidecar process), the record format, fold_to and the marker verification rules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings, strategies as st

from ringtape.capture.config import DataMarkerClass, DataMarkerConfig
from ringtape.capture.marker_fold import MarkerFolder
from ringtape.capture.marker_ring import MarkerGeometry, MarkerRingReader, MarkerViews
from ringtape.capture.markers import EntryCursor, MarkerLane
from ringtape.capture.shm import SharedRegion, unlink_name
from ringtape.storage.check.findings import Kind
from ringtape.storage.check.markers import check_marker_stream, check_records
from ringtape.storage.format.entry import Entry, decode_entry
from ringtape.storage.format.markers import (
    CURSOR_HEAD,
    GAP_OVERFLOW,
    PAYLOAD_BIN,
    PAYLOAD_JSON,
    REASON_BOUNDARY,
    REASON_SAFETY_FLUSH,
    TOPIC_CURSOR,
    TOPIC_GAP,
    TOPIC_HIFI,
    Cursor,
    CursorSnapshot,
    HiFiMarker,
    MarkerFormatError,
    MarkerGap,
    StreamDef,
    decode_marker,
    encode_cursor,
    encode_cursor_one,
    encode_gap,
    encode_hifi,
    encode_stream,
    fingerprint,
)
from ringtape.storage.read.markers import LocatedEntry, fold_records, fold_to, iter_marker_records
from ringtape.storage.run.layout import RunPaths

CLASSES = DataMarkerClass.all()
INSTRUMENTS = ["ETH.SIM", "BTC.SIM", "A-VERY-LONG-INSTRUMENT-ID-OVER-32-BYTES.VENUE", "X"]
HIFI = ["ETH.SIM", "A-VERY-LONG-INSTRUMENT-ID-OVER-32-BYTES.VENUE"]


class Harness:
    """A lane writing into a real shared-memory ring; the test plays the sidecar in process."""

    def __init__(self, config: DataMarkerConfig) -> None:
        g = MarkerGeometry.for_capacity(config.channel_capacity)
        self.region = SharedRegion.create(g.region_size, tag="test")
        self.views = MarkerViews(self.region.buf, g)
        self.views.init_control(os.getpid())
        self.entries = EntryCursor()  # the entry stream the lane reads event_seq_before from
        self.lane_failures: list[tuple[str, bytes]] = []
        self.lane = MarkerLane(config, self.entries, self._record_failure)
        self.lane.bind(self.views)
        self.reader = MarkerRingReader(self.views)
        self.folder = MarkerFolder(config.high_fidelity)

    def _record_failure(self, topic: str, payload: bytes) -> None:
        self.lane_failures.append((topic, payload))

    def drain(self) -> None:
        while (rows := self.reader.take()) is not None:
            self.folder.feed(rows, 0.0)

    def finish(self) -> list[LocatedEntry]:
        self.drain()
        self.folder.finish(self.lane.stats().observed)
        out = self.folder.take_output()
        assert out.first_seq == 1
        return [LocatedEntry(Path("memory"), 0, decode_entry(r, 0)) for r in out.records()]

    def release(self) -> None:
        self.lane.kill()
        self.views.release()
        self.region.close()
        unlink_name(self.region.name)


@pytest.fixture
def harnesses() -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for h in made:
        h.release()


def harness(made: list[Harness], **config: Any) -> Harness:
    h = Harness(DataMarkerConfig(**config))
    made.append(h)
    return h


# -- the brute-force model --------------------------------------------------------------------


class Model:
    """Cursors the slow, obvious way, and their state at every entry boundary."""

    def __init__(self) -> None:
        self.cursors: dict[tuple[str, str], Cursor] = {}
        self.at_seq: dict[int, dict[tuple[str, str], Cursor]] = {}

    def observe(self, key: tuple[str, str], ts_init: int) -> None:
        old = self.cursors.get(key)
        if old is None:
            self.cursors[key] = Cursor(1, ts_init, 0)
        elif ts_init > old.ts_init_hi:
            self.cursors[key] = Cursor(old.count + 1, ts_init, 0)
        elif ts_init == old.ts_init_hi:
            self.cursors[key] = Cursor(old.count + 1, ts_init, old.ordinal + 1)
        else:
            self.cursors[key] = Cursor(old.count + 1, old.ts_init_hi, old.ordinal)

    def boundary(self, seq: int) -> None:
        """Entry ``seq + 1`` is about to be appended: remember the cursors as of ``seq``."""
        self.at_seq[seq] = dict(self.cursors)


observe_op = st.tuples(
    st.just("obs"),
    st.integers(0, len(CLASSES) - 1),
    st.integers(0, len(INSTRUMENTS) - 1),
    st.integers(-3, 3),  # ts_init step: back, equal or forward
)
other_op = st.sampled_from([("append",), ("drain",), ("flush",)])
op = st.one_of(observe_op, observe_op, observe_op, other_op)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(op, min_size=40, max_size=400),
    enabled=st.sets(st.sampled_from(CLASSES), min_size=1),
    capacity=st.sampled_from([6, 16, 4096]),
    as_name=st.booleans(),
)
def test_cursors_match_brute_force_model(
    ops: list[tuple[Any, ...]], enabled: set[DataMarkerClass], capacity: int, as_name: bool
) -> None:
    made: list[Harness] = []
    try:
        classes = [c for c in CLASSES if c in enabled]
        h = harness(made, classes=classes, channel_capacity=capacity, high_fidelity=HIFI)
        observations: list[tuple[int, tuple[str, str], int, int]] = []  # obs, key, ts, esb
        ts = 2  # reaches 0 at times: a ts_init of 0 is a value like any other
        obs = 0
        for o in ops:
            if o[0] == "obs":
                cls, inst = CLASSES[o[1]], INSTRUMENTS[o[2]]
                ts = max(0, ts + o[3])
                h.lane.observe(cls.value if as_name else cls, inst, ts + 7, ts)
                if cls in enabled:
                    obs += 1
                    observations.append((obs, (cls.value, inst), ts, h.entries.seq))
            elif o[0] == "append":
                h.entries.seq += 1
            elif o[0] == "drain":
                h.drain()
            else:
                h.drain()
                h.folder.snapshot(REASON_SAFETY_FLUSH)
        located = h.finish()
        assert h.lane.stats().observed == obs

        dropped = {o for lo, hi in h.lane.gap_ranges for o in range(lo, hi + 1)}
        assert len(dropped) == h.lane.dropped
        model = Model()
        seq = 0
        for n, key, t, esb in observations:
            while seq < esb:
                model.boundary(seq)
                seq += 1
            if n not in dropped:
                model.observe(key, t)
        while seq <= h.entries.seq:
            model.boundary(seq)
            seq += 1

        records = [decode_marker(w.entry) for w in located]
        for s in range(h.entries.seq + 1):
            assert fold_records(records, s).cursors == model.at_seq[s], f"as of entry {s}"
        gaps = [(g.obs_from, g.obs_to) for g in records if isinstance(g, MarkerGap)]
        assert gaps == h.lane.gap_ranges
        hifi = [r for r in records if isinstance(r, HiFiMarker)]
        delivered = [x for x in observations if x[0] not in dropped]
        expected = [(n, esb) for n, key, _, esb in delivered if key[1] in HIFI]
        assert [(r.obs, r.event_seq_before) for r in hifi] == expected
        assert check_records(located, h.entries.seq) == []
        event("with drops" if dropped else "without drops")
    finally:
        for x in made:
            x.release()


def test_overflow_drops_count_and_never_wait(harnesses: list[Harness]) -> None:
    h = harness(harnesses, channel_capacity=16)
    # The first observation takes 3 records: a name chunk, the stream, the observation.
    h.lane.observe(DataMarkerClass.Quote, "ETH.SIM", 1, 1)
    for i in range(100):  # nothing drains: 13 fit, 87 are dropped, none waits
        h.lane.observe(DataMarkerClass.Quote, "ETH.SIM", i, i)
    assert h.lane.dropped == 87 and h.lane.gap_ranges == [(15, 101)]
    h.drain()
    h.lane.observe("Quote", "ETH.SIM", 200, 200)
    located = h.finish()
    records = [decode_marker(w.entry) for w in located]
    gaps = [r for r in records if isinstance(r, MarkerGap)]
    assert [(g.obs_from, g.obs_to, g.reason) for g in gaps] == [(15, 101, GAP_OVERFLOW)]
    assert fold_records(records).cursors == {("Quote", "ETH.SIM"): Cursor(15, 200, 0)}
    assert check_records(located, 0) == []


def test_disabled_class_is_not_numbered(harnesses: list[Harness]) -> None:
    h = harness(harnesses, classes=[DataMarkerClass.Trade])
    h.lane.observe(DataMarkerClass.Quote, "ETH.SIM", 1, 1)
    h.lane.observe("Bar", "ETH.SIM", 1, 1)
    h.lane.observe("NotAClass", "ETH.SIM", 1, 1)
    h.lane.observe("Trade", "ETH.SIM", 1, 1)
    assert h.lane.stats().observed == 1
    records = [decode_marker(w.entry) for w in h.finish()]
    assert fold_records(records).cursors == {("Trade", "ETH.SIM"): Cursor(1, 1, 0)}


def test_instrument_id_over_the_limit_is_refused(harnesses: list[Harness]) -> None:
    h = harness(harnesses)
    with pytest.raises(ValueError, match="limit"):
        h.lane.observe(DataMarkerClass.Quote, "x" * 2000, 1, 1)
    h.lane.observe(DataMarkerClass.Quote, "x", 1, 1)  # the refused call numbered nothing
    located = h.finish()
    assert check_records(located, 0) == [] and h.lane.stats().observed == 1


# -- the record format ------------------------------------------------------------------------


def _entry(record: bytes) -> LocatedEntry:
    return LocatedEntry(Path("markers-000000.seg"), 80, decode_entry(record, 0))


def test_records_round_trip() -> None:
    assert decode_marker(decode_entry(encode_stream(1, 5, 3, "Quote", "É.SIM", True), 0)) == (
        StreamDef(1, 5, 3, "Quote", "É.SIM", True)
    )
    cur = decode_marker(decode_entry(encode_cursor(2, 9, 40, 7, 1, [3, 2, 10, 9]), 0))
    assert cur == CursorSnapshot(2, 9, 40, 7, 1, ((3, Cursor(10, 9, 2)),))
    one = encode_cursor_one(2, 9, 40, 7, 1, (3, 2, 10, 9))
    assert one == encode_cursor(2, 9, 40, 7, 1, [3, 2, 10, 9])
    fp = fingerprint("Quote", "É.SIM", 8, 9)
    hifi = decode_marker(decode_entry(encode_hifi(3, 9, 41, 7, 3, 2, 8, fp), 0))
    assert hifi == HiFiMarker(3, 9, 41, 7, 3, 2, 8, fp)
    gap = decode_marker(decode_entry(encode_gap(4, 9, 42, 50, GAP_OVERFLOW, 7), 0))
    assert gap == MarkerGap(4, 9, 42, 50, GAP_OVERFLOW, 7)
    assert fingerprint("Quote", "É.SIM", 8, 9) != fingerprint("Trade", "É.SIM", 8, 9)


def test_malformed_records_are_refused() -> None:
    short = Entry(1, 1, 0, TOPIC_CURSOR, PAYLOAD_BIN, CURSOR_HEAD.pack(1, 1, 0, 2))
    wrong_type = Entry(1, 1, 0, TOPIC_HIFI, PAYLOAD_JSON, b"{}")
    not_json = Entry(1, 1, 0, TOPIC_GAP, PAYLOAD_JSON, b"{")
    other = Entry(1, 1, 0, "events.order", PAYLOAD_BIN, b"")
    for entry in (short, wrong_type, not_json, other):
        with pytest.raises(MarkerFormatError):
            decode_marker(entry)
    with pytest.raises(MarkerFormatError, match="not a range"):
        decode_marker(decode_entry(encode_gap(1, 1, 5, 4, GAP_OVERFLOW, 0), 0))


# -- verification -----------------------------------------------------------------------------


def _kinds(located: list[LocatedEntry], hwm: int = 100) -> list[Kind]:
    return [f.kind for f in check_records(located, hwm)]


def _stream0() -> bytes:
    return encode_stream(1, 1, 0, "Quote", "ETH.SIM", False)


def test_findings_unrecorded_gap() -> None:
    recs = [_stream0(), encode_cursor(2, 1, 5, 1, REASON_BOUNDARY, [0, 0, 3, 1])]
    (finding,) = check_records([_entry(r) for r in recs], 100)
    assert finding.kind is Kind.MARKER_GAP_UNRECORDED and finding.seq_from == 2
    assert "2 observations neither counted nor in a gap record" in finding.detail
    covered = [*recs[:1], encode_gap(2, 1, 1, 2, GAP_OVERFLOW, 1), recs[1]]
    assert check_records([_entry(r) for r in _renumber(covered)], 100) == []


def test_findings_marker_seq_skip() -> None:
    recs = [_stream0(), encode_cursor(3, 1, 3, 1, REASON_BOUNDARY, [0, 0, 3, 1])]
    assert _kinds([_entry(r) for r in recs]) == [Kind.MARKER_GAP_UNRECORDED]


def test_findings_cursor_going_back() -> None:
    recs = _renumber(
        [
            _stream0(),
            encode_cursor(0, 1, 3, 1, REASON_BOUNDARY, [0, 0, 3, 10]),
            encode_cursor(0, 1, 5, 2, REASON_BOUNDARY, [0, 0, 2, 10]),
        ]
    )
    kinds = _kinds([_entry(r) for r in recs])
    assert Kind.MARKER_CURSOR_BACKWARDS in kinds


def test_findings_event_seq_before_past_watermark() -> None:
    recs = [_stream0(), encode_cursor(2, 1, 3, 41, REASON_BOUNDARY, [0, 0, 3, 10])]
    assert _kinds([_entry(r) for r in recs], hwm=40) == [Kind.MARKER_EVENT_SEQ_AHEAD]
    assert _kinds([_entry(r) for r in recs], hwm=41) == []


def test_findings_gap_overlap_and_missing_hifi() -> None:
    recs = _renumber(
        [
            encode_stream(0, 1, 0, "Quote", "ETH.SIM", True),
            encode_hifi(0, 1, 1, 1, 0, 0, 1, 0),
            encode_cursor(0, 1, 2, 1, REASON_BOUNDARY, [0, 0, 2, 1]),
            encode_gap(0, 1, 2, 2, GAP_OVERFLOW, 1),
        ]
    )
    kinds = _kinds([_entry(r) for r in recs])
    assert kinds == [Kind.MARKER_GAP_UNRECORDED, Kind.MARKER_GAP_OVERLAP]


def test_findings_undefined_stream_and_garbage() -> None:
    recs = [encode_cursor(1, 1, 1, 1, REASON_BOUNDARY, [7, 0, 1, 1])]
    assert Kind.DECODE_ERROR in _kinds([_entry(r) for r in recs])


def _renumber(recs: list[bytes]) -> list[bytes]:
    return [r[:16] + i.to_bytes(8, "little") + r[24:] for i, r in enumerate(recs, 1)]


def test_check_marker_stream_on_disk(tmp_path: Path) -> None:
    from conftest import write_stream

    paths = RunPaths(tmp_path, "5b0f3c9e-8a51-4c1e-9d7a-2f6b1e0c4d3a", "1700000000-0badcafe")
    paths.create()
    recs = _renumber(
        [
            _stream0(),
            encode_cursor(0, 5, 3, 2, REASON_BOUNDARY, [0, 1, 3, 5]),
            encode_gap(0, 5, 4, 6, GAP_OVERFLOW, 2),
            encode_cursor(0, 8, 8, 3, REASON_BOUNDARY, [0, 0, 4, 8]),
            encode_cursor(0, 9, 12, 9, REASON_BOUNDARY, [0, 0, 3, 9]),
        ]
    )
    write_stream(paths.run_dir, paths.run_id, recs, per_frame=2, stream="markers")
    findings = check_marker_stream(paths.run_dir, 5)
    kinds = [f.kind for f in findings]
    assert kinds == [
        Kind.MARKER_GAP_UNRECORDED,  # observation 8: 4 counted + 3 in the gap
        Kind.MARKER_EVENT_SEQ_AHEAD,
        Kind.MARKER_CURSOR_BACKWARDS,
        Kind.MARKER_GAP_UNRECORDED,
    ]
    assert all(f.path.endswith("markers-000000.seg") for f in findings)
    assert fold_to(paths.run_dir, 2).cursors == {("Quote", "ETH.SIM"): Cursor(3, 5, 1)}
    assert fold_to(paths.run_dir, 3).obs == 8
    dumped = list(iter_marker_records(paths.run_dir))
    assert [d["kind"] for d in dumped] == ["stream", "cursor", "gap", "cursor", "cursor"]
    assert dumped[1]["cursors"] == [
        {"stream": 0, "class": "Quote", "instrument": "ETH.SIM", "count": 3, "ts_init_hi": 5,
         "ordinal": 1}
    ]  # fmt: skip
