"""Entry records: the unit of the event stream, byte-identical in the ring and in a frame.

An entry record is a 40-byte little-endian header followed by its variable fields::

    0  u32 record_len        whole record, header included
    4  u32 payload_len
    8  u16 topic_len
    10 u16 payload_type_len
    12 u8  flags             bit 0: correlation id present, bit 1: causation id present
    13 u8[3] reserved        zero
    16 u64 seq
    24 u64 ts_init           kernel clock, ns since the UNIX epoch
    32 u64 ts_publish        writer clock when it took the entry from the ring
    40 topic (UTF-8) | payload_type (UTF-8) | correlation (16) | causation (16) | payload

``record_len`` must equal 40 + the variable lengths; the decoder checks it and every bound
below before it slices anything, so a hostile length field cannot make it allocate.
"""

from __future__ import annotations

import struct
import uuid
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

ENTRY_HEADER: Final = struct.Struct("<IIHHB3xQQQ")
ENTRY_HEADER_SIZE: Final = ENTRY_HEADER.size  # 40
TS_PUBLISH_OFFSET: Final = 32

FLAG_CORRELATION: Final = 0x01
FLAG_CAUSATION: Final = 0x02
KNOWN_FLAGS: Final = FLAG_CORRELATION | FLAG_CAUSATION

MAX_TOPIC_LEN: Final = 1024
MAX_PAYLOAD_TYPE_LEN: Final = 256
MAX_PAYLOAD_LEN: Final = 16 * 1024 * 1024
MAX_RECORD_LEN: Final = (
    ENTRY_HEADER_SIZE + MAX_TOPIC_LEN + MAX_PAYLOAD_TYPE_LEN + 32 + MAX_PAYLOAD_LEN
)

# Topics of the lifecycle entries the store writes itself.
TOPIC_RUN_STARTED: Final = "ringtape.RunStarted"
TOPIC_RUN_ENDED: Final = "ringtape.RunEnded"
TOPIC_SNAPSHOT_ANCHOR: Final = "ringtape.SnapshotAnchor"

# numpy view of the header, for checking a whole frame's headers at once.
HEADER_DTYPE: Final = np.dtype(
    [
        ("record_len", "<u4"),
        ("payload_len", "<u4"),
        ("topic_len", "<u2"),
        ("payload_type_len", "<u2"),
        ("flags", "u1"),
        ("reserved", "V3"),
        ("seq", "<u8"),
        ("ts_init", "<u8"),
        ("ts_publish", "<u8"),
    ]
)
assert HEADER_DTYPE.itemsize == ENTRY_HEADER_SIZE
_HEADER_SPAN: Final = np.arange(ENTRY_HEADER_SIZE, dtype=np.int64)
_HEADER_ITEM: Final = np.dtype(("V", ENTRY_HEADER_SIZE))


class EntryError(ValueError):
    """An entry cannot be encoded (too large, bad field) or decoded (malformed bytes)."""


class Entry(NamedTuple):
    """One captured entry as read back from a run (a named tuple: replay builds millions)."""

    seq: int
    ts_init: int
    ts_publish: int
    topic: str
    payload_type: str
    payload: bytes
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None


def record_length(topic_len: int, payload_type_len: int, payload_len: int, flags: int) -> int:
    ids = 16 * ((flags & FLAG_CORRELATION) + ((flags & FLAG_CAUSATION) >> 1))
    return ENTRY_HEADER_SIZE + topic_len + payload_type_len + ids + payload_len


def check_lengths(topic_len: int, payload_type_len: int, payload_len: int) -> None:
    """Raise ``EntryError`` when a field is past the format's bounds."""
    if topic_len > MAX_TOPIC_LEN:
        raise EntryError(f"topic is {topic_len} bytes, the limit is {MAX_TOPIC_LEN}")
    if payload_type_len > MAX_PAYLOAD_TYPE_LEN:
        raise EntryError(
            f"payload_type is {payload_type_len} bytes, the limit is {MAX_PAYLOAD_TYPE_LEN}"
        )
    if payload_len > MAX_PAYLOAD_LEN:
        raise EntryError(f"payload is {payload_len} bytes, the limit is {MAX_PAYLOAD_LEN}")


