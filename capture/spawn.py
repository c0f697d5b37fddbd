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
import subprocess
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)


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
