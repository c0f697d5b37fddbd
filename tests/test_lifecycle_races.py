"""Lifecycle races and edge cases of the live pipeline, each shown with real processes.

Every test states the contract it checks in its docstring: large entries against the frame
limits, the run lock across start-up and seal, lock probes, a restart right after a kernel
crash, halts racing appends, SIGTERM to the process group, Ctrl-C during open, seal from
on_halt, open after a halt.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pipeline_support import pid_alive, shm_names, wait_until, walk_entries

from ringtape.capture.cache import ReferenceCache
from ringtape.capture.config import DataMarkerConfig, EventStoreConfig, RegisteredComponents
from ringtape.capture.errors import HaltReason, StoreHalted
from ringtape.capture.ring import WRITER_HEARTBEAT_NS, RingConsumer, RingGeometry, RingViews
from ringtape.capture.shm import SharedRegion, unlink_name
from ringtape.capture.store import EventStore, StoreOptions
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.entry import TOPIC_RUN_STARTED, encode_entry
from ringtape.storage.run.layout import LOCK_NAME, list_runs
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.storage.run.sweep import sweep_instance

COMPONENTS = RegisteredComponents(strategies={"EMACross-001": "ab12"}, subscriptions=["quotes"])
REPO = Path(__file__).resolve().parent.parent


def make_store(
    stores: list[EventStore], base: Path, options: StoreOptions | None = None, **config: object
) -> EventStore:
    store = EventStore(EventStoreConfig(base_dir=str(base), **config), options=options)  # type: ignore[arg-type]
    stores.append(store)
    return store


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mapped(name: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(name in line for line in f)


class WriterGate:
    """Holds every writer process this test spawns at interpreter start-up (before it imports
    anything or takes its lock) until ``release()``: a ``sitecustomize`` on its PYTHONPATH."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "gate"
        self.dir.mkdir()
        site = root / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            textwrap.dedent(
                f"""
                import os, time
                gate = {str(self.dir)!r}
                if os.environ.get("RINGTAPE_REVIEW_GATE") == gate:
                    open(os.path.join(gate, "started"), "w").close()
                    end = time.monotonic() + 30
                    while not os.path.exists(os.path.join(gate, "go")):
                        if time.monotonic() > end:
                            break
                        time.sleep(0.005)
                """
            )
        )
        self.site = site

    def started(self) -> bool:
        return (self.dir / "started").exists()

    def release(self) -> None:
        (self.dir / "go").touch()


@pytest.fixture
def writer_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriterGate]:
    gate = WriterGate(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(gate.site))
    monkeypatch.setenv("RINGTAPE_REVIEW_GATE", str(gate.dir))
    yield gate
    gate.release()


def _open_in_thread(
    store: EventStore, iid: uuid.UUID
) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            store.open(iid, COMPONENTS, "live")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="opener")
    thread.start()
    return thread, errors


# -- 1. ring: take() ignores max_bytes when the first record alone is over it -----------------


def test_take_returns_the_first_record_alone_when_it_exceeds_max_bytes() -> None:
    """``take`` docstring: at most ``max_entries`` and, past the first, ``max_bytes``: a first
    record over ``max_bytes`` still goes (alone), so the writer never stalls on it."""
    g = RingGeometry.for_capacity(64)
    region = SharedRegion.create(g.region_size, tag="review")
    views = RingViews(region.buf, g)
    try:
        pos = 0
        for seq in range(1, 11):
            rec = encode_entry(seq, seq, 0, "data.x", b"x" * 1000, "")
            views.data[pos : pos + len(rec)] = rec
            views.index[seq & (g.slots - 1)] = pos
            pos += len(rec)
        batch = RingConsumer(views).take(100, 500, 0)
        assert batch is not None
        assert batch.count == 1, f"took {batch.count} records ({len(batch.records)} bytes)"
        del batch
    finally:
        views.release()
        region.close()
        unlink_name(region.name)


