"""A run's live session: everything that exists only while a run is open.

The entry ring (a shared region and its views), the writer process, the doorbell, the monitor
thread that waits for the writer to exit, and the run's lock. :meth:`Session.start` builds them
in that order and undoes what it built if a step fails; :meth:`Session.close` stops the writer
(killing it when asked, or when it will not stop) and frees the rest, the lock last.

:meth:`Session.writer_failure` is the one place that says why a writer stopped being able to
write: a disk error (``BackendDisk`` with its errno), another failure it reported
(``WriterError``), or death without a word (``WriterDied``). The store asks it whenever it waits
for the writer and the wait runs out, so that the reason recorded is the cause, not the symptom
(a full ring, a stalled anchor).
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ringtape.capture.anchors import AnchorStage
from ringtape.capture.child import Spares
from ringtape.capture.control import STATE_CLOSED, STATE_FAILED, wait_for_state
from ringtape.capture.doorbell import Doorbell, new_address
from ringtape.capture.errors import DISK_ERRNOS, HaltReason
from ringtape.capture.liveness import child_dying
from ringtape.capture.ring import (
    BYTES_RAW,
    BYTES_STORED,
    CLOSE_REQUEST,
    DURABLE_SEQ,
    FRAMES_WRITTEN,
    READ_SEQ,
    SYNCS,
    TS_BACKWARDS,
    WRITER_ERRNO,
    WRITER_HEARTBEAT_NS,
    WRITER_STATE,
    RingGeometry,
    RingViews,
)
from ringtape.capture.shm import SharedRegion, unlink_name
from ringtape.capture.writer import WriterArgs, spawn_writer
from ringtape.storage.run.layout import RunPaths
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.run.manifest import Manifest

_DURABLE_POLL_S: Final = 0.0005
_JOIN_S: Final = 5.0


@dataclass(frozen=True)
class StoreStats:
    """A live run's pipeline as the kernel sees it (``EventStore.stats()``)."""

    appended_seq: int  # the last entry appended
    taken_seq: int  # the last entry the writer took from the ring
    durable_seq: int  # the last entry fdatasync'd
    ring_capacity: int  # entries the ring holds
    commits: int  # group commits (fdatasyncs) so far
    frames: int
    bytes_raw: int  # entry record bytes written
    bytes_stored: int  # segment bytes written (compressed frames)
    writer_heartbeat_age_s: float  # since the writer last woke or committed
    ts_init_backwards: int  # entries taken whose ts_init is below the one before them

    @property
    def in_ring(self) -> int:
        """Entries appended and not yet taken by the writer."""
        return self.appended_seq - self.taken_seq

    @property
    def durable_lag(self) -> int:
        """Entries appended and not yet durable."""
        return self.appended_seq - self.durable_seq


