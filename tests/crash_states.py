"""Power loss, modelled: record the file operations of real processes, then build the states a
disk could be left in if the power failed after any of them (no tests here).

Recording: :data:`RECORDER` is a ``sitecustomize`` module. A process started with it on its
``PYTHONPATH`` and ``RINGTAPE_OPLOG``/``RINGTAPE_OPLOG_ROOT`` in its environment (children
inherit both: the writer, the marker sidecar) appends one JSON line per completed operation under
the root to the log — creates, writes (with their bytes), truncates, fsyncs, renames, unlinks,
mkdirs — in the order they completed (one ``O_APPEND`` log shared by every process). The kernel
adds ``{"op": "durable", "seq": n}`` lines when ``durable_seq()`` advances.

The model (:class:`Model`), in the spirit of ALICE and SQLite's crash-test VFS: a file's bytes
are durable once it is fsynced (``fsync``/``fdatasync``); a directory's entries once the
directory is fsynced. At a crash:

* directory operations not yet made durable are kept as a prefix, in the order they were made
  (a journalling file system commits metadata in order): none, all, or the first *k*;
* each file's writes since its last fsync are, independently: lost; kept; kept up to a torn
  point (a 512- or 4096-byte boundary inside one write, later writes lost); kept except the
  512-byte sectors of one write, which read back as they were on disk — the synced bytes, and
  zeros past the synced end of the file (write-back out of order, the new size kept); or lost
  with the file's size kept (the tail reads as zeros).

A crash state is materialised as a real directory tree, on which recovery then runs for real.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTOR = 512

RECORDER = r"""
import json, os, base64, threading

