"""``ringtape export``: a base directory becomes one hive-partitioned dataset that DuckDB reads as
one table, matching ``dump`` run by run; single runs as Parquet, Arrow and CSV; damage."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.ipc
import pytest
from conftest import INSTANCE, TS0, make_run
from test_cli_support import flip_byte, frames, ringtape
from test_read_api import varied_run

OTHER_INSTANCE = "0e7f1c2d-3b4a-4c5d-8e6f-7a8b9c0d1e2f"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet")
    varied_run(root)
    make_run(root, 300, markers=25, start_ts=TS0 + 10**9)
    other = make_run(root, 120, markers=7, start_ts=TS0 + 2 * 10**9)
    (root / OTHER_INSTANCE).mkdir()
    other.rename(root / OTHER_INSTANCE / other.name)
    return root


def dumped(run: Path) -> list[dict[str, object]]:
    proc = ringtape("dump", run)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_base_directory_is_one_dataset_duckdb_reads(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    proc = ringtape("export", base, "--out", out)
    assert proc.returncode == 0, proc.stderr
    db = duckdb.connect()
    entries = f"read_parquet('{out}/entries/**/*.parquet', hive_partitioning = true)"
    rows = db.execute(
        f"SELECT instance, run, count(*), sum(seq) FROM {entries} GROUP BY ALL ORDER BY run"
    ).fetchall()
    runs = sorted(base.glob("*/*-*"), key=lambda p: p.name)
    assert [(r[0], r[1]) for r in rows] == [(p.parent.name, p.name) for p in runs]
    for (_, run_id, count, seq_sum), run in zip(rows, runs, strict=True):
        lines = dumped(run)
        assert count == len(lines) and seq_sum == sum(int(str(x["seq"])) for x in lines)
        topics = dict(
            db.execute(
                f"SELECT topic, count(*) FROM {entries} WHERE run = ? GROUP BY topic", [run_id]
            ).fetchall()
        )
        assert topics == dict(Counter(str(x["topic"]) for x in lines))
    markers = f"read_parquet('{out}/markers/**/*.parquet', hive_partitioning = true)"
    counted = dict(db.execute(f"SELECT run, count(*) FROM {markers} GROUP BY run").fetchall())
    assert counted == {runs[1].name: 25, runs[2].name: 7}  # the first run has no markers
    kinds = db.execute(f"SELECT DISTINCT kind FROM {markers} ORDER BY kind").fetchall()
    assert kinds == [("cursor",), ("stream",)]
    # The payload bytes are the recorded ones.
    payload = db.execute(
        f"SELECT payload FROM {entries} WHERE run = ? AND seq = 2", [runs[0].name]
    ).fetchone()
    assert payload is not None and json.loads(bytes(payload[0]))["n"] == 2
    again = ringtape("export", base, "--out", out)
    assert again.returncode == 2 and "never overwrites" in again.stderr


def test_one_run_in_each_format(base: Path, tmp_path: Path) -> None:
    run = sorted(base.glob(f"{INSTANCE}/*"))[0]
    lines = dumped(run)
    for fmt in ("parquet", "arrow", "csv"):
        out = tmp_path / fmt
        proc = ringtape("export", base, run.name, "--format", fmt, "--out", out)
        assert proc.returncode == 0, proc.stderr
        path = out / f"{run.name}.entries.{fmt}"
        if fmt == "arrow":
            table = pyarrow.ipc.open_file(path).read_all()
            assert table.column("seq").to_pylist() == [x["seq"] for x in lines]
            continue
        reader = "read_parquet" if fmt == "parquet" else "read_csv"
        got = duckdb.execute(
            f"SELECT seq, topic, payload_type FROM {reader}('{path}') ORDER BY seq"
        )
        assert got.fetchall() == [(x["seq"], x["topic"], x["payload_type"]) for x in lines]
    csv = duckdb.execute(
        f"SELECT payload, encoding, correlation_id FROM read_csv('{tmp_path}/csv/{run.name}"
        ".entries.csv') WHERE seq IN (13, 14) ORDER BY seq"
    ).fetchall()
    assert csv[0][1] == "utf8"  # seq 13: an empty payload, empty text
    assert json.loads(csv[1][0])["n"] == 14 and csv[1][2] == "00000000-0000-0000-0000-00000000000e"


def test_a_damaged_run_is_left_out_with_status_1(tmp_path: Path) -> None:
    good = make_run(tmp_path / "base", 50)
    bad = make_run(tmp_path / "base", 200, per_frame=10, start_ts=TS0 + 10)
    seg = bad / "events-000000.seg"
    offset, size = frames(seg)[3]
    flip_byte(seg, offset + size - 2)
    out = tmp_path / "out"
    proc = ringtape("export", tmp_path / "base", "--out", out)
    assert proc.returncode == 1 and "export stopped at damage: checksum_mismatch" in proc.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert files == [
        f"entries/instance={INSTANCE}/run={good.name}/part-0.parquet",
        f"markers/instance={INSTANCE}/run={good.name}/part-0.parquet",
    ]
