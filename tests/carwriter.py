"""A small CAR writer for tests (bad input, CARv2, benchmarks), following the CAR specs.

CARv1: ``varint(len(header)) + DAG-CBOR {"roots", "version": 1}`` then ``varint(len) + CID +
bytes`` sections. CARv2: the 11-byte pragma, the 40-byte header (characteristics, data offset,
data size, index offset), the CARv1 payload, and a MultihashIndexSorted (0x0401) index as go-car
writes it. Nothing here is used by lindifuse itself; the fixtures made by the real tools
(ipldstore, the JS UnixFS importer, ``ipfs-car pack``) are in tests/fixtures/car.
"""

from __future__ import annotations

import hashlib
import struct
from collections import defaultdict
from typing import Any

import cbor2

RAW, DAG_PB, DAG_CBOR = 0x55, 0x70, 0x71
SHA2_256, BLAKE2B_256, IDENTITY = 0x12, 0xB220, 0x00
PRAGMA = bytes.fromhex("0aa16776657273696f6e02")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def multihash(data: bytes, code: int = SHA2_256) -> bytes:
    if code == SHA2_256:
        d = hashlib.sha256(data).digest()
    elif code == BLAKE2B_256:
        d = hashlib.blake2b(data, digest_size=32).digest()
    elif code == IDENTITY:
        d = data
    else:
        d = hashlib.sha3_256(data).digest()  # any other code: a digest lindifuse cannot check
    return varint(code) + varint(len(d)) + d


def cid(data: bytes, codec: int = RAW, code: int = SHA2_256) -> bytes:
    return varint(1) + varint(codec) + multihash(data, code)


def link(c: bytes) -> cbor2.CBORTag:
    return cbor2.CBORTag(42, b"\x00" + c)