def encode_entry(
    seq: int,
    ts_init: int,
    ts_publish: int,
    topic: str,
    payload: bytes,
    payload_type: str = "",
    correlation_id: uuid.UUID | None = None,
    causation_id: uuid.UUID | None = None,
) -> bytes:
    """Encode one entry record (the slow, general path; the ring has its own hot path)."""
    t = topic.encode()
    pt = payload_type.encode()
    check_lengths(len(t), len(pt), len(payload))
    flags = 0
    ids = b""
    if correlation_id is not None:
        flags |= FLAG_CORRELATION
        ids += correlation_id.bytes
    if causation_id is not None:
        flags |= FLAG_CAUSATION
        ids += causation_id.bytes
    n = record_length(len(t), len(pt), len(payload), flags)
    header = ENTRY_HEADER.pack(n, len(payload), len(t), len(pt), flags, seq, ts_init, ts_publish)
    return b"".join((header, t, pt, ids, payload))


def gather_headers(raw: bytes | memoryview, offsets: npt.NDArray[np.int64]) -> npt.NDArray[np.void]:
    """The headers of the records at ``offsets`` (each must leave 40 bytes in ``raw``)."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    rows = buf[offsets[:, None] + _HEADER_SPAN]
    headers: npt.NDArray[np.void] = rows.view(HEADER_DTYPE).reshape(-1)
    return headers


def _header_rows(
    buf: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint8]:
    """``(n, 40)`` copies of the 40 bytes at each offset, clamped so that any offset is safe."""
    # One 40-byte item starting at every byte: indexing copies whole items, not byte by byte.
    windows = np.ndarray((len(buf) - ENTRY_HEADER_SIZE + 1,), _HEADER_ITEM, buf, 0, (1,))
    picked = windows[np.minimum(offsets, len(buf) - ENTRY_HEADER_SIZE)]
    rows: npt.NDArray[np.uint8] = picked.view(np.uint8).reshape(-1, ENTRY_HEADER_SIZE)
    return rows


def bad_record_runs(
    buf: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    run_starts: npt.NDArray[np.int64],
    run_ends: npt.NDArray[np.int64],
    first_seqs: npt.NDArray[np.int64],
) -> npt.NDArray[np.intp]:
    """Which runs of records in ``buf`` break the record rules, checked all at once.

    A *run* is one frame's records: run ``j`` has ``counts[j]`` records that must lie end to
    end from ``run_starts[j]`` to exactly ``run_ends[j]``, numbered from ``first_seqs[j]``.
    ``offsets`` holds the absolute offset in ``buf`` of every record (each >= 0), runs one after
    the other; every run has at least one record (a lone empty run is allowed). Returns the
    indices of the failing runs (empty when all are well formed). The cost is a fixed number of
    numpy operations however many frames are checked together, which is what lets a deep scan
    check many frames per call.
    """
    n = len(offsets)
    if n == 0 or len(buf) < ENTRY_HEADER_SIZE or counts.min() < 1:
        return np.flatnonzero((counts != 0) | (run_ends != run_starts) | (n > 0))
    firsts = np.cumsum(counts) - counts
    rows = _header_rows(buf, offsets)
    words = rows.view("<u4")
    halves = rows.view("<u2")
    rec = words[:, 0]
    payload = words[:, 1]
    flag_word = words[:, 3]  # flags and the three reserved bytes, which must be zero
    topic = halves[:, 4]
    ptype = halves[:, 5]
    seq = rows.view("<i8")[:, 2]
    next_start = np.empty(n, np.int64)
    next_start[:-1] = offsets[1:]
    next_start[firsts + counts - 1] = run_ends
    # The sum can only wrap when a field is past its limit, and that is caught on its own.
    ids = (flag_word & FLAG_CORRELATION) * 16 + (flag_word & FLAG_CAUSATION) * 8
    expected = topic + ptype + payload + ids + ENTRY_HEADER_SIZE
    want = np.repeat(first_seqs - firsts, counts) + np.arange(n, dtype=np.int64)
    bad = (
        (offsets + rec != next_start)
        | (rec != expected)
        | (flag_word > KNOWN_FLAGS)
        | (topic > MAX_TOPIC_LEN)
        | (ptype > MAX_PAYLOAD_TYPE_LEN)
        | (payload > MAX_PAYLOAD_LEN)
        | (seq != want)
    )
    bad_runs = offsets[firsts] != run_starts
    if bad.any():
        owner = np.searchsorted(firsts, np.flatnonzero(bad), side="right") - 1
        bad_runs[owner] = True
    return np.flatnonzero(bad_runs)


def check_records(
    raw: bytes | memoryview, offsets: npt.NDArray[np.int64], end: int, first_seq: int
) -> str | None:
    """Check a run of records laid end to end in ``raw[:end]`` against their offset table.

    Returns ``None`` when every record is well formed, contiguous and numbered
    ``first_seq, first_seq + 1, …``; otherwise a sentence saying what is wrong (and where).
    Vectorised: the cost is a handful of numpy operations per frame, not a loop per entry.
    """
    n = len(offsets)
    buf = np.frombuffer(raw, dtype=np.uint8)
    if not 0 <= end <= len(buf):
        return f"entry area of {end} bytes does not fit in {len(buf)} bytes"
    one = np.array([n], np.int64)
    bad = bad_record_runs(
        buf,
        offsets.astype(np.int64, copy=False),
        one,
        np.zeros(1, np.int64),
        np.array([end], np.int64),
        np.array([first_seq], np.int64),
    )
    if bad.size == 0:
        return None
    return explain_records(raw, offsets, end, first_seq) or "entry records do not check out"


def explain_records(
    raw: bytes | memoryview, offsets: npt.NDArray[np.int64], end: int, first_seq: int
) -> str | None:
    """The first problem with a frame's records, as a sentence (``None``: no problem)."""
    n = len(offsets)
    if n == 0:
        return None if end == 0 else f"{end} bytes of entries but no entry in the offset table"
    if offsets[0] != 0:
        return f"first entry offset is {int(offsets[0])}, expected 0"
    if n > 1 and not bool(np.all(offsets[1:] > offsets[:-1])):
        return "entry offsets are not increasing"
    if int(offsets[-1]) + ENTRY_HEADER_SIZE > end:
        return f"last entry offset {int(offsets[-1])} leaves no room for a header before {end}"
    headers = gather_headers(raw, offsets)
    lengths = headers["record_len"].astype(np.int64)
    ends = offsets + lengths
    next_starts = np.empty_like(offsets)
    next_starts[:-1] = offsets[1:]
    next_starts[-1] = end
    bad = np.flatnonzero(ends != next_starts)
    if bad.size:
        i = int(bad[0])
        return (
            f"entry {i} (offset {int(offsets[i])}) says {int(lengths[i])} bytes,"
            f" the next record starts at {int(next_starts[i])}"
        )
    flags = headers["flags"].astype(np.int64)
    if bool(np.any(flags & ~KNOWN_FLAGS)):
        i = int(np.flatnonzero(flags & ~KNOWN_FLAGS)[0])
        return f"entry {i} has unknown flag bits {int(flags[i]):#x}"
    reserved = np.frombuffer(headers["reserved"].tobytes(), np.uint8).reshape(n, 3)
    if bool(reserved.any()):
        i = int(np.flatnonzero(reserved.any(axis=1))[0])
        return f"entry {i} has non-zero reserved bytes"
    topic = headers["topic_len"].astype(np.int64)
    ptype = headers["payload_type_len"].astype(np.int64)
    payload = headers["payload_len"].astype(np.int64)
    expected = (
        ENTRY_HEADER_SIZE
        + topic
        + ptype
        + 16 * ((flags & FLAG_CORRELATION) + ((flags & FLAG_CAUSATION) >> 1))
        + payload
    )
    bad = np.flatnonzero(
        (expected != lengths)
        | (topic > MAX_TOPIC_LEN)
        | (ptype > MAX_PAYLOAD_TYPE_LEN)
        | (payload > MAX_PAYLOAD_LEN)
    )
    if bad.size:
        i = int(bad[0])
        return f"entry {i} (offset {int(offsets[i])}) has field lengths that do not add up"
    seqs = headers["seq"]
    want = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    bad = np.flatnonzero(seqs != want)
    if bad.size:
        i = int(bad[0])
        return f"entry {i} has seq {int(seqs[i])}, expected {first_seq + i}"
    return None


