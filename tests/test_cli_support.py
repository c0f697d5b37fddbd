"""Helpers for the command-line tests (no tests here): run ``ringtape`` as a real subprocess,
find frames in a segment file, and damage them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ringtape.storage.format.frame import SEGMENT_HEADER_SIZE, decode_frame_header

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).parent / "ringtape"


def command(*args: str | Path) -> list[str]:
    """The argv of ``ringtape ARGS`` (the installed console script when there is one)."""
    head = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "ringtape.tools.cli"]
    return [*head, *(str(a) for a in args)]


def ringtape(
    *args: str | Path, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``ringtape ARGS`` to completion; never a traceback, whatever it was given."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
    return proc


def verify_json(path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """Exit status and parsed report of ``ringtape verify --json PATH``."""
    proc = ringtape("verify", "--json", path, *extra)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def frames(segment: Path) -> list[tuple[int, int]]:
    """``(offset, size)`` of every frame in a well-formed segment file."""
    data = segment.read_bytes()
    out = []
    pos = SEGMENT_HEADER_SIZE
    while pos < len(data):
        size = decode_frame_header(data, pos).size
        out.append((pos, size))
        pos += size
    return out


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
