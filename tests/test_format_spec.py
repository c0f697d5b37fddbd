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
from ringtape.storage.format.frame_index import frame_index
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
    offsets = np.array([0, len(started)])
    raw_body = build_body(started + quote, offsets)
    frame_header, link = encode_frame_header(
        CODEC_NONE,
        2,
        len(raw_body),
        len(raw_body),
        1,
        link,
        checksum(raw_body),
        frame_index(raw_body, offsets),
    )
    recs = [encode_entry(s, TS + s, TS + 1000, "q", b"A" * 64) for s in (3, 4, 5)]
    offsets = np.array([0, len(recs[0]), 2 * len(recs[0])])
    body = build_body(b"".join(recs), offsets)
    zstd_frame, _ = FrameEncoder().encode(body, 3, 3, link, frame_index(body, offsets))
    return header + frame_header + raw_body + zstd_frame


# The worked example of format version 1 (the FORMAT.md of ringtape 0.2.0), as a version 1
# writer wrote it: a version 2 reader must read it unchanged.
V1_EXAMPLE = """\
0000  52 54 41 50 45 53 45 47 01 00 01 00 00 00 00 00
0010  01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0020  00 00 2a 36 fe 9c 97 17 31 37 30 30 30 30 30 30
0030  30 30 30 30 30 30 30 30 30 30 31 2d 30 62 61 64
0040  66 30 30 64 00 00 00 00 57 e6 af 6d 87 c2 68 a2
0050  52 54 46 52 00 00 00 00 02 00 00 00 84 00 00 00
0060  84 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00
0070  57 e6 af 6d 87 c2 68 a2 63 d2 10 8d 6c 31 19 fc
0080  5f cf dd af 6a ad d7 db 41 00 00 00 02 00 00 00
0090  13 00 04 00 00 00 00 00 01 00 00 00 00 00 00 00
00a0  01 00 2a 36 fe 9c 97 17 84 03 2a 36 fe 9c 97 17
00b0  72 69 6e 67 74 61 70 65 2e 52 75 6e 53 74 61 72
00c0  74 65 64 6a 73 6f 6e 7b 7d 3b 00 00 00 02 00 00
00d0  00 01 00 00 00 01 00 00 00 02 00 00 00 00 00 00
00e0  00 02 00 2a 36 fe 9c 97 17 84 03 2a 36 fe 9c 97
00f0  17 71 00 11 22 33 44 55 66 77 88 99 aa bb cc dd
0100  ee ff 68 69 00 00 00 00 41 00 00 00 52 54 46 52
0110  01 00 00 00 03 00 00 00 47 01 00 00 49 00 00 00
0120  00 00 00 00 03 00 00 00 00 00 00 00 5f cf dd af
0130  6a ad d7 db 73 14 7e 18 0f f5 9b f6 25 c8 a8 4b
0140  e1 70 1e 13 28 b5 2f fd 60 47 00 fd 01 00 44 02
0150  69 00 00 00 40 00 00 00 01 00 03 00 03 00 2a 36
0160  fe 9c 97 17 e8 03 71 41 04 04 05 05 69 00 00 00
0170  d2 00 00 00 0a 00 5a 08 a0 01 3a e0 b2 06 53 20
0180  3b 36 20 81 38 89 57 06 02 03 0f 00 09
"""


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
    raw_part = 80 + 88 + 132
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
    """(seq, ts_init, topic, payload, correlation id) of every entry of one segment (format
    version 1 or 2), checking each version 2 frame's index against its entries."""
    xxh = xxhash.xxh3_64_intdigest
    (version,) = struct.unpack_from("<H", data, 8)
    assert data[0:8] == b"RTAPESEG" and version in (1, 2)
    assert struct.unpack_from("<Q", data, 72)[0] == xxh(data[0:72])
    magic, size = (b"RTF2", 88) if version == 2 else (b"RTFR", 56)
    (next_seq,) = struct.unpack_from("<Q", data, 16)
    link = struct.unpack_from("<Q", data, 72)[0]
    out = []
    pos = 80
    while pos < len(data):
        h = data[pos : pos + size]
        assert h[0:4] == magic and struct.unpack_from("<Q", h, size - 8)[0] == xxh(h[: size - 8])
        codec, count, raw_len, stored_len = h[4], *struct.unpack_from("<III", h, 8)
        first_seq, prev, data_sum = struct.unpack_from("<QQQ", h, 24)
        assert prev == link and first_seq == next_seq
        stored = data[pos + size : pos + size + stored_len]
        assert xxh(stored) == data_sum
        if codec == 1:
            assert zstandard.get_frame_parameters(stored).content_size == raw_len
            body = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)
        else:
            body = stored
        end = raw_len - 4 * count
        offsets = struct.unpack_from(f"<{count}I", body, end)
        frame, keys = [], []
        for i, off in enumerate(offsets):
            keys.append(int.from_bytes(body[off + 40 : off + 48].ljust(8, b"\0"), "big"))
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
            frame.append((seq, ts_init, topic, body[q : q + plen], corr))
        if version == 2:
            ts_min, ts_max, topic_min, topic_max = struct.unpack_from("<QQQQ", h, 48)
            stamps = [ts for _, ts, _, _, _ in frame]
            assert (ts_min, ts_max, topic_min, topic_max) == (
                min(stamps),
                max(stamps),
                min(keys),
                max(keys),
            )
        out += frame
        link = struct.unpack_from("<Q", h, size - 8)[0]
        next_seq = first_seq + count
        pos += size + stored_len
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


def test_a_version_1_segment_reads_as_it_did(tmp_path: Path) -> None:
    """Segments a version 1 writer wrote stay readable: the old worked example, byte for byte."""
    data = bytes.fromhex("".join(line[6:] for line in V1_EXAMPLE.splitlines()))
    expected = [(1, "ringtape.RunStarted"), (2, "q"), (3, "q"), (4, "q"), (5, "q")]
    assert [(s, t) for s, _, t, _, _ in spec_read(data)] == expected
    run = tmp_path / RUN_ID
    run.mkdir()
    (run / "events-000000.seg").write_bytes(data)
    entries = list(iter_entries(run))
    assert [(e.seq, e.topic) for e in entries] == expected
    assert entries[1].payload == b"hi" and str(entries[1].correlation_id).startswith("00112233")
