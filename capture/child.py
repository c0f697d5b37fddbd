"""Starting ringtape's child processes (the writer, the marker sidecar, the retention supervisor).

A child is a fresh interpreter, never a fork of a multi-threaded kernel. Unlike
multiprocessing's ``spawn`` it does not re-import the kernel's ``__main__``, so a trader's
script needs no ``if __name__ == "__main__"`` guard, and it is isolated from the caller's path:

- ``python -P`` puts neither the working directory nor a script directory on ``sys.path``, so a
  trader's own ``storage/`` or ``ringtape/`` folder beside the kernel cannot shadow anything;
- the bootstrap loads the ``ringtape`` package from the very directory the kernel loaded it
  from (an installed copy, an editable checkout, a ``PYTHONPATH`` entry: whatever it was), and
  the rest of the interpreter's path (site-packages, ``PYTHONPATH``) is the caller's own, so
  numpy and friends are found where the kernel found them.

A child is started for one module (:class:`Child`): it imports that module at once, then waits
on a socket for its work, ``(function, args)`` pickled, and any file descriptors it must own
(the run lock), passed with ``SCM_RIGHTS``, and calls ``module.function(args, fds)``. So a child
can be started ahead of time (:class:`Spares`): when ``open()`` needs a writer, one that has
paid its interpreter start-up and its imports already only has to be told which run to write.
A child whose kernel dies before it got work sees the socket close and exits.

Ring children (writer, sidecar) run :func:`serve`: attach the ring, set up, announce
``RUNNING``, run the loop, and report any failure in the control block.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn, Protocol, TypeVar

import ringtape
from ringtape.capture import control
from ringtape.capture.shm import SharedRegion

# Exit statuses of a child process.
EXIT_OK: Final = 0
EXIT_ATTACH_FAILED: Final = 2
EXIT_DISK_ERROR: Final = 3
EXIT_INTERNAL_ERROR: Final = 4

_PACKAGE_DIR: Final = str(Path(ringtape.__file__).resolve().parent)
_BOOTSTRAP: Final = """\
import importlib.util, sys
spec = importlib.util.spec_from_file_location(
    "ringtape", {init!r}, submodule_search_locations=[{root!r}])
