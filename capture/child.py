"""Starting ringtape's child processes (writer, marker sidecar) as fresh interpreters.

Like multiprocessing's ``spawn`` this never forks a multi-threaded kernel; unlike it, it does
not re-import the kernel's ``__main__`` in the child, so a trader's script needs no
``if __name__ == "__main__"`` guard. The child runs ``<module>.child_main()``, which reads its
arguments pickled from stdin. (``-c`` rather than ``-m``: the package imports these modules,
and ``-m`` would run one twice.)
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

_ROOT = str(Path(__file__).resolve().parent.parent)

# Exit statuses of a child process.
EXIT_OK: Final = 0
EXIT_ATTACH_FAILED: Final = 2
EXIT_DISK_ERROR: Final = 3
EXIT_INTERNAL_ERROR: Final = 4


def spawn_child(
    module: str, args: object, *, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``python -c "from <module> import child_main; child_main()"`` with ``args``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from {module} import child_main; child_main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        close_fds=True,
        pass_fds=pass_fds,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(pickle.dumps(args))
        proc.stdin.close()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def read_child_args() -> object:
    """In the child: the arguments its parent pickled onto stdin."""
    return pickle.load(sys.stdin.buffer)


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
