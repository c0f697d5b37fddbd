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

The child then reads ``(module, function, args)`` pickled from stdin and calls
``module.function(args)``. Ring children (writer, sidecar) run :func:`serve`: attach the ring,
set up, announce ``RUNNING``, run the loop, and report any failure in the control block.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import subprocess
import sys
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
child_main()
"""


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


def bootstrap_command() -> list[str]:
    """The interpreter command line of a child (see the module docstring)."""
    code = _BOOTSTRAP.format(init=os.path.join(_PACKAGE_DIR, "__init__.py"), root=_PACKAGE_DIR)
    return [sys.executable, "-P", "-c", code]


def spawn_child(
    module: str, function: str, args: object, *, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start a child that runs ``module.function(args)``."""
    proc = subprocess.Popen(
        bootstrap_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        close_fds=True,
        pass_fds=pass_fds,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(pickle.dumps((module, function, args)))
        proc.stdin.close()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def child_main() -> None:
    """In the child: read what to run from stdin and run it."""
    module, function, args = pickle.load(sys.stdin.buffer)
    getattr(importlib.import_module(module), function)(args)


class ChildLoop(Protocol):
    def run(self) -> None: ...

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
    it. Any failure is written to the control block (errno, text, ``FAILED``) for the kernel
    to report, and the exit status says what kind it was."""
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
        loop.run()
        loop.close()
    except Exception as exc:  # the kernel must learn why its child stopped
        err, text, code = describe_failure(exc)
        views.control.report_failure(text, err, type(exc).__name__)
    finally:
        views.release()
        region.close()
    sys.exit(code)


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
