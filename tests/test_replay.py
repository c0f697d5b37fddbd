"""Replay parity: a seeded session applied live to a cache equals the cache replay restores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pipeline_support import wait_until

from ringtape.capture.cache import ReferenceCache
from ringtape.capture.config import EventStoreConfig, RegisteredComponents
from ringtape.capture.errors import ReplayError
from ringtape.capture.store import EventStore
from ringtape.storage.check.verify import verify_path
from ringtape.storage.format.entry import Entry
from ringtape.storage.run.layout import list_segments
from ringtape.storage.run.lock import writer_alive
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.status import RunStatus
from ringtape.tools.demo.session import BusMessage, TradingSession

ROOT = Path(__file__).resolve().parent.parent


def live_session(
    base: Path, instance: uuid.UUID, seed: int, ticks: int, anchor_every: int | None
) -> tuple[str, ReferenceCache]:
    store = EventStore(EventStoreConfig(base_dir=str(base)), instance_id=instance)
    store.open(instance, RegisteredComponents(), "backtest")
    cache = ReferenceCache()
    count = 0
    for msg in TradingSession(seed).messages(ticks):
        if not isinstance(msg, BusMessage):
            continue
        seq = store.append(
            msg.topic, msg.payload, payload_type=msg.payload_type, ts_init=msg.ts_init
        )
        cache.apply(Entry(seq, msg.ts_init, msg.ts_init, msg.topic, msg.payload_type, msg.payload))
        count += 1
        if anchor_every and count % anchor_every == 0:
            anchorer = store.snapshot_anchorer()
            assert anchorer is not None
            anchorer(cache.snapshot())
    run_id = store.run_id()
    assert run_id is not None
    store.seal()
    return run_id, cache


@pytest.mark.parametrize("anchor_every", [None, 997, 5000])
@pytest.mark.parametrize("seed", [1, 2])
def test_replay_parity(tmp_path: Path, seed: int, anchor_every: int | None) -> None:
    instance = uuid.uuid4()
    run_id, live = live_session(tmp_path, instance, seed, 3000, anchor_every)
    assert live.applied > 1000
    store = EventStore(
        EventStoreConfig(base_dir=str(tmp_path), replay_from_run_id=run_id), instance_id=instance
    )
    assert store.is_event_store_replay_configured()
    replayed = ReferenceCache()
    store.restore_parent_cache(instance, replayed)
    assert replayed == live
    result = store.last_replay
    assert result is not None
    if anchor_every:
        assert result.anchor is not None and result.applied < result.high_watermark
    else:
        assert result.anchor is None and result.applied == result.high_watermark
    # The child run records its parent.
    store.open(instance, RegisteredComponents(), "backtest")
    child_dir = store.run_dir()
    assert child_dir is not None and store.parent_run_id() == run_id
    store.seal()
    assert read_manifest(child_dir).parent_run_id == run_id


def test_invalid_newest_anchor_falls_back_to_an_older_one(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    run_id, live = live_session(tmp_path, instance, 3, 3000, 2000)
    run_dir = tmp_path / str(instance) / run_id
    anchors = read_manifest(run_dir).anchors
    assert len(anchors) >= 2
    newest = run_dir / anchors[-1]["blob_ref"]
    newest.write_bytes(newest.read_bytes() + b"tampered")
    store = EventStore(
        EventStoreConfig(base_dir=str(tmp_path), replay_from_run_id=run_id), instance_id=instance
    )
    replayed = ReferenceCache()
    store.restore_parent_cache(instance, replayed)
    assert replayed == live
    assert store.last_replay is not None and store.last_replay.skipped_anchors
    assert store.last_replay.anchor is not None
    assert store.last_replay.anchor.seq == anchors[-2]["seq"]
    assert not verify_path(run_dir).ok, "verify reports the bad anchor"


def test_quarantined_or_missing_source_is_rejected(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    run_id, _ = live_session(tmp_path, instance, 4, 500, None)
    manifest_dir = tmp_path / str(instance) / run_id
    manifest = read_manifest(manifest_dir)
    manifest.status = RunStatus.QUARANTINED
    from ringtape.storage.run.manifest import write_manifest

    write_manifest(manifest_dir, manifest)
    for source, message in ((run_id, "quarantined"), ("123-deadbeef", "manifest")):
        store = EventStore(
            EventStoreConfig(base_dir=str(tmp_path), replay_from_run_id=source),
            instance_id=instance,
        )
        with pytest.raises(ReplayError, match=message):
            store.restore_parent_cache(instance, ReferenceCache())
    escaping = EventStore(
        EventStoreConfig(base_dir=str(tmp_path), replay_from_run_id="../../etc"),
        instance_id=instance,
    )
    with pytest.raises(ReplayError, match="escapes"):
        escaping.restore_parent_cache(instance, ReferenceCache())


def test_flipped_byte_in_sealed_run_is_never_accepted(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    run_id, _ = live_session(tmp_path, instance, 5, 1500, 700)
    run_dir = tmp_path / str(instance) / run_id
    segment = list_segments(run_dir, "events")[0]
    data = bytearray(segment.read_bytes())
    rng = __import__("random").Random(11)
    for _ in range(5):
        at = rng.randrange(len(data))
        flipped = bytearray(data)
        flipped[at] ^= 1 << rng.randrange(8)
        segment.write_bytes(bytes(flipped))
        report = verify_path(run_dir)
        assert not report.ok
        assert any(f.path.endswith(segment.name) for f in report.findings)
        store = EventStore(
            EventStoreConfig(base_dir=str(tmp_path), replay_from_run_id=run_id),
            instance_id=instance,
        )
        with pytest.raises(ReplayError):
            store.restore_parent_cache(instance, ReferenceCache())
    segment.write_bytes(bytes(data))
    assert verify_path(run_dir).ok


def test_flipped_byte_in_crashed_run_quarantines_it(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    run_id, _ = live_session(tmp_path, instance, 6, 1500, None)
    run_dir = tmp_path / str(instance) / run_id
    manifest = read_manifest(run_dir)
    manifest.status = RunStatus.RUNNING  # as if the kernel had died before sealing
    from ringtape.storage.run.manifest import write_manifest

    write_manifest(run_dir, manifest)
    segment = list_segments(run_dir, "events")[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0x10
    segment.write_bytes(bytes(data))
    before = segment.read_bytes()
    store = EventStore(EventStoreConfig(base_dir=str(tmp_path)), instance_id=instance)
    recovered = read_manifest(run_dir)
    assert recovered.status is RunStatus.QUARANTINED and recovered.findings
    assert segment.read_bytes() == before, "a quarantined run is evidence: not one byte cut"
    assert store.parent_run_id() == run_id
    # Restoring from a recovered parent that is quarantined leaves the cache alone.
    cache = ReferenceCache()
    store.restore_parent_cache(instance, cache)
    assert cache == ReferenceCache()


KERNEL = r"""
import sys, uuid
from ringtape.capture.cache import ReferenceCache
from ringtape.capture.config import EventStoreConfig, RegisteredComponents
from ringtape.capture.store import EventStore
from ringtape.storage.format.entry import Entry
from ringtape.tools.demo.session import BusMessage, TradingSession
base, instance = sys.argv[1], uuid.UUID(sys.argv[2])
store = EventStore(EventStoreConfig(base_dir=base), instance_id=instance)
store.open(instance, RegisteredComponents(), "backtest")
cache = ReferenceCache()
n = 0
for msg in TradingSession(9).messages(4000):
    if isinstance(msg, BusMessage):
        ts = msg.ts_init
        seq = store.append(msg.topic, msg.payload, payload_type=msg.payload_type, ts_init=ts)
        cache.apply(Entry(seq, msg.ts_init, msg.ts_init, msg.topic, msg.payload_type, msg.payload))
        n += 1
        if n % 1500 == 0:
            store.snapshot_anchorer()(cache.snapshot())
print(store.run_dir(), flush=True)
sys.stdin.read()
"""


def test_crash_then_boot_restores_from_the_recovered_run(tmp_path: Path) -> None:
    instance = uuid.uuid4()
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(tmp_path), str(instance)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert kernel.stdout is not None
        run_dir = Path(kernel.stdout.readline().strip())
    finally:
        os.kill(kernel.pid, signal.SIGKILL)
        kernel.wait()
    wait_until(lambda: not writer_alive(run_dir), what="the orphaned writer to exit")
    store = EventStore(EventStoreConfig(base_dir=str(tmp_path)), instance_id=instance)
    assert store.parent_run_id() == run_dir.name
    manifest = read_manifest(run_dir)
    assert manifest.status is RunStatus.CRASHED_RECOVERED
    replayed = ReferenceCache()
    store.restore_parent_cache(instance, replayed)
    expected = ReferenceCache()
    seq = 1
    for msg in TradingSession(9).messages(4000):
        if isinstance(msg, BusMessage):
            seq += 1
            if seq > manifest.high_watermark:
                break
            expected.apply(Entry(seq, 0, 0, msg.topic, msg.payload_type, msg.payload))
    assert replayed == expected
    assert json.loads(json.dumps(replayed.state()))  # plain JSON state
