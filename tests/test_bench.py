"""``ringtape bench --quick`` end to end, in a real subprocess with the real writer and baselines.

Only the shape of the JSON is checked: every section, every baseline, a ``target`` and a ``met``
where the design gives a target. Timings depend on the machine and are never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ringtape.tools.bench.common import BASELINE_NAMES, SECTIONS
from ringtape.tools.bench.run import format_table

# One quick bench run takes ~8 s on a quiet 2-core machine and more on a busy one.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RUN_BENCH = "import sys; from ringtape.tools.bench.run import main; sys.exit(main())"


def _shm_names(pid: int) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"ringtape-{pid}-")}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path, int]:
    """One ``--quick`` run for the whole module: (result, stderr, working dir, pid)."""
    cwd = tmp_path_factory.mktemp("bench")
    out = cwd / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with subprocess.Popen(
        [sys.executable, "-c", RUN_BENCH, "--quick", "--out", str(out)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            proc.kill()  # a no-op once it has exited
    assert proc.returncode == 0, stderr
    assert stdout == ""  # with --out, the JSON goes to the file only
    return json.loads(out.read_text()), stderr, cwd, proc.pid


def test_every_section_is_present_and_ran(quick_run: tuple[dict[str, Any], str, Path, int]) -> None:
    result = quick_run[0]
    assert result["schema"] == "ringtape-bench/1"
    assert result["meta"]["quick"] is True
    assert result["errors"] == []
    for name in SECTIONS:
        assert name in result, name
        assert "error" not in result[name], result[name]


def test_every_comparison_has_all_baselines(
    quick_run: tuple[dict[str, Any], str, Path, int],
) -> None:
    result = quick_run[0]
    for name in ("append_latency", "producer_cpu", "durable_throughput"):
        assert set(result[name]["baselines"]) == set(BASELINE_NAMES), name
    for name in ("producer_cpu", "durable_throughput"):
        assert set(result[name]["ratios_ringtape_over_baseline"]) == set(BASELINE_NAMES), name
    lat = result["append_latency"]
    assert set(lat["timer_overhead"]) == {"record_call", "message_call"}
    for mode in ("ts_init_passed", "default_clock"):
        assert set(lat["ratios_ringtape_over_baseline"][mode]) == set(BASELINE_NAMES)
    for stats in [lat["ringtape"]["ts_init_passed"], *lat["baselines"].values()]:
        for key in ("p50_ns", "p99_ns", "p99_9_ns", "max_ns", "late_slots", "count"):
            assert key in stats
    assert isinstance(lat["ringtape"]["sidecar_running"], bool)
    assert result["durable_throughput"]["config"]["channel_capacity"] == 65_536


def test_judged_figures_carry_target_and_met(
    quick_run: tuple[dict[str, Any], str, Path, int],
) -> None:
    result = quick_run[0]
    judged = [
        result["append_latency"]["ringtape"]["ts_init_passed"],
        result["append_latency"]["ringtape"]["default_clock"],
        result["producer_cpu"]["ringtape"],
        result["durable_throughput"]["ringtape"],
        result["durable_throughput"]["ringtape_session_stream"],
        result["append_to_durable"]["latency"],
        result["idle_cpu"],
        *result["anchors"]["sizes"].values(),
        result["anchors"]["blobs"],
        result["anchors"]["append_during_blob"],
        result["append_latency"]["ringtape"]["producers_threads"],
        result["append_latency"]["ringtape"]["varied_shapes"],
        result["append_latency"]["ringtape"]["varied_over_fixed"],
        *result["paced"]["rates"].values(),
        result["lifecycle"],
        result["readback"]["verify"],
        result["readback"]["dump"],
    ]
    for section in judged:
        assert isinstance(section["target"], dict) and section["target"]
        assert isinstance(section["met"], bool)
    names = {check["name"] for check in result["checks"]}
    # append (4 modes x 3), varied over fixed (p50, p99), 5 pipeline figures, paced (3 rates x
    # CPU and durable lag), open and seal, anchor() per size (4) and its 20 MB max, blob ratio
    # and read speed, appends during a blob write, verify and dump speed, verify --jobs 2
    assert len(result["checks"]) == 4 * 3 + 2 + 5 + 3 * 2 + 2 + 4 + 1 + 2 + 1 + 3, names
    readback = result["readback"]
    assert readback["run"]["entries"] > 0 and readback["run"]["marker_records"] > 0
    assert readback["dump"]["entries"] == readback["run"]["entries"]
    assert 0 < readback["dump"]["since_last_tenth_entries"] < readback["run"]["entries"]
    cliff = result["append_latency"]["ringtape"]["varied_over_fixed"]
    assert cliff["baseline"]["name"] == "bare_ring" and cliff["baseline"]["p50_ns"] > 0
    paced = result["paced"]["rates"]
    assert set(paced) == {"10000", "50000", "100000"}
    for row in paced.values():
        assert set(row["cpu_us_per_entry"]) == {"writer", "sidecar"}
        assert row["floor"]["us_per_entry"] > 0 and row["commits"] > 0
    assert all(isinstance(check["met"], bool) for check in result["checks"])
    comp = result["compression"]
    assert comp["raw_bytes"] > 0 and comp["stored_bytes"] > 0


def test_nothing_is_left_behind(quick_run: tuple[dict[str, Any], str, Path, int]) -> None:
    _, _, cwd, pid = quick_run
    assert not (cwd / ".bench-tmp").exists()
    assert _shm_names(pid) == set()


def test_the_table_goes_to_stderr(quick_run: tuple[dict[str, Any], str, Path, int]) -> None:
    result, stderr = quick_run[0], quick_run[1]
    table = format_table(result)
    assert table in stderr
    for label in (
        "append p50",
        "producer CPU",
        "entries/s",
        "idle",
        "compression",
        *BASELINE_NAMES,
    ):
        assert label in table


def test_the_nautilus_section_compares_the_same_backtest_in_every_mode(
    quick_run: tuple[dict[str, Any], str, Path, int],
) -> None:
    result, stderr = quick_run[0], quick_run[1]
    section = result["nautilus"]
    if "skipped" in section:  # nautilus_trader is not installed here
        pytest.skip(section["skipped"])
    assert section["rounds"] >= 3
    assert set(section["median"]) == {"none", "null", "list", "ringtape", "ringtape_markers"}
    runs = section["runs"]
    assert all(len(r) == section["rounds"] for r in runs.values())
    published = {r["published"] for mode in runs.values() for r in mode}
    assert len(published) == 1  # the same backtest every time
    assert runs["ringtape"][0]["entries"] > section["messages_per_run"] * 0.9
    assert isinstance(section["met"], bool) and section["target"]["ringtape/list"] == 1.10
    assert section["nautilus_serialisation_us_per_message"] > 0
    assert "ringtape/list" in stderr
