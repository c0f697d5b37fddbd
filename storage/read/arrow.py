"""A run's entries as an Apache Arrow table, built column by column from the frame bodies.

pyarrow is optional (``pip install 'ringtape[arrow]'``): it is imported here only, when a table
is asked for, and its absence is a clear :class:`MissingDependency`, never an ``ImportError``
from deep inside.

The table (:data:`ENTRY_SCHEMA`): ``seq``, ``ts_init``, ``ts_publish`` (u64, ns since the
epoch), ``topic`` and ``payload_type`` (dictionary-encoded strings), ``payload`` (binary),
``correlation_id`` and ``causation_id`` (16 bytes, null when absent). No loop per entry: each
batch of frames becomes Arrow arrays that point into the decompressed bodies (binary views,
built with numpy), which Arrow then copies into its plain layouts.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from ringtape.storage.format.entry import FLAG_CAUSATION, FLAG_CORRELATION
from ringtape.storage.read.columns import Columns, iter_columns

if TYPE_CHECKING:
    import pyarrow as pa

# Bytes kept per word of an inline view value, by how many of its four bytes are wanted.
_KEEP4: Final = np.array([0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF], np.uint32)
_WORDS: Final = np.array([0, 4, 8], np.int64)
_INLINE: Final = 12  # values up to this long live in the view itself (Arrow's rule)


class MissingDependency(ImportError):
    """An optional package a reader needs is not installed; the message says which extra."""


def require(module: str, extra: str | None = None) -> Any:
    """Import an optional dependency or say how to install it (``extra``: ringtape's extra
    that brings it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        how = f"pip install 'ringtape[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependency(f"{module} is not installed: {how}") from None


def _pa() -> Any:
    return require("pyarrow", "arrow")


def entry_schema() -> pa.Schema:
    """The schema of :func:`entries_table` (and of ``ringtape export``)."""
    pa = _pa()
    text = pa.dictionary(pa.int32(), pa.string())
    ident = pa.binary(16)
    return pa.schema(
        [
            pa.field("seq", pa.uint64(), nullable=False),
            pa.field("ts_init", pa.uint64(), nullable=False),
            pa.field("ts_publish", pa.uint64(), nullable=False),
            pa.field("topic", text, nullable=False),
            pa.field("payload_type", text, nullable=False),
            pa.field("payload", pa.binary(), nullable=False),
            pa.field("correlation_id", ident),
            pa.field("causation_id", ident),
        ]
    )


def _views(
    buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], lens: npt.NDArray[np.int64]
) -> npt.NDArray[np.int32]:
    """Arrow binary-view structs (16 bytes each) for the values ``buf[start : start + len]``:
    the length, then the value itself when it is short, else its first 4 bytes, buffer 0 and
    its offset. ``buf`` must hold 12 readable bytes from every start."""
    n = len(starts)
    views = np.zeros((n, 4), np.int32)
    views[:, 0] = lens
    words = np.ndarray((len(buf) - 3,), "<u4", buf, 0, (1,))
    long = lens > _INLINE
    at = starts[long]
    views[long, 1] = words[at].view(np.int32)
    views[long, 3] = at
    short = ~long
    if short.any():
        s, n_short = starts[short], lens[short]
        picked = words[s[:, None] + _WORDS]
        wanted = np.clip(n_short[:, None] - _WORDS, 0, 4)
        views[short, 1:] = (picked & _KEEP4[wanted]).view(np.int32)
    return views


def _binary_view(
    buf: npt.NDArray[np.uint8],
    buffer: Any,
    starts: npt.NDArray[np.int64],
    lens: npt.NDArray[np.int64],
) -> Any:
    pa = _pa()
    views = _views(buf, starts, lens)
    return pa.Array.from_buffers(pa.binary_view(), len(starts), [None, pa.py_buffer(views), buffer])


def _ids(cols: Columns, flag: int, starts: npt.NDArray[np.int64]) -> Any:
    pa = _pa()
    present = (cols.flags & flag) != 0
    n = len(cols)
    if not present.any():
        return pa.nulls(n, pa.binary(16))
    data = np.zeros((n, 16), np.uint8)
    idx = np.flatnonzero(present)
    data[idx] = cols.buf[starts[idx, None] + np.arange(16)]
    validity = np.packbits(present, bitorder="little")
    return pa.Array.from_buffers(
        pa.binary(16), n, [pa.py_buffer(validity), pa.py_buffer(data)], null_count=n - len(idx)
    )


def _text(array: Any) -> Any:
    """Binary views of UTF-8 text as a dictionary of strings: encoded first, so that only the
    distinct values are cast (the cast checks their UTF-8)."""
    pa = _pa()
    coded = array.dictionary_encode()
    try:
        values = coded.dictionary.cast(pa.string())
    except pa.ArrowInvalid as exc:
        raise ValueError(f"a topic or payload type is not UTF-8: {exc}") from None
    return pa.DictionaryArray.from_arrays(coded.indices, values)


def record_batch(cols: Columns, topics: Sequence[str] | None = None) -> Any:
    """One Arrow record batch of the entries of ``cols`` (matching ``topics``, if given)."""
    pa = _pa()
    buffer = pa.py_buffer(cols.buf)
    topic = _text(_binary_view(cols.buf, buffer, cols.topic_start, cols.topic_len))
    if topics is not None:
        keep = _topic_mask(topic, topics)
        if not keep.all():
            cols = cols.take(keep)
            topic = topic.filter(pa.array(keep))
    columns = [
        pa.array(cols.seq, pa.uint64()),
        pa.array(cols.ts_init, pa.uint64()),
        pa.array(cols.ts_publish, pa.uint64()),
        topic,
        _text(_binary_view(cols.buf, buffer, cols.type_start, cols.type_len)),
        _binary_view(cols.buf, buffer, cols.payload_start, cols.payload_len).cast(pa.binary()),
        _ids(cols, FLAG_CORRELATION, cols.correlation_start),
        _ids(cols, FLAG_CAUSATION, cols.causation_start),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=entry_schema())