def test_a_sealed_run_of_large_entries_verifies_clean(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    """Invariant 5/6: the writer never stores a frame its own reader refuses. With the take()
    overrun a group's second take swallows ~85 MiB into one frame (> MAX_FRAME_RAW), and
    verify reports a clean, sealed run as damaged (recovery would quarantine it)."""
    store = make_store(stores, tmp_path, channel_capacity=150_000)
    store.open(uuid.uuid4(), COMPONENTS, "sandbox")
    pid = store.writer_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the writer falls behind (a slow fdatasync, a busy core)
    try:
        payload = b"\x01" * (1 << 20)
        last = 0
        for _ in range(100):
            last = store.append("data.blob", payload)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: store.durable_seq() >= last, what="the backlog to be durable")
    run_dir = store.run_dir()
    assert run_dir is not None
    store.seal()
    report = verify_path(run_dir)
    assert report.ok, [f.detail for f in report.findings]


# -- 2. store: a halt that lands inside _make_room is overwritten ------------------------------


class _PauseInMakeRoom:
    """The store's ring geometry, except that reading ``capacity`` once after ``arm()`` runs a
    hook first: it pins the kernel thread inside ``_make_room`` (after the halt check, before
    ``_fast_limit`` is published) while real processes and the real monitor thread act."""

    def __init__(self, real: RingGeometry, hook: Callable[[], None]) -> None:
        self._real = real
        self._hook = hook
        self.armed = False
        self.fired = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    @property
    def capacity(self) -> int:
        if self.armed:
            self.armed = False
            self._hook()
            self.fired = True
        return self._real.capacity