package = importlib.util.module_from_spec(spec)
sys.modules["ringtape"] = package
spec.loader.exec_module(package)
from ringtape.capture.child import child_main
child_main({module!r}, {fd})
"""
_LENGTH: Final = struct.Struct("<Q")
MAX_FDS: Final = 16


@dataclass(frozen=True)
class ChildArgs:
    """What every ring child needs to find its ring, its kernel and its run (plain values, so
    it pickles). The writer's and the sidecar's arguments extend it."""

    shm_name: str
    capacity: int
    run_dir: str
    run_id: str
    doorbell: bytes
    parent_pid: int
    segment_max_bytes: int
    compression_level: int


def bootstrap_command(module: str, fd: int) -> list[str]:
    """The interpreter command line of a child for ``module`` that waits on socket ``fd``."""
    code = _BOOTSTRAP.format(
        init=os.path.join(_PACKAGE_DIR, "__init__.py"), root=_PACKAGE_DIR, module=module, fd=fd
    )
    return [sys.executable, "-P", "-c", code]


class Child:
    """A child interpreter started for ``module``, importing it while it waits for its work."""

    def __init__(self, module: str) -> None:
        self.module = module
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                bootstrap_command(module, theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock: socket.socket | None = ours

    def alive(self) -> bool:
        return self._sock is not None and self.process.poll() is None

    def start(
        self, function: str, args: object, fds: tuple[int, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """Hand the child its work (``function(args, fds)`` in its module); the descriptors
        are duplicated into it. Raises ``OSError`` if the child is gone."""
        sock = self._sock
        if sock is None:
            raise OSError("this child was given its work already")
        self._sock = None
        data = pickle.dumps((function, args))
        try:
            socket.send_fds(sock, [_LENGTH.pack(len(data))], list(fds))
            sock.sendall(data)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            sock.close()
        return self.process

    def discard(self) -> None:
        """End a child that never got work (it exits when its socket closes)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def spawn_child(
    module: str, function: str, args: object, *, fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start a child that runs ``module.function(args, fds)`` now."""
    return Child(module).start(function, args, fds)


class Spares:
    """Children started ahead, one per module, for the next run's ``open()``. Any thread may
    refill or close them (a halted store is torn down from whichever thread sealed it); once
    closed, a refill starts nothing until ``reopen``."""

    def __init__(self) -> None:
        self._ready: dict[str, Child] = {}
        self._lock = threading.Lock()
        self._closed = False

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    def refill(self, *modules: str) -> None:
        with self._lock:
            if self._closed:
                return
            for module in modules:
                child = self._ready.get(module)
                if child is None or not child.alive():
                    if child is not None:
                        child.discard()
                    self._ready[module] = Child(module)

    def spawn(
        self, module: str, function: str, args: object, *, fds: tuple[int, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """Start ``module.function(args, fds)`` in a spare if one is ready, else in a new
        child."""
        with self._lock:
            child = self._ready.pop(module, None)
        if child is not None and child.alive():
            try:
                return child.start(function, args, fds)
            except OSError:
                pass  # it died meanwhile: start a fresh one
        elif child is not None:
            child.discard()
        return spawn_child(module, function, args, fds=fds)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, {}
        for child in ready.values():
            child.discard()


def child_main(module: str, fd: int) -> None:
    """In the child: import ``module``, wait for the work, run it. A kernel that goes away
    before it sends any (its socket closes) ends the child quietly."""
    # Until the work starts, the kernel decides when this child ends: it closes the socket.
    ignore_group_signals()
    target = importlib.import_module(module)
    sock = socket.socket(fileno=fd)
    try:
        header, fds, _, _ = socket.recv_fds(sock, _LENGTH.size, MAX_FDS)
        if len(header) < _LENGTH.size:
            os._exit(EXIT_OK)
        (length,) = _LENGTH.unpack(header)
        data = bytearray()
        while len(data) < length:
            chunk = sock.recv(min(1 << 20, length - len(data)))
            if not chunk:
                os._exit(EXIT_OK)
            data += chunk
    finally:
        sock.close()
    function, args = pickle.loads(data)
    getattr(target, function)(args, tuple(fds))


class ChildLoop(Protocol):
    def run(self) -> bool:
        """Work until told to stop; ``True`` when the kernel asked (a close request)."""
        ...

    def close(self) -> None: ...


class Views(Protocol):
    @property
    def control(self) -> control.ControlBlock: ...

    def mismatch(self, producer_pid: int) -> str | None: ...

    def release(self) -> None: ...


V = TypeVar("V", bound=Views)


def serve(
    name: str, args: ChildArgs, views_of: Callable[[memoryview], V], setup: Callable[[V], ChildLoop]
) -> NoReturn:
    """A ring child's whole life: attach the ring ``args.shm_name`` (unlinking its name, so it
    cannot outlive the processes that map it), build its views and check that the control
    block describes the ring it was told about, ``setup`` the loop (locks,
    doorbell, segment files), ignore group signals, announce ``RUNNING``, run the loop, close
    it, and only then (files synced and closed, locks released) announce ``CLOSED`` when the
    kernel asked for the close: the kernel waits for that word, not for the process to end.
    Any failure is written to the control block (errno, text, ``FAILED``) for the kernel to
    report, and the exit status says what kind it was. The process then ends at once
    (``os._exit``): everything it owns is closed, and tearing down an interpreter costs tens of
    milliseconds that a kernel's ``seal()`` would otherwise wait for."""
    try:
        region = SharedRegion.attach(args.shm_name)
    except OSError as exc:
        print(f"ringtape {name}: cannot attach {args.shm_name}: {exc}", file=sys.stderr)
        sys.exit(EXIT_ATTACH_FAILED)
    views = views_of(region.buf)
    problem = views.mismatch(args.parent_pid)
    if problem is not None:
        print(f"ringtape {name}: {args.shm_name}: {problem}", file=sys.stderr)
        views.release()
        region.close()
        sys.exit(EXIT_ATTACH_FAILED)
    words = views.control.words
    words[control.CHILD_PID] = os.getpid()
    code = EXIT_OK
    try:
        loop = setup(views)
        ignore_group_signals()
        words[control.STATE] = control.STATE_RUNNING
        closed = loop.run()
        loop.close()
        if closed:
            words[control.STATE] = control.STATE_CLOSED
    except Exception as exc:  # the kernel must learn why its child stopped
        err, text, code = describe_failure(exc)
        views.control.report_failure(text, err, type(exc).__name__)
    finally:
        views.release()
        region.close()
    sys.stderr.flush()
    os._exit(code)


def ignore_group_signals() -> None:
    """In the child: the kernel decides when it stops (a close request, or the kernel's own
    death); a SIGTERM or Ctrl-C sent to the whole process group must not end it under a live
    kernel."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def describe_failure(exc: Exception) -> tuple[int, str, int]:
    """``(errno, message, exit status)`` a failing child reports to its kernel."""
    if isinstance(exc, OSError):
        return exc.errno or 0, f"{exc.strerror or exc} ({exc.filename or ''})", EXIT_DISK_ERROR
    return 0, f"{type(exc).__name__}: {exc}", EXIT_INTERNAL_ERROR
