"""``verify_path`` on every kind of path, run-level rules, leftovers, live runs, hostile input."""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path

import pytest
from conftest import INSTANCE, make_run, write_stream

from ringtape.storage.check.findings import Kind
from ringtape.storage.check.verify import RUN_CHECKERS, RunContext, verify_path
from ringtape.storage.format.entry import encode_entry
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.run.manifest import read_manifest, write_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.tools.verify_pool import scanner, verify_in_workers

FINDING_KEYS = {"kind", "path", "offset", "seq_from", "seq_to", "detail"}


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def kinds(path: Path) -> list[Kind]:
    return [f.kind for f in verify_path(path).findings]


def test_every_kind_of_path(tmp_path: Path) -> None:
    base = tmp_path / "base"
    runs = [make_run(base, 120, segment_bytes=4096, markers=5, start_ts=t) for t in (10, 20)]
    before = tree(base)
    for path, n in [
        (base, 2),
        (base / INSTANCE, 2),
        (runs[0], 1),
        (runs[1] / "events-000001.seg", 1),
    ]:
        report = verify_path(path)
        assert report.ok and report.findings == () and len(report.runs) == n, path
    summary = verify_path(runs[0]).runs[0]
    assert (summary.run_id, summary.status, summary.entries, summary.markers) == (
        runs[0].name,
        "ended",
        120,
        5,
    )
    assert (summary.first_seq, summary.last_seq, summary.verdict) == (1, 120, "intact")
    assert summary.segments == len(list(runs[0].glob("*.seg")))
    assert summary.compression_ratio is not None and summary.raw_bytes > 0
    assert tree(base) == before  # verification never writes


def test_parallel_scan_and_progress(tmp_path: Path) -> None:
    base = tmp_path / "base"
    for t in (10, 20):
        make_run(base, 300, segment_bytes=4096, start_ts=t)
    calls: list[tuple[int, int]] = []
    parallel = verify_path(
        base, scan=scanner(2), progress=lambda done, total: calls.append((done, total))
    )
    assert parallel.to_dict() == verify_path(base).to_dict()
    total = sum(p.stat().st_size for p in base.rglob("*.seg"))
    assert calls and calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))


def test_runs_verified_in_workers_report_as_in_this_process(tmp_path: Path) -> None:
    base = tmp_path / "base"
    runs = [make_run(base, 300, segment_bytes=4096, start_ts=t) for t in (10, 20, 30)]
    seg = runs[1] / "events-000001.seg"
    data = bytearray(seg.read_bytes())
    data[300] ^= 1  # one damaged run among intact ones
    seg.write_bytes(data)
    (base / "notes.txt").write_text("not ringtape's\n")  # a finding about the base itself
    calls: list[tuple[int, int]] = []
    in_workers = verify_in_workers(base, 2, lambda done, total: calls.append((done, total)))
    here = verify_path(base)
    assert in_workers.to_dict() == here.to_dict()
    assert not here.ok and [r.verdict.startswith("DAMAGED") for r in here.runs] == [
        False,
        True,
        False,
    ]
    total = sum(p.stat().st_size for p in base.rglob("*.seg"))
    assert calls and calls[-1] == (total, total)


def test_report_json_shape(tmp_path: Path) -> None:
    run = make_run(tmp_path, 20)
    seg = run / "events-000000.seg"
    data = bytearray(seg.read_bytes())
    data[200] ^= 1
    seg.write_bytes(data)
    d = json.loads(json.dumps(verify_path(tmp_path).to_dict()))
    assert set(d) == {"ok", "runs", "findings"} and d["ok"] is False
    assert d["findings"] and all(set(f) == FINDING_KEYS for f in d["findings"])
    assert d["runs"][0]["verdict"].startswith("DAMAGED")


def test_manifest_must_match_the_entries(tmp_path: Path) -> None:
    run = make_run(tmp_path, 20)
    m = read_manifest(run)
    m.high_watermark = 19
    m.end_ts_init = 5
    write_manifest(run, m)
    found = verify_path(run).findings
    assert [f.kind for f in found] == [Kind.MANIFEST_MISMATCH, Kind.MANIFEST_MISMATCH]
    assert "high_watermark 19" in found[0].detail


def test_an_ended_run_must_end_with_run_ended(tmp_path: Path) -> None:
    run = make_run(tmp_path, 20, status=RunStatus.ENDED, ended=False)
    assert kinds(run) == [Kind.MISSING_RUN_ENDED]


def test_seq_one_must_be_run_started(tmp_path: Path) -> None:
    run = make_run(tmp_path, 0, status=RunStatus.RUNNING)
    recs = [encode_entry(s, s, s, "data.x", b"p") for s in range(1, 6)]
    write_stream(run, run.name, recs)
    assert kinds(run) == [Kind.MISSING_RUN_STARTED]


def test_hostile_manifests_are_findings(tmp_path: Path) -> None:
    run = make_run(tmp_path, 20)
    data = json.loads((run / "manifest.json").read_text())
    data.update(run_id="../../etc", parent_run_id="../../../passwd")
    (run / "manifest.json").write_text(json.dumps(data))
    found = verify_path(run).findings
    assert {f.kind for f in found} == {Kind.MANIFEST_MISMATCH}
    assert any("parent_run_id" in f.detail for f in found)
    (run / "manifest.json").write_bytes(os.urandom(300))
    assert kinds(run) == [Kind.UNREADABLE]
    (run / "manifest.json").unlink()
    assert kinds(run) == [Kind.UNREADABLE]


