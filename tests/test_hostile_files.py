"""Hostile files against every command: one line and exit 1 or 2, never a traceback or a hang.

The defects of the reliability campaign, each reproduced as it was found: a manifest nested
100,000 deep, a FIFO where a segment should be, the ring of a kernel and writer killed together,
inspect's exit status on damage, a manifest of an unknown format.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_run
from test_cli_support import ringtape

from ringtape.capture.shm import SHM_DIR
from ringtape.storage.check.findings import Kind
from ringtape.storage.check.verify import verify_path
from ringtape.storage.run.layout import MANIFEST_NAME
from ringtape.storage.run.status import RunStatus


def test_a_deeply_nested_manifest_is_one_line_and_a_finding(tmp_path: Path) -> None:
    """Defect 1: ``'[' * 100000 + ']' * 100000`` gave a RecursionError traceback."""
    run = make_run(tmp_path, 20)
    (run / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    for args, code in (
        (("verify", run), 1),
        (("verify", "--json", run), 1),
        (("inspect", run), 1),
        (("dump", run), 0),  # dump reads the segments; the manifest is not needed
        (("prune", tmp_path, "--dry-run", "--mode", "full"), 0),
    ):
        proc = ringtape(*args)  # asserts no traceback
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        assert "Recursion" not in proc.stdout + proc.stderr
    report = verify_path(run)
    (unreadable,) = [f for f in report.findings if f.kind is Kind.UNREADABLE]
    assert "nested too deeply" in unreadable.detail


@pytest.mark.parametrize("mode", ["full", "bounded", "snapshot"])
def test_prune_never_hangs_on_a_fifo_segment(tmp_path: Path, mode: str) -> None:
    """Defect 2: prune blocked forever opening a FIFO in a segment's place (pytest-timeout and
    the subprocess timeout fail the test if it blocks)."""
    make_run(tmp_path, 20, start_ts=10)
    run = make_run(tmp_path, 20, start_ts=20, segment_bytes=4096)
    fifo = run / "events-000001.seg"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    extra = ["--keep-last", "1"] if mode == "bounded" else []
    for dry in (["--dry-run"], []):
        proc = ringtape("prune", tmp_path, "--mode", mode, *extra, *dry, timeout=60)
        assert proc.returncode == 0, proc.stderr
    report = verify_path(run)
    assert Kind.WRONG_FILE_TYPE in [f.kind for f in report.findings] or not report.ok


KERNEL_DIES_IN_OPEN = r"""
import os, signal, sys
from ringtape.capture.shm import SharedRegion
region = SharedRegion.create(1 << 16)  # what open() creates before the writer attaches
print(region.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_recover_removes_the_ring_of_a_dead_run(tmp_path: Path) -> None:
    """Defect 4: a kernel (and its writer) killed in open() before the writer attached left the
    run's ring in /dev/shm; only a later boot of a store removed it, not `ringtape recover`.
    (Any store booting elsewhere on the machine meanwhile removes it too: then try again.)"""
    make_run(tmp_path, 20, status=RunStatus.RUNNING)
    for _ in range(5):
        proc = subprocess.run(
            [sys.executable, "-c", KERNEL_DIES_IN_OPEN], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == -signal.SIGKILL
        name = proc.stdout.strip()
        assert (SHM_DIR / name).exists(), "the dead kernel's ring is left behind"
        try:
            out = ringtape("recover", tmp_path)
            assert out.returncode == 0, out.stderr
            assert not (SHM_DIR / name).exists()
        finally:
            (SHM_DIR / name).unlink(missing_ok=True)
        if f"removed /dev/shm/{name}" in out.stdout:
            return
    pytest.fail("recover never said it removed the dead kernel's ring")


def test_inspect_exits_1_on_an_unreadable_manifest_or_damaged_segment(tmp_path: Path) -> None:
    """Defect 5: inspect said nothing in its exit status about damage it had noted."""
    run = make_run(tmp_path, 40)
    assert ringtape("inspect", run).returncode == 0
    seg = run / "events-000000.seg"
    data = bytearray(seg.read_bytes())
    data[80 + 10] ^= 0xFF  # the first frame header: inspect reads headers, not data
    seg.write_bytes(bytes(data))
    assert ringtape("inspect", run).returncode == 1
    assert ringtape("inspect", "--json", run).returncode == 1
    other = make_run(tmp_path / "b", 10)
    (other / MANIFEST_NAME).write_text("{not json")
    proc = ringtape("inspect", other)
    assert proc.returncode == 1 and "manifest" in proc.stdout


def test_a_manifest_of_an_unknown_format_is_a_finding(tmp_path: Path) -> None:
    """Defect 5: ``"format": 2`` verified as intact."""
    run = make_run(tmp_path, 20)
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    for bad in (2, "1", True, None):
        manifest["format"] = bad
        (run / MANIFEST_NAME).write_text(json.dumps(manifest))
        report = verify_path(run)
        (finding,) = [f for f in report.findings if f.kind is Kind.UNREADABLE]
        assert "format" in finding.detail and not report.ok
        proc = ringtape("verify", run)
        assert proc.returncode == 1


@pytest.mark.parametrize("name", ["writer.lock", "markers.lock", "manifest.json"])
def test_recover_reports_a_fifo_in_a_running_run_and_never_hangs(tmp_path: Path, name: str) -> None:
    """A FIFO where a lock file or the manifest should be: the run is skipped with the reason
    (exit 1), never taken for a live run, never blocked on."""
    run = make_run(tmp_path, 20, status=RunStatus.RUNNING)
    (run / name).unlink(missing_ok=True)
    os.mkfifo(run / name)
    proc = ringtape("recover", tmp_path, timeout=60)
    assert proc.returncode == 1, proc.stdout
    assert f"skipped    {run.name}" in proc.stdout and "live" not in proc.stdout
    assert Kind.WRONG_FILE_TYPE in [f.kind for f in verify_path(run).findings]


def test_a_symlinked_run_dir_is_neither_recovered_nor_pruned_through(tmp_path: Path) -> None:
    """The sweep and retention act on real run directories only: a symlink to a run elsewhere
    is not followed (verify reports it)."""
    elsewhere = make_run(tmp_path / "elsewhere", 20, status=RunStatus.RUNNING)
    real = make_run(tmp_path, 20, start_ts=10)
    link = real.parent / f"{int(elsewhere.name.split('-')[0]) + 5}-0badf00d"
    link.symlink_to(elsewhere)
    proc = ringtape("recover", tmp_path)
    assert proc.returncode == 0 and link.name not in proc.stdout, proc.stdout
    assert (elsewhere / "manifest.json").read_text().count('"running"') == 1
    proc = ringtape("prune", tmp_path, "--mode", "bounded", "--keep-last", "1")
    assert proc.returncode == 0 and link.name not in proc.stdout and link.is_symlink()
    assert ringtape("verify", tmp_path).returncode == 1  # the link is a finding
