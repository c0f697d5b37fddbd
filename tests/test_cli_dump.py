"""``ringtape dump`` through a real subprocess: JSON lines, filters, pipes closed early, damage."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import INSTANCE, TS0, make_run, write_stream
from test_cli_support import command, flip_byte, frames, ringtape

from ringtape.storage.format.entry import TOPIC_RUN_ENDED, TOPIC_RUN_STARTED, encode_entry
from ringtape.storage.run.layout import RunPaths
from ringtape.storage.run.manifest import Manifest, write_manifest
from ringtape.storage.run.status import RunStatus

N = 3000
TOPICS = ("events.order.submitted", "events.order.filled", "data.quotes.BTC", "data.blob")


def payload(seq: int, topic: str) -> bytes:
    if topic == "data.blob":
        return bytes([0xFF, 0xFE]) + seq.to_bytes(4, "little")  # not UTF-8
    return json.dumps({"order_id": f"O-{seq}", "px": seq / 4, "note": "line\nbreak"}).encode()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ended run of ``N`` entries: JSON payloads on most topics, binary on ``data.blob``."""
    base = tmp_path_factory.mktemp("dump")
    paths = RunPaths(base, INSTANCE, f"{TS0 + 1}-{uuid.uuid4().hex[:8]}")
    paths.create()
    recs = []
    for seq in range(1, N + 1):
        topic = TOPICS[seq % len(TOPICS)]
        if seq == 1:
            topic = TOPIC_RUN_STARTED
        elif seq == N:
            topic = TOPIC_RUN_ENDED
        body = b"" if seq == N else payload(seq, topic)
        recs.append(encode_entry(seq, TS0 + seq, TS0 + seq + 7, topic, body, "T"))
    write_stream(paths.run_dir, paths.run_id, recs, per_frame=50)
    manifest = Manifest(
        run_id=paths.run_id,
        instance_id=INSTANCE,
        status=RunStatus.ENDED,
        start_ts_init=TS0 + 1,
        high_watermark=N,
        end_ts_init=TS0 + N,
    )
    write_manifest(paths.run_dir, manifest)
    return paths.run_dir


def dump(run: Path, *args: str) -> list[dict[str, object]]:
    proc = ringtape("dump", run, *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_every_entry_as_json_lines(run: Path) -> None:
    rows = dump(run)
    assert [r["seq"] for r in rows] == list(range(1, N + 1))
    first = rows[1]
    assert set(first) == {
        "seq", "ts_init", "ts_publish", "topic", "payload_type", "correlation_id",
        "causation_id", "encoding", "payload",
    }  # fmt: skip
    assert (first["ts_init"], first["ts_publish"], first["payload_type"]) == (TS0 + 2, TS0 + 9, "T")
    json_row = next(r for r in rows if r["topic"] == "events.order.filled")
    assert json_row["encoding"] == "json"
    assert json_row["payload"] == json.loads(payload(int(str(json_row["seq"])), "x"))
    blob = next(r for r in rows if r["topic"] == "data.blob")
    assert blob["encoding"] == "base64"
    assert base64.b64decode(str(blob["payload"])) == payload(int(str(blob["seq"])), "data.blob")
    assert rows[-1]["topic"] == TOPIC_RUN_ENDED and rows[-1]["payload"] == ""


def test_filters(run: Path) -> None:
    rows = dump(run, "--from-seq", "100", "--to-seq", "220", "--topic", "events.order.*")
    assert rows and all(100 <= int(str(r["seq"])) <= 220 for r in rows)
    assert {r["topic"] for r in rows} == {"events.order.submitted", "events.order.filled"}
    since, until = TS0 + 500, TS0 + 510
    rows = dump(run, "--since", str(since), "--until", str(until))
    assert [r["seq"] for r in rows] == list(range(500, 511))
    iso = dump(run, "--since", "2023-11-14T22:13:20Z", "--to-seq", "3")
    assert [r["seq"] for r in iso] == [1, 2, 3]
    assert dump(run, "--since", "2030-01-01") == []


def test_head_closes_the_pipe_early(run: Path) -> None:
    shell = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1', "sh", *command("dump", run)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0, shell.stderr
    assert json.loads(shell.stdout)["seq"] == 1 and shell.stderr == ""
    # The same with the reader closing its end while dump is still writing.
    proc = subprocess.Popen(command("dump", run), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["seq"] == 1
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_dump_stops_at_damage_with_status_1(tmp_path: Path) -> None:
    bad = make_run(tmp_path, 400, per_frame=10)
    seg = bad / "events-000000.seg"
    offset, size = frames(seg)[5]
    flip_byte(seg, offset + size - 2)
    proc = ringtape("dump", bad)
    assert proc.returncode == 1
    assert [json.loads(line)["seq"] for line in proc.stdout.splitlines()] == list(range(1, 51))
    assert proc.stderr.startswith("ringtape: dump stopped at damage: checksum_mismatch")
    assert f"{seg}@{offset}" in proc.stderr


def test_markers(tmp_path: Path) -> None:
    run = make_run(tmp_path, 10, markers=6)
    rows = [json.loads(x) for x in ringtape("dump", run, "--markers").stdout.splitlines()]
    assert [r["marker_seq"] for r in rows] == list(range(1, 7))
    proc = ringtape("dump", run, "--markers", "--topic", "x")
    assert proc.returncode == 2 and "--topic" in proc.stderr


def test_bad_arguments(run: Path, tmp_path: Path) -> None:
    cases = [
        (["dump", str(tmp_path / "missing")], "no such file"),
        (["dump", str(tmp_path)], "not a run directory"),
        (["dump", str(run), "--from-seq", "0"], "start at 1"),
        (["dump", str(run), "--from-seq", "9", "--to-seq", "3"], "before --from-seq"),
        (["dump", str(run), "--since", "yesterday"], "ISO 8601"),
    ]
    for args, text in cases:
        proc = ringtape(*args)
        assert proc.returncode == 2 and text in proc.stderr, (args, proc.stderr)
