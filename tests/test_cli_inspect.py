"""``ringtape inspect``, ``recover`` and ``prune`` through a real subprocess."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from conftest import INSTANCE, make_run
from pipeline_support import wait_until
from test_cli_support import frames, ringtape

from ringtape import EventStore, EventStoreConfig, RegisteredComponents
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.run.manifest import read_manifest, write_manifest
from ringtape.storage.run.status import RunStatus


def inspect_json(path: Path) -> list[dict[str, object]]:
    proc = ringtape("inspect", "--json", path)
    assert proc.returncode == 0, proc.stderr
    runs: list[dict[str, object]] = json.loads(proc.stdout)["runs"]
    return runs


def set_flags(run: Path, *flags: str) -> None:
    manifest = read_manifest(run)
    manifest.feature_flags = list(flags)
    write_manifest(run, manifest)


def torn_running_run(base: Path, start_ts: int) -> Path:
    run = make_run(base, 60, status=RunStatus.RUNNING, ended=False, start_ts=start_ts)
    seg = run / "events-000000.seg"
    offset, size = frames(seg)[-1]
    os.truncate(seg, offset + size // 2)
    return run


def test_inspect_table_and_json(tmp_path: Path) -> None:
    old = make_run(tmp_path, 120, markers=7, start_ts=10)
    new = make_run(tmp_path, 30, status=RunStatus.RUNNING, ended=False, start_ts=20)
    manifest = read_manifest(new)
    manifest.parent_run_id = old.name
    write_manifest(new, manifest)
    rows = {str(r["run_id"]): r for r in inspect_json(tmp_path)}
    a, b = rows[old.name], rows[new.name]
    assert (a["status"], a["entries"], a["first_seq"], a["last_seq"]) == ("ended", 120, 1, 120)
    markers = a["markers"]
    assert isinstance(markers, dict) and markers["total"] == 7
    assert a["segments"] == 2 and a["anchors"] == 0 and a["parent_run_id"] is None
    assert isinstance(a["bytes_on_disk"], int) and a["bytes_on_disk"] > 0
    assert isinstance(a["compression_ratio"], float)
    assert (b["status"], b["parent_run_id"], b["live"]) == ("running", old.name, False)
    assert b["entries"] == 30
    table = ringtape("inspect", tmp_path / INSTANCE)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["RUN", "INSTANCE", "PARENT", "STATUS"]
    assert lines[0].split()[-1] == "PATH" and all(INSTANCE in ln for ln in lines[1:3])
    assert any(ln.endswith(str(old)) for ln in lines)
    assert any(old.name in ln and "ended" in ln and "120" in ln for ln in lines)
    assert any(ln.startswith(new.name) and old.name in ln for ln in lines)
    lock = WriterLock.acquire(new)
    try:
        assert {str(r["run_id"]): r["live"] for r in inspect_json(new)} == {new.name: True}
    finally:
        lock.release()


def test_inspect_a_damaged_run_and_a_bad_path(tmp_path: Path) -> None:
    run = torn_running_run(tmp_path, 10)
    (row,) = inspect_json(run)
    assert "torn tail" in str(row["note"])
    lock = WriterLock.acquire(run)  # a live writer: the torn tail is an append in progress
    try:
        (row,) = inspect_json(run)
    finally:
        lock.release()
    assert row["note"] is None and row["live"] is True
    assert ringtape("inspect", tmp_path / "nope").returncode == 2
    # A file that is not a run nor a segment is said to be so, not shown as a row of "?".
    manifest = ringtape("inspect", tmp_path / INSTANCE / run.name / "manifest.json")
    assert manifest.returncode == 2 and manifest.stdout == ""
    assert "not a ringtape segment" in manifest.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("a note\n")
    verify = ringtape("verify", notes)
    assert verify.returncode == 2 and "notes.txt: not a ringtape segment" in verify.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = ringtape("inspect", empty)
    assert proc.returncode == 2 and "nothing to inspect" in proc.stderr


def test_recover_seals_and_quarantines(tmp_path: Path) -> None:
    torn = torn_running_run(tmp_path, 10)
    damaged = make_run(tmp_path, 60, status=RunStatus.RUNNING, ended=False, start_ts=20)
    seg = damaged / "events-000000.seg"
    offset, size = frames(seg)[3]
    data = seg.read_bytes()
    seg.write_bytes(data[:offset] + data[offset + size :])  # a frame gone from the middle
    sealed = make_run(tmp_path, 20, start_ts=30)
    proc = ringtape("recover", tmp_path)
    assert proc.returncode == 1, proc.stderr  # one run had to be quarantined
    assert f"{torn.name}: running -> crashed_recovered" in proc.stdout
    assert f"{damaged.name}: running -> quarantined" in proc.stdout
    assert sealed.name not in proc.stdout
    assert read_manifest(torn).status is RunStatus.CRASHED_RECOVERED
    assert (torn / "events-000000.seg.torn").exists()
    again = ringtape("recover", tmp_path, "--json")
    assert again.returncode == 0
    (instance,) = json.loads(again.stdout)["instances"]
    assert instance == {
        "instance": INSTANCE,
        "recovered": [],
        "live": [],
        "skipped": [],
        "retired": [],
    }
    assert "nothing to recover" in ringtape("recover", tmp_path / INSTANCE).stdout


def test_recover_leaves_a_live_run_alone(tmp_path: Path) -> None:
    run = torn_running_run(tmp_path, 10)
    lock = WriterLock.acquire(run)
    try:
        proc = ringtape("recover", tmp_path, "--instance", INSTANCE)
    finally:
        lock.release()
    assert proc.returncode == 0 and "being written (its lock is held)" in proc.stdout
    assert read_manifest(run).status is RunStatus.RUNNING
    bad = ringtape("recover", tmp_path, "--instance", "../etc")
    assert bad.returncode == 2 and "not an instance id" in bad.stderr


def test_prune_bounded(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, 20, start_ts=t) for t in (10, 20, 30)]
    for run in runs:
        set_flags(run, "retention=bounded")
    proc = ringtape("prune", tmp_path)
    assert proc.returncode == 2 and "--keep-last" in proc.stderr
    dry = ringtape("prune", tmp_path, "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert sum(f"reclaim  {r.name}" in dry.stdout for r in runs) == 2
    assert all(r.exists() for r in runs)
    done = ringtape("prune", tmp_path, "--keep-last", "1", "--json")
    assert done.returncode == 0, done.stderr
    (instance,) = json.loads(done.stdout)["instances"]
    assert sorted(instance["reclaimed"]) == sorted(r.name for r in runs[:2])
    assert [r.exists() for r in runs] == [False, False, True]


def test_prune_mode_from_the_manifest_and_bad_options(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, 20, start_ts=t) for t in (10, 20)]
    proc = ringtape("prune", tmp_path)
    assert proc.returncode == 2 and "--mode" in proc.stderr  # no flag recorded
    set_flags(runs[-1], "retention=full")
    full = ringtape("prune", tmp_path)
    assert full.returncode == 0 and "Full" in full.stdout and all(r.exists() for r in runs)
    wrong = ringtape("prune", tmp_path, "--mode", "full", "--keep-last", "2")
    assert wrong.returncode == 2 and "bounded" in wrong.stderr
    assert ringtape("prune", tmp_path, "--mode", "weekly").returncode == 2
    assert ringtape("prune", tmp_path / "nope").returncode == 2


def test_inspect_of_a_live_run_shows_the_writers_totals(tmp_path: Path) -> None:
    """A live run: ``writer.lock``'s second line (the writer's totals, once a second) is shown
    as ring fill, durable lag, commits/s and bytes; ``EventStore.stats()`` reads the same
    counters from shared memory."""
    store = EventStore(EventStoreConfig(base_dir=str(tmp_path)))
    store.open(uuid.uuid4(), RegisteredComponents(), "live")
    try:
        for i in range(2000):
            store.append("events.order.submitted", b'{"n": %d}' % i, payload_type="json")
        wait_until(lambda: store.durable_seq() >= 2001, what="entries durable")
        stats = store.stats()
        assert stats is not None and stats.appended_seq == 2001
        assert stats.durable_seq == 2001 and stats.durable_lag == 0 and stats.in_ring == 0
        assert stats.commits >= 1 and stats.frames >= 20 and stats.bytes_raw > 2000 * 40
        run_dir = store.run_dir()
        assert run_dir is not None

        def published() -> bool:
            live = inspect_json(run_dir)[0]["live_stats"]
            return isinstance(live, dict) and live["durable_seq"] == 2001

        wait_until(published, timeout=10.0, what="the writer's totals in writer.lock")
        (row,) = inspect_json(run_dir)
        live = row["live_stats"]
        assert isinstance(live, dict) and row["live"] is True
        assert live["in_ring"] == 0 and live["durable_lag"] == 0 and live["capacity"] == 10_000
        assert live["commits"] >= 1 and live["bytes_stored"] > 0
        text = ringtape("inspect", run_dir).stdout
        assert f"live {run_dir.name}: ring 0 of 10,000 entries (0.0% full)" in text
        assert "commits/s" in text
    finally:
        store.seal()
    assert store.stats() is None
    (row,) = inspect_json(run_dir)
    assert row["live"] is False and row["live_stats"] is None