def decode_entry(raw: bytes | memoryview, offset: int) -> Entry:
    """Decode the record at ``offset``; every length is checked against ``raw`` first."""
    if offset < 0 or offset + ENTRY_HEADER_SIZE > len(raw):
        raise EntryError(f"no room for an entry header at offset {offset}")
    n, plen, tlen, ptlen, flags, seq, ts_init, ts_publish = ENTRY_HEADER.unpack_from(raw, offset)
    if flags & ~KNOWN_FLAGS:
        raise EntryError(f"unknown flag bits {flags:#x} at offset {offset}")
    check_lengths(tlen, ptlen, plen)
    if n != record_length(tlen, ptlen, plen, flags) or offset + n > len(raw):
        raise EntryError(f"record length {n} at offset {offset} is inconsistent")
    p = offset + ENTRY_HEADER_SIZE
    raw_bytes = bytes(raw[p : offset + n])
    q = 0
    try:
        topic = raw_bytes[q : q + tlen].decode()
        q += tlen
        payload_type = raw_bytes[q : q + ptlen].decode()
    except UnicodeDecodeError:
        raise EntryError(f"topic or payload_type at offset {offset} is not UTF-8") from None
    q += ptlen
    correlation = causation = None
    if flags & FLAG_CORRELATION:
        correlation = uuid.UUID(bytes=raw_bytes[q : q + 16])
        q += 16
    if flags & FLAG_CAUSATION:
        causation = uuid.UUID(bytes=raw_bytes[q : q + 16])
        q += 16
    return Entry(
        seq, ts_init, ts_publish, topic, payload_type, raw_bytes[q:], correlation, causation
    )


