"""The reading API: open_run/open_runs, entries with filters, Arrow, pandas and polars, markers
and anchors; checked reading throughout (damage raises, never a short answer)."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import INSTANCE, TS0, make_run, write_stream
from test_cli_support import flip_byte, frames

from ringtape.storage import CorruptionError, RunNotFound, open_run, open_runs
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED, encode_entry
from ringtape.storage.read.reader import iter_entries
from ringtape.storage.run.layout import RunPaths
from ringtape.storage.run.manifest import Manifest, write_manifest
from ringtape.storage.run.status import RunStatus

N = 2000
TOPICS = ("events.order.filled", "data.quotes.AUD/USD", "q", "events.position.changed", "é.x")


def varied_run(base: Path, start: int = TS0) -> Path:
    """An ended run with several topics, payload types, ids on some entries, binary payloads."""
    paths = RunPaths(base, INSTANCE, f"{start}-{uuid.uuid4().hex[:8]}")
    paths.create()
    recs = []
    for seq in range(1, N + 1):
        topic = TOPIC_RUN_STARTED if seq == 1 else TOPICS[seq % len(TOPICS)]
        topic = TOPIC_RUN_ENDED if seq == N else topic
        corr = uuid.UUID(int=seq) if seq % 7 == 0 else None
        cause = uuid.UUID(int=seq * 3) if seq % 11 == 0 else None
        payload = b"" if seq % 13 == 0 else json.dumps({"n": seq, "pad": "x" * (seq % 50)}).encode()
        # ts_init not monotonic: frames' bounds must still hold every entry
        ts = start + seq * 10 + (seq % 3) * 25
        recs.append(encode_entry(seq, ts, ts + 1, topic, payload, f"T{seq % 4}", corr, cause))
    write_stream(paths.run_dir, paths.run_id, recs, per_frame=37, segment_bytes=32 << 10)
    write_manifest(
        paths.run_dir,
        Manifest(
            run_id=paths.run_id, instance_id=INSTANCE, status=RunStatus.ENDED,
            start_ts_init=start, high_watermark=N, end_ts_init=start + N * 10,
        ),
    )  # fmt: skip
    return paths.run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return varied_run(tmp_path_factory.mktemp("api"))


def test_open_run_by_path_base_and_latest(tmp_path: Path) -> None:
    older = varied_run(tmp_path, TS0)
    newer = make_run(tmp_path, 10, start_ts=TS0 + 10**12)
    assert open_run(str(older)).path == older
    assert open_run(tmp_path, "latest").path == newer
    assert open_run(tmp_path / INSTANCE, "latest").path == newer
    assert open_run(tmp_path, older.name).path == older
    assert [r.run_id for r in open_runs(tmp_path)] == [older.name, newer.name]
    run = open_run(older)
    assert run.manifest is not None and run.manifest.high_watermark == N
    assert run.instance_id == INSTANCE


@pytest.mark.parametrize(
    ("where", "run", "message"),
    [
        ("missing", None, "no such file"),
        ("base", None, "not a run directory (2 runs under it"),
        ("base", "1-deadbeef", "no run '1-deadbeef'"),
        ("file", None, "not a directory"),
        ("empty", "latest", "no runs"),
    ],
)
def test_open_run_says_what_is_there_instead(
    tmp_path: Path, where: str, run: str | None, message: str
) -> None:
    make_run(tmp_path / "base", 5)
    make_run(tmp_path / "base", 5, start_ts=TS0 + 5)
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFound, match=message.replace("(", r"\(")):
        open_run(tmp_path / where, run)


def _wanted(run_dir: Path, lo: int, hi: int, globs: list[str], a: int, b: int) -> list[int]:
    return [
        e.seq
        for e in iter_entries(run_dir)
        if a <= e.seq <= b
        and lo <= e.ts_init <= hi
        and any(fnmatch.fnmatchcase(e.topic, g) for g in globs)
    ]


@pytest.mark.parametrize(
    "globs", [["*"], ["events.order.*"], ["q", "data.quotes.*"], ["*.changed"], ["é*"]]
)
def test_filters_select_exactly_what_a_full_scan_does(run_dir: Path, globs: list[str]) -> None:
    run = open_run(run_dir)
    lo, hi = TS0 + 3000, TS0 + 15_000
    want = _wanted(run_dir, lo, hi, globs, 100, 1800)
    got = run.entries(from_seq=100, to_seq=1800, since=lo, until=hi, topics=globs)
    assert [e.seq for e in got] == want
    table = run.to_arrow(from_seq=100, to_seq=1800, since=lo, until=hi, topics=globs)
    assert table.column("seq").to_pylist() == want


def test_times_as_iso_strings_and_datetimes(run_dir: Path) -> None:
    run = open_run(run_dir)
    iso = "2023-11-14T22:13:20.000005Z"  # TS0 + 5000 ns
    assert [e.seq for e in run.entries(until=iso)] == _wanted(run_dir, 0, TS0 + 5000, ["*"], 1, N)


def test_to_arrow_holds_every_field(run_dir: Path) -> None:
    table = open_run(run_dir).to_arrow()
    entries = list(iter_entries(run_dir))
    assert table.num_rows == N
    assert table.schema.field("topic").type.value_type.equals("string")
    cols = table.to_pydict()
    assert cols["seq"] == [e.seq for e in entries]
    assert cols["ts_init"] == [e.ts_init for e in entries]
    assert cols["ts_publish"] == [e.ts_publish for e in entries]
    assert cols["topic"] == [e.topic for e in entries]
    assert cols["payload_type"] == [e.payload_type for e in entries]
    assert cols["payload"] == [e.payload for e in entries]
    for name, attr in (("correlation_id", "correlation_id"), ("causation_id", "causation_id")):
        assert cols[name] == [None if getattr(e, attr) is None else getattr(e, attr).bytes
                              for e in entries]  # fmt: skip


def test_pandas_and_polars(run_dir: Path) -> None:
    run = open_run(run_dir)
    frame = run.to_pandas(topics="events.*")
    assert list(frame["seq"]) == _wanted(run_dir, 0, 2**64, ["events.*"], 1, N)
    assert set(frame["topic"]) == {"events.order.filled", "events.position.changed"}
    pl = run.to_polars(to_seq=50)
    assert pl.height == 50 and pl["seq"].to_list() == list(range(1, 51))


def test_markers_and_anchors(tmp_path: Path) -> None:
    run = open_run(make_run(tmp_path, 30, markers=12))
    assert [m.marker_seq for m in run.markers()] == list(range(1, 13))
    table = run.markers_to_arrow()
    assert table.column("marker_seq").to_pylist() == list(range(1, 13))
    assert table.column("kind").to_pylist() == ["stream"] + ["cursor"] * 11
    assert run.anchors() == []


def test_damage_raises_from_every_reader(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, 300, per_frame=10)
    seg = run_dir / "events-000000.seg"
    offset, size = frames(seg)[4]
    flip_byte(seg, offset + size - 3)
    run = open_run(run_dir)
    with pytest.raises(CorruptionError):
        list(run.entries())
    with pytest.raises(CorruptionError):
        run.to_arrow()
    assert [e.seq for e in run.entries(to_seq=40)] == list(range(1, 41))  # before the damage


def test_importing_storage_imports_no_reader() -> None:
    code = (
        "import sys, json\n"
        "import ringtape.storage.format.entry, ringtape.storage.segment.writer\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(("
        "'ringtape.storage.read', 'pyarrow', 'pandas', 'polars')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
