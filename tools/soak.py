"""A crash soak: random SIGKILLs of the kernel, the writer, the marker sidecar, or the kernel and
its writer together, during ``open()``, appends, anchors and ``seal()``; each followed by a boot
of the store or ``ringtape recover``; then every run is checked entry by entry.

``python -m ringtape.tools.soak --kills 1000 [--base DIR] [--seed N] [--json]`` prints the
figures: kills by victim and phase, runs, entries checked, entries lost (must be 0), wrong
statuses and quarantines (must be 0), orphan processes and rings left behind (must be 0).
``tests/test_soak.py`` runs 150 kills of it in ``make test``.

How it works. A kernel process (this module's ``kernel`` subcommand) opens runs of one
instance one after another, forever: it appends entries whose payload is derived from the run id
and the seq, observes market data, anchors a snapshot derived from its watermark every few
hundred entries, and seals; it prints each phase as it enters it and every durable seq it sees.
When its writer or sidecar is killed it carries on (a halted run is released, and the next
``EventStore`` it constructs — a boot — recovers it); when it is killed itself, the driver starts
a new kernel (its boot recovers), or first runs ``ringtape recover``. The driver waits for the
phase it chose, then a random moment, and kills. A run is checked once it is sealed: its status,
every entry from 1 to the high watermark (at least the highest durable seq the kernel printed for
it) against the payload it must have, every anchor's blob, and ``verify``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

VICTIMS: Final = ("kernel", "writer", "sidecar", "kernel+writer")
PHASES: Final = ("open", "appends", "anchor", "seal")
INSTRUMENTS: Final = ("BTCUSDT-PERP.BINANCE", "ETHUSDT-PERP.BINANCE")
PHASE_TIMEOUT_S: Final = 30.0


def entry_payload(run_id: str, n: int) -> bytes:
    """The payload of the ``n``-th ``soak.entry`` of run ``run_id`` (the checker recomputes it;
    counted apart from seqs, which the store's own entries — MarkerLaneFailed — also take)."""
    return b"%s:%d:" % (run_id.encode(), n) + b"x" * (n % 50)


def snapshot_bytes(run_id: str, watermark: int) -> bytes:
    return b"snapshot %s @ %d" % (run_id.encode(), watermark) * 8


# -- the kernel process ---------------------------------------------------------------------------


def kernel_main(base: str, instance: str, seed: int) -> None:
    """Open, append, anchor and seal runs until killed; print what happens as JSON lines."""
    from ringtape.capture.config import DataMarkerConfig, EventStoreConfig, RegisteredComponents
    from ringtape.capture.errors import EventStoreError
    from ringtape.capture.store import EventStore, StoreOptions

    rng = random.Random(seed)

    def say(**msg: Any) -> None:
        print(json.dumps(msg), flush=True)

    markers = DataMarkerConfig(high_fidelity=[INSTRUMENTS[0]])
    configs = [
        EventStoreConfig(base_dir=base, max_batch_entries=64, data_markers=markers),
        EventStoreConfig(base_dir=base, max_batch_entries=64),  # no sidecar: a quicker open
    ]
    options = StoreOptions(segment_max_bytes=64 * 1024)
    while True:
        config = rng.choice(configs)
        store = EventStore(config, instance_id=instance, options=options)  # a boot: it recovers
        say(phase="open")
        try:
            store.open(instance, RegisteredComponents(), "live")
        except EventStoreError as exc:
            say(open_failed=str(exc))
            store.seal()
            continue
        run_dir = store.run_dir()
        run_id = store.run_id()
        assert run_dir is not None and run_id is not None
        lane = store.marker_lane()
        say(
            run_dir=str(run_dir),
            writer=store.writer_pid(),
            sidecar=None if lane is None else lane.sidecar_pid,
            durable=store.durable_seq(),
        )
        say(phase="appends")
        total = rng.randint(800, 3_000)
        seq = n = 1
        try:
            while seq < total:
                for _ in range(100):
                    n += 1
                    seq = store.append("soak.entry", entry_payload(run_id, n))
                    if seq % 3 == 0:
                        ts = time.time_ns()
                        store.observe_data("Quote", INSTRUMENTS[seq % 2], ts, ts)
                say(durable=store.durable_seq())
                if seq % 1000 < 100:
                    say(phase="anchor")
                    anchor = store.snapshot_anchorer()
                    assert anchor is not None
                    stats = store.stats()  # every entry so far (MarkerLaneFailed included)
                    watermark = seq if stats is None else stats.appended_seq
                    if anchor(snapshot_bytes(run_id, watermark)) != watermark:
                        say(problem=f"anchor watermark is not {watermark}")
                    say(anchored=watermark, durable=store.durable_seq())
                time.sleep(0.002)
            say(phase="seal", durable=store.durable_seq())
            store.seal()
            say(sealed=run_id, durable=store.durable_seq())
        except EventStoreError as exc:  # the writer died: the run stays for the next boot
            say(halted=str(exc), durable=store.durable_seq())
            store.seal()  # a halted store only releases


# -- the driver -----------------------------------------------------------------------------------


@dataclass
class Figures:
    """What a soak did and found."""

    kills: Counter[str] = field(default_factory=Counter)  # by victim
    phases: Counter[str] = field(default_factory=Counter)  # by phase
    recoveries: Counter[str] = field(default_factory=Counter)  # "boot" / "ringtape recover"
    runs: int = 0
    retired_opens: int = 0
    # Run directories an open() left empty (killed between its mkdir and its lock) less than
    # the sweep's grace before the end: a sweep takes them for live opens until then.
    empty_opens_at_end: int = 0
    entries_checked: int = 0
    anchors_checked: int = 0
    anchors_incomplete: int = 0  # an anchor entry whose blob a kill kept from being written
    lost: int = 0  # entries <= a durable seq the kernel saw, missing or different
    wrong_status: int = 0  # quarantined, or not sealed after recovery
    verify_failures: int = 0
    orphans: int = 0  # processes still alive at the end
    rings_left: int = 0  # /dev/shm regions of the soak's kernels left at the end
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "kills": self.total_kills,
            "kills_by_victim": dict(self.kills),
            "kills_by_phase": dict(self.phases),
            "recoveries": dict(self.recoveries),
            "runs_checked": self.runs,
            "aborted_opens_retired": self.retired_opens,
            "empty_opens_at_end": self.empty_opens_at_end,
            "entries_checked": self.entries_checked,
            "anchors_checked": self.anchors_checked,
            "anchors_incomplete": self.anchors_incomplete,
            "lost": self.lost,
            "wrong_status": self.wrong_status,
            "verify_failures": self.verify_failures,
            "orphans": self.orphans,
            "rings_left": self.rings_left,
            "problems": self.problems[:20],
            "seconds": round(self.seconds, 1),
        }

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.wrong_status
            or self.verify_failures
            or self.orphans
            or self.rings_left
            or self.problems
        )


