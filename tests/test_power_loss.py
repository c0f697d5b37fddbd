"""Power loss, not only process death: a crash-state generator over the recorded file
operations of a real kernel, writer and marker sidecar (open, appends, an anchor, seal), and of
``ringtape recover`` itself (``tests/crash_states.py`` has the recorder and the model).

In every state the model allows — writes not yet fdatasync'd lost, kept, torn at 512/4096 bytes
or read back as zeros; directory entries not yet fsynced (new segments, renamed manifests and
checkpoints, blobs) dropped — recovery must keep every entry up to the durable seq seen before
the cut, exactly; never quarantine the run; leave no manifest that names a missing segment or
blob (``verify`` passes); and change nothing when run a second time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crash_states import CrashState, crash_states, install_recorder, materialise, read_log

from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.entry import TOPIC_RUN_STARTED
from ringtape.storage.read.reader import iter_entries
from ringtape.storage.run.layout import list_runs
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.storage.run.sweep import sweep_instance

ROOT = Path(__file__).resolve().parent.parent

KERNEL = r"""
import os, sys, time, json
from ringtape.capture.config import DataMarkerConfig, EventStoreConfig, RegisteredComponents
from ringtape.capture.store import EventStore, StoreOptions

base, instance, log = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(log, os.O_WRONLY | os.O_APPEND)
def durable(seq):
    os.write(fd, (json.dumps({"op": "durable", "seq": seq}) + "\n").encode())
config = EventStoreConfig(base_dir=base, max_batch_entries=16, data_markers=DataMarkerConfig())
store = EventStore(config, instance_id=instance, options=StoreOptions(segment_max_bytes=4096))
store.open(instance, RegisteredComponents(), "live")
seen = store.durable_seq()
durable(seen)
seq = 1
while seq < 700:
    seq += 1
    got = store.append("events.order.filled", b"entry-%d" % seq)
    assert got == seq
    if seq % 5 == 0:
        store.observe_data("Quote", "BTCUSDT-PERP.BINANCE", seq, seq)
    if seq == 400:
        store.snapshot_anchorer()(b"snapshot at %d" % seq)
        seq += 1  # the anchor entry
    if seq % 40 == 0:
        time.sleep(0.01)  # several group commits, not one
    d = store.durable_seq()
    if d > seen:
        seen = d
        durable(d)
store.seal()
durable(store.durable_seq())
"""


def recorded(cmd: list[str], root: Path, log: Path, site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(site), "RINGTAPE_OPLOG": str(log)}
    env["RINGTAPE_OPLOG_ROOT"] = str(root)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def expected_payload(seq: int) -> bytes:
    return b"entry-%d" % seq


def check_recovered(base: Path, instance: str, state: CrashState) -> dict[str, Any]:
    """Recover a materialised crash state and check it; returns what it saw."""
    instance_dir = base / instance
    report = sweep_instance(instance_dir)
    assert not report.skipped, (state.label, report.skipped)
    runs = list_runs(instance_dir)
    if state.durable == 0 and not runs:
        return {"run": False}
    assert len(runs) == 1, (state.label, runs, report)
    run_dir = instance_dir / runs[0]
    manifest = read_manifest(run_dir)
    assert manifest.status is not RunStatus.QUARANTINED, (state.label, manifest.findings)
    assert manifest.status.is_sealed, (state.label, manifest.status)
    seqs = []
    for entry in iter_entries(run_dir):
        seqs.append(entry.seq)
        if entry.seq == 1:
            assert entry.topic == TOPIC_RUN_STARTED
        elif entry.topic == "events.order.filled":
            assert entry.payload == expected_payload(entry.seq), state.label
    assert seqs == list(range(1, len(seqs) + 1)), state.label
    assert manifest.high_watermark == len(seqs) >= state.durable, (state.label, len(seqs))
    verified = verify_path(run_dir)
    assert verified.ok, (state.label, [str(f) for f in verified.findings])
    before = (run_dir / "manifest.json").read_bytes()
    again = sweep_instance(instance_dir)
    assert not again.recovered and not again.retired and not again.skipped, state.label
    assert (run_dir / "manifest.json").read_bytes() == before, "a second recovery changed it"
    return {"run": True, "high": len(seqs), "status": str(manifest.status)}


@dataclass(frozen=True)
class Recording:
    site: Path
    base: Path
    instance: str
    ops: list[dict[str, Any]]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """One real run (kernel, writer, sidecar: open, appends, an anchor, seal), recorded."""
    tmp = tmp_path_factory.mktemp("recording")
    site = tmp / "site"
    install_recorder(site)
    base = tmp / "base"
    base.mkdir()
    instance = str(uuid.uuid4())
    log = tmp / "ops.jsonl"
    log.touch()
    recorded([sys.executable, "-c", KERNEL, str(base), instance, str(log)], base, log, site)
    return Recording(site, base, instance, read_log(log))


def test_every_new_name_is_fsynced_into_its_directory(recording: Recording) -> None:
    """Defect 9: every file or directory ringtape creates or renames into place (run and parent
    directories, lock files, segments, checkpoints, blobs, manifests) has its directory fsynced
    before the process that made it fsyncs any other file, claims anything durable, or exits:
    a power loss can never keep what came after it and lose the name. The order is per thread:
    the writer's blob thread renames a blob and fsyncs ``blobs/`` while its main thread goes on
    syncing segments, and neither relies on the other's names."""
    ops = recording.ops
    # (pid, thread) -> {new path: its directory}
    pending: dict[tuple[int, int], dict[str, str]] = {}
    for op in ops:
        kind = op["op"]
        mine = pending.setdefault((op.get("pid", 0), op.get("tid", 0)), {})
        if kind in ("create", "mkdir", "rename"):
            path = op["dst"] if kind == "rename" else op["path"]
            if ".tmp" not in Path(path).name:  # a temp name is never relied on
                mine[path] = str(Path(path).parent)
        elif kind == "fsync":
            if op["path"] in mine.values():  # a directory
                for path in [p for p, d in mine.items() if d == op["path"]]:
                    del mine[path]
            else:
                others = [p for p in mine if p != op["path"]]
                assert not others, f"{op['path']} fsynced while {others} are not in their dirs"
        elif kind == "durable" and op["seq"] >= 1:
            # What durable_seq() promises is the entry stream: the marker stream's files (the
            # sidecar's, synced on its own schedule) and blobs (an anchor is a restore point
            # only once its blob thread has fsynced blobs/) are not part of that claim.
            names = [p for mine in pending.values() for p in mine]
            claimed = [
                p
                for p in names
                if not Path(p).name.startswith("markers") and Path(p).parent.name != "blobs"
            ]
            assert not claimed, f"durable {op['seq']} claimed with {claimed} not in their dirs"
    assert not any(pending.values()), f"names never fsynced into their directory: {pending}"