_LOG = os.environ.get("RINGTAPE_OPLOG")
_ROOT = os.environ.get("RINGTAPE_OPLOG_ROOT")
if _LOG and _ROOT:
    _ROOT = os.path.realpath(_ROOT)
    _real = {n: getattr(os, n) for n in (
        "open", "write", "pwrite", "ftruncate", "fsync", "fdatasync", "replace", "rename",
        "unlink", "remove", "mkdir", "rmdir", "close", "lseek")}
    _log = _real["open"](_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    _paths = {}

    def _emit(**rec):
        rec["pid"] = os.getpid()
        rec["tid"] = threading.get_native_id()
        _real["write"](_log, (json.dumps(rec) + "\n").encode())

    def _under(p):
        return p == _ROOT or p.startswith(_ROOT + "/")

    def _abs(path, dir_fd=None):
        if dir_fd is not None:
            return None
        return os.path.abspath(os.fsdecode(path))

    def _of(fd):
        p = _paths.get(fd)
        if p is None:
            try:
                p = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return None
        return p if _under(p) else None

    def open(path, flags, mode=0o777, *, dir_fd=None):
        p = _abs(path, dir_fd)
        existed = p is not None and os.path.lexists(p)
        fd = _real["open"](path, flags, mode, dir_fd=dir_fd)
        if p is not None and _under(p):
            _paths[fd] = p
            if flags & os.O_CREAT and not existed:
                _emit(op="create", path=p)
            elif flags & os.O_TRUNC:
                _emit(op="truncate", path=p, size=0)
        else:
            _paths.pop(fd, None)
        return fd

    def write(fd, data):
        n = _real["write"](fd, data)
        p = _of(fd)
        if p is not None and n:
            end = _real["lseek"](fd, 0, os.SEEK_CUR)
            blob = base64.b64encode(bytes(memoryview(data)[:n])).decode()
            _emit(op="write", path=p, offset=end - n, data=blob)
        return n

    def pwrite(fd, data, offset):
        n = _real["pwrite"](fd, data, offset)
        p = _of(fd)
        if p is not None and n:
            blob = base64.b64encode(bytes(memoryview(data)[:n])).decode()
            _emit(op="write", path=p, offset=offset, data=blob)
        return n

    def ftruncate(fd, length):
        _real["ftruncate"](fd, length)
        p = _of(fd)
        if p is not None:
            _emit(op="truncate", path=p, size=length)

    def _sync(name):
        def sync(fd):
            _real[name](fd)
            p = _of(fd)
            if p is not None:
                _emit(op="fsync", path=p)
        return sync

    def _rename(name):
        def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            _real[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            s, d = _abs(src, src_dir_fd), _abs(dst, dst_dir_fd)
            if s is not None and d is not None and _under(s):
                _emit(op="rename", src=s, dst=d)
        return rename

    def _unlink(name):
        def unlink(path, *, dir_fd=None):
            _real[name](path, dir_fd=dir_fd)
            p = _abs(path, dir_fd)
            if p is not None and _under(p):
                _emit(op="unlink", path=p)
        return unlink

    def mkdir(path, mode=0o777, *, dir_fd=None):
        _real["mkdir"](path, mode, dir_fd=dir_fd)
        p = _abs(path, dir_fd)
        if p is not None and _under(p):
            _emit(op="mkdir", path=p)

    def rmdir(path, *, dir_fd=None):
        _real["rmdir"](path, dir_fd=dir_fd)
        p = _abs(path, dir_fd)
        if p is not None and _under(p):
            _emit(op="rmdir", path=p)

    def close(fd):
        _paths.pop(fd, None)
        _real["close"](fd)

    os.open, os.write, os.pwrite, os.ftruncate = open, write, pwrite, ftruncate
    os.fsync, os.fdatasync = _sync("fsync"), _sync("fdatasync")
    os.replace, os.rename = _rename("replace"), _rename("rename")
    os.unlink, os.remove = _unlink("unlink"), _unlink("remove")
    os.mkdir, os.rmdir, os.close = mkdir, rmdir, close
"""


def install_recorder(site_dir: Path) -> None:
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "sitecustomize.py").write_text(RECORDER)


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Inode:
    is_dir: bool
    data: bytearray = field(default_factory=bytearray)  # current bytes (files)
    synced: bytes = b""  # bytes as of the last fsync
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)  # writes/truncates since
    entries: dict[str, int] = field(default_factory=dict)  # current entries (directories)
    synced_entries: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CrashState:
    """One state the disk may be in after a power loss at ``point``."""

    point: int  # operations completed before the power went
    durable: int  # the highest durable seq any process had seen by then
    label: str
    tree: dict[str, bytes | None]  # relative path -> bytes (None: a directory)


class Model:
    """The file system as the recorded operations left it, op by op (see the module doc)."""

    def __init__(self, root: Path, initial: Path | None = None) -> None:
        self.root = str(root.resolve()) if root.exists() else str(root)
        self.inodes: dict[int, Inode] = {0: Inode(True)}
        self.next_ino = 1
        self.meta: list[tuple[int, int, str, str, int]] = []  # (order, dir, kind, name, ino)
        self.order = 0
        if initial is not None:
            self._load(initial, 0)

    def _new(self, is_dir: bool) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.inodes[ino] = Inode(is_dir)
        return ino

    def _load(self, directory: Path, ino: int) -> None:
        node = self.inodes[ino]
        for entry in sorted(directory.iterdir()):
            child = self._new(entry.is_dir() and not entry.is_symlink())
            if self.inodes[child].is_dir:
                self._load(entry, child)
            else:
                data = entry.read_bytes()
                self.inodes[child].data = bytearray(data)
                self.inodes[child].synced = data
            node.entries[entry.name] = child
        node.synced_entries = dict(node.entries)

    def _split(self, path: str) -> tuple[int, str] | None:
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".."):
            return None
        *parents, name = rel.split("/")
        ino = 0
        for part in parents:
            nxt = self.inodes[ino].entries.get(part)
            if nxt is None:
                return None
            ino = nxt
        return ino, name

    def _lookup(self, path: str) -> int | None:
        if os.path.relpath(path, self.root) == ".":
            return 0
        where = self._split(path)
        if where is None:
            return None
        return self.inodes[where[0]].entries.get(where[1])

    def _meta(self, directory: int, kind: str, name: str, ino: int) -> None:
        self.order += 1
        self.meta.append((self.order, directory, kind, name, ino))

    def apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind in ("create", "mkdir"):
            where = self._split(op["path"])
            if where is None:
                return
            ino = self._new(kind == "mkdir")
            self.inodes[where[0]].entries[where[1]] = ino
            self._meta(where[0], "link", where[1], ino)
        elif kind in ("write", "truncate"):
            ino_or_none = self._lookup(op["path"])
            if ino_or_none is None:
                return
            node = self.inodes[ino_or_none]
            if kind == "write":
                data = base64.b64decode(op["data"])
                offset = op["offset"]
                if len(node.data) < offset:
                    node.data.extend(bytes(offset - len(node.data)))
                node.data[offset : offset + len(data)] = data
                node.pending.append(("write", offset, data))
            else:
                del node.data[op["size"] :]
                node.pending.append(("truncate", op["size"], b""))
        elif kind == "fsync":
            ino_or_none = self._lookup(op["path"])
            if ino_or_none is None:
                return
            node = self.inodes[ino_or_none]
            if node.is_dir:
                node.synced_entries = dict(node.entries)
                self.meta = [m for m in self.meta if m[1] != ino_or_none]
            else:
                node.synced = bytes(node.data)
                node.pending.clear()
        elif kind == "rename":
            src, dst = self._split(op["src"]), self._split(op["dst"])
            if src is None or dst is None:
                return
            ino = self.inodes[src[0]].entries.pop(src[1], None)
            if ino is None:
                return
            self.inodes[dst[0]].entries[dst[1]] = ino
            self._meta(src[0], "unlink", src[1], ino)
            self._meta(dst[0], "link", dst[1], ino)
        elif kind in ("unlink", "rmdir"):
            where = self._split(op["path"])
            if where is None:
                return
            ino = self.inodes[where[0]].entries.pop(where[1], None)
            if ino is not None:
                self._meta(where[0], "unlink", where[1], ino)

    # -- crash states -----------------------------------------------------------------------

    def _entries_at_crash(self, keep: int) -> dict[int, dict[str, int]]:
        """Every directory's entries after the power loss: the synced ones plus the first
        ``keep`` un-synced directory operations (in the order they were made)."""
        out = {ino: dict(n.synced_entries) for ino, n in self.inodes.items() if n.is_dir}
        for _, directory, kind, name, ino in sorted(self.meta)[:keep]:
            if kind == "link":
                out[directory][name] = ino
            else:
                out[directory].pop(name, None)
        return out

    def _bytes_at_crash(self, node: Inode, rng: random.Random) -> tuple[bytes, str]:
        if not node.pending:
            return node.synced, "synced"
        mode = rng.choice(("lost", "kept", "torn512", "torn4096", "zeroed", "size_only"))
        if mode == "kept":
            return bytes(node.data), mode
        if mode == "lost":
            return node.synced, mode
        if mode == "size_only":  # the size reached the disk, the data did not
            base = bytearray(node.synced)
            base.extend(bytes(max(0, len(node.data) - len(base))))
            return bytes(base[: len(node.data)]), mode
        data = bytearray(node.synced)
        if mode == "zeroed":
            return self._sector_lost(node, rng), mode
        cut_at = rng.randrange(len(node.pending))
        for i, (kind, offset, chunk) in enumerate(node.pending):
            if kind == "truncate":
                del data[offset:]
                continue
            if i == cut_at:
                block = 512 if mode == "torn512" else 4096
                keep = (offset + len(chunk)) // block * block - offset
                chunk = chunk[: max(0, keep)] if keep < len(chunk) else chunk[: len(chunk) // 2]
            if len(data) < offset:
                data.extend(bytes(offset - len(data)))
            data[offset : offset + len(chunk)] = chunk
            if i == cut_at:
                break
        return bytes(data), mode

    @staticmethod
    def _sector_lost(node: Inode, rng: random.Random) -> bytes:
        """Every write kept but the sectors of one: those read back as they were on disk (the
        synced bytes, zeros past the synced end of the file), the file keeping its new size."""
        data = bytearray(node.data)
        writes = [(o, c) for k, o, c in node.pending if k == "write" and c]
        if not writes:
            return bytes(data)
        offset, chunk = rng.choice(writes)
        old = node.synced
        start = offset - offset % SECTOR
        for sector in range(start, min(offset + len(chunk), len(data)), SECTOR):
            end = min(sector + SECTOR, len(data))
            before = old[sector:end]
            data[sector:end] = before + bytes(end - sector - len(before))
        return bytes(data)

    def crash_state(self, rng: random.Random, point: int, durable: int) -> CrashState:
        pending = len(self.meta)
        keep = rng.choice((0, pending, rng.randint(0, pending))) if pending else 0
        entries = self._entries_at_crash(keep)
        tree: dict[str, bytes | None] = {}
        modes: set[str] = set()

        def walk(ino: int, prefix: str) -> None:
            for name, child in sorted(entries[ino].items()):
                rel = f"{prefix}{name}"
                node = self.inodes[child]
                if node.is_dir:
                    tree[rel] = None
                    walk(child, rel + "/")
                else:
                    tree[rel], mode = self._bytes_at_crash(node, rng)
                    modes.add(mode)

        walk(0, "")
        label = f"op {point}, {keep}/{pending} dir ops kept, files: {','.join(sorted(modes))}"
        return CrashState(point, durable, label, tree)


def crash_states(
    log: list[dict[str, Any]],
    root: Path,
    *,
    per_point: int,
    every_nth_write: int,
    seed: int,
    initial: Path | None = None,
    durable_floor: int = 0,
) -> Iterator[CrashState]:
    """Crash states after every operation that changes what is durable (fsync, rename, create,
    unlink, mkdir) and after every ``every_nth_write``-th write, ``per_point`` each."""
    rng = random.Random(seed)
    model = Model(root, initial)
    durable = durable_floor
    writes = 0
    yield model.crash_state(rng, 0, durable)
    for i, op in enumerate(log, start=1):
        if op["op"] == "durable":
            durable = max(durable, int(op["seq"]))
            continue
        model.apply(op)
        if op["op"] == "write":
            writes += 1
            if writes % every_nth_write:
                continue
        for _ in range(per_point):
            yield model.crash_state(rng, i, durable)


def materialise(state: CrashState, target: Path) -> None:
    """Write the state's tree under ``target`` (which must not exist yet), dated an hour ago:
    files and directories keep their times across a power loss and a reboot."""
    target.mkdir(parents=True)
    for rel, data in sorted(state.tree.items()):
        path = target / rel
        if data is None:
            path.mkdir(mode=0o700, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    then = time.time() - 3600
    for rel in sorted(state.tree, reverse=True):
        os.utime(target / rel, (then, then))