class KernelProc:
    """A kernel process and the lines it prints (read on a thread, so waits can time out)."""

    def __init__(self, base: Path, instance: str, seed: int, verbose: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ringtape.tools.soak", "kernel", str(base), instance, str(seed)],
            stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.DEVNULL,  # halts and lane failures it logs
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.pids: set[int] = {self.proc.pid}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue
        self.lines.put(None)

    def children(self) -> list[psutil.Process]:
        """The writer and the sidecar (oldest first: the writer is started first)."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []
        self.pids.update(k.pid for k in kids)
        return sorted(kids, key=lambda k: k.create_time())


class Driver:
    def __init__(self, base: Path, seed: int, verbose: bool = False) -> None:
        self.base = base
        self.rng = random.Random(seed)
        self.seed = seed
        self.instance = str(uuid.uuid4())
        self.figures = Figures()
        self.durable: dict[str, int] = {}  # run dir -> highest durable seq the kernel printed
        self.checked: set[str] = set()
        self.all_pids: set[int] = set()
        self.verbose = verbose
        self.kernel: KernelProc | None = None
        self.writer: int | None = None
        self.sidecar: int | None = None
        self.run_dir: str | None = None

    def start_kernel(self) -> KernelProc:
        self.kernel = KernelProc(
            self.base, self.instance, self.rng.randrange(1 << 30), self.verbose
        )
        self.writer = self.sidecar = self.run_dir = None
        return self.kernel

    def note(self, msg: dict[str, Any]) -> None:
        if "problem" in msg:
            self.figures.problems.append(str(msg["problem"]))
        if "run_dir" in msg:
            self.run_dir = msg["run_dir"]
            self.writer, self.sidecar = msg.get("writer"), msg.get("sidecar")
            assert self.kernel is not None
            self.kernel.pids.update(p for p in (self.writer, self.sidecar) if p)
        if self.run_dir is not None and "durable" in msg:
            d = int(msg["durable"])
            self.durable[self.run_dir] = max(self.durable.get(self.run_dir, 0), d)

    def wait_phase(self, phase: str) -> bool:
        """Read the kernel's lines until it enters ``phase`` (False: it died or timed out)."""
        assert self.kernel is not None
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                msg = self.kernel.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if msg is None:
                return False
            self.note(msg)
            if msg.get("phase") == phase:
                return True
        return False

    def drain(self, seconds: float) -> None:
        """Keep reading the kernel's lines for a while (durable seqs, new runs)."""
        assert self.kernel is not None
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                msg = self.kernel.lines.get(timeout=left)
            except queue.Empty:
                return
            if msg is None:
                return
            self.note(msg)

    def kill_one(self) -> None:
        victim = self.rng.choice(VICTIMS)
        phase = self.rng.choice(PHASES)
        kernel = self.kernel or self.start_kernel()
        if not self.wait_phase(phase):
            self.restart(kernel)
            return
        delay = {"open": 0.3, "appends": 0.1, "anchor": 0.004, "seal": 0.01}[phase]
        self.drain(self.rng.uniform(0, delay))
        kids = kernel.children()
        writer = kids[0].pid if phase == "open" and kids else self.writer
        sidecar = kids[1].pid if phase == "open" and len(kids) > 1 else self.sidecar
        choices: dict[str, list[int | None]] = {
            "kernel": [kernel.proc.pid],
            "writer": [writer],
            "sidecar": [sidecar],
            "kernel+writer": [kernel.proc.pid, writer],
        }
        targets = choices[victim]
        if self.rng.random() < 0.5:
            targets.reverse()
        if None in targets:
            return  # that process is not there (yet): choose again
        for pid in targets:
            assert pid is not None
            kill_quietly(pid)
        self.figures.kills[victim] += 1
        self.figures.phases[phase] += 1
        if self.verbose:
            print(
                f"{time.monotonic():.2f} kill {self.figures.total_kills}: {victim} during {phase}",
                file=sys.stderr,
            )
        if "kernel" in victim:
            self.restart(kernel)
        else:
            self.drain(0.05)
        self.check_sealed_runs()

    def restart(self, kernel: KernelProc) -> None:
        """The kernel is gone (or stuck): make sure, recover by hand or by the next boot."""
        if kernel.proc.poll() is None:
            kernel.proc.kill()
        kernel.proc.wait(30)
        self.drain_dead(kernel)
        self.all_pids |= kernel.pids
        if self.rng.random() < 0.25:
            self.recover()
            self.figures.recoveries["ringtape recover"] += 1
        else:
            self.figures.recoveries["boot"] += 1
        self.start_kernel()

    def drain_dead(self, kernel: KernelProc) -> None:
        while True:
            try:
                msg = kernel.lines.get(timeout=2)
            except queue.Empty:
                return
            if msg is None:
                return
            self.note(msg)

    def recover(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "ringtape.tools.cli", "recover", str(self.base), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0 or "Traceback" in proc.stderr:
            self.figures.problems.append(f"ringtape recover exited {proc.returncode}")
            return
        for inst in json.loads(proc.stdout)["instances"]:
            self.figures.retired_opens += len(inst["retired"])

    def check_sealed_runs(self, *, final: bool = False) -> None:
        """Check (and delete) every sealed run not checked yet; at the end, every run."""
        from ringtape.storage.run.layout import list_runs
        from ringtape.storage.run.manifest import ManifestError, read_manifest

        instance_dir = self.base / self.instance
        for run_id in list_runs(instance_dir):
            run_dir = instance_dir / run_id
            if str(run_dir) in self.checked:
                continue
            try:
                status = read_manifest(run_dir).status
            except ManifestError:
                if final and not any(run_dir.iterdir()):
                    # Nothing was ever in it, not even its lock; the next boot retires it.
                    self.figures.empty_opens_at_end += 1
                elif final:
                    self.figures.problems.append(f"{run_id}: manifest unreadable at the end")
                continue
            if not status.is_sealed and not final and str(status) != "quarantined":
                continue
            try:
                self.check_run(run_dir)
            except Exception as exc:  # the checker's own trouble is a problem to report
                self.figures.problems.append(f"{run_id}: checking it failed: {exc!r}")

    def check_run(self, run_dir: Path) -> None:
        from ringtape.storage.check.verify import verify_path
        from ringtape.storage.read.reader import CorruptionError, iter_entries
        from ringtape.storage.read.replay import iter_anchors
        from ringtape.storage.run.blobs import BlobMissing, read_snapshot
        from ringtape.storage.run.manifest import read_manifest
        from ringtape.storage.run.status import INFORMATIONAL

        f = self.figures
        self.checked.add(str(run_dir))
        f.runs += 1
        run_id = run_dir.name
        manifest = read_manifest(run_dir)
        durable = self.durable.get(str(run_dir), 0)
        if not manifest.status.is_sealed:
            f.wrong_status += 1
            f.problems.append(f"{run_id}: {manifest.status} after recovery")
        seen = 0
        n = 1  # soak.entry payloads are numbered from 2 (RunStarted is seq 1)
        try:
            for entry in iter_entries(run_dir):
                seen += 1
                if entry.seq != seen:
                    break
                if entry.topic == "soak.entry":
                    n += 1
                    if entry.payload != entry_payload(run_id, n):
                        break
            else:
                seen += 1
            anchors = list(iter_anchors(run_dir))
        except CorruptionError as exc:
            f.problems.append(f"{run_id}: {exc}")
            anchors = []
        good = seen - 1  # entries 1..good are there, in order, as appended
        f.entries_checked += good
        if good < durable:
            f.lost += durable - good
            f.problems.append(f"{run_id}: entries {good + 1}..{durable} were durable, not there")
        if good != manifest.high_watermark:
            f.problems.append(f"{run_id}: high watermark {manifest.high_watermark}, {good} good")
        for anchor in anchors:
            try:
                restored = read_snapshot(run_dir, anchor)
            except BlobMissing:  # the blob is written after the entry: a kill can come between
                f.anchors_incomplete += 1
                continue
            if restored != snapshot_bytes(run_id, anchor.high_watermark):
                f.problems.append(f"{run_id}: anchor at {anchor.seq} restores the wrong bytes")
            f.anchors_checked += 1
        report = verify_path(run_dir)
        if not report.ok:
            f.verify_failures += 1
            serious = [str(x) for x in report.findings if x.kind not in INFORMATIONAL]
            f.problems.append(f"{run_id}: verify: {serious[:3]}")
        else:  # checked: keep the disk small over a long soak. Moved out first, in one rename,
            # so that a booting kernel's sweep never sees a run directory half deleted.
            aside = self.base / f"checked-{run_id}"
            os.rename(run_dir, aside)
            shutil.rmtree(aside)

    def finish(self) -> None:
        kernel = self.kernel
        if kernel is not None:
            kernel.proc.kill()
            kernel.proc.wait(30)
            self.drain_dead(kernel)
            self.all_pids |= kernel.pids
        self.recover()
        self.figures.recoveries["ringtape recover"] += 1
        self.check_sealed_runs(final=True)
        deadline = time.monotonic() + 10
        alive = self.alive()
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = self.alive()
        self.figures.orphans = len(alive)
        for pid in alive:
            kill_quietly(pid)
        shm = Path("/dev/shm")
        left = [
            n
            for n in os.listdir(shm)
            if n.startswith("ringtape-") and int(n.split("-")[1]) in self.all_pids
        ]
        self.figures.rings_left = len(left)

    def alive(self) -> list[int]:
        out = []
        for pid in self.all_pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.Error:
                continue
        return out


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def soak(kills: int, base: Path, seed: int, *, verbose: bool = False) -> Figures:
    """Run ``kills`` random kills in ``base`` and check every run; returns the figures."""
    started = time.monotonic()
    driver = Driver(base, seed, verbose)
    try:
        while driver.figures.total_kills < kills:
            driver.kill_one()
    finally:
        driver.finish()
    driver.figures.seconds = time.monotonic() - started
    return driver.figures


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["kernel"]:
        kernel_main(args[1], args[2], int(args[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m ringtape.tools.soak", description=__doc__)
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--base", type=Path, default=None, help="default: a temp directory")
    parser.add_argument("--seed", type=int, default=20_261_201)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    ns = parser.parse_args(args)
    with tempfile.TemporaryDirectory(prefix="ringtape-soak-") as tmp:
        base = ns.base if ns.base is not None else Path(tmp)
        figures = soak(ns.kills, base, ns.seed, verbose=ns.verbose)
    out = figures.to_dict()
    if ns.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key:24s} {value}")
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
