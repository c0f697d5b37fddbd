"""Reading a run from Python: ``open_run``, ``open_runs`` and the :class:`Run` they return.

::

    from ringtape.storage import open_run

    run = open_run("runs", "latest")            # or a run directory, or base + run id
    for entry in run.entries(topics="events.order.*", since="2026-11-25T09:30:00Z"):
        ...
    table = run.to_arrow()                      # pyarrow.Table (pip install 'ringtape[arrow]')

Rules of this module:

1. Reading is checked reading: every frame an entry comes from checks out
   (``storage/read/reader.py``); damage raises ``CorruptionError`` after the entries before it.
   Nothing here writes.
2. A path names a run directory, or (with ``run``) a base or instance directory plus a run id
   or ``"latest"`` (the run with the newest start time). Anything else is a :class:`RunNotFound`
   saying what was found instead.
3. Filters are the same everywhere (entries, Arrow, pandas, polars): ``from_seq``/``to_seq``
   (inclusive), ``since``/``until`` on ``ts_init`` (inclusive; ns since the epoch, a
   ``datetime`` or an ISO 8601 string, UTC unless it says otherwise) and ``topics`` (one
   ``fnmatch`` glob or several: an entry matching any is kept).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ringtape.storage.format.entry import Entry
from ringtape.storage.format.markers import MarkerRecord
from ringtape.storage.read.columns import Columns, iter_columns
from ringtape.storage.read.markers import iter_markers
from ringtape.storage.read.reader import FrameFilter, iter_frames
from ringtape.storage.read.replay import iter_anchors
from ringtape.storage.run.blobs import Anchor
from ringtape.storage.run.layout import (
    MANIFEST_NAME,
    is_run_id,
    list_instances,
    list_runs,
    list_segments,
    run_sort_key,
)
from ringtape.storage.run.manifest import Manifest, ManifestError, read_manifest

LATEST = "latest"

Time = int | str | datetime
Topics = str | Sequence[str]


class RunNotFound(ValueError):
    """The path (and run id) do not name a run; the message says what is there instead."""


def to_ns(when: Time) -> int:
    """ns since the UNIX epoch from an int, a ``datetime`` or an ISO 8601 string (naive: UTC)."""
    if isinstance(when, bool):
        raise TypeError("a time is ns since the epoch, a datetime or an ISO 8601 string")
    if isinstance(when, int):
        return when
    if isinstance(when, str):
        if when.isdigit():
            return int(when)
        try:
            when = datetime.fromisoformat(when)
        except ValueError:
            raise ValueError(
                f"{when!r} is neither ns since the epoch nor an ISO 8601 time"
            ) from None
    if not isinstance(when, datetime):
        raise TypeError(f"cannot read a time from {type(when).__name__}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _globs(topics: Topics | None) -> list[str] | None:
    if topics is None:
        return None
    return [topics] if isinstance(topics, str) else list(topics)


def is_run_dir(path: Path) -> bool:
    """Does ``path`` look like a run directory (a manifest or segment files)?"""
    if not path.is_dir():
        return False
    return (
        (path / MANIFEST_NAME).exists()
        or bool(list_segments(path, "events"))
        or bool(list_segments(path, "markers"))
    )


def run_dirs(base: Path) -> list[Path]:
    """Every run directory under a base directory or an instance directory (or ``base``
    itself, if it is a run), oldest first."""
    if is_run_dir(base) and is_run_id(base.name):
        return [base]
    found = [base / i / r for i in list_instances(base) for r in list_runs(base / i)]
    if not found:
        found = [base / r for r in list_runs(base)]
    return sorted(found, key=lambda p: run_sort_key(p.name))


def resolve_run(path: str | os.PathLike[str], run: str | None = None) -> Path:
    """The run directory named by ``path`` (and ``run``: a run id or ``"latest"``), rule 2."""
    where = Path(path)
    if not where.exists():
        raise RunNotFound(f"{where}: no such file or directory")
    if not where.is_dir():
        raise RunNotFound(f"{where}: not a directory")
    if run is None:
        if is_run_dir(where):
            return where
        runs = run_dirs(where)
        hint = f"{len(runs)} runs under it: name one, or 'latest'" if runs else "no runs under it"
        raise RunNotFound(f"{where}: not a run directory ({hint})")
    runs = run_dirs(where)
    if not runs:
        raise RunNotFound(f"{where}: no runs (expected <base>/<instance id>/<run id>)")
    if run == LATEST:
        return runs[-1]
    matches = [r for r in runs if r.name == run]
    if not matches:
        raise RunNotFound(f"{where}: no run {run!r} ({len(runs)} runs there)")
    if len(matches) > 1:
        raise RunNotFound(f"{where}: run {run!r} is in {len(matches)} instances; name one")
    return matches[0]


class Run:
    """One run, read-only: its manifest and its entries, markers and anchors (checked)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.manifest: Manifest | None = read_manifest(path)
        except ManifestError:
            self.manifest = None  # a run being created, or damaged: the segments still read

    def __repr__(self) -> str:
        status = "?" if self.manifest is None else str(self.manifest.status)
        return f"Run({str(self.path)!r}, status={status!r})"

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def instance_id(self) -> str:
        return self.path.parent.name

    def _first_seq(self, from_seq: int | None) -> int:
        if from_seq is not None:
            return from_seq
        return 1 if self.manifest is None else max(1, self.manifest.retained_from_seq)

    def entries(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        since: Time | None = None,
        until: Time | None = None,
        topics: Topics | None = None,
    ) -> Iterator[Entry]:
        """The entries that pass the filters (rule 3), in seq order."""
        start = self._first_seq(from_seq)
        lo = None if since is None else to_ns(since)
        hi = None if until is None else to_ns(until)
        globs = _globs(topics)
        wanted = FrameFilter(lo, hi, globs)
        for frame in iter_frames(self.path, from_seq=start, to_seq=to_seq, wanted=wanted):
            for entry in frame.entries(start, to_seq):
                if lo is not None and entry.ts_init < lo:
                    continue
                if hi is not None and entry.ts_init > hi:
                    continue
                if globs is not None and not any(
                    fnmatch.fnmatchcase(entry.topic, g) for g in globs
                ):
                    continue
                yield entry

    def columns(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        since: Time | None = None,
        until: Time | None = None,
        topics: Topics | None = None,
    ) -> Iterator[Columns]:
        """The entries as numpy columns, a batch of frames at a time (``storage/read/columns.py``;
        topics narrow the frames read, the caller matches entry topics)."""
        return iter_columns(
            self.path,
            from_seq=self._first_seq(from_seq),
            to_seq=to_seq,
            since=None if since is None else to_ns(since),
            until=None if until is None else to_ns(until),
            topics=_globs(topics),
        )

    def markers(self) -> Iterator[MarkerRecord]:
        """The data-marker records, in marker-seq order (damage raises ``CorruptionError``)."""
        return iter_markers(self.path, strict=True)

    def anchors(self) -> list[Anchor]:
        """The run's snapshot anchors as recorded in its entry stream, in seq order."""
        return list(iter_anchors(self.path))

    def to_arrow(self, **filters: Any) -> Any:
        """The entries as a ``pyarrow.Table`` (``storage/read/arrow.py`` has the schema)."""
        from ringtape.storage.read.arrow import entries_table

        return entries_table(self.path, **self._arrow_filters(filters))

    def markers_to_arrow(self) -> Any:
        """The marker records as a ``pyarrow.Table`` (``storage/read/arrow.py``)."""
        from ringtape.storage.read.arrow import markers_table

        return markers_table(self.path)

    def to_pandas(self, **filters: Any) -> Any:
        """The entries as a ``pandas.DataFrame`` (needs pandas and pyarrow)."""
        from ringtape.storage.read.arrow import require

        require("pandas")
        return self.to_arrow(**filters).to_pandas()

    def to_polars(self, **filters: Any) -> Any:
        """The entries as a ``polars.DataFrame`` (needs polars and pyarrow)."""
        from ringtape.storage.read.arrow import require

        polars = require("polars")
        return polars.from_arrow(self.to_arrow(**filters))

    def _arrow_filters(self, filters: dict[str, Any]) -> dict[str, Any]:
        unknown = set(filters) - {"from_seq", "to_seq", "since", "until", "topics"}
        if unknown:
            raise TypeError(f"unknown filter(s): {', '.join(sorted(unknown))}")
        since, until = filters.get("since"), filters.get("until")
        return {
            "from_seq": self._first_seq(filters.get("from_seq")),
            "to_seq": filters.get("to_seq"),
            "since": None if since is None else to_ns(since),
            "until": None if until is None else to_ns(until),
            "topics": _globs(filters.get("topics")),
        }


def open_run(path: str | os.PathLike[str], run: str | None = None) -> Run:
    """A run, from its directory, or from a base (or instance) directory and a run id or
    ``"latest"``. Raises :class:`RunNotFound` when there is no such run."""
    return Run(resolve_run(path, run))


def open_runs(base: str | os.PathLike[str]) -> list[Run]:
    """Every run under a base directory (or an instance directory), oldest first."""
    where = Path(base)
    if not where.is_dir():
        raise RunNotFound(f"{where}: not a directory")
    return [Run(p) for p in run_dirs(where)]
