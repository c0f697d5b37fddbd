"""``ringtape verify`` (and the command line's shared behaviour) through a real subprocess:
exit statuses, what each finding names, the JSON shape, hostile input."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from conftest import INSTANCE, make_run
from test_cli_support import flip_byte, frames, ringtape, verify_json

from ringtape.storage.check.findings import KINDS
from ringtape.storage.format.frame import (
    SEGMENT_HEADER_SIZE,
    encode_frame_header,
    encode_segment_header,
)
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.run.status import RunStatus

FINDING_KEYS = {"kind", "path", "offset", "seq_from", "seq_to", "detail"}
RUN_KEYS = {"run_id", "path", "status", "entries", "first_seq", "last_seq", "verdict"}


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """An ended run of 200 entries, 4 per frame, in one segment."""
    return make_run(tmp_path / "base", 200, per_frame=4)


def segment(run: Path) -> Path:
    return run / "events-000000.seg"


def test_intact_base_instance_run_and_segment(run: Path) -> None:
    base = run.parent.parent
    before = tree(base)
    for path in (base, base / INSTANCE, run, segment(run)):
        proc = ringtape("verify", path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "intact" in proc.stdout
    line = next(ln for ln in ringtape("verify", run).stdout.splitlines() if run.name in ln)
    assert "ended" in line and "200" in line and "1..200" in line and "intact" in line
    assert tree(base) == before  # verify never writes


def test_json_has_the_documented_keys(run: Path) -> None:
    code, report = verify_json(run)
    assert code == 0 and report["ok"] is True and report["findings"] == []
    assert set(report) == {"ok", "runs", "findings"}
    (summary,) = report["runs"]
    assert set(summary) >= RUN_KEYS
    assert (summary["entries"], summary["first_seq"], summary["last_seq"]) == (200, 1, 200)


def test_flipped_byte_names_the_file_and_offset(run: Path) -> None:
    offset, size = frames(segment(run))[10]
    flip_byte(segment(run), offset + size - 3)  # inside the frame's stored bytes
    code, report = verify_json(run)
    assert code == 1 and report["ok"] is False
    (finding,) = [f for f in report["findings"] if f["kind"] == "checksum_mismatch"]
    assert set(finding) == FINDING_KEYS
    assert finding["path"] == str(segment(run)) and finding["offset"] == offset
    assert (finding["seq_from"], finding["seq_to"]) == (41, 44)
    human = ringtape("verify", run)
    assert human.returncode == 1
    assert f"checksum_mismatch: {segment(run)}, offset {offset}, seq 41..44" in human.stdout
    assert KINDS[next(k for k in KINDS if k == "checksum_mismatch")] in human.stdout


def test_truncated_tail(run: Path) -> None:
    seg = segment(run)
    offset, size = frames(seg)[-1]
    os.truncate(seg, offset + size // 2)
    code, report = verify_json(run)
    assert code == 1
    assert [f["kind"] for f in report["findings"] if f["kind"] == "torn_tail"] == ["torn_tail"]


def test_torn_tail_of_a_live_running_run_is_not_a_finding(tmp_path: Path) -> None:
    run = make_run(tmp_path, 200, status=RunStatus.RUNNING, ended=False)
    offset, size = frames(segment(run))[-1]
    os.truncate(segment(run), offset + size // 2)
    lock = WriterLock.acquire(run)  # this process plays the live writer
    try:
        code, report = verify_json(run)
        assert code == 0 and report["findings"] == []
    finally:
        lock.release()
    code, report = verify_json(run)  # the writer is gone: now the torn tail counts
    assert code == 1 and {f["kind"] for f in report["findings"]} == {"torn_tail"}


def test_removed_middle_frame(run: Path) -> None:
    seg = segment(run)
    offset, size = frames(seg)[20]
    data = seg.read_bytes()
    seg.write_bytes(data[:offset] + data[offset + size :])
    code, report = verify_json(run)
    assert code == 1
    missing = [f for f in report["findings"] if f["kind"] == "missing_frame"]
    assert missing and missing[0]["path"] == str(seg) and missing[0]["offset"] == offset
    assert missing[0]["seq_from"] == 81


def test_swapped_frames(run: Path) -> None:
    seg = segment(run)
    (a, na), (b, nb) = frames(seg)[5:7]
    data = seg.read_bytes()
    seg.write_bytes(data[:a] + data[b : b + nb] + data[a : a + na] + data[b + nb :])
    code, report = verify_json(run)
    assert code == 1
    kinds = {f["kind"] for f in report["findings"]}
    assert "chain_break" in kinds, report["findings"]
    assert all(f["path"] == str(seg) for f in report["findings"] if f["kind"] == "chain_break")


def test_garbage_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.seg"
    junk.write_bytes(os.urandom(100_000))
    code, report = verify_json(junk)
    assert code == 1 and report["findings"][0]["kind"] == "bad_header"


def test_garbage_segment_inside_a_run(run: Path) -> None:
    segment(run).write_bytes(os.urandom(50_000))
    code, report = verify_json(run.parent.parent)
    assert code == 1 and report["runs"][0]["verdict"].startswith("DAMAGED")


def test_zero_filled_file(tmp_path: Path) -> None:
    zeros = tmp_path / "events-000000.seg"
    zeros.write_bytes(bytes(1 << 20))
    code, report = verify_json(zeros)
    assert code == 1 and report["findings"]


def test_header_claiming_a_4_gib_frame(tmp_path: Path) -> None:
    run = make_run(tmp_path, 0, status=RunStatus.ENDED)
    header = encode_segment_header(1, 0, 1, 0, 0, run.name)
    frame, _ = encode_frame_header(1, 1, 2**32 - 1, 2**32 - 1, 1, 0, 0)
    segment(run).write_bytes(header + frame + os.urandom(4096))
    assert len(header) == SEGMENT_HEADER_SIZE
    code, report = verify_json(run)
    assert code == 1
    assert any(f["kind"] == "bad_header" for f in report["findings"]), report["findings"]


def test_manifest_with_parent_paths(run: Path) -> None:
    manifest = run / "manifest.json"
    data = json.loads(manifest.read_text())
    data.update(run_id="../../../etc", parent_run_id="../../passwd")
    manifest.write_text(json.dumps(data))
    code, report = verify_json(run)
    assert code == 1
    assert {f["kind"] for f in report["findings"]} == {"manifest_mismatch"}


def test_leftover_torn_file_is_reported_but_not_a_failure(run: Path) -> None:
    (run / "events-000000.seg.torn").write_bytes(b"x" * 10)
    code, report = verify_json(run)
    assert code == 0 and [f["kind"] for f in report["findings"]] == ["leftover_torn"]
    human = ringtape("verify", run)
    assert "leftover_torn (informational)" in human.stdout


def test_unexpected_file_is_a_note(run: Path) -> None:
    (run / "notes.txt").write_text("hello")
    code, report = verify_json(run)
    assert code == 0 and [f["kind"] for f in report["findings"]] == ["unexpected_file"]
    assert report["ok"] and report["runs"][0]["verdict"] == "intact"
    human = ringtape("verify", run)
    assert "unexpected_file (informational)" in human.stdout


def test_parallel_jobs_give_the_same_report(tmp_path: Path) -> None:
    run = make_run(tmp_path, 2000, per_frame=8, segment_bytes=8192)
    flip_byte(run / "events-000002.seg", 500)
    one = verify_json(run, "--jobs", "1")
    two = verify_json(run, "--jobs", "2")
    assert one == two and one[0] == 1


def test_empty_dir(tmp_path: Path) -> None:
    proc = ringtape("verify", tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("ringtape: ") and proc.stderr.count("\n") == 1
    empty_instance = tmp_path / str(uuid.uuid4())
    empty_instance.mkdir()
    assert ringtape("verify", empty_instance).returncode == 2


def test_missing_path(tmp_path: Path) -> None:
    proc = ringtape("verify", tmp_path / "nope")
    assert proc.returncode == 2
    assert proc.stderr == f"ringtape: {tmp_path / 'nope'}: no such file or directory\n"
    assert ringtape("verify", "--json", tmp_path / "nope").stdout == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_permission_denied(run: Path) -> None:
    run.chmod(0)
    try:
        proc = ringtape("verify", run)
    finally:
        run.chmod(0o700)
    assert proc.returncode == 2 and "permission denied" in proc.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["verify"], ["verify", "--jobs", "0", str(tmp_path)], ["frobnicate"], []):
        proc = ringtape(*args)
        assert proc.returncode == 2, args


def test_every_subcommand_has_help_with_examples() -> None:
    for name in ("verify", "inspect", "dump", "recover", "prune", "demo", "bench"):
        proc = ringtape(name, "--help")
        assert proc.returncode == 0, name
        assert "examples:" in proc.stdout and f"ringtape {name}" in proc.stdout
    top = ringtape("--help")
    assert top.returncode == 0 and "examples:" in top.stdout
