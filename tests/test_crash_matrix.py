"""The crash matrix: real SIGKILLs at chosen points, then the boot sweep.

After the sweep every entry the kernel saw acknowledged as durable is on disk, nothing after a
torn tail is invented (every entry on disk is exactly what the kernel appended under that
seq), and the run's status is the one the recovery table gives.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pipeline_support import wait_until, walk_entries

from ringtape.capture.config import EventStoreConfig
from ringtape.capture.store import EventStore
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED
from ringtape.storage.run.lock import writer_alive
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.status import RunStatus

ROOT = Path(__file__).resolve().parent.parent

# The kernel: appends payloads derived from their seq, reports what became durable, and dies
# (or is killed) at the point the test names.
KERNEL = r"""
import json, os, signal, sys, time, uuid
from ringtape.capture.config import EventStoreConfig, RegisteredComponents
from ringtape.capture.faults import FaultPlan
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.capture.errors import StoreHalted

base, instance, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
plan = FaultPlan(**spec.get("faults", {}))
store = EventStore(EventStoreConfig(base_dir=base, max_batch_entries=50),
                   instance_id=instance, options=StoreOptions(faults=plan))
store.open(instance, RegisteredComponents(), "live")
print(json.dumps({"run_dir": str(store.run_dir()), "durable": store.durable_seq()}), flush=True)
if spec.get("die") == "before_first_append":
    os.kill(os.getpid(), signal.SIGKILL)
durable = 1
shift = 0  # entries the store appended itself meanwhile (an anchor's)
try:
    for i in range(spec.get("entries", 20000)):
        seq = i + 2 + shift
        store.append("events.order.filled", b"entry-%d" % seq, ts_init=seq)
        if i % 500 == 0:
            d = store.durable_seq()
            if d > durable:
                durable = d
                print(json.dumps({"durable": d}), flush=True)
            if spec.get("anchor") and i == 5000:
                store.snapshot_anchorer()(os.urandom(200) * 50)
                shift += 1
        if spec.get("die") == "mid_batch" and i == 12345:
            print(json.dumps({"durable": store.durable_seq()}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
except StoreHalted:
    pass
deadline = time.monotonic() + 5
while not store.is_halted() and time.monotonic() < deadline and spec.get("wait_halt"):
    time.sleep(0.005)
print(json.dumps({"durable": store.durable_seq()}), flush=True)
if spec.get("seal"):
    store.seal()
print(json.dumps({"done": True}), flush=True)
time.sleep(30)
"""

CASES = {
    "before_first_append": ({"die": "before_first_append"}, RunStatus.CRASHED_RECOVERED),
    "mid_batch_kernel_killed": ({"die": "mid_batch"}, RunStatus.CRASHED_RECOVERED),
    "between_write_and_fsync": (
        {"faults": {"crash_at": "after_write", "crash_after_commits": 5}, "wait_halt": True},
        RunStatus.CRASHED_RECOVERED,
    ),
    "after_fsync_before_publish": (
        {"faults": {"crash_at": "after_fsync", "crash_after_commits": 5}, "wait_halt": True},
        RunStatus.CRASHED_RECOVERED,
    ),
    "mid_frame_write": (
        {"faults": {"crash_at": "mid_frame_write", "crash_after_commits": 5}, "wait_halt": True},
        RunStatus.CRASHED_RECOVERED,
    ),
    "during_seal_before_manifest": (
        {"faults": {"kernel_crash_at": "seal_before_manifest"}, "seal": True, "entries": 3000},
        RunStatus.ENDED,
    ),
    "during_manifest_rename": (
        {"faults": {"kernel_crash_at": "manifest_before_rename"}, "seal": True, "entries": 3000},
        RunStatus.ENDED,
    ),
    "during_snapshot_blob_write": (
        {"faults": {"blob_crash_at": "blob_mid_write"}, "anchor": True, "wait_halt": True},
        RunStatus.CRASHED_RECOVERED,
    ),
}


def run_kernel(base: Path, instance: uuid.UUID, spec: dict[str, object]) -> tuple[Path, int]:
    """Run the kernel until it dies or reports done; returns its run dir and the highest
    durable seq it saw acknowledged."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(base), str(instance), json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    run_dir: Path | None = None
    durable = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            msg = json.loads(line)
            run_dir = Path(msg["run_dir"]) if "run_dir" in msg else run_dir
            durable = max(durable, msg.get("durable", 0))
            if msg.get("done"):
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert run_dir is not None
    return run_dir, durable


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_crash_point_then_sweep(tmp_path: Path, case: str) -> None:
    spec, expected = CASES[case]
    instance = uuid.uuid4()
    run_dir, durable = run_kernel(tmp_path, instance, spec)
    assert durable >= 1
    assert read_manifest(run_dir).status is RunStatus.RUNNING
    # An orphaned writer drains and exits on its own; until then the run is live, not crashed.
    wait_until(lambda: not writer_alive(run_dir), what="the orphaned writer to exit")

    boot = EventStore(EventStoreConfig(base_dir=str(tmp_path)), instance_id=instance)
    assert boot.last_sweep is not None
    assert [Path(p.run_dir).name for p in boot.last_sweep.recovered] == [run_dir.name]
    assert boot.parent_run_id() == run_dir.name

    manifest = read_manifest(run_dir)
    assert manifest.status is expected
    entries = list(walk_entries(run_dir))
    seqs = [e.seq for e in entries]
    assert seqs == list(range(1, len(seqs) + 1)), "gap-free from seq 1"
    assert manifest.high_watermark == len(seqs) >= durable, "every acknowledged entry survived"
    assert entries[0].topic == TOPIC_RUN_STARTED
    for entry in entries[1:]:
        if entry.topic == "events.order.filled":
            assert entry.payload == b"entry-%d" % entry.seq, "nothing invented or misplaced"
    assert (entries[-1].topic == TOPIC_RUN_ENDED) == (expected is RunStatus.ENDED)
    report = verify_path(run_dir)
    assert report.ok, [str(f) for f in report.findings]
    # A second sweep changes nothing.
    again = EventStore(EventStoreConfig(base_dir=str(tmp_path)), instance_id=instance)
    assert again.last_sweep is not None and not again.last_sweep.recovered
