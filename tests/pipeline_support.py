"""Helpers for the live-pipeline tests: a plain frame walker and process/shm probes.

The walker is deliberately independent of storage/reader.py: it checks the pipeline's output
with nothing but the frame primitives, stopping quietly at an incomplete last frame (a live or
crashed writer's tail).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ringtape.storage.format.blob import (
    CODEC_ZSTD,
    BlobHeader,
    compressor,
    encode_blob_header,
    snapshot_hash,
)
from ringtape.storage.format.entry import Entry, decode_entry
from ringtape.storage.format.frame import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FormatError,
    FrameDecoder,
    decode_frame_header,
    decode_segment_header,
)
from ringtape.storage.run.blobs import Anchor, blob_ref, write_blob_file
from ringtape.storage.run.layout import list_segments


def walk_entries(run_dir: Path, stream: str = "events") -> Iterator[Entry]:
    """Every entry in whole, valid frames, in file order; stops at the first incomplete frame."""
    decoder = FrameDecoder()
    for path in list_segments(run_dir, stream):
        data = path.read_bytes()
        if len(data) < SEGMENT_HEADER_SIZE:
            return
        decode_segment_header(data)
        off = SEGMENT_HEADER_SIZE
        while off + FRAME_HEADER_SIZE <= len(data):
            try:
                header = decode_frame_header(data, off)
            except FormatError:
                return
            if off + header.size > len(data):
                return
            body, offsets = decoder.entries(
                header, data[off + FRAME_HEADER_SIZE : off + header.size]
            )
            for o in offsets:
                yield decode_entry(body, int(o))
            off += header.size


def shm_names(pid: int | None = None) -> set[str]:
    names = {n for n in os.listdir("/dev/shm") if n.startswith("ringtape-")}
    if pid is not None:
        names = {n for n in names if n.startswith(f"ringtape-{pid}-")}
    return names


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll until true; a liveness bound for a test, not a performance threshold."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.005)


def sigkill_kernel_after_report(script: str, *args: str) -> tuple[list[str], int]:
    """Run ``script`` as a kernel process until it prints its first line, SIGKILL it there
    and return that line's fields and the dead kernel's pid."""
    kernel = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert kernel.stdout is not None
        fields = kernel.stdout.readline().split()
        kernel.send_signal(signal.SIGKILL)
    finally:
        kernel.kill()
        kernel.wait()
    return fields, kernel.pid


def write_snapshot_blob(run_dir: Path, anchor_id: int, watermark: int, snapshot: bytes) -> Anchor:
    """A format 2 blob for anchor ``anchor_id`` of the run (as the writer process writes it),
    and the anchor that names it (its ``seq`` is for the caller to fill in)."""
    stored = compressor().compress(snapshot)
    header = BlobHeader(
        CODEC_ZSTD, anchor_id, watermark, len(snapshot), len(stored), snapshot_hash(snapshot),
        run_dir.name,
    )  # fmt: skip
    write_blob_file(run_dir, blob_ref(anchor_id), [encode_blob_header(header), stored])
    return Anchor(watermark, blob_ref(anchor_id), "", len(snapshot), 0, anchor_id)
