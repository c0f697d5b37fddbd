"""``ringtape export PATH --format parquet|arrow|csv --out DIR``: runs as files other tools read.

One run (a run directory, or a base directory and a run id or ``latest``) becomes
``DIR/<run_id>.entries.<ext>`` and ``DIR/<run_id>.markers.<ext>``. A base or instance directory
becomes one hive-partitioned dataset per stream, the layout DuckDB, Polars, Spark and Trino read
as one table::

    DIR/entries/instance=<instance id>/run=<run id>/part-0.parquet
    DIR/markers/instance=<instance id>/run=<run id>/part-0.parquet

Rules of this module:

1. Entries are streamed a batch of frames at a time (``storage/read/arrow.py``): memory stays
   bounded by a batch, whatever the run's size. Every frame is checked; damage stops the export
   of that run (its partial files are removed) and the command exits 1.
2. Nothing is overwritten: a file that exists is an error before anything is written.
3. Parquet and Arrow keep the table's types (``payload`` binary, ids 16 bytes). CSV is text:
   ``payload`` is the UTF-8 text when it is UTF-8, else base64 (``encoding`` says which), ids
   are UUID strings.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ringtape.storage.read.arrow import (
    MissingDependency,
    entry_schema,
    iter_record_batches,
    marker_schema,
    markers_table,
    require,
)
from ringtape.storage.read.reader import CorruptionError
from ringtape.storage.read.run import Run, is_run_dir, open_run, run_dirs
from ringtape.tools.arguments import EXIT_FINDINGS, EXIT_OK
from ringtape.tools.common import CliError, check_path, human_bytes, run_dir_arg

EXTENSIONS: Final = {"parquet": "parquet", "arrow": "arrow", "csv": "csv"}
# Batches are gathered into groups of about this many rows before they are written: a Parquet
# row group per reader batch (a few thousand rows) would be slow to write and to read.
GROUP_ROWS: Final = 256 * 1024


@dataclass
class Exported:
    run_id: str
    entries: int
    markers: int
    files: list[Path]


class _Sink:
    """One output file of one format, written a group of record batches at a time."""

    def __init__(self, path: Path, fmt: str, schema: Any) -> None:
        self.path = path
        self.fmt = fmt
        pa = require("pyarrow", "arrow")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pending: list[Any] = []
        self.pending_rows = 0
        self.source_schema = schema
        if fmt == "csv":
            schema = _csv_schema(schema)
        elif fmt == "arrow":  # an IPC file holds one dictionary per field: plain strings
            schema = pa.schema(
                [
                    pa.field(f.name, f.type.value_type, f.nullable)
                    if pa.types.is_dictionary(f.type)
                    else f
                    for f in schema
                ]
            )
        self.schema = schema
        if fmt == "parquet":
            pq = require("pyarrow.parquet", "arrow")
            self.writer: Any = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        elif fmt == "arrow":
            self.writer = pa.ipc.new_file(str(path), self.schema)
        else:
            csv = require("pyarrow.csv", "arrow")
            self.writer = csv.CSVWriter(str(path), self.schema)
        self.rows = 0

    def write(self, batch: Any) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        if self.pending_rows >= GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pa = require("pyarrow", "arrow")
        table = pa.Table.from_batches(self.pending, schema=self.source_schema)
        self.pending, self.pending_rows = [], 0
        if self.fmt == "csv":
            for batch in table.to_batches():
                self.writer.write_batch(_csv_batch(batch, self.schema))
        elif self.fmt == "arrow":
            self.writer.write_table(table.cast(self.schema))
        else:
            self.writer.write_table(table.combine_chunks())
        self.rows += table.num_rows

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.writer.close()


def _csv_schema(schema: Any) -> Any:
    pa = require("pyarrow", "arrow")
    fields = []
    for field in schema:
        if field.name == "cursors":
            fields.append(pa.field("cursors", pa.string()))
            continue
        if pa.types.is_dictionary(field.type) or pa.types.is_binary(field.type):
            fields.append(pa.field(field.name, pa.string(), field.nullable))
            if field.name == "payload":
                fields.append(pa.field("encoding", pa.string(), False))
            continue
        if pa.types.is_fixed_size_binary(field.type):
            fields.append(pa.field(field.name, pa.string(), True))
            continue
        fields.append(field)
    return pa.schema(fields)


def _payload_text(values: list[bytes]) -> tuple[list[str], list[str]]:
    text, encoding = [], []
    for v in values:
        try:
            text.append(v.decode("utf-8"))
            encoding.append("utf8")
        except UnicodeDecodeError:
            text.append(base64.b64encode(v).decode("ascii"))
            encoding.append("base64")
    return text, encoding


def _csv_batch(batch: Any, schema: Any) -> Any:
    """A record batch as CSV-able text columns (rule 3)."""
    import json

    pa = require("pyarrow", "arrow")
    columns = []
    for name in schema.names:
        if name == "encoding":
            continue
        col = batch.column(name)
        if name == "payload":
            text, encoding = _payload_text(col.to_pylist())
            columns += [pa.array(text, pa.string()), pa.array(encoding, pa.string())]
        elif name == "cursors":
            columns.append(
                pa.array([None if c is None else json.dumps(c) for c in col.to_pylist()])
            )
        elif pa.types.is_fixed_size_binary(col.type):
            ids = [None if b is None else str(uuid.UUID(bytes=b)) for b in col.to_pylist()]
            columns.append(pa.array(ids, pa.string()))
        elif pa.types.is_dictionary(col.type):
            columns.append(col.cast(pa.string()))
        else:
            columns.append(col)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _paths(out: Path, run: Run, fmt: str, hive: bool) -> tuple[Path, Path]:
    ext = EXTENSIONS[fmt]
    if hive:
        part = f"instance={run.instance_id}/run={run.run_id}/part-0.{ext}"
        return out / "entries" / part, out / "markers" / part
    return out / f"{run.run_id}.entries.{ext}", out / f"{run.run_id}.markers.{ext}"


def export_run(run: Run, out: Path, fmt: str, *, hive: bool, markers: bool) -> Exported:
    """Write one run's entries (and markers) under ``out``; on any failure the files this
    call created are removed before the error propagates."""
    entries_path, markers_path = _paths(out, run, fmt, hive)
    targets = [entries_path] + ([markers_path] if markers else [])
    for path in targets:
        if path.exists():
            raise CliError(f"{path}: exists; ringtape export never overwrites")
    made: list[Path] = []
    try:
        sink = _Sink(entries_path, fmt, entry_schema())
        made.append(entries_path)
        try:
            for batch in iter_record_batches(run.path, from_seq=run._first_seq(None)):
                sink.write(batch)
        finally:
            sink.close()
        marker_rows = 0
        if markers:
            table = markers_table(run.path)
            msink = _Sink(markers_path, fmt, marker_schema())
            made.append(markers_path)
            try:
                for batch in table.to_batches():
                    msink.write(batch)
            finally:
                msink.close()
            marker_rows = table.num_rows
    except BaseException:
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return Exported(run.run_id, sink.rows, marker_rows, made)


def _runs(args: argparse.Namespace) -> tuple[list[Run], bool]:
    path = check_path(args.path, want_dir=True)
    if args.run_id is not None or is_run_dir(path):
        return [open_run(run_dir_arg(args.path, args.run_id))], False
    runs = [Run(p) for p in run_dirs(path)]
    if not runs:
        raise CliError(f"{args.path}: no runs to export (expected <base>/<instance id>/<run id>)")
    return runs, True


def run(args: argparse.Namespace) -> int:
    try:
        require("pyarrow", "arrow")
    except MissingDependency as exc:
        raise CliError(str(exc)) from None
    runs, hive = _runs(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out}: not a directory")
    started = time.perf_counter()
    code = EXIT_OK
    total = 0
    for run in runs:
        try:
            done = export_run(run, out, args.format, hive=hive, markers=not args.no_markers)
        except CorruptionError as exc:
            print(
                f"ringtape: {run.run_id}: export stopped at damage: {exc.finding}", file=sys.stderr
            )
            code = EXIT_FINDINGS
            continue
        total += done.entries
        size = sum(p.stat().st_size for p in done.files)
        print(
            f"{done.run_id}: {done.entries:,} entries, {done.markers:,} marker records"
            f" -> {', '.join(str(p) for p in done.files)} ({human_bytes(size)})"
        )
    elapsed = time.perf_counter() - started
    rate = f", {total / elapsed:,.0f} entries/s" if elapsed > 0 else ""
    print(f"exported {len(runs)} run(s), {total:,} entries in {elapsed:.2f} s{rate}")
    return code