def test_append_raises_after_a_halt_that_lands_in_the_slow_path(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    """Invariant 3: once ``is_halted()`` is true, ``append`` raises. Seen without any hook
    too (about 1 trial in 20 with a short switch interval: 63 appends accepted after the halt)."""
    store = make_store(stores, tmp_path, channel_capacity=64)
    store.open(uuid.uuid4(), COMPONENTS, "live")
    for _ in range(10):
        store.append("data.x", b"x" * 100)
    wait_until(lambda: store.durable_seq() >= 11, what="entries durable")
    pid = store.writer_pid()
    assert pid is not None

    def writer_dies_now() -> None:
        os.kill(pid, signal.SIGKILL)
        wait_until(store.is_halted, what="the monitor thread to halt the store")

    producer = store._producer
    pause = _PauseInMakeRoom(producer._geometry, writer_dies_now)
    producer._geometry = pause  # type: ignore[assignment]
    pause.armed = True
    for _ in range(200):
        try:
            store.append("data.x", b"x" * 100)  # the append in flight at the halt may complete
        except StoreHalted:
            break
        if pause.fired:
            break
    assert pause.fired and store.is_halted()
    with pytest.raises(StoreHalted):
        store.append("data.x", b"after the halt")


# -- 3. store: on_halt that seals (from the monitor thread) leaks the ring -------------------


def test_on_halt_may_seal_the_store(tmp_path: Path) -> None:
    """The recommended policy is to stop on ``on_halt``; sealing from it must not raise and
    must free the writer's doorbell and the ring mapping (today: RuntimeError 'cannot join
    current thread' out of _teardown, 2 fds and the mapping leak)."""
    box: list[EventStore] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def on_halt(reason: HaltReason) -> None:
        try:
            box[0].seal()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    store = EventStore(
        EventStoreConfig(base_dir=str(tmp_path)), options=StoreOptions(on_halt=on_halt)
    )
    box.append(store)
    fds = _fd_count()
    store.open(uuid.uuid4(), COMPONENTS, "live")
    session = store._session
    assert session is not None
    name = session.region.name
    pid = store.writer_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    try:
        assert done.wait(30), "on_halt was not called"
        assert not errors, f"seal() from on_halt raised {errors[0]!r}"
        assert not _mapped(name), "the ring is still mapped"
        assert _fd_count() == fds, "descriptors leaked"
    finally:
        store.seal()
        if _mapped(name):  # free what the failed teardown left behind
            session.doorbell.close()
            try:
                session.views.release()
                session.region.close()
            except (AttributeError, BufferError):
                pass


# -- 4. store: open() after a halt returns the halted run -----------------------------------


def test_open_after_a_halt_does_not_pretend_to_open(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    """``open`` returns only once a run's ``RunStarted`` is durable and appends work; on a
    halted store it must raise or open a fresh run, not return the dead one."""
    store = make_store(stores, tmp_path)
    iid = uuid.uuid4()
    store.open(iid, COMPONENTS, "live")
    first = store.run_id()
    pid = store.writer_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(store.is_halted, what="halt")
    try:
        store.open(iid, COMPONENTS, "live")
    except StoreHalted:
        return
    assert not store.is_halted() and store.run_id() != first, "open() returned the halted run"


# -- 5. writer: SIGTERM (a process-group stop) kills the writer under a live kernel ----------


def test_writer_outlives_sigterm_while_its_kernel_lives(
    tmp_path: Path, stores: list[EventStore]
) -> None:
    """``systemctl stop``/``kill -TERM -PGID`` signals kernel and writer together. The kernel
    decides (SIGINT is ignored for that reason); the writer must still record the kernel's
    shutdown and its ``RunEnded``: it ignores the SIGTERM and goes on idling (two heartbeats)."""
    store = make_store(stores, tmp_path)
    store.open(uuid.uuid4(), COMPONENTS, "live")
    pid = store.writer_pid()
    session = store._session
    assert pid is not None and session is not None
    ctrl = session.views.ctrl
    beats = [int(ctrl[WRITER_HEARTBEAT_NS])]

    def exited_or_beat_twice() -> bool:
        beat = int(ctrl[WRITER_HEARTBEAT_NS])
        if beat != beats[-1]:
            beats.append(beat)
        return not pid_alive(pid) or store.is_halted() or len(beats) >= 3

    os.kill(pid, signal.SIGTERM)
    wait_until(exited_or_beat_twice, what="the writer to act on SIGTERM")
    run_dir = store.run_dir()
    assert run_dir is not None
    assert not store.is_halted(), store.halt_reason()
    store.append("events.order.canceled", b'{"order_id":"O-1"}')  # the graceful shutdown
    store.seal()
    assert read_manifest(run_dir).status is RunStatus.ENDED, store.halt_reason()


# -- 6. recovery racing a live run: the lock is taken too late --------------------------------


def test_sweep_leaves_a_run_whose_writer_is_starting(
    tmp_path: Path, writer_gate: WriterGate, stores: list[EventStore]
) -> None:
    """Rule: recovery never touches a live run. Between ``open()`` writing the ``running``
    manifest and the writer taking ``writer.lock`` (its interpreter start-up, ~0.2-0.5 s here)
    a sweep (``ringtape recover``, another booting process) seals the live run as
    ``crashed_recovered``; if that run later crashes, no sweep ever recovers it."""
    base = tmp_path / "runs"
    iid = uuid.uuid4()
    store = make_store(stores, base)
    opener, errors = _open_in_thread(store, iid)
    try:
        wait_until(writer_gate.started, what="the writer to start")
        instance_dir = base / str(iid)
        (run_id,) = list_runs(instance_dir)
        report = sweep_instance(instance_dir)
        status = read_manifest(instance_dir / run_id).status
    finally:
        writer_gate.release()
        opener.join(60)
    assert not errors, errors
    assert not report.recovered, "the sweep recovered a run that was being opened"
    assert status is RunStatus.RUNNING


def test_a_lock_probe_does_not_make_the_writer_fail(
    tmp_path: Path, writer_gate: WriterGate, stores: list[EventStore]
) -> None:
    """``writer_alive`` (the sweep, retention, verify) takes a shared flock for a moment; the
    writer takes its exclusive lock with LOCK_NB once, so a probe at that moment fails the
    whole ``open()`` (seen: 2 opens in 10 with a process probing the newest run)."""
    store = make_store(stores, tmp_path / "runs")
    iid = uuid.uuid4()
    opener, errors = _open_in_thread(store, iid)
    probe = -1
    try:
        wait_until(writer_gate.started, what="the writer to start")
        wait_until(lambda: store.writer_pid() is not None, what="the writer pid")
        pid = store.writer_pid()
        (run_id,) = list_runs(tmp_path / "runs" / str(iid))
        lock_path = tmp_path / "runs" / str(iid) / run_id / LOCK_NAME
        probe = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:  # the run is locked already: the probe cannot race its writer
            assert exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
            return
        writer_gate.release()

        def writer_reached_lock() -> bool:
            if store.is_halted() or pid is None or not pid_alive(pid):
                return True
            try:
                return any(
                    os.readlink(f"/proc/{pid}/fd/{fd}") == str(lock_path)
                    for fd in os.listdir(f"/proc/{pid}/fd")
                )
            except OSError:
                return False

        wait_until(writer_reached_lock, what="the writer to reach its lock")
    finally:
        if probe >= 0:
            os.close(probe)  # the probe ends
        writer_gate.release()
        opener.join(60)
    assert not errors, f"open() failed because of a lock probe: {errors[0]!r}"


# -- 7. crash-restart: the boot sweep skips the run an orphaned writer is still closing ------

KERNEL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from ringtape.capture.config import DataMarkerConfig, EventStoreConfig, RegisteredComponents
    from ringtape.capture.store import EventStore
    store = EventStore(EventStoreConfig(base_dir=sys.argv[1]), instance_id=sys.argv[2])
    store.open(sys.argv[2], RegisteredComponents(), "live")
    for i in range(100):
        store.append("events.order.accepted", b'{"order_id": "O-%d"}' % i)
    while store.durable_seq() < 101:
        time.sleep(0.001)
    print(store.writer_pid(), store.run_dir(), flush=True)
    time.sleep(60)
    """
)


def test_restart_after_a_kernel_crash_restores_from_the_crashed_run(tmp_path: Path) -> None:
    """A process manager restarts a crashed kernel at once. Its orphaned writer still holds
    the lock for a moment (here: paused, like a writer inside a long fdatasync; resumed after
    0.5 s), so the boot sweep calls the run live, skips it, and the new kernel starts with no
    parent and an empty cache; the old run stays ``running`` until some later boot."""
    iid = str(uuid.uuid4())
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL_SCRIPT, str(tmp_path), iid],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    writer_pid = 0
    resume: threading.Timer | None = None
    try:
        assert kernel.stdout is not None
        pid_text, run_text = kernel.stdout.readline().split()
        writer_pid, run_dir = int(pid_text), Path(run_text)
        os.kill(writer_pid, signal.SIGSTOP)
        kernel.kill()
        kernel.wait()
        resume = threading.Timer(0.5, os.kill, (writer_pid, signal.SIGCONT))
        resume.start()
        store = EventStore(EventStoreConfig(base_dir=str(tmp_path)), instance_id=iid)
        cache = ReferenceCache()
        store.restore_parent_cache(iid, cache)
        assert store.parent_run_id() == run_dir.name, store.last_sweep
        assert len(cache.orders) == 100
    finally:
        if resume is not None:
            resume.cancel()
        kernel.kill()
        kernel.wait()
        if writer_pid and pid_alive(writer_pid):
            os.kill(writer_pid, signal.SIGCONT)
            wait_until(lambda: not pid_alive(writer_pid), what="the orphaned writer to exit")
        for name in shm_names(kernel.pid):
            os.unlink(f"/dev/shm/{name}")


# -- 8. open(): an interrupt after the session exists leaves a half-open store ----------------


def test_ctrl_c_during_open_does_not_seal_a_run_without_run_started(
    tmp_path: Path, writer_gate: WriterGate, stores: list[EventStore]
) -> None:
    """Invariant 1: seq 1 is ``RunStarted``. ``open`` tears down only what fails after
    ``RunStarted`` is appended; a KeyboardInterrupt while the marker sidecar starts (up to
    5 s) leaves writer and ring up, and the kernel's ``with store:`` exit then seals a run
    whose only entry is ``RunEnded`` as ``ended``."""
    store = make_store(stores, tmp_path / "runs", data_markers=DataMarkerConfig())
    lane = store.marker_lane()
    assert lane is not None

    def interrupt_once_the_sidecar_is_spawned() -> None:
        wait_until(lambda: lane.sidecar_pid is not None, what="the sidecar to be spawned")
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_the_sidecar_is_spawned)
    interrupter.start()
    iid = uuid.uuid4()
    try:
        with pytest.raises(KeyboardInterrupt):
            store.open(iid, COMPONENTS, "live")
    finally:
        interrupter.join(30)
        writer_gate.release()
    store.seal()  # what `with store:` does on the way out
    (run_id,) = list_runs(tmp_path / "runs" / str(iid))
    run_dir = tmp_path / "runs" / str(iid) / run_id
    topics = [e.topic for e in walk_entries(run_dir)]
    status = read_manifest(run_dir).status
    assert status is not RunStatus.ENDED or topics[:1] == [TOPIC_RUN_STARTED], (status, topics)
