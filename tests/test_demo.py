"""``ringtape demo`` end to end through a real subprocess: the real pipeline captures a short
session, the run verifies, replays equal, and the other commands read what it wrote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import shm_names
from test_cli_support import command, ringtape

from ringtape.storage.run.layout import list_instances, list_runs
from ringtape.tools.demo.run import DEMO_INSTANCE


def run_demo(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    proc = subprocess.Popen(
        command("demo", "--seconds", "1", "--anchor-every", "0.3", *args),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One JSON demo run into an explicit base dir and one human one into the default."""
    cwd = tmp_path_factory.mktemp("demo")
    base = cwd / "explicit"
    proc, pid = run_demo(cwd, "--base-dir", str(base), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert shm_names(pid) == set()
    human, pid = run_demo(cwd)
    assert human.returncode == 0, human.stdout + human.stderr
    assert shm_names(pid) == set()
    return base, json.loads(proc.stdout), human.stdout


def test_summary_json(demo: tuple[Path, dict[str, Any], str]) -> None:
    base, summary, _ = demo
    assert summary["ok"] is True and summary["replay_parity"] is True
    assert summary["verify"]["ok"] is True and summary["verify"]["findings"] == []
    assert summary["anchors"] >= 1 and summary["bus_messages"] > 100
    # Every bus message, RunStarted, RunEnded and one entry per anchor.
    assert summary["entries"] == summary["bus_messages"] + 2 + summary["anchors"]
    assert summary["market_data_observed"] > 0 and summary["marker_records"] > 0
    latency = summary["append_latency_ns"]
    assert latency["count"] > 0 and 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    lag = summary["durable_lag_ns"]
    assert lag["count"] == latency["count"] and lag["p50"] > 0
    assert summary["compression_ratio"] > 1 and summary["disk_bytes"] > 0
    assert Path(summary["run_dir"]).parent == base / str(DEMO_INSTANCE)


def test_summary_for_people_in_the_default_base_dir(
    demo: tuple[Path, dict[str, Any], str],
) -> None:
    base, _, text = demo
    default = base.parent / "ringtape-demo"
    assert list_instances(default) == [str(DEMO_INSTANCE)]
    assert len(list_runs(default / str(DEMO_INSTANCE))) == 1
    for label in ("entries", "append latency", "durable lag", "compression", "disk bytes"):
        assert label in text
    assert "replay parity: OK" in text


def test_the_other_commands_read_the_demo_run(demo: tuple[Path, dict[str, Any], str]) -> None:
    base, summary, _ = demo
    run_dir = Path(summary["run_dir"])
    verify = ringtape("verify", base, "--jobs", "2")
    assert verify.returncode == 0 and "intact" in verify.stdout
    inspect = json.loads(ringtape("inspect", "--json", base).stdout)
    (row,) = inspect["runs"]
    assert (row["status"], row["entries"], row["anchors"]) == (
        "ended",
        summary["entries"],
        summary["anchors"],
    )
    assert row["markers"]["total"] == summary["marker_records"] and row["markers"]["hifi"] > 0
    entries = ringtape("dump", run_dir, "--topic", "events.order.filled").stdout.splitlines()
    assert entries and all(json.loads(e)["encoding"] == "json" for e in entries)
    markers = [json.loads(x) for x in ringtape("dump", run_dir, "--markers").stdout.splitlines()]
    assert {"stream", "hifi", "cursor"} <= {m["kind"] for m in markers}


def test_bad_base_dir(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    proc = ringtape("demo", "--seconds", "1", "--base-dir", target)
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    assert ringtape("demo", "--seconds", "0").returncode == 2