@pytest.mark.slow
def test_power_loss_at_every_step_loses_no_durable_entry(
    recording: Recording, tmp_path: Path
) -> None:
    site, base, instance, ops = recording.site, recording.base, recording.instance, recording.ops
    kinds = {op["op"] for op in ops}
    assert {"create", "write", "fsync", "rename", "mkdir", "durable"} <= kinds, kinds
    pids = {op["pid"] for op in ops if op["op"] != "durable"}
    assert len(pids) >= 3, "the kernel, the writer and the sidecar were all recorded"
    final_durable = max(op["seq"] for op in ops if op["op"] == "durable")
    assert final_durable >= 700

    explored = 0
    seen_status: dict[str, int] = {}
    torn_states: list[CrashState] = []
    for state in crash_states(ops, base, per_point=5, every_nth_write=2, seed=15):
        target = tmp_path / "crash" / str(explored)
        materialise(state, target)
        if instance in state.tree:
            outcome = check_recovered(target, instance, state)
            if outcome["run"]:
                seen_status[outcome["status"]] = seen_status.get(outcome["status"], 0) + 1
            if 0 < state.durable < final_durable and len(torn_states) < 40:
                torn_states.append(state)
        shutil.rmtree(target)
        explored += 1
    assert explored >= 400 and set(seen_status) == {"ended", "crashed_recovered"}, seen_status

    # The recovery's own file operations, cut at every step: the next recovery finishes it.
    recover_explored = 0
    for k, state in enumerate(torn_states[::5]):
        start = tmp_path / "recover" / str(k)
        materialise(state, start)
        initial = tmp_path / "recover-initial" / str(k)
        shutil.copytree(start, initial, symlinks=True)
        rlog = tmp_path / f"recover-{k}.jsonl"
        rlog.touch()
        cli = [sys.executable, "-m", "ringtape.tools.cli", "recover", str(start)]
        recorded(cli, start, rlog, site)
        rops = read_log(rlog)
        renames = [op for op in rops if op["op"] == "rename"]
        assert [Path(op["dst"]).name for op in renames] == ["manifest.json"], (
            "one recovery, one manifest write (defect 6)"
        )
        for sub in crash_states(
            rops,
            start,
            per_point=3,
            every_nth_write=1,
            seed=k,
            initial=initial,
            durable_floor=state.durable,
        ):
            target = tmp_path / "crash-r" / str(recover_explored)
            materialise(sub, target)
            check_recovered(target, instance, sub)
            shutil.rmtree(target)
            recover_explored += 1
    assert recover_explored >= 100
    print(
        json.dumps(
            {
                "crash_states": explored + recover_explored,
                "writer_kernel_sidecar_states": explored,
                "recover_states": recover_explored,
                "recorded_ops": len(ops),
                "statuses": seen_status,
            }
        )
    )
