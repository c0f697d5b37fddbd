"""The manifest on disk: atomic replacement, and refusal of anything malformed or oversized."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import INSTANCE

from ringtape.storage.run.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    read_manifest,
    write_manifest,
)
from ringtape.storage.run.status import RunStatus

RUN_ID = "1700000000000000001-abcdef01"


def manifest(**changes: object) -> Manifest:
    base = Manifest(RUN_ID, INSTANCE, RunStatus.RUNNING, 1_700_000_000_000_000_001)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_crash_before_the_rename_leaves_the_old_manifest(tmp_path: Path) -> None:
    old = manifest()
    write_manifest(tmp_path, old)
    # What write_manifest does before its rename, then the process dies: the new text is in
    # the temp file, fsynced, never renamed over manifest.json.
    new = manifest(status=RunStatus.ENDED, high_watermark=42, end_ts_init=9)
    tmp = tmp_path / f".manifest.json.{os.getpid() + 1}.tmp"
    tmp.write_text(new.to_json())
    assert read_manifest(tmp_path) == old
    write_manifest(tmp_path, new)
    assert read_manifest(tmp_path) == new
    assert {p.name for p in tmp_path.iterdir()} == {"manifest.json", tmp.name}


def test_a_rewrite_replaces_its_own_leftover_temp(tmp_path: Path) -> None:
    (tmp_path / f".manifest.json.{os.getpid()}.tmp").write_text("half a manifest")
    write_manifest(tmp_path, manifest())
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == 0o600


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    m = manifest(
        status=RunStatus.QUARANTINED,
        parent_run_id="1600000000000000000-00000000",
        findings=[{"kind": "checksum_mismatch", "stream": "events"}],
        feature_flags=["retention=full"],
    )
    write_manifest(tmp_path, m)
    assert read_manifest(tmp_path) == m


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{not json",
        json.dumps({"run_id": RUN_ID, "status": "sealed"}),
        json.dumps({"run_id": 5, "instance_id": INSTANCE, "status": "ended", "start_ts_init": 1}),
        json.dumps(
            {"run_id": RUN_ID, "instance_id": INSTANCE, "status": "ended", "start_ts_init": 1}
            | {"high_watermark": -1}
        ),
    ],
)
def test_malformed_manifests_are_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError):
        read_manifest(tmp_path)


def test_an_oversized_manifest_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    with open(tmp_path / "manifest.json", "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 10)
    with pytest.raises(ManifestError, match="larger than"):
        read_manifest(tmp_path)


def test_a_symlinked_manifest_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(manifest().to_json())
    (tmp_path / "manifest.json").symlink_to(target)
    with pytest.raises(ManifestError):
        read_manifest(tmp_path)
