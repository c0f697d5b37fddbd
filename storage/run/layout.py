"""Where a run lives on disk, how it is named, and how files are created safely.

``<base_dir>/<instance_id>/<run_id>/`` holds ``manifest.json``, the segment files
``events-NNNNNN.seg`` and ``markers-NNNNNN.seg``, snapshot blobs under ``blobs/`` and the
writer's ``writer.lock``. Directories are created 0700 and files 0600; every path handed in
from outside (a manifest, a CLI argument) is resolved with :func:`inside` so nothing follows a
symlink or a ``..`` out of the base directory.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MANIFEST_NAME: Final = "manifest.json"
LOCK_NAME: Final = "writer.lock"
MARKER_LOCK_NAME: Final = "markers.lock"  # held by the data-marker sidecar
BLOB_DIR: Final = "blobs"
TRASH_DIR: Final = ".trash"
ABORTED_DIR: Final = ".aborted"  # opens that never became durable, moved aside by the sweep
TORN_SUFFIX: Final = ".torn"

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600

RUN_ID_RE: Final = re.compile(r"^(\d{1,20})-([0-9a-f]{8})$")
SEGMENT_RE: Final = re.compile(r"^(events|markers)-(\d{6})\.seg$")
# Bytes recovery cut from a torn tail: ``<segment>.torn``, or ``<segment>.<k>.torn`` when taken.
TORN_FILE_RE: Final = re.compile(r"^((events|markers)-\d{6}\.seg)(?:\.\d+)?\.torn$")


def new_run_id(start_ts_init: int) -> str:
    """``<start_ts_init>-<first 8 hex of a uuid4>``; sorts by start time (see run_sort_key)."""
    if start_ts_init < 0:
        raise ValueError(f"start_ts_init must be >= 0, got {start_ts_init}")
    return f"{start_ts_init}-{uuid.uuid4().hex[:8]}"


def is_run_id(name: str) -> bool:
    return RUN_ID_RE.match(name) is not None


def run_sort_key(run_id: str) -> tuple[int, str]:
    m = RUN_ID_RE.match(run_id)
    if m is None:
        raise ValueError(f"not a run id: {run_id!r}")
    return int(m.group(1)), m.group(2)


def checkpoint_name(stream: str) -> str:
    """The stream's recovery checkpoint (``storage/run/checkpoint.py``)."""
    return f"{stream}.checkpoint"


def segment_name(stream: str, index: int) -> str:
    return f"{stream}-{index:06d}.seg"


def inside(base: Path, *parts: str) -> Path:
    """``base/parts…`` resolved, refusing anything (``..``, a symlink) that leaves ``base``."""
    root = base.resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {'/'.join(parts)!r} escapes {root}")
    return target


def make_private_dir(path: Path) -> None:
    """Create ``path`` 0700 (and missing parents, with the default mode), each new directory's
    entry fsynced into its parent so that a power loss cannot take it away after the fact; an
    existing symlink is refused. An existing directory keeps its mode: a base dir such as
    ``$HOME`` is not ringtape's to lock down."""
    if path.is_symlink():
        raise ValueError(f"{path} is a symlink; ringtape does not follow it")
    if path.is_dir():
        return
    missing = [path]
    while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
        missing.append(missing[-1].parent)
    for level in reversed(missing):
        try:
            level.mkdir(mode=DIR_MODE if level == path else 0o777)
        except FileExistsError:
            if not level.is_dir() or level.is_symlink():
                raise
            continue
        fsync_dir(level.parent)
    os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask


def open_regular(path: Path, max_bytes: int) -> bytes:
    """Read at most ``max_bytes + 1`` bytes of a regular file, never following a symlink and
    never blocking on a FIFO or device someone put in its place (``OSError`` otherwise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1)
    finally:
        os.close(fd)


def create_private_file(path: Path, *, exclusive: bool = True) -> int:
    """Open a new file 0600 for writing without following a symlink; returns the fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if exclusive:
        flags |= os.O_EXCL
    return os.open(path, flags, FILE_MODE)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run directory."""

    base_dir: Path
    instance_id: str
    run_id: str

    @property
    def instance_dir(self) -> Path:
        return self.base_dir / self.instance_id

    @property
    def run_dir(self) -> Path:
        return self.base_dir / self.instance_id / self.run_id

    @property
    def manifest(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @property
    def lock(self) -> Path:
        return self.run_dir / LOCK_NAME

    @property
    def blob_dir(self) -> Path:
        return self.run_dir / BLOB_DIR

    def segment(self, stream: str, index: int) -> Path:
        return self.run_dir / segment_name(stream, index)

    def segments(self, stream: str) -> list[Path]:
        """The stream's segment files in index order."""
        return list_segments(self.run_dir, stream)

    def create(self) -> None:
        """Create the run directory (and its parents) 0700; each new directory's entry is
        fsynced into its parent so a power loss cannot take the run away after the fact."""
        for level in (self.base_dir, self.instance_dir, self.run_dir):
            make_private_dir(level)


def list_segments(run_dir: Path, stream: str) -> list[Path]:
    found: list[tuple[int, Path]] = []
    try:
        names = os.listdir(run_dir)
    except OSError:  # missing or unreadable: verify reports the directory itself
        return []
    for name in names:
        m = SEGMENT_RE.match(name)
        if m and m.group(1) == stream:
            found.append((int(m.group(2)), run_dir / name))
    return [p for _, p in sorted(found)]


def list_runs(instance_dir: Path) -> list[str]:
    """Run ids under an instance directory, oldest first (real directories only)."""
    try:
        names = os.listdir(instance_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    runs = [n for n in names if is_run_id(n) and _real_dir(instance_dir / n)]
    return sorted(runs, key=run_sort_key)


def _real_dir(path: Path) -> bool:
    """A directory, not a symlink to one: nothing ringtape acts on is reached through a link
    (``verify`` reports such a link as ``wrong_file_type``)."""
    return path.is_dir() and not path.is_symlink()


def list_instances(base_dir: Path) -> list[str]:
    """Instance directories under a base directory (names that are UUIDs), sorted."""
    try:
        names = os.listdir(base_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        try:
            uuid.UUID(name)
        except ValueError:
            continue
        if _real_dir(base_dir / name):
            out.append(name)
    return sorted(out)
