"""``manifest.json``: what a run is, written atomically (temp file, fsync, rename, fsync dir).

The manifest is a summary and an index; the segments are the truth. Recovery recomputes the
high watermark from the data rather than trusting the manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from ringtape.storage.run.layout import MANIFEST_NAME, create_private_file, fsync_dir, open_regular
from ringtape.storage.run.status import RunStatus

MANIFEST_FORMAT: Final = 1
MAX_MANIFEST_BYTES: Final = 16 * 1024 * 1024


class ManifestError(ValueError):
    """A manifest that cannot be read or does not have the required fields."""


@dataclass
class Manifest:
    run_id: str
    instance_id: str
    status: RunStatus
    start_ts_init: int
    parent_run_id: str | None = None
    high_watermark: int = 0
    end_ts_init: int | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    registered_components: dict[str, Any] = field(default_factory=dict)
    feature_flags: list[str] = field(default_factory=list)
    environment: str = "live"
    findings: list[dict[str, Any]] = field(default_factory=list)
    marker_high_watermark: int = 0
    # Snapshot anchors of the run, as recorded in its entry stream (an index; the stream is
    # the truth): [{"seq", "high_watermark", "blob_ref", "content_hash", "size"}].
    anchors: list[dict[str, Any]] = field(default_factory=list)
    # The run's RetentionMode in its serde JSON form ("Full", {"Bounded": {"keep_last": N}},
    # "SnapshotAnchored"), so that `ringtape prune` needs no flags; None for older manifests.
    retention: Any = None
    # Set by retention (SnapshotAnchored): entries before this seq were reclaimed on purpose.
    retained_from_seq: int = 1
    # Entries whose ts_init is below the entry before them (a kernel clock that went back):
    # counted, not damage.
    ts_init_backwards: int = 0
    # How the run's anchor() calls ended, by state (durable, superseded, skipped, failed,
    # pending): a sealed run's own account; the stream and the blobs are the truth.
    anchor_fates: dict[str, int] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        try:
            status = RunStatus(data["status"])
        except (KeyError, ValueError):
            raise ManifestError(f"manifest status {data.get('status')!r} is not valid") from None
        required = {"run_id": str, "instance_id": str, "start_ts_init": int}
        for name, kind in required.items():
            if not isinstance(data.get(name), kind):
                raise ManifestError(f"manifest field {name!r} is missing or not {kind.__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["status"] = status
        m = cls(**known)
        if not isinstance(m.high_watermark, int) or m.high_watermark < 0:
            raise ManifestError(f"manifest high_watermark {m.high_watermark!r} is not valid")
        if m.end_ts_init is not None and not isinstance(m.end_ts_init, int):
            raise ManifestError(f"manifest end_ts_init {m.end_ts_init!r} is not an integer")
        if m.parent_run_id is not None and not isinstance(m.parent_run_id, str):
            raise ManifestError("manifest parent_run_id is not a string")
        if not isinstance(m.findings, list) or not isinstance(m.feature_flags, list):
            raise ManifestError("manifest findings/feature_flags are not lists")
        if not isinstance(m.anchors, list) or not all(isinstance(a, dict) for a in m.anchors):
            raise ManifestError("manifest anchors is not a list of objects")
        if not isinstance(m.retained_from_seq, int) or m.retained_from_seq < 1:
            raise ManifestError(f"manifest retained_from_seq {m.retained_from_seq!r} is not valid")
        fates = m.anchor_fates
        if not isinstance(fates, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in fates.items()
        ):
            raise ManifestError("manifest anchor_fates is not an object of counts")
        if not isinstance(m.ts_init_backwards, int) or m.ts_init_backwards < 0:
            raise ManifestError(f"manifest ts_init_backwards {m.ts_init_backwards!r} is not valid")
        if type(m.format) is not int or m.format != MANIFEST_FORMAT:
            raise ManifestError(
                f"manifest format {m.format!r} is not one this ringtape reads ({MANIFEST_FORMAT})"
            )
        return m


def read_manifest(run_dir: Path) -> Manifest:
    """Load and validate ``run_dir/manifest.json`` (bounded size, no symlink)."""
    path = run_dir / MANIFEST_NAME
    try:
        data = open_regular(path, MAX_MANIFEST_BYTES)
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:  # '[' * 100_000: nested deeper than any manifest ringtape writes
        raise ManifestError(f"{path}: not a manifest (JSON nested too deeply)") from None
    try:
        return Manifest.from_dict(parsed)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None


def write_manifest(
    run_dir: Path, manifest: Manifest, *, before_rename: Callable[[], None] | None = None
) -> None:
    """Replace the manifest atomically: a crash leaves either the old one or the new one.

    ``before_rename`` runs after the temp file is durable and before the rename (tests use it
    to crash exactly there).
    """
    path = run_dir / MANIFEST_NAME
    tmp = run_dir / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = create_private_file(tmp)
    try:
        data = manifest.to_json().encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if before_rename is not None:
        before_rename()
    os.replace(tmp, path)
    fsync_dir(run_dir)
