"""``ringtape stats`` and ``ringtape replay`` through a real subprocess."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import TS0, make_run
from test_cli_support import flip_byte, frames, ringtape
from test_read_api import varied_run

from ringtape.capture.cache import ReferenceCache
from ringtape.storage.format.entry import encode_entry
from ringtape.storage.read.reader import iter_entries
from ringtape.storage.read.replay import replay_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return varied_run(tmp_path_factory.mktemp("stats"))


def test_stats_per_topic_and_latency(run: Path, tmp_path: Path) -> None:
    proc = ringtape("stats", run, "--json", "--plot", tmp_path / "run.png")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    entries = list(iter_entries(run))
    assert stats["entries"] == len(entries)
    assert {t["topic"]: t["entries"] for t in stats["topics"]} == dict(
        Counter(e.topic for e in entries)
    )
    sizes = Counter()
    for e in entries:
        sizes[e.topic] += len(e.payload)
    assert {t["topic"]: t["payload_bytes"] for t in stats["topics"]} == dict(sizes)
    # every entry of varied_run waited exactly 1 ns (ts_publish = ts_init + 1)
    assert stats["publish_minus_init_ns"]["p50"] == pytest.approx(1, rel=0.03)
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    text = ringtape("stats", run, "--topic", "events.*")
    assert text.returncode == 0 and "events.order.filled" in text.stdout
    assert "data.quotes" not in text.stdout


def test_stats_of_a_damaged_run_says_so(tmp_path: Path) -> None:
    bad = make_run(tmp_path, 300, per_frame=10)
    seg = bad / "events-000000.seg"
    offset, size = frames(seg)[5]
    flip_byte(seg, offset + size - 2)
    proc = ringtape("stats", bad, "--json")
    assert proc.returncode == 1 and "stopped at damage" in proc.stderr
    assert json.loads(proc.stdout)["entries"] == 50


def test_replay_rebuilds_what_the_library_does(tmp_path: Path) -> None:
    run = make_run(tmp_path, 10)
    # give it orders: rewrite with order events (the reference cache applies those)
    recs = [encode_entry(1, TS0 + 1, TS0 + 1, "ringtape.RunStarted", b"{}", "json")]
    for seq in range(2, 40):
        body = json.dumps({"order_id": f"O-{seq % 5}", "qty": seq}).encode()
        recs.append(encode_entry(seq, TS0 + seq, TS0 + seq, "events.order.filled", body, "json"))
    recs.append(encode_entry(40, TS0 + 40, TS0 + 40, "ringtape.RunEnded", b"", ""))
    for seg in run.glob("events-*.seg"):
        seg.unlink()
    from conftest import write_stream

    from ringtape.storage.run.manifest import read_manifest, write_manifest

    write_stream(run, run.name, recs, per_frame=6)
    manifest = read_manifest(run)
    manifest.high_watermark, manifest.end_ts_init = 40, TS0 + 40
    write_manifest(run, manifest)
    proc = ringtape("replay", run, "--json", "--to-seq", "20")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    cache = ReferenceCache()
    replay_run(run, cache, 20)
    assert report["applied"] == 20 and report["cache"]["orders"] == len(cache.orders) == 5
    assert report["to_seq"] == 20 and report["anchor"] is None
    text = ringtape("replay", run.parent.parent, "latest")
    assert text.returncode == 0 and "5 orders" in text.stdout
    beyond = ringtape("replay", run, "--to-seq", "41")
    assert beyond.returncode == 2 and "ends at seq 40" in beyond.stderr


def test_replay_refuses_a_running_run(tmp_path: Path) -> None:
    from ringtape.storage.run.status import RunStatus

    run = make_run(tmp_path, 10, status=RunStatus.RUNNING)
    proc = ringtape("replay", run)
    assert proc.returncode == 2 and "running" in proc.stderr


def test_reading_commands_ignore_files_ringtape_did_not_write(tmp_path: Path) -> None:
    """A stray notes.txt, a FIFO and a directory in a run: every reading command still reads
    the run (whether they are findings is verify's business)."""
    import os

    run = make_run(tmp_path / "base", 40, markers=5)
    (run / "notes.txt").write_text("looked at this run\n")
    (run / "events-000099.seg.bak").write_bytes(b"junk")
    (run / "scratch").mkdir()
    os.mkfifo(run / "pipe")
    base = tmp_path / "base"
    dumped = ringtape("dump", base, "latest")
    assert dumped.returncode == 0 and len(dumped.stdout.splitlines()) == 40
    for args in (
        ("tail", base, "latest", "--lines", "3"),
        ("stats", run, "--json"),
        ("replay", run),
        ("export", base, "--out", tmp_path / "out"),
        ("inspect", base),
    ):
        proc = ringtape(*args, timeout=60)
        assert proc.returncode == 0, (args, proc.stderr)