def decode_checked(body: bytes, offsets: npt.NDArray[np.int64]) -> list[Entry]:
    """The entries at ``offsets`` of a frame body that :func:`check_records` accepted.

    Lengths and bounds were checked for the whole frame at once, so this only slices; text is
    still decoded strictly (``EntryError`` names the offset). Several times faster than
    :func:`decode_entry` per record, which re-checks everything from scratch.
    """
    if len(offsets) == 0:
        return []
    h = gather_headers(body, offsets)
    text: dict[bytes, str] = {}
    out = []
    fields = zip(
        offsets.tolist(),
        h["payload_len"].tolist(),
        h["topic_len"].tolist(),
        h["payload_type_len"].tolist(),
        h["flags"].tolist(),
        h["seq"].tolist(),
        h["ts_init"].tolist(),
        h["ts_publish"].tolist(),
        strict=True,
    )
    for off, plen, tlen, ptlen, flags, seq, ts_init, ts_publish in fields:
        p = off + ENTRY_HEADER_SIZE
        raw_topic = body[p : p + tlen]
        raw_type = body[p + tlen : p + tlen + ptlen]
        p += tlen + ptlen
        try:
            topic = text.get(raw_topic) or text.setdefault(raw_topic, raw_topic.decode())
            ptype = text.get(raw_type) or text.setdefault(raw_type, raw_type.decode())
        except UnicodeDecodeError:
            raise EntryError(f"topic or payload_type at offset {off} is not UTF-8") from None
        correlation = causation = None
        if flags:
            if flags & FLAG_CORRELATION:
                correlation = uuid.UUID(bytes=body[p : p + 16])
                p += 16
            if flags & FLAG_CAUSATION:
                causation = uuid.UUID(bytes=body[p : p + 16])
                p += 16
        out.append(
            Entry(
                seq, ts_init, ts_publish, topic, ptype, body[p : p + plen], correlation, causation
            )
        )
    return out