def _topic_mask(topic: Any, globs: Sequence[str]) -> npt.NDArray[np.bool_]:
    """Which entries' topics match a glob: each distinct topic is matched once."""
    import fnmatch

    names = topic.dictionary.to_pylist()
    hits = np.array([any(fnmatch.fnmatchcase(t, g) for g in globs) for t in names], bool)
    codes = topic.indices.to_numpy(zero_copy_only=False)
    mask: npt.NDArray[np.bool_] = hits[codes]
    return mask


def iter_record_batches(
    run_dir: Path,
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    since: int | None = None,
    until: int | None = None,
    topics: Sequence[str] | None = None,
    strict: bool | None = None,
) -> Iterator[Any]:
    """Arrow record batches of a run's entries, in seq order, filtered (see
    ``storage/read/columns.py``); each batch owns its memory."""
    for cols in iter_columns(
        run_dir,
        from_seq=from_seq,
        to_seq=to_seq,
        since=since,
        until=until,
        topics=topics,
        strict=strict,
        own=True,
    ):
        batch = record_batch(cols, topics)
        if batch.num_rows:
            yield batch


def entries_table(run_dir: Path, **filters: Any) -> Any:
    """The whole (filtered) entry stream of a run as one ``pyarrow.Table``."""
    pa = _pa()
    batches = list(iter_record_batches(run_dir, **filters))
    return pa.Table.from_batches(batches, schema=entry_schema())


def marker_schema() -> pa.Schema:
    """The schema of :func:`markers_table`: one row per marker record, the fields of its kind
    filled and the others null (``storage/FORMAT.md``, section 6b)."""
    pa = _pa()
    text = pa.dictionary(pa.int32(), pa.string())
    cursor = pa.struct(
        [
            ("stream", pa.uint32()),
            ("class", pa.string()),
            ("instrument", pa.string()),
            ("count", pa.uint64()),
            ("ts_init_hi", pa.uint64()),
            ("ordinal", pa.uint32()),
        ]
    )
    return pa.schema(
        [
            pa.field("marker_seq", pa.uint64(), nullable=False),
            pa.field("ts_init", pa.uint64(), nullable=False),
            pa.field("kind", text, nullable=False),
            ("obs", pa.uint64()),
            ("event_seq_before", pa.uint64()),
            ("reason", pa.string()),
            ("stream", pa.uint32()),
            ("class", pa.string()),
            ("instrument", pa.string()),
            ("high_fidelity", pa.bool_()),
            ("ts_event", pa.uint64()),
            ("ordinal", pa.uint32()),
            ("fingerprint", pa.string()),
            ("gap_from", pa.uint64()),
            ("gap_to", pa.uint64()),
            ("cursors", pa.list_(cursor)),
        ]
    )


def markers_table(run_dir: Path) -> Any:
    """A run's data-marker records as a ``pyarrow.Table`` (:func:`marker_schema`); damage in
    the stream raises ``CorruptionError``, a record that does not decode ``MarkerFormatError``.
    Stream slots are resolved to class and instrument through the stream's definitions."""
    from ringtape.storage.format.markers import (
        SNAPSHOT_REASONS,
        CursorSnapshot,
        HiFiMarker,
        MarkerGap,
        StreamDef,
    )
    from ringtape.storage.read.markers import iter_markers

    pa = _pa()
    schema = marker_schema()
    cols: dict[str, list[Any]] = {name: [] for name in schema.names}
    streams: dict[int, StreamDef] = {}
    blank = {name: None for name in schema.names}

    def add(**row: Any) -> None:
        full = blank | row
        for name, values in cols.items():
            values.append(full[name])

    def where(slot: int) -> tuple[str | None, str | None]:
        d = streams.get(slot)
        return (None, None) if d is None else (d.data_class, d.instrument_id)

    for rec in iter_markers(run_dir, strict=True):
        head = {"marker_seq": rec.marker_seq, "ts_init": rec.ts_init}
        if isinstance(rec, StreamDef):
            streams[rec.stream] = rec
            add(**head, kind="stream", stream=rec.stream, high_fidelity=rec.high_fidelity,
                **{"class": rec.data_class, "instrument": rec.instrument_id})  # fmt: skip
        elif isinstance(rec, CursorSnapshot):
            cursors = []
            for slot, c in rec.cursors:
                cls, inst = where(slot)
                cursors.append({"stream": slot, "class": cls, "instrument": inst,
                                "count": c.count, "ts_init_hi": c.ts_init_hi,
                                "ordinal": c.ordinal})  # fmt: skip
            add(**head, kind="cursor", obs=rec.obs, event_seq_before=rec.event_seq_before,
                reason=SNAPSHOT_REASONS[rec.reason], cursors=cursors)  # fmt: skip
        elif isinstance(rec, HiFiMarker):
            cls, inst = where(rec.stream)
            add(**head, kind="hifi", obs=rec.obs, event_seq_before=rec.event_seq_before,
                stream=rec.stream, ts_event=rec.ts_event, ordinal=rec.ordinal,
                fingerprint=f"{rec.fingerprint:016x}",
                **{"class": cls, "instrument": inst})  # fmt: skip
        elif isinstance(rec, MarkerGap):
            add(**head, kind="gap", gap_from=rec.obs_from, gap_to=rec.obs_to,
                reason=rec.reason, event_seq_before=rec.event_seq_before)  # fmt: skip
    arrays = [pa.array(cols[f.name], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