def test_leftovers_and_strangers_in_a_run_dir(tmp_path: Path) -> None:
    run = make_run(tmp_path, 20)
    (run / "events-000000.seg.torn").write_bytes(b"x" * 10)
    report = verify_path(run)
    assert [f.kind for f in report.findings] == [Kind.LEFTOVER_TORN] and report.ok
    (run / ".manifest.json.4242.tmp").write_text("{}")
    (run / "notes.txt").write_text("hi")
    (run / "blobs").mkdir()
    (run / "markers-000000.seg").symlink_to(run / "events-000000.seg")
    found = kinds(run)
    assert Kind.LEFTOVER_TEMP in found
    assert found.count(Kind.UNEXPECTED_FILE) == 1  # notes.txt: a note
    assert found.count(Kind.WRONG_FILE_TYPE) == 1  # the symlinked segment: a finding


def test_a_file_ringtape_did_not_write_is_a_note_not_damage(tmp_path: Path) -> None:
    """Issue 14 (6): a stray notes.txt (in the run or in blobs/) is listed, the run is intact."""
    run = make_run(tmp_path, 20)
    (run / "notes.txt").write_text("hi")
    (run / "blobs").mkdir()
    (run / "blobs" / "README").write_text("hi")
    report = verify_path(run)
    assert [f.kind for f in report.findings] == [Kind.UNEXPECTED_FILE] * 2
    assert report.ok and report.runs[0].verdict == "intact"


@pytest.mark.parametrize("what", ["fifo", "socket", "symlink", "directory"])
@pytest.mark.parametrize("name", ["manifest.json", "writer.lock", "events-000001.seg", "blob"])
def test_a_non_regular_file_where_ringtape_writes_one_is_a_finding(
    tmp_path: Path, what: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO, socket, symlink or directory under one of ringtape's names is damage, read by
    nobody (no hang): ``wrong_file_type``."""
    run = make_run(tmp_path, 20)
    target = run / name
    if name == "blob":
        (run / "blobs").mkdir()
        target = run / "blobs" / ("0" * 32 + ".snap")
    elif target.exists():
        target.unlink()
    if what == "fifo":
        os.mkfifo(target)
    elif what == "socket":
        monkeypatch.chdir(target.parent)  # a socket path is limited to 108 bytes
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(target.name)
        sock.close()
    elif what == "symlink":
        target.symlink_to(tmp_path)
    else:
        target.mkdir()
    report = verify_path(run)
    assert Kind.WRONG_FILE_TYPE in [f.kind for f in report.findings]
    assert not report.ok and report.runs[0].verdict.startswith("DAMAGED")


def test_a_symlinked_run_or_instance_directory_is_a_finding_not_a_silent_skip(
    tmp_path: Path,
) -> None:
    """Defect 3: a run directory that is a symlink was silently left out (verify: intact)."""
    run = make_run(tmp_path, 20)
    elsewhere = make_run(tmp_path / "elsewhere", 20)
    link = run.parent / (elsewhere.name[:-8] + "deadbeef")
    link.symlink_to(elsewhere)
    for path in (run.parent, tmp_path):  # the instance dir, the base dir
        report = verify_path(path)
        odd = [f for f in report.findings if f.kind is Kind.WRONG_FILE_TYPE]
        assert [f.path for f in odd] == [str(link)] and not report.ok
    instance_link = tmp_path / "0d3e5c1a-7b2f-4e8a-9c6d-1f2e3a4b5c6d"
    instance_link.symlink_to(run.parent)
    found = [f.path for f in verify_path(tmp_path).findings if f.kind is Kind.WRONG_FILE_TYPE]
    assert str(instance_link) in found


def truncate_last(run: Path) -> None:
    last = sorted(run.glob("events-*.seg"))[-1]
    os.truncate(last, last.stat().st_size - 4)


def test_a_torn_tail_is_excused_only_while_its_writer_lives(tmp_path: Path) -> None:
    run = make_run(tmp_path, 40, status=RunStatus.RUNNING)
    truncate_last(run)
    lock = WriterLock.acquire(run)
    try:
        live = verify_path(run)
        assert live.ok and live.runs[0].verdict.startswith("live")
        assert verify_path(run / "events-000000.seg").ok
    finally:
        lock.release()
    dead = verify_path(run)
    assert [f.kind for f in dead.findings] == [Kind.TORN_TAIL]
    assert "needs recovery" in dead.runs[0].verdict
    sealed = make_run(tmp_path / "s", 40, status=RunStatus.ENDED)
    truncate_last(sealed)
    assert Kind.TORN_TAIL in kinds(sealed)


def test_hostile_paths(tmp_path: Path) -> None:
    junk = tmp_path / "junk.seg"
    junk.write_bytes(os.urandom(1 << 16))
    assert not verify_path(junk).ok
    zero = tmp_path / "zero.seg"
    zero.write_bytes(bytes(1 << 16))
    assert kinds(zero) == [Kind.TORN_TAIL]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert kinds(empty) == [Kind.UNREADABLE]
    with pytest.raises(OSError):
        verify_path(tmp_path / "does-not-exist")


def test_run_checkers_are_an_extension_point(tmp_path: Path) -> None:
    run = make_run(tmp_path, 20)
    seen: list[RunContext] = []

    def spy(ctx: RunContext) -> list[object]:
        seen.append(ctx)
        return []

    RUN_CHECKERS.append(spy)  # type: ignore[arg-type]
    try:
        assert verify_path(run).ok
    finally:
        RUN_CHECKERS.remove(spy)  # type: ignore[arg-type]
    assert seen[0].events.entries == 20 and seen[0].status is RunStatus.ENDED
