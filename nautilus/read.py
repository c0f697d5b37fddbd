"""A captured run read back as NautilusTrader objects.

``iter_objects(run_dir)`` yields every entry of a run, in seq order, with its payload
deserialised by a ``MsgSpecSerializer`` set up as the kernel's was (the encoding recorded in
``RunStarted``): ``QuoteTick``, ``OrderFilled``, ``AccountState``, ``CurrencyPair``… A payload
of a type NautilusTrader's serializer does not know comes back as the plain ``dict`` it
decodes to (NautilusTrader's own behaviour), a primitive as itself. The store's own entries
(``ringtape.RunStarted``, ``ringtape.SnapshotAnchor``, …) are skipped unless
``lifecycle=True``; their value is then the decoded JSON (``None`` for an empty payload).
Every frame is verified on the way (``storage/read/reader.py``): damage raises
``CorruptionError``.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ringtape.nautilus.cache import NautilusReplayError, encoding_of_run_started
from ringtape.nautilus.encoding import PayloadEncoding
from ringtape.storage.format.entry import TOPIC_RUN_STARTED
from ringtape.storage.read.reader import iter_entries

_STORE_TOPICS = "ringtape."
_CAPTURE_TOPICS = "ringtape.nautilus."


class NautilusEntry(NamedTuple):
    """One entry of a run, its payload as a NautilusTrader object."""

    seq: int
    ts_init: int
    topic: str
    payload_type: str
    value: Any


def run_encoding(run_dir: str | Path) -> PayloadEncoding:
    """The payload encoding a run's ``RunStarted`` records; ``NautilusReplayError`` when the
    run was not captured from NautilusTrader (or its start was reclaimed by retention)."""
    path = Path(run_dir)
    for entry in iter_entries(path, from_seq=1, to_seq=1):
        if entry.topic == TOPIC_RUN_STARTED:
            found = encoding_of_run_started(entry.payload)
            if found is not None:
                return found
    raise NautilusReplayError(f"{path.name}: no RunStarted of a NautilusTrader capture")


def iter_objects(
    run_dir: str | Path,
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    topic: str | None = None,
    lifecycle: bool = False,
    encoding: PayloadEncoding | None = None,
) -> Iterator[NautilusEntry]:
    """The run's entries ``from_seq..to_seq`` as NautilusTrader objects (module docstring).

    ``topic``: a glob on the topic (``events.order.*``); ``encoding``: the payload encoding
    when ``RunStarted`` cannot be read (default: read it from the run).
    """
    path = Path(run_dir)
    deserialize = (encoding or run_encoding(path)).serializer().deserialize
    for entry in iter_entries(path, from_seq=from_seq, to_seq=to_seq):
        name = entry.topic
        if topic is not None and not fnmatch.fnmatchcase(name, topic):
            continue
        if name.startswith(_STORE_TOPICS) and not name.startswith(_CAPTURE_TOPICS):
            if lifecycle:
                value = json.loads(entry.payload) if entry.payload else None
                yield NautilusEntry(entry.seq, entry.ts_init, name, entry.payload_type, value)
            continue
        try:
            value = deserialize(entry.payload)
        except Exception as exc:
            raise NautilusReplayError(
                f"seq {entry.seq} ({name}, {entry.payload_type}): does not deserialise:"
                f" {type(exc).__name__}: {exc}"
            ) from None
        yield NautilusEntry(entry.seq, entry.ts_init, name, entry.payload_type, value)
