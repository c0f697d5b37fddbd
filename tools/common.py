"""What every ``ringtape`` subcommand shares: the one-line error, path checks, number and time
formatting, and tables and progress bars that behave on a pipe.

Rules for subcommands:

1. Exit status (``tools/arguments.py``): ``EXIT_OK`` when everything checked out,
   ``EXIT_FINDINGS`` when something was found wrong (damage, a failed parity check),
   ``EXIT_ERROR`` when the command could not run at all (no such path, permission denied, bad
   usage).
2. A problem the user can act on is raised as :class:`CliError`; ``tools/cli.py`` prints it as
   one line, ``ringtape: <message>``, never a traceback.
3. Results go to stdout, progress and errors to stderr. A progress bar appears only when stderr
   is a terminal and the output is not JSON.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ringtape.storage.check.verify import STREAMS, find_runs
from ringtape.storage.run.layout import inside, list_instances, list_runs, list_segments
from ringtape.tools.arguments import default_jobs

# Below this many bytes a progress bar would only flicker.
PROGRESS_MIN_BYTES: Final = 32 << 20
# Below this many bytes of segments one verify job is faster than starting more.
PARALLEL_MIN_BYTES: Final = 64 << 20


class CliError(Exception):
    """A problem reported as one line on stderr, with exit status :data:`EXIT_ERROR`."""


def check_path(text: str, *, want_dir: bool = False) -> Path:
    """``text`` as a path that exists and can be read (and searched, for a directory)."""
    path = Path(text)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CliError(f"{text}: no such file or directory") from None
    except PermissionError:
        raise CliError(f"{text}: permission denied") from None
    except OSError as exc:
        raise CliError(f"{text}: {exc.strerror or exc}") from None
    is_dir = stat.S_ISDIR(st.st_mode)
    if want_dir and not is_dir:
        raise CliError(f"{text}: not a directory")
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        raise CliError(f"{text}: permission denied")
    return path


def not_a_segment(path: Path) -> str | None:
    """Why a regular file handed to ``verify`` or ``inspect`` is not a ringtape segment at all
    (``None``: it may be one, whole, torn or damaged: the scan says which). A file named like a
    segment (``*.seg``) is a segment, however damaged; any other must start like one."""
    from ringtape.storage.format.frame import SEGMENT_MAGIC

    if path.name.endswith(".seg"):
        return None
    try:
        with path.open("rb") as f:
            head = f.read(len(SEGMENT_MAGIC))
    except OSError:
        return None  # the scan reports what cannot be read
    if head and SEGMENT_MAGIC.startswith(head):
        return None
    return f"{path}: not a ringtape segment (a segment file starts with {SEGMENT_MAGIC.decode()})"


def run_dir_arg(path_text: str, run: str | None = None) -> Path:
    """The run directory a reading command works on: a run directory, or a base (or instance)
    directory and a run id or ``latest`` (``storage/read/run.py``'s rules)."""
    from ringtape.storage.read.run import RunNotFound, resolve_run

    check_path(path_text, want_dir=True)
    try:
        return resolve_run(path_text, run)
    except RunNotFound as exc:
        raise CliError(str(exc)) from None


def segment_bytes(path: Path) -> int:
    """Bytes of the segment files under ``path`` (what ``verify_path(path)`` reads)."""
    runs, loose, _ = find_runs(path)
    files = [p for r in runs for s in STREAMS for p in list_segments(r, s)] + loose
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += os.lstat(f).st_size
    return total


def choose_jobs(path: Path, requested: int | None) -> int:
    """Worker processes for verifying ``path``: ``requested``, else one per core when there
    is :data:`PARALLEL_MIN_BYTES` or more to read (starting a worker costs about as much as
    verifying that much), else one."""
    if requested is not None:
        return requested
    return default_jobs() if segment_bytes(path) >= PARALLEL_MIN_BYTES else 1


def human_bytes(n: int | None) -> str:
    """``n`` bytes in binary units (``"3.5 MiB"``); ``"-"`` for unknown."""
    if n is None:
        return "-"
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def format_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_ts(ns: int | None) -> str:
    """A ts_init (ns since the UNIX epoch) as UTC time to the millisecond."""
    if ns is None:
        return "-"
    try:
        when = datetime.fromtimestamp(ns / 1e9, UTC)
    except (OverflowError, OSError, ValueError):
        return str(ns)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def format_seq_range(first: int | None, last: int | None) -> str:
    if first is None:
        return "-"
    return f"{first}..{'' if last is None else last}"


def console(stream: TextIO | None = None) -> Console:
    """A rich console on ``stream`` (stdout); on a pipe it is wide and plain, so one table row
    stays one line and no escape codes reach a file."""
    stream = sys.stdout if stream is None else stream
    terminal = stream.isatty()
    return Console(
        file=stream,
        width=None if terminal else 400,
        highlight=False,
        soft_wrap=not terminal,
        no_color=not terminal,
    )


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[str] = (),
    header: bool = True,
) -> Table:
    """A borderless table; cells are plain text (never rich markup: paths may hold ``[``)."""
    out = Table(box=None, pad_edge=False, show_edge=False, show_header=header, header_style="bold")
    for name in columns:
        out.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    for row in rows:
        out.add_row(*(Text(cell) for cell in row))
    return out


def emit(out: Console, renderable: Table) -> None:
    """Print a table, never cut short: on a narrow terminal its lines wrap rather than lose
    cells; on a pipe without the padding rich adds at the end of each line."""
    if out.is_terminal:
        wanted = Measurement.get(out, out.options.update_width(10_000), renderable).maximum
        width = out.width
        out.width = max(width, wanted)  # print(width=) cannot exceed the console's
        try:
            out.print(renderable, crop=False)
        finally:
            out.width = width
        return
    with out.capture() as captured:
        out.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    out.file.write(text + "\n")


ProgressFn = Callable[[int, int], None]


@contextmanager
def byte_progress(description: str, enabled: bool) -> Iterator[ProgressFn | None]:
    """A ``progress(done, total)`` callback drawing a transient bar on stderr, or ``None``.

    The bar appears only once the total is known to be large enough to be worth watching.
    """
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    )
    task: list[TaskID] = []

    def update(done: int, total: int) -> None:
        if not task:
            if total < PROGRESS_MIN_BYTES:
                return
            bar.start()
            task.append(bar.add_task(description, total=total))
        bar.update(task[0], completed=done, total=total)

    try:
        yield update
    finally:
        if task:
            bar.stop()


def progress_wanted(json_output: bool) -> bool:
    """Draw progress bars? Only for people: stderr is a terminal and the output is not JSON."""
    return not json_output and sys.stderr.isatty()


def instance_dirs(base_text: str, instance: str | None) -> list[Path]:
    """The instance directories a maintenance command works on.

    ``--instance ID`` names one under the base directory. Without it: every instance under the
    base directory, or the directory itself when it is an instance directory.
    """
    base = check_path(base_text, want_dir=True)
    if instance is not None:
        try:
            uuid.UUID(instance)
        except ValueError:
            raise CliError(f"--instance {instance!r} is not an instance id (a UUID)") from None
        try:
            path = inside(base, instance)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        if not path.is_dir():
            raise CliError(f"{base_text}: no instance {instance}")
        return [path]
    found = [base / name for name in list_instances(base)]
    if found:
        return found
    if _is_uuid(base.name) and list_runs(base):
        return [base]
    raise CliError(f"{base_text}: no instance directories (expected <base>/<instance id>/<run id>)")


def _is_uuid(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True
