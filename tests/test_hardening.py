"""Hostile or odd things on disk and on the command line: one clear answer, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import make_run

from ringtape.capture.config import (
    DataMarkerConfig,
    EventStoreConfig,
    RegisteredComponents,
    RetentionMode,
)
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.storage.check.verify import verify_path
from ringtape.storage.run.layout import BLOB_DIR, MANIFEST_NAME, RunPaths
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.retention import apply_plan, describe_instance, plan_retention

ROOT = Path(__file__).resolve().parent.parent


def ringtape(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringtape.tools.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_existing_base_dir_keeps_its_mode(tmp_path: Path) -> None:
    base = tmp_path / "shared"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    RunPaths(base, str(uuid.uuid4()), "1-deadbeef").create()
    assert base.stat().st_mode & 0o777 == 0o755
    run_dirs = list(base.glob("*/*"))
    assert [oct(d.stat().st_mode & 0o777) for d in run_dirs] == ["0o700"]


def test_a_fifo_in_place_of_manifest_or_blob_never_hangs(tmp_path: Path) -> None:
    run = make_run(tmp_path, 30)
    (run / MANIFEST_NAME).unlink()
    os.mkfifo(run / MANIFEST_NAME)
    (run / BLOB_DIR).mkdir()
    os.mkfifo(run / BLOB_DIR / "x.snap")
    report = verify_path(run)  # pytest-timeout fails the test if this blocks
    assert not report.ok
    assert any(f.kind == "unreadable" for f in report.findings)


def test_a_directory_in_place_of_the_manifest_is_a_finding_not_an_abort(tmp_path: Path) -> None:
    good = make_run(tmp_path, 20, start_ts=10)
    bad = make_run(tmp_path, 20, start_ts=20)
    (bad / MANIFEST_NAME).unlink()
    (bad / MANIFEST_NAME).mkdir()
    result = ringtape("verify", "--json", str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert good.name in result.stdout and bad.name in result.stdout


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args in (("verify",), ("dump", str(tmp_path), "--from-seq", "x"), ("bogus",)):
        result = ringtape(*args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ringtape"), result.stderr


def test_snapshot_pruned_run_verifies_and_dumps(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    store = EventStore(
        EventStoreConfig(base_dir=str(tmp_path), max_batch_entries=10),
        options=StoreOptions(segment_max_bytes=4096),
    )
    store.open(instance, RegisteredComponents(), "backtest")
    anchor = store.snapshot_anchorer()
    assert anchor is not None
    for k in range(300):
        store.append("events.order.accepted", os.urandom(64), ts_init=k)
        if k in (100, 200):
            anchor(b"snapshot %d" % k)
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    plan = plan_retention(describe_instance(tmp_path / str(instance)), "SnapshotAnchored")
    apply_plan(tmp_path / str(instance), plan)
    retained = read_manifest(run_dir).retained_from_seq
    assert retained > 1
    report = verify_path(run_dir)
    assert report.ok, [str(f) for f in report.findings]
    dumped = ringtape("dump", str(run_dir))
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout.splitlines()[0].startswith(f'{{"seq":{retained},')


def test_prune_reads_bounded_keep_last_from_the_manifests(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    config = EventStoreConfig(base_dir=str(tmp_path), retention=RetentionMode.bounded(2))
    runs = []
    for _ in range(4):
        store = EventStore(config, instance_id=instance)
        store.open(instance, RegisteredComponents(), "backtest")
        store.append("events.order.accepted", b"{}", ts_init=1)
        runs.append(store.run_dir())
        store.seal()
    assert read_manifest(runs[-1]).retention == {"Bounded": {"keep_last": 2}}
    dry = ringtape("prune", str(tmp_path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert all(r is not None and r.exists() for r in runs)
    done = ringtape("prune", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert [r is not None and r.exists() for r in runs] == [False, False, True, True]


def test_dump_markers_of_a_damaged_marker_stream_exits_1(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    config = EventStoreConfig(base_dir=str(tmp_path), data_markers=DataMarkerConfig())
    store = EventStore(config, instance_id=instance)
    store.open(instance, RegisteredComponents(), "live")
    for i in range(3000):
        store.observe_data("Quote", "ETH.SIM", i, i)
        if i % 50 == 0:
            store.append("events.order.accepted", b"{}")
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    assert ringtape("dump", "--markers", str(run_dir)).returncode == 0
    segment = sorted(run_dir.glob("markers-*.seg"))[0]
    data = bytearray(segment.read_bytes())
    data[200] ^= 0xFF
    segment.write_bytes(bytes(data))
    result = ringtape("dump", "--markers", str(run_dir))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.strip()


def test_files_in_blobs_that_ringtape_did_not_write_are_findings(tmp_path: Path) -> None:
    run = make_run(tmp_path, 20)
    (run / BLOB_DIR).mkdir()
    (run / BLOB_DIR / "evil.sh").write_text("#!/bin/sh\n")
    (run / BLOB_DIR / ".abc.snap.1.tmp").write_bytes(b"half")
    kinds = sorted(str(f.kind) for f in verify_path(run).findings)
    assert kinds == ["leftover_temp", "unexpected_file"]


def test_swapped_frames_are_called_a_reorder_not_a_loss(tmp_path: Path) -> None:
    from ringtape.storage.check.scan import scan_segment

    run = make_run(tmp_path, 40)
    seg = run / "events-000000.seg"
    frames = list(scan_segment(seg).frames)
    (a, _), (b, hb) = frames[2], frames[3]
    data = seg.read_bytes()
    seg.write_bytes(data[:a] + data[b : b + hb.size] + data[a:b] + data[b + hb.size :])
    report = verify_path(run)
    assert not report.ok
    missing = [f for f in report.findings if f.kind == "missing_frame"]
    assert missing and all("out of order" in f.detail for f in missing)
