"""``ringtape tail --follow`` against a real writer in another process: entries appear while the
run is live, across segment rolls, until the seal; and never past what the writer made durable."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from pipeline_support import wait_until, walk_entries
from test_cli_support import ROOT, command, ringtape

from ringtape.storage.run.lock import read_live_stats

KERNEL = textwrap.dedent(
    """
    import json, sys, time, uuid
    import ringtape
    from ringtape.capture.faults import FaultPlan

    hang = sys.argv[2] == "hang"
    faults = FaultPlan(hang_at="after_write", crash_after_commits=3) if hang else FaultPlan()
    options = ringtape.StoreOptions(segment_max_bytes=4096, faults=faults)
    store = ringtape.EventStore(ringtape.EventStoreConfig(base_dir=sys.argv[1]), options=options)
    instance = uuid.uuid4()
    store.open(instance, ringtape.RegisteredComponents(), "live")
    report = lambda **kw: print(json.dumps(kw), flush=True)
    report(run_dir=str(store.run_dir()), writer=store.writer_pid())
    if hang:  # one entry per commit, a stats interval apart, until the writer hangs
        for i in range(20):
            seq = store.append("events.order.filled", b'{"i": %d}' % i, payload_type="json")
            deadline = time.monotonic() + 3
            while store.durable_seq() < seq and time.monotonic() < deadline:
                time.sleep(0.001)
            if store.durable_seq() < seq:
                report(hung=seq, durable=store.durable_seq())
                time.sleep(3600)
            time.sleep(1.1)
    for line in sys.stdin:
        for i in range(int(line)):
            seq = store.append("events.order.filled", b'{"i": %d}' % i, payload_type="json")
        while store.durable_seq() < seq:
            time.sleep(0.001)
        report(durable=seq)
    store.seal()
    report(sealed=True)
    """
)


def start_kernel(base: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(base), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def reader(stream: object) -> queue.Queue[str]:
    """Lines of a pipe, read on a thread (so the test can wait with a bound)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def drain(lines: queue.Queue[str], into: list[dict[str, object]]) -> int:
    while not lines.empty():
        into.append(json.loads(lines.get()))
    return int(str(into[-1]["seq"])) if into else 0


def kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_follow_prints_durable_entries_live_across_rolls_until_the_seal(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path, "live")
    tail = None
    try:
        assert kernel.stdin is not None and kernel.stdout is not None
        run_dir = Path(json.loads(kernel.stdout.readline())["run_dir"])
        tail = subprocess.Popen(
            # --lines 5, not 0: a tail that starts after the first burst is durable (a slow
            # start on a loaded machine) still shows its last entries, then follows.
            command("tail", tmp_path, "latest", "--follow", "--lines", "5", "--poll", "0.05"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out = reader(tail.stdout)
        seen: list[dict[str, object]] = []
        for burst in (300, 500):
            kernel.stdin.write(f"{burst}\n")
            kernel.stdin.flush()
            durable = json.loads(kernel.stdout.readline())["durable"]
            # The entries show up while the run is still open (it is sealed only later).
            wait_until(lambda d=durable: drain(out, seen) >= d, 30, f"tail to reach {durable}")
        kernel.stdin.close()
        assert json.loads(kernel.stdout.readline()) == {"sealed": True}
        assert tail.wait(timeout=60) == 0
        drain(out, seen)
    finally:
        kill_group(kernel)
        if tail is not None and tail.poll() is None:
            tail.kill()
            tail.wait()
    assert len(list(run_dir.glob("events-*.seg"))) >= 3  # it followed segment rolls
    dumped = [json.loads(x) for x in ringtape("dump", run_dir).stdout.splitlines()]
    first = int(str(seen[0]["seq"]))
    assert seen == dumped[first - 1 :] and seen[-1]["topic"] == "ringtape.RunEnded"


@pytest.mark.slow
def test_follow_never_prints_what_is_not_durable(tmp_path: Path) -> None:
    """The writer hangs after writing a group's frames, before its fdatasync: whole frames on
    disk that are not durable. tail stops at what the writer reported durable."""
    kernel = start_kernel(tmp_path, "hang")
    tail = None
    try:
        assert kernel.stdout is not None
        started = json.loads(kernel.stdout.readline())
        run_dir = Path(started["run_dir"])
        tail = subprocess.Popen(
            command("tail", run_dir, "--follow", "--lines", "5", "--poll", "0.05"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        hung = json.loads(kernel.stdout.readline())
        assert hung["durable"] < hung["hung"]
        kill_group(kernel)  # the kernel and its hung writer: the run is left running
        assert tail.wait(timeout=60) == 1
        printed = [json.loads(x)["seq"] for x in tail.stdout.read().splitlines()]  # type: ignore[union-attr]
        assert "is gone and the run was not sealed" in tail.stderr.read()  # type: ignore[union-attr]
    finally:
        kill_group(kernel)
        if tail is not None and tail.poll() is None:
            tail.kill()
            tail.wait()
    stats = read_live_stats(run_dir)
    assert stats is not None
    reported = json.loads(stats)["durable_seq"]
    assert printed and printed[-1] == reported <= hung["durable"]
    on_disk = [e.seq for e in walk_entries(run_dir)]
    assert hung["hung"] in on_disk  # a whole frame was there, and was not printed