def dag_cbor(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def header(roots: list[bytes]) -> bytes:
    h = dag_cbor({"roots": [link(r) for r in roots], "version": 1})
    return varint(len(h)) + h


def section(c: bytes, data: bytes) -> bytes:
    return varint(len(c) + len(data)) + c + data


def car_v1(roots: list[bytes], blocks: list[tuple[bytes, bytes]]) -> bytes:
    return header(roots) + b"".join(section(c, d) for c, d in blocks)


def car_v2(roots: list[bytes], blocks: list[tuple[bytes, bytes]], index: bool = True) -> bytes:
    payload = bytearray(header(roots))
    offsets = []
    for c, d in blocks:
        offsets.append((c, len(payload)))
        payload += section(c, d)
    data_offset = len(PRAGMA) + 40
    index_offset = data_offset + len(payload) if index else 0
    head = PRAGMA + bytes(16) + struct.pack("<QQQ", data_offset, len(payload), index_offset)
    out = head + bytes(payload)
    if index:
        out += mh_index(offsets)
    return out


def _split_cid(c: bytes) -> tuple[int, bytes]:
    """(multihash code, digest) of a CIDv1."""
    pos = 0

    def rv() -> int:
        nonlocal pos
        v = shift = 0
        while True:
            b = c[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            if b < 0x80:
                return v
            shift += 7

    rv()  # version
    rv()  # codec
    code = rv()
    n = rv()
    return code, c[pos : pos + n]


def mh_index(offsets: list[tuple[bytes, int]]) -> bytes:
    """MultihashIndexSorted: codes, then per code buckets by width of sorted entries."""
    by_code: dict[int, dict[int, list[tuple[bytes, int]]]] = defaultdict(lambda: defaultdict(list))
    for c, off in offsets:
        code, digest = _split_cid(c)
        by_code[code][len(digest) + 8].append((digest, off))
    out = bytearray(varint(0x0401) + struct.pack("<I", len(by_code)))
    for code in sorted(by_code):
        buckets = by_code[code]
        out += struct.pack("<QI", code, len(buckets))
        for width in sorted(buckets):
            entries = sorted(buckets[width])
            out += struct.pack("<IQ", width, width * len(entries))
            for digest, off in entries:
                out += digest + struct.pack("<Q", off)
    return bytes(out)


def ipldstore_car(
    keys: dict[str, Any], *, code: int = SHA2_256, version: int = 1
) -> tuple[bytes, dict[str, bytes]]:
    """An ipldstore-layout CAR: ``keys`` maps Zarr keys to metadata dicts or chunk bytes;
    chunks become raw blocks linked from nested maps (as ipldstore's ``IPLDStore`` writes).
    Returns (CAR bytes, the raw block of each chunk key)."""
    root: dict[str, Any] = {}
    blocks: list[tuple[bytes, bytes]] = []
    chunks: dict[str, bytes] = {}
    for key, value in keys.items():
        parts = key.split("/")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, dict):
            node[parts[-1]] = value
        else:
            c = cid(value, RAW, code)
            blocks.append((c, value))
            chunks[key] = c
            node[parts[-1]] = link(c)
    rb = dag_cbor(root)
    rc = cid(rb, DAG_CBOR, code)
    all_blocks = [(rc, rb), *blocks]
    car = car_v2([rc], all_blocks) if version == 2 else car_v1([rc], all_blocks)
    return car, chunks


# -- UnixFS (dag-pb), encoded by hand from the dag-pb and unixfs.proto specs ----------------------


def _pb_bytes(field: int, data: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(data)) + data


def _pb_varint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def unixfs_data(kind: int, data: bytes = b"", filesize: int | None = None,
                blocksizes: tuple[int, ...] = ()) -> bytes:  # fmt: skip
    out = _pb_varint(1, kind)
    if data:
        out += _pb_bytes(2, data)
    if filesize is not None:
        out += _pb_varint(3, filesize)
    for b in blocksizes:
        out += _pb_varint(4, b)
    return out


def dag_pb(links: list[tuple[bytes, str | None, int]], data: bytes) -> bytes:
    """A PBNode: Links (Hash, Name, Tsize) then Data, in dag-pb's canonical order."""
    out = b""
    for c, name, tsize in links:
        body = _pb_bytes(1, c)
        if name is not None:
            body += _pb_bytes(2, name.encode())
        body += _pb_varint(3, tsize)
        out += _pb_bytes(2, body)
    return out + _pb_bytes(1, data)


UNIXFS_DIRECTORY, UNIXFS_FILE = 1, 2


def unixfs_tree(
    files: dict[str, bytes], chunk: int = 256 * 1024, fanout: int = 174
) -> tuple[bytes, list[tuple[bytes, bytes]], dict[str, list[bytes]]]:
    """A UnixFS directory of ``files`` (paths with ``/``): files split into raw leaves of
    ``chunk`` bytes under a balanced tree of ``fanout`` links per node. Returns (root CID,
    blocks, the leaf CIDs of every file in order)."""
    blocks: list[tuple[bytes, bytes]] = []
    leaves_of: dict[str, list[bytes]] = {}

    def add(data: bytes, codec: int) -> bytes:
        c = cid(data, codec)
        blocks.append((c, data))
        return c

    def file_node(path: str, content: bytes) -> tuple[bytes, int]:
        parts = [content[i : i + chunk] for i in range(0, len(content), chunk)] or [b""]
        level = [(add(p, RAW), len(p), len(p)) for p in parts]  # (cid, content size, dag size)
        leaves_of[path] = [c for c, _, _ in level]
        if len(level) == 1 and len(content) > 0:
            return level[0][0], level[0][2]
        while True:
            nxt = []
            for i in range(0, len(level), fanout):
                group = level[i : i + fanout]
                data = unixfs_data(
                    UNIXFS_FILE,
                    filesize=sum(s for _, s, _ in group),
                    blocksizes=tuple(s for _, s, _ in group),
                )
                node = dag_pb([(c, "", t) for c, _, t in group], data)
                nxt.append((add(node, DAG_PB), sum(s for _, s, _ in group),
                            len(node) + sum(t for _, _, t in group)))  # fmt: skip
            level = nxt
            if len(level) == 1:
                return level[0][0], level[0][2]

    def directory(tree: dict[str, Any], prefix: str) -> tuple[bytes, int]:
        links = []
        for name in sorted(tree):
            sub = tree[name]
            path = f"{prefix}{name}"
            if isinstance(sub, dict):
                c, t = directory(sub, path + "/")
            else:
                c, t = file_node(path, sub)
            links.append((c, name, t))
        node = dag_pb(links, unixfs_data(UNIXFS_DIRECTORY))
        return add(node, DAG_PB), len(node) + sum(t for _, _, t in links)

    nested: dict[str, Any] = {}
    for path, content in files.items():
        *dirs, name = path.split("/")
        d = nested
        for p in dirs:
            d = d.setdefault(p, {})
        d[name] = content
    root, _ = directory(nested, "")
    return root, blocks, leaves_of