@dataclass
class Session:
    """One open run's live parts (see the module docstring)."""

    paths: RunPaths
    manifest: Manifest
    lock: WriterLock
    region: SharedRegion
    views: RingViews
    process: subprocess.Popen[bytes]
    doorbell: Doorbell
    anchors: AnchorStage
    monitor: threading.Thread | None = None
    # Readable once the writer has exited, reaped or not: Popen.poll() says nothing while the
    # monitor thread sits in wait(), and a stalled producer must still learn of the death.
    pidfd: int = -1

    @classmethod
    def start(
        cls,
        paths: RunPaths,
        manifest: Manifest,
        lock: WriterLock,
        geometry: RingGeometry,
        writer_args: Callable[[str, bytes, str], WriterArgs],
        on_exit: Callable[[Session], None],
        spares: Spares,
        anchor_reserve_bytes: int = 0,
    ) -> Session:
        """Create the ring and the anchor board, start the writer (``writer_args(shm_name,
        doorbell, anchor_board)``) and the monitor thread, which calls ``on_exit(session)``
        once the writer has exited. ``anchor_reserve_bytes``: staging prepared for snapshots
        of that size (capture/anchor_staging.py)."""
        region = SharedRegion.create(geometry.region_size)
        views = RingViews(region.buf, geometry)
        views.init_control(os.getpid())
        address = new_address()
        doorbell = Doorbell(address)
        anchors = AnchorStage(anchor_reserve_bytes)
        try:
            args = writer_args(region.name, address, anchors.name)
            process = spawn_writer(args, lock.fd, spares)
        except BaseException:
            anchors.close()
            doorbell.close()
            views.release()
            region.close()
            unlink_name(region.name)
            raise
        session = cls(paths, manifest, lock, region, views, process, doorbell, anchors)
        try:
            session.pidfd = os.pidfd_open(process.pid)
        except OSError:  # gone already (its exit is seen by poll()), or no pidfd here
            session.pidfd = -1
        monitor = threading.Thread(
            target=session._watch, args=(on_exit,), name="ringtape-monitor", daemon=True
        )
        session.monitor = monitor
        monitor.start()
        return session

    def _watch(self, on_exit: Callable[[Session], None]) -> None:
        self.process.wait()
        on_exit(self)

    def durable_seq(self) -> int:
        return int(self.views.ctrl[DURABLE_SEQ])

    def stats(self, appended_seq: int) -> StoreStats:
        ctrl = self.views.ctrl
        return StoreStats(
            appended_seq=appended_seq,
            taken_seq=int(ctrl[READ_SEQ]),
            durable_seq=int(ctrl[DURABLE_SEQ]),
            ring_capacity=self.views.geometry.capacity,
            commits=int(ctrl[SYNCS]),
            frames=int(ctrl[FRAMES_WRITTEN]),
            bytes_raw=int(ctrl[BYTES_RAW]),
            bytes_stored=int(ctrl[BYTES_STORED]),
            writer_heartbeat_age_s=(time.monotonic_ns() - int(ctrl[WRITER_HEARTBEAT_NS])) / 1e9,
            ts_init_backwards=int(ctrl[TS_BACKWARDS]),
        )

    def closed_cleanly(self) -> bool:
        """The writer made everything up to the close request durable (and then exited)."""
        ctrl = self.views.ctrl
        return bool(ctrl[CLOSE_REQUEST]) and ctrl[DURABLE_SEQ] >= ctrl[CLOSE_REQUEST]

    def writer_failure(self) -> HaltReason | None:
        """Why the writer can no longer write (``None``: it can, as far as anyone knows)."""
        ctrl = self.views.ctrl
        failed = int(ctrl[WRITER_STATE]) == STATE_FAILED
        code = self._exit_code()
        if not failed and code is None and not self.writer_exited():
            return None
        if not failed and self.closed_cleanly():
            return None
        if failed:
            err = int(ctrl[WRITER_ERRNO])
            text = self.views.control.error_text()
            if err in DISK_ERRNOS:
                return HaltReason.disk(err, text)
            kind = self.views.control.failure_kind()
            if kind:
                return HaltReason(kind, text.removeprefix(f"{kind}: "))
            return HaltReason("WriterError", text or f"writer failed (exit {code})", errno=err)
        return HaltReason("WriterDied", f"writer process {self._how_it_ended(code)}")

    def close_failure(self) -> HaltReason:
        """Why the writer did not say CLOSED after a close request (``join_writer`` failed),
        even when everything up to the request is durable."""
        failure = self.writer_failure()
        if failure is not None:
            return failure
        code = self._exit_code()
        if code is not None or self.writer_exited():
            return HaltReason("WriterDied", f"writer process {self._how_it_ended(code)} closing")
        return HaltReason("WriterError", "the writer did not close within the seal timeout")

    def _exit_code(self) -> int | None:
        """The writer's exit status once it has exited or is certain to (``None``: neither)."""
        code = self.process.poll()
        if code is None and not self.writer_exited():
            code = child_dying(self.process.pid)  # killed, its threads still exiting
        return code

    def _how_it_ended(self, code: int | None) -> str:
        if code is None and self.pidfd >= 0:
            try:  # peek at the exit without reaping it (the monitor thread reaps)
                info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except (OSError, AttributeError):
                info = None
            if info is not None and info.si_code == os.CLD_KILLED:
                code = -info.si_status
            elif info is not None:
                code = info.si_status
        if code is None:
            return "exited unexpectedly"
        if code < 0:
            return f"was killed by signal {-code}"
        return f"exited unexpectedly (status {code})"

    def writer_exited(self) -> bool:
        if self.process.returncode is not None:
            return True
        if self.pidfd < 0:
            return False
        ready, _, _ = select.select([self.pidfd], [], [], 0)
        return bool(ready)

    def request_close(self, last_seq: int) -> None:
        """Ask the writer to make everything up to ``last_seq`` durable and exit."""
        self.views.ctrl[CLOSE_REQUEST] = last_seq
        self.doorbell.ring()

    def wait_durable(self, seq: int, timeout: float, give_up: Callable[[], bool]) -> bool:
        """Wait until ``seq`` is durable, at most ``timeout`` s, or until ``give_up()``."""
        deadline = time.monotonic() + timeout
        ctrl = self.views.ctrl
        while ctrl[DURABLE_SEQ] < seq:
            if give_up() or time.monotonic() >= deadline:
                return bool(ctrl[DURABLE_SEQ] >= seq)
            time.sleep(_DURABLE_POLL_S)
        return True

    def join_writer(self, timeout: float) -> bool:
        """Wait until the writer has closed its segments after a close request (it says
        CLOSED; it may still be exiting)."""
        return wait_for_state(self.views.ctrl, WRITER_STATE, STATE_CLOSED, self.process, timeout)

    def close(self, *, kill: bool) -> int:
        """Stop the writer and free the ring, the doorbell and the lock (last: the manifest is
        final, or left for the sweep). Returns the durable seq the writer reached."""
        process = self.process
        if kill and process.poll() is None:
            process.kill()
        if not _join(process, _JOIN_S):
            process.kill()
            process.wait()
        durable = self.durable_seq()
        # on_exit may close the session from the monitor thread itself: it cannot join itself.
        if self.monitor is not None and self.monitor is not threading.current_thread():
            self.monitor.join(1.0)
        self.doorbell.close()
        self.anchors.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.views.release()
        self.region.close()
        unlink_name(self.region.name)  # normally gone already: the writer unlinks on attach
        self.lock.release()
        return durable


def _join(process: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop_process(process: subprocess.Popen[bytes], timeout: float = _JOIN_S) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    process.terminate()
    if not _join(process, timeout):
        process.kill()
        process.wait()
