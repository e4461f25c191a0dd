#!/usr/bin/env python3
"""Writes the seed ring images of tests/fuzz/fuzz_ring.c next to this file:
a 1024-byte ring header (docs/ring.md) and a 4096-byte data area, holding
records of every kind the reader meets. Run it again after a layout change."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CAP = 4096
RESERVED, READY, ABANDONED, PAD = 0x53520001, 0x53520002, 0x53520003, 0x53520004


def header(commit, reserve, refusals=(), cap=CAP, direction=1):
    h = bytearray(1024)
    struct.pack_into("<IIII", h, 0, 0x47524253, 1, 1024, direction)
    struct.pack_into("<QII", h, 16, cap, 1 << 20, 5000)
    struct.pack_into("<I", h, 40, 1)
    struct.pack_into("<Q", h, 128, reserve)
    struct.pack_into("<Q", h, 256, commit)
    struct.pack_into("<Q", h, 272, len(refusals))
    for i, p in enumerate(refusals):
        struct.pack_into("<Q", h, 448 + 8 * (i % 32), p)
    return h


def record(pos, topic, payload, headers=b"", state=READY):
    n = (56 + len(topic) + len(headers) + len(payload) + 7) & ~7
    r = bytearray(n)
    struct.pack_into("<IIQQQIIIIII", r, 0, n, state, pos, 0, 0, 1234, 0,
                     len(topic), len(headers), len(payload), 0)
    r[56:56 + len(topic) + len(headers) + len(payload)] = topic + headers + payload
    return r


def image(start, recs, refusals=(), cap=CAP):
    data = bytearray(cap)
    pos = start
    for kind, *rest in recs:
        off = pos % cap
        if kind == "pad":
            n = cap - off
            struct.pack_into("<II", data, off, n, PAD)
            pos += n
            continue
        r = record(pos, *rest)
        data[off:off + len(r)] = r
        pos += len(r)
    return bytes(header(start, pos, refusals, cap) + data)


def write(name, blob):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(blob)


write("three-records", image(0, [("r", b"a/b", b"hello"),
                                 ("r", b"c", b"x" * 100, b"k\0v\0content-type\0text/plain\0"),
                                 ("r", b"d/e/f", b"")]))
write("pending-abandoned", image(0, [("r", b"a", b"1"), ("r", b"b", b"2", b"", ABANDONED),
                                     ("r", b"c", b"3", b"", RESERVED)]))
write("wrapped-with-pad", image(3 * CAP + 4000, [("pad",), ("r", b"after/pad", b"p" * 20)]))
write("refusal-log", image(0, [("r", b"t", b"%d" % i) for i in range(40)],
                           refusals=[64 * i for i in range(40)]))
write("bad-seq", image(0, [("r", b"a", b"1")])[:1024 + 8] + struct.pack("<Q", 999) +
      image(0, [("r", b"a", b"1")])[1024 + 16:])
write("out-ring", bytes(header(0, 64, direction=2)) + bytes(record(0, b"o/t", b"delivery")) +
      bytes(CAP - 64))
