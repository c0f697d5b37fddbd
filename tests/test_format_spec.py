"""storage/FORMAT.md is the spec: its worked example is what the code writes, and a reader built
from nothing but the spec's tables (struct, xxhash, zstandard) reads what the writer wrote."""

from __future__ import annotations

import re
import struct
import uuid
from pathlib import Path

import numpy as np
import xxhash
import zstandard
from conftest import make_run

import ringtape.storage
from ringtape.storage.check.findings import KINDS
from ringtape.storage.format.entry import encode_entry
from ringtape.storage.format.frame import (
    CODEC_NONE,
    STREAM_EVENTS,
    FrameEncoder,
    build_body,
    checksum,
    encode_frame_header,
    encode_segment_header,
)
from ringtape.storage.read.reader import iter_entries

SPEC = Path(ringtape.storage.__file__).parent / "FORMAT.md"
RUN_ID = "1700000000000000001-0badf00d"
TS = 1_700_000_000_000_000_000


def example_segment() -> bytes:
    """The segment of the spec's worked example: one raw frame, then one zstd frame."""
    header = encode_segment_header(STREAM_EVENTS, 0, 1, 0, TS, RUN_ID)
    link = int.from_bytes(header[-8:], "little")
    started = encode_entry(1, TS + 1, TS + 900, "ringtape.RunStarted", b"{}", "json")
    corr = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    quote = encode_entry(2, TS + 2, TS + 900, "q", b"hi", "", corr)
    body = build_body(started + quote, np.array([0, len(started)]))
    frame_header, link = encode_frame_header(
        CODEC_NONE, 2, len(body), len(body), 1, link, checksum(body)
    )
    recs = [encode_entry(s, TS + s, TS + 1000, "q", b"A" * 64) for s in (3, 4, 5)]
    offsets = np.array([0, len(recs[0]), 2 * len(recs[0])])
    zstd_frame, _ = FrameEncoder().encode(build_body(b"".join(recs), offsets), 3, 3, link)
    return header + frame_header + body + zstd_frame


def hexdump(data: bytes) -> str:
    return "\n".join(
        f"{i:04x}  " + " ".join(f"{b:02x}" for b in data[i : i + 16])
        for i in range(0, len(data), 16)
    )


def test_the_worked_example_is_what_the_code_writes() -> None:
    text = SPEC.read_text()
    m = re.search(r"<!-- example:begin -->\n```\n(.*?)\n```\n<!-- example:end -->", text, re.S)
    assert m is not None, "FORMAT.md lost its example markers"
    documented = bytes.fromhex("".join(line[6:] for line in m.group(1).splitlines()))
    written = example_segment()
    # Byte for byte up to the zstd frame's stored bytes, which another zstd release may encode
    # differently; that frame must still read back to the same entries.
    raw_part = 80 + 56 + 132
    assert documented[:raw_part] == written[:raw_part]
    assert spec_read(documented) == spec_read(written)
    if zstandard.ZSTD_VERSION == (1, 5, 7):
        assert m.group(1) == hexdump(written)


def test_every_finding_kind_is_documented() -> None:
    text = SPEC.read_text()
    for kind in KINDS:
        assert f"`{kind}`" in text, kind


# -- an independent reader, written from the tables of FORMAT.md only ------------------------------


def spec_read(data: bytes) -> list[tuple[int, int, str, bytes, bytes | None]]:
    """(seq, ts_init, topic, payload, correlation id) of every entry of one segment."""
    xxh = xxhash.xxh3_64_intdigest
    assert data[0:8] == b"RTAPESEG" and struct.unpack_from("<H", data, 8)[0] == 1
    assert struct.unpack_from("<Q", data, 72)[0] == xxh(data[0:72])
    (next_seq,) = struct.unpack_from("<Q", data, 16)
    link = struct.unpack_from("<Q", data, 72)[0]
    out = []
    pos = 80
    while pos < len(data):
        h = data[pos : pos + 56]
        assert h[0:4] == b"RTFR" and struct.unpack_from("<Q", h, 48)[0] == xxh(h[0:48])
        codec, count, raw_len, stored_len = h[4], *struct.unpack_from("<III", h, 8)
        first_seq, prev, data_sum = struct.unpack_from("<QQQ", h, 24)
        assert prev == link and first_seq == next_seq
        stored = data[pos + 56 : pos + 56 + stored_len]
        assert xxh(stored) == data_sum
        if codec == 1:
            assert zstandard.get_frame_parameters(stored).content_size == raw_len
            body = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)
        else:
            body = stored
        end = raw_len - 4 * count
        offsets = struct.unpack_from(f"<{count}I", body, end)
        for i, off in enumerate(offsets):
            rec_len, plen, tlen, ptlen, flags = struct.unpack_from("<IIHHB", body, off)
            seq, ts_init, _ = struct.unpack_from("<QQQ", body, off + 16)
            assert seq == first_seq + i and off + rec_len == (
                offsets[i + 1] if i + 1 < count else end
            )
            q = off + 40
            topic = body[q : q + tlen].decode()
            q += tlen + ptlen
            corr = None
            if flags & 1:
                corr, q = body[q : q + 16], q + 16
            if flags & 2:
                q += 16
            out.append((seq, ts_init, topic, body[q : q + plen], corr))
        link = struct.unpack_from("<Q", h, 48)[0]
        next_seq = first_seq + count
        pos += 56 + stored_len
    return out


def test_a_reader_from_the_spec_reads_the_example() -> None:
    got = spec_read(example_segment())
    assert [(s, t) for s, _, t, _, _ in got] == [
        (1, "ringtape.RunStarted"),
        (2, "q"),
        (3, "q"),
        (4, "q"),
        (5, "q"),
    ]
    assert got[1][3:] == (b"hi", bytes.fromhex("00112233445566778899aabbccddeeff"))


def test_a_reader_from_the_spec_reads_what_the_writer_wrote(tmp_path: Path) -> None:
    run = make_run(tmp_path, 500, segment_bytes=4096)
    ours = [(e.seq, e.ts_init, e.topic, e.payload) for e in iter_entries(run)]
    theirs = [
        (seq, ts, topic, payload)
        for seg in sorted(run.glob("events-*.seg"))
        for seq, ts, topic, payload, _ in spec_read(seg.read_bytes())
    ]
    assert theirs == ours
