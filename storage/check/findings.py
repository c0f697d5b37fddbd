"""Findings: what a scan, a verification or a recovery found wrong, as plain values.

A finding names a *kind* from :data:`KINDS` (stable strings: tools, manifests and tests match
on them), the file it is about, the byte offset and the entry seq range where known, and a
sentence saying what was expected and what was found.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final


class Kind(enum.StrEnum):
    """Stable finding kinds; the value is what appears in JSON and manifests."""

    CHECKSUM_MISMATCH = "checksum_mismatch"
    TORN_TAIL = "torn_tail"
    SEQ_GAP = "seq_gap"
    MISSING_FRAME = "missing_frame"
    CHAIN_BREAK = "chain_break"
    BAD_HEADER = "bad_header"
    DECODE_ERROR = "decode_error"
    TRUNCATED_SEGMENT = "truncated_segment"
    SEGMENT_MISMATCH = "segment_mismatch"
    MISSING_SEGMENT = "missing_segment"
    MANIFEST_MISMATCH = "manifest_mismatch"
    MISSING_RUN_STARTED = "missing_run_started"
    MISSING_RUN_ENDED = "missing_run_ended"
    ANCHOR_INVALID = "anchor_invalid"
    MARKER_GAP_UNRECORDED = "marker_gap_unrecorded"
    MARKER_GAP_OVERLAP = "marker_gap_overlap"
    MARKER_CURSOR_BACKWARDS = "marker_cursor_backwards"
    MARKER_EVENT_SEQ_AHEAD = "marker_event_seq_ahead"
    UNREADABLE = "unreadable"
    LEFTOVER_TORN = "leftover_torn"
    LEFTOVER_TEMP = "leftover_temp"
    UNEXPECTED_FILE = "unexpected_file"
    TS_INIT_BACKWARDS = "ts_init_backwards"
    ANCHOR_INCOMPLETE = "anchor_incomplete"
    WRONG_FILE_TYPE = "wrong_file_type"


# One plain sentence per kind, for people reading a report.
KINDS: Final[dict[Kind, str]] = {
    Kind.CHECKSUM_MISMATCH: "a frame's stored bytes do not match the checksum in its header",
    Kind.TORN_TAIL: "the file ends inside a frame that was being appended (a crash, not damage)",
    Kind.SEQ_GAP: "entry sequence numbers skip or repeat although the frames chain correctly",
    Kind.MISSING_FRAME: "a frame is gone: the chain breaks and the sequence jumps forward",
    Kind.CHAIN_BREAK: "a frame does not chain to the one before it (frames reordered or spliced)",
    Kind.BAD_HEADER: "a segment or frame header fails its checksum or has impossible fields",
    Kind.DECODE_ERROR: "a frame checks out but its contents cannot be decompressed or parsed",
    Kind.TRUNCATED_SEGMENT: "a segment that is not the last of its stream ends inside a frame",
    Kind.SEGMENT_MISMATCH: "a segment header disagrees with its file name or run directory",
    Kind.MISSING_SEGMENT: "a segment file is missing from the middle of a stream",
    Kind.MANIFEST_MISMATCH: "the manifest disagrees with the entries on disk",
    Kind.MISSING_RUN_STARTED: "the first entry (seq 1) is not RunStarted",
    Kind.MISSING_RUN_ENDED: "an ended run's last entry is not RunEnded",
    Kind.ANCHOR_INVALID: "a snapshot anchor points past the data or goes backwards",
    Kind.MARKER_GAP_UNRECORDED: "marker sequence numbers skip without a gap record",
    Kind.MARKER_GAP_OVERLAP: "a marker gap record covers observations already accounted for",
    Kind.MARKER_CURSOR_BACKWARDS: "a cursor, observation number or event_seq_before goes back",
    Kind.MARKER_EVENT_SEQ_AHEAD: "a marker's event_seq_before is past the entry high watermark",
    Kind.UNREADABLE: "a file or directory could not be read or parsed at all",
    Kind.LEFTOVER_TORN: "bytes a recovery cut from a torn tail, kept for inspection",
    Kind.LEFTOVER_TEMP: "a temporary manifest, checkpoint or blob file a crash left mid-write",
    Kind.UNEXPECTED_FILE: "a file in a run directory that ringtape did not write",
    Kind.TS_INIT_BACKWARDS: "entries whose ts_init is below the entry before them (a clock that"
    " went back): counted, not damage",
    Kind.ANCHOR_INCOMPLETE: "a snapshot anchor whose blob is not there (it never completed, or"
    " was reclaimed), or a blob no anchor names: no restore point, not damage",
    Kind.WRONG_FILE_TYPE: (
        "a FIFO, socket, device, symlink or directory where a ringtape file or run directory"
        " should be"
    ),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing found wrong: where (file, byte offset, seq range) and what."""

    kind: Kind
    path: str
    offset: int | None = None
    seq_from: int | None = None
    seq_to: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: exactly kind, path, offset, seq_from, seq_to, detail."""
        return {
            "kind": str(self.kind),
            "path": self.path,
            "offset": self.offset,
            "seq_from": self.seq_from,
            "seq_to": self.seq_to,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        where = self.path if self.offset is None else f"{self.path}@{self.offset}"
        seqs = ""
        if self.seq_from is not None:
            to = "" if self.seq_to is None else str(self.seq_to)
            seqs = f" seq {self.seq_from}..{to}"
        return f"{self.kind}: {where}{seqs}: {self.detail}"
