"""``ringtape dump RUN``: a run's entries (or its marker records) as JSON lines, streamed.

One object per line, in seq order::

    {"seq": 42, "ts_init": ..., "ts_publish": ..., "topic": "events.order.filled",
     "payload_type": "OrderFilled", "correlation_id": null, "causation_id": null,
     "encoding": "json", "payload": {...}}

``encoding`` is ``"json"`` when the payload is UTF-8 JSON (``payload`` is then that JSON
value), ``"msgpack"`` when it is a msgpack map that JSON can show (``payload`` is then its
value; needs msgspec, from ``ringtape[nautilus]``), and ``"base64"`` otherwise (``payload`` is
then a base64 string). Every frame is
checked on the way (``storage/read/reader.py``); the dump stops at the first damage, exit
status 1.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO

from ringtape.storage.format.entry import Entry
from ringtape.storage.read.markers import iter_marker_records
from ringtape.storage.read.reader import CorruptionError, iter_entries
from ringtape.storage.run.layout import MANIFEST_NAME, list_segments
from ringtape.storage.run.manifest import ManifestError, read_manifest
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.common import CliError, check_path

# Lines are written in batches: one write per batch rather than per entry.
_BATCH: Final = 512


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; such a payload is dumped as base64.
    raise ValueError(f"{name} is not JSON")


# msgpack payloads are shown as JSON when msgspec is there (the nautilus extra brings it).
try:
    from msgspec import msgpack as _msgpack
except ImportError:  # pragma: no cover - msgspec comes with ringtape[nautilus]
    _msgpack = None  # type: ignore[assignment]
_MSGPACK_MAP_LEADS: Final = frozenset([*range(0x81, 0x90), 0xDE, 0xDF])  # non-empty maps

# Built once: json.loads/dumps with options would build one per entry.
_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json_safe(value: Any) -> bool:
    """Whether a decoded msgpack value says the same thing as JSON (no bytes, no NaN)."""
    if isinstance(value, str | bool | int) or value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_safe(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_safe(v) for k, v in value.items())
    return False


def _msgpack_value(payload: bytes) -> Any:
    """The value of a payload that is one whole msgpack map with string keys (what a
    NautilusTrader message bus under ``MessageBusConfig(encoding="msgpack")`` writes), else
    ``None``. A lone scalar is not taken for msgpack: almost any byte is one."""
    if _msgpack is None or not payload or payload[0] not in _MSGPACK_MAP_LEADS:
        return None
    try:
        value = _msgpack.decode(payload)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return None
    if isinstance(value, dict) and value and _json_safe(value):
        return value
    return None


def payload_fields(payload: bytes) -> dict[str, Any]:
    """``encoding`` and ``payload``: the JSON value of a UTF-8 JSON payload, the value of a
    msgpack map (``"encoding": "msgpack"``, when msgspec is installed), else base64."""
    if payload:
        try:
            value = _DECODER.decode(payload.decode("utf-8"))
            return {"encoding": "json", "payload": value}
        except (UnicodeDecodeError, ValueError, RecursionError):
            pass
        value = _msgpack_value(payload)
        if value is not None:
            return {"encoding": "msgpack", "payload": value}
    return {"encoding": "base64", "payload": base64.b64encode(payload).decode("ascii")}


def entry_to_dict(entry: Entry) -> dict[str, Any]:
    """The JSON-lines object of one entry."""
    return {
        "seq": entry.seq,
        "ts_init": entry.ts_init,
        "ts_publish": entry.ts_publish,
        "topic": entry.topic,
        "payload_type": entry.payload_type,
        "correlation_id": None if entry.correlation_id is None else str(entry.correlation_id),
        "causation_id": None if entry.causation_id is None else str(entry.causation_id),
        **payload_fields(entry.payload),
    }


def _in_time(ts: int, args: argparse.Namespace) -> bool:
    return (args.since is None or ts >= args.since) and (args.until is None or ts <= args.until)


def _entries(run_dir: Path, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    topic = args.topic
    start = args.from_seq
    if start is None:  # retention may have reclaimed the start of the run
        try:
            start = read_manifest(run_dir).retained_from_seq
        except ManifestError:
            start = 1
    for entry in iter_entries(run_dir, from_seq=start, to_seq=args.to_seq):
        if topic is not None and not fnmatch.fnmatchcase(entry.topic, topic):
            continue
        if _in_time(entry.ts_init, args):
            yield entry_to_dict(entry)


def _markers(run_dir: Path, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    for rec in iter_marker_records(run_dir):
        seq = int(rec.get("marker_seq", 0))
        if args.from_seq is not None and seq < args.from_seq:
            continue
        if args.to_seq is not None and seq > args.to_seq:
            return
        ts = rec.get("ts_init")
        if not isinstance(ts, int) or _in_time(ts, args):
            yield rec


def write_lines(objects: Iterable[dict[str, Any]], out: TextIO) -> None:
    """Write one JSON object per line, a batch at a time; what was read before a failure is
    written before the failure propagates."""
    batch: list[str] = []
    try:
        for obj in objects:
            batch.append(_ENCODER.encode(obj))
            if len(batch) >= _BATCH:
                out.write("\n".join(batch) + "\n")
                batch.clear()
    finally:
        if batch:
            out.write("\n".join(batch) + "\n")
        out.flush()


def _check_run_dir(text: str) -> Path:
    path = check_path(text, want_dir=True)
    has_segments = list_segments(path, "events") or list_segments(path, "markers")
    if not (path / MANIFEST_NAME).exists() and not has_segments:
        raise CliError(f"{text}: not a run directory (no manifest.json, no segment files)")
    return path


def run(args: argparse.Namespace) -> int:
    if args.to_seq is not None and args.from_seq is not None and args.to_seq < args.from_seq:
        raise CliError(f"--to-seq {args.to_seq} is before --from-seq {args.from_seq}")
    if args.markers and args.topic is not None:
        raise CliError("--topic does not apply to --markers (marker records have no topic)")
    run_dir = _check_run_dir(args.run)
    source = _markers(run_dir, args) if args.markers else _entries(run_dir, args)
    try:
        write_lines(source, sys.stdout)
    except CorruptionError as exc:
        sys.stdout.flush()
        print(f"ringtape: dump stopped at damage: {exc.finding}", file=sys.stderr)
        return EXIT_FINDINGS
    except ValueError as exc:  # a range before what retention kept
        raise CliError(str(exc)) from None
    return EXIT_OK
