"""Unit tests of the pure CAR modules (lindifuse.formats.car): framing, CARv2 index, block
verification, the ipldstore and UnixFS layouts against the fixtures made by the real tools,
multi-block files read by range, and bad input (truncation, missing blocks, unknown codec or
hash, tampered blocks, cycles)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import cbor2
import pytest
import trio
from carwriter import (
    BLAKE2B_256,
    DAG_CBOR,
    IDENTITY,
    RAW,
    SHA2_256,
    car_v1,
    car_v2,
    cid,
    dag_cbor,
    ipldstore_car,
    link,
    section,
)

from lindifuse.errors import FormatError, RefError
from lindifuse.formats.car import framing, pieces, verify
from lindifuse.formats.car.blocks import BlockTable
from lindifuse.formats.car.cid import cid_from_bytes, cid_from_string, parse_cid, read_varint
from lindifuse.formats.car.layout import CarFile, build_tree
from lindifuse.formats.car.load import TableCache, open_car
from lindifuse.formats.car.store import CarBlocks, MissingBlock

FIX = Path(__file__).parent / "fixtures" / "car"
UNIXFS = ["unixfs-balanced-raw", "unixfs-trickle-pb", "unixfs-hamt", "ipfs-car-pack"]


class Opened:
    """A CAR opened from bytes, with a counting, verifying block getter."""

    def __init__(self, data: bytes, where: str = "test.car", **kw: object) -> None:
        self.data = data
        self.where = where
        self.fetched: list[int] = []
        self.car = trio.run(self._open, kw)
        self.blocks = CarBlocks(self.car.table, self._fetch, where)

    async def _read(self, off: int, n: int) -> bytes:
        return self.data[off : off + n]

    async def _open(self, kw: dict) -> object:
        return await open_car(self.where, len(self.data), self._read, **kw)

    async def _fetch(self, start: int, size: int, check: object) -> bytes:
        self.fetched.append(start)
        b = self.data[start : start + size]
        check(b)  # type: ignore[operator]
        return b

    def tree(self) -> object:
        return trio.run(build_tree, self.car.root, self.blocks.get, self.where)

    def read(self, f: CarFile, off: int = 0, n: int = 1 << 40) -> bytes:
        return trio.run(pieces.read, f.piece, off, n, self.blocks.get)


def served(op: Opened, value: object) -> bytes:
    if isinstance(value, CarFile):
        return op.read(value)
    if isinstance(value, dict):
        return json.dumps(value).encode()
    assert isinstance(value, str) and value.startswith("base64:")
    return base64.b64decode(value[7:])


def digest_map(op: Opened) -> dict[str, list]:
    tree = op.tree()
    assert tree.problems == []
    out = {}
    for k, v in tree.entries.items():
        b = served(op, v)
        out[k] = [hashlib.sha256(b).hexdigest(), len(b)]
    return out


# -- CIDs, varints, verification -------------------------------------------------------------


def test_varint_and_cid_round_trip() -> None:
    assert read_varint(b"\xac\x02", 0) == (300, 2)
    with pytest.raises(ValueError):
        read_varint(b"\x80", 0)
    with pytest.raises(ValueError):
        read_varint(b"\x80\x00", 0)  # not minimal
    c = cid(b"hello", RAW)
    parsed = cid_from_bytes(c)
    assert parsed.codec == RAW and parsed.code == SHA2_256
    assert parsed.digest == hashlib.sha256(b"hello").digest()
    again = cid_from_string(str(parsed))
    assert again == parsed and str(parsed).startswith("bafkrei")
    v0 = bytes([0x12, 0x20]) + hashlib.sha256(b"x").digest()
    p0, end = parse_cid(v0 + b"tail")
    assert p0.version == 0 and p0.codec == 0x70 and end == 34 and str(p0).startswith("Qm")
    with pytest.raises(FormatError):
        cid_from_string("not-a-cid")


@pytest.mark.parametrize("code", [SHA2_256, BLAKE2B_256, IDENTITY])
def test_verify_accepts_good_and_rejects_tampered(code: int) -> None:
    data = b"some block bytes"
    c = cid_from_bytes(cid(data, RAW, code))
    verify.check(c, data)
    with pytest.raises(verify.BlockMismatch) as e:
        verify.check(c, data[:-1] + b"X")
    assert str(c) in str(e.value)


def test_verify_refuses_unknown_hash() -> None:
    c = cid_from_bytes(cid(b"abc", RAW, 0x16))  # sha3-256: not in the table
    with pytest.raises(verify.UnverifiableBlock, match="unsupported hash function 0x16"):
        verify.check(c, b"abc")


# -- framing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ipldstore", *UNIXFS])
def test_fixtures_are_detected_and_scanned(name: str) -> None:
    data = (FIX / f"{name}.car").read_bytes()
    assert framing.looks_like_car(data[:4096])
    op = Opened(data)
    assert op.car.header.version == 1 and op.car.how == "scan" and op.car.problems == []
    # the scan found every section: parse them one by one independently
    pos, n = op.car.header.first_section, 0
    while pos < len(data):
        length, p = read_varint(data, pos)
        pos = p + length
        n += 1
    assert pos == len(data)
    assert len(op.car.table) <= n and len(op.car.table) > 5


@pytest.mark.parametrize(
    "head",
    [b'{"refs": {}}', b"\x89HDF\r\n\x1a\n" + bytes(100), bytes(512), b"", b"\x05abc"],
)
def test_other_heads_are_not_car(head: bytes) -> None:
    assert not framing.looks_like_car(head)


def test_carv2_index_is_used_and_matches_the_scan() -> None:
    keys = {".zgroup": {"zarr_format": 2}, "a/0": b"x" * 300, "a/1": b"y" * 20}
    v1, _ = ipldstore_car(keys)
    v2, _ = ipldstore_car(keys, version=2)
    assert v2.startswith(framing.CARV2_PRAGMA) and framing.looks_like_car(v2[:64])
    o1, o2 = Opened(v1), Opened(v2)
    assert o2.car.header.version == 2 and o2.car.how == "index"
    assert len(o1.car.table) == len(o2.car.table) == 3
    assert digest_map(o1) == digest_map(o2)
    # without the index, CARv2 is scanned
    blocks = [(cid(b"q" * 10), b"q" * 10)]
    o3 = Opened(car_v2([blocks[0][0]], blocks, index=False))
    assert o3.car.how == "scan" and len(o3.car.table) == 1


def test_block_table_round_trip_and_cache(tmp_path: Path) -> None:
    data = (FIX / "unixfs-trickle-pb.car").read_bytes()
    op = Opened(data)
    raw = op.car.table.to_bytes()
    back = BlockTable.from_bytes(raw)
    assert len(back) == len(op.car.table)
    for mh, loc in op.car.table.items():
        assert back.get(mh) == loc
    assert sorted(back.items()) == sorted(op.car.table.items())
    assert back.get(b"\x12\x20" + bytes(32)) is None
    # a digest ending in NUL bytes (numpy's S dtype strips them) is still found
    t = BlockTable()
    t.add_sections(
        [(b"\x12\x02a\x00", 5, 9), (b"\x12\x02a\x01", 10, 20), (b"\x12\x02\x00\x00", 1, 2)]
    )
    t2 = BlockTable.from_bytes(t.to_bytes())
    assert [t2.get(m) for m in (b"\x12\x02a\x00", b"\x12\x02a\x01", b"\x12\x02\x00\x00")] == [
        (5, 9),
        (10, 20),
        (1, 2),
    ]
    assert t2.get(b"\x12\x02a") is None and sorted(t2.items()) == sorted(t.items())
    with pytest.raises(ValueError):
        BlockTable.from_bytes(raw[:-3])
    cache = TableCache(str(tmp_path))
    first = Opened(data, cache=cache, validator="v1")
    assert first.car.how == "scan" and first.car.unsaved is not None
    # the table is written by the daemon once the mount answers, not while it is opened
    assert Opened(data, cache=cache, validator="v1").car.how == "scan"
    first.car.save_table()
    assert first.car.unsaved is None
    second = Opened(data, cache=cache, validator="v1")
    assert second.car.how == "cache" and len(second.car.table) == len(first.car.table)
    assert Opened(data, cache=cache, validator="v2").car.how == "scan"  # another version
    assert digest_map(second) == json.loads((FIX / "unixfs.expected.json").read_text())["keys"]


# -- layouts against the real tools' output -----------------------------------------------------


def test_ipldstore_fixture_serves_what_ipldstore_serves() -> None:
    expected = json.loads((FIX / "ipldstore.expected.json").read_text())
    op = Opened((FIX / "ipldstore.car").read_bytes())
    assert str(op.car.root) == expected["root"]
    assert op.tree().layout == "ipldstore"
    assert digest_map(op) == expected["keys"]


@pytest.mark.parametrize("name", UNIXFS)
def test_unixfs_fixtures_serve_the_packed_folder(name: str) -> None:
    expected = json.loads((FIX / "unixfs.expected.json").read_text())["keys"]
    op = Opened((FIX / f"{name}.car").read_bytes())
    assert op.tree().layout == "unixfs"
    assert digest_map(op) == expected


@pytest.mark.parametrize("name", ["unixfs-balanced-raw", "unixfs-trickle-pb"])
def test_range_reads_touch_only_the_blocks_they_cover(name: str) -> None:
    op = Opened((FIX / f"{name}.car").read_bytes())
    tree = op.tree()
    f = tree.entries["big_i4/0"]
    whole = op.read(f)
    assert len(whole) == 6000
    op.fetched.clear()
    part = op.read(f, 3100, 100)  # inside one 512-byte leaf (3072..3584)
    assert part == whole[3100:3200]
    leaves = len(whole) // 512 + 1
    # the root node is known; the read needs at most the path below it and one leaf
    assert 1 <= len(op.fetched) < leaves // 2
    op.fetched.clear()
    assert op.read(f, 500, 30) == whole[500:530]  # straddles two leaves
    assert len(op.fetched) <= 6
    # reading the same range again reuses the decoded interior nodes: only leaves
    op.fetched.clear()
    op.read(f, 3100, 100)
    assert len(op.fetched) == 1


def test_tampered_leaf_fails_there_only() -> None:
    data = bytearray((FIX / "unixfs-balanced-raw.car").read_bytes())
    good = Opened(bytes(data))
    f = good.tree().entries["big_i4/0"]
    whole = good.read(f)
    # find the leaf that holds bytes 3000.. and flip one byte of it in the CAR
    needle = whole[3072 : 3072 + 64]
    at = data.find(needle)
    assert at > 0 and data.find(needle, at + 1) < 0
    data[at + 10] ^= 0xFF
    bad = Opened(bytes(data))
    fb = bad.tree().entries["big_i4/0"]
    with pytest.raises(verify.BlockMismatch, match="does not match its hash"):
        bad.read(fb)
    with pytest.raises(verify.BlockMismatch):
        bad.read(fb, 3072 + 5, 20)
    assert bad.read(fb, 0, 1024) == whole[:1024]
    assert bad.read(fb, 5000, 1000) == whole[5000:]
    # the other files are unaffected
    assert bad.read(bad.tree().entries["zlib_f8/0"]) == good.read(good.tree().entries["zlib_f8/0"])


# -- bad input -----------------------------------------------------------------------------------


def test_truncated_car_mounts_what_it_holds() -> None:
    data = (FIX / "ipldstore.car").read_bytes()
    cut = Opened(data[: len(data) - 100])
    assert len(cut.car.problems) == 1 and "runs past the end" in cut.car.problems[0]
    tree = cut.tree()
    errors, ok = 0, 0
    for v in tree.entries.values():
        try:
            served(cut, v)
            ok += 1
        except MissingBlock as e:
            assert "is not in test.car" in str(e)
            errors += 1
    assert errors >= 1 and ok >= 5


def test_truncated_header_is_a_format_error() -> None:
    data = (FIX / "ipldstore.car").read_bytes()
    with pytest.raises(FormatError, match="truncated CAR header"):
        Opened(data[:20])
    with pytest.raises(FormatError, match="not a CAR"):
        Opened(b"\x05hello world")


def test_length_prefix_past_the_end() -> None:
    c = cid(b"abc")
    data = car_v1([c], [(c, b"abc")]) + b"\xff\x7f" + bytes(10)
    op = Opened(data)
    assert "runs past the end" in op.car.problems[0]
    assert len(op.car.table) == 1


def test_unknown_codec_and_hash_are_eio_on_read() -> None:
    odd = cid(b"{}", 0x0129)  # dag-json: not a file codec
    sha3 = cid(b"data", RAW, 0x16)
    root = dag_cbor({".zgroup": {"zarr_format": 2}, "a": link(odd), "b": link(sha3)})
    rc = cid(root, DAG_CBOR)
    op = Opened(car_v1([rc], [(rc, root), (odd, b"{}"), (sha3, b"data")]))
    tree = op.tree()
    with pytest.raises(RefError, match="dag-json|0x129"):
        op.read(tree.entries["a"])
    with pytest.raises(verify.UnverifiableBlock, match="0x16"):
        op.read(tree.entries["b"])
    assert served(op, tree.entries[".zgroup"]) == b'{"zarr_format": 2}'


def test_missing_block_is_eio_and_missing_root_is_format_error() -> None:
    car, chunks = ipldstore_car({".zgroup": {"zarr_format": 2}, "a/0": b"abc", "a/1": b"def"})
    op = Opened(car)
    # rebuild without block a/1
    keep = [b for b in _blocks(car) if b[0] != chunks["a/1"]]
    op2 = Opened(car_v1([_root(car)], keep))
    tree = op2.tree()
    assert op2.read(tree.entries["a/0"]) == b"abc"
    with pytest.raises(MissingBlock):
        op2.read(tree.entries["a/1"])
    assert op.read(op.tree().entries["a/1"]) == b"def"
    other = cid(b"nothing", DAG_CBOR)
    op3 = Opened(car_v1([other], keep[1:]))
    with pytest.raises(FormatError, match="root"):
        op3.tree()


def test_tampered_root_is_a_format_error() -> None:
    car, _ = ipldstore_car({".zgroup": {"zarr_format": 2}})
    bad = bytearray(car)
    bad[-3] ^= 1
    with pytest.raises(FormatError, match="does not match its hash"):
        Opened(bytes(bad)).tree()


def test_multiple_roots_and_root_option() -> None:
    a = dag_cbor({".zgroup": {"zarr_format": 2}, "x": b"inline"})
    b = dag_cbor({".zgroup": {"zarr_format": 2}, "y": b"other"})
    ca, cb = cid(a, DAG_CBOR), cid(b, DAG_CBOR)
    data = car_v1([ca, cb], [(ca, a), (cb, b)])
    op = Opened(data)
    assert op.car.root.raw == ca and set(op.tree().entries) == {".zgroup", "x"}
    op2 = Opened(data, root=str(cid_from_bytes(cb)))
    assert set(op2.tree().entries) == {".zgroup", "y"}
    assert served(op2, op2.tree().entries["y"]) == b"other"


def test_cycles_are_refused_without_hanging() -> None:
    """Content addressing makes a cycle impossible among verified blocks; a getter that does
    not verify (as a broken archive might pretend) still cannot make the walk loop."""
    from lindifuse.formats.car import unixfs  # noqa: F401  (protobuf messages)
    from lindifuse.formats.car.cid import cid_from_bytes as cfb

    a = cfb(cid(b"a", DAG_CBOR))
    blocks = {a.mh: dag_cbor({".zgroup": {"zarr_format": 2}, "loop": link(a.raw)})}

    async def get(c: object) -> bytes:
        return blocks[c.mh]  # type: ignore[attr-defined]

    tree = trio.run(build_tree, a, get, "cyc.car")
    assert any("cycle" in p for p in tree.problems)
    assert set(tree.entries) == {".zgroup"}


def test_file_dag_cycle_is_eio() -> None:
    from google.protobuf import descriptor  # noqa: F401

    from lindifuse.formats.car import unixfs
    from lindifuse.formats.car.cid import cid_from_bytes as cfb

    pbnode, data_cls = unixfs._messages()

    def node(links: list[tuple[bytes, int]]) -> bytes:
        d = data_cls(Type=unixfs.FILE, filesize=sum(s for _, s in links))
        d.blocksizes.extend(s for _, s in links)
        n = pbnode(Data=d.SerializeToString())
        for c, _ in links:
            n.Links.add(Hash=c)
        return n.SerializeToString()

    x = cfb(cid(b"x", 0x70))
    blocks = {x.mh: node([(x.raw, 10)])}

    async def get(c: object) -> bytes:
        return blocks[c.mh]  # type: ignore[attr-defined]

    with pytest.raises(RefError, match="cycle"):
        trio.run(pieces.read, pieces.file_piece(x, 10), 0, 10, get)


def _blocks(car: bytes) -> list[tuple[bytes, bytes]]:
    hdr = framing.parse_header(car, len(car))
    out = []
    pos = hdr.first_section
    while pos < len(car):
        length, p = read_varint(car, pos)
        c, q = parse_cid(car, p)
        out.append((c.raw, car[q : p + length]))
        pos = p + length
    return out


def _root(car: bytes) -> bytes:
    return framing.parse_header(car, len(car)).roots[0].raw


def test_section_writer_sanity() -> None:
    c = cid(b"z")
    assert section(c, b"z")[0] == len(c) + 1


@pytest.mark.parametrize("name", ["ipldstore", "unixfs-trickle-pb", "unixfs-hamt"])
def test_damaged_cars_never_serve_wrong_bytes(name: str) -> None:
    """Cuts at many offsets and single-byte flips everywhere: each CAR either fails to open
    (FormatError), or serves every key with its right bytes or a RefError (EIO); nothing
    else is raised and nothing hangs."""
    import random

    data = (FIX / f"{name}.car").read_bytes()
    oracle = "ipldstore" if name == "ipldstore" else "unixfs"
    expected = json.loads((FIX / f"{oracle}.expected.json").read_text())["keys"]
    rnd = random.Random(16)
    variants = [data[:cut] for cut in range(0, len(data), max(1, len(data) // 40))]
    for _ in range(60):
        bad = bytearray(data)
        bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
        variants.append(bytes(bad))
    served_ok = 0
    for v in variants:
        try:
            op = Opened(v)
            tree = op.tree()
        except FormatError:
            continue
        for key, value in tree.entries.items():
            try:
                got = served(op, value)
            except RefError:
                continue
            if key in expected:
                assert [hashlib.sha256(got).hexdigest(), len(got)] == expected[key], key
                served_ok += 1
    assert served_ok > 100


def test_large_maps_take_the_bulk_walk_and_keep_its_runs() -> None:
    """Maps of more than 16 entries are walked in bulk when all but their metadata are chunk
    links; any other large map (a bad name, a sub-map link, inline bytes) goes entry by entry.
    Either way the tree's entries and its runs (for ``Tree.from_runs``) are the same keys."""
    from lindifuse.fs.tree import Tree

    blocks: list[tuple[bytes, bytes]] = []

    def chunk_links(n: int, tag: str) -> dict:
        out = {}
        for i in range(n):
            data = f"{tag}{i}".encode()
            c = cid(data, RAW)
            blocks.append((c, data))
            out[str(i)] = link(c)
        return out

    sub = dag_cbor(chunk_links(3, "s"))
    sub_cid = cid(sub, DAG_CBOR)
    blocks.append((sub_cid, sub))
    zarray = {"chunks": [1], "dtype": "|u1", "shape": [40], "zarr_format": 2}
    bad = chunk_links(20, "b")
    bad["x/y"] = bad.pop("19")
    mixed = chunk_links(20, "c")
    mixed["g"] = link(sub_cid)
    mixed["inline"] = b"\x07"
    mixed["t"] = cbor2.CBORTag(99, b"x")  # not a link: left out, said, the rest served
    mixed["z"] = cbor2.CBORTag(42, b"\x01\x55")  # a link without its 0x00 prefix
    root = {
        ".zgroup": {"zarr_format": 2},
        "a": {".zarray": zarray, ".zattrs": {"u": 1}, **chunk_links(40, "a")},
        "b": bad,
        "c": mixed,
    }
    rb = dag_cbor(root)
    rc = cid(rb, DAG_CBOR)
    op = Opened(car_v1([rc], [(rc, rb), *blocks]))
    tree = op.tree()
    keys = set(tree.entries)
    assert {f"a/{i}" for i in range(40)} | {"a/.zarray", "a/.zattrs"} <= keys
    assert tree.entries["a/.zarray"] == zarray  # inline metadata, served as its JSON
    assert "b/18" in keys and "b/x/y" not in keys and "b/19" not in keys
    assert any("bad name 'x/y'" in p for p in tree.problems)
    assert {"c/g/0", "c/g/2", "c/inline", "c/19"} <= keys
    assert "c/t" not in keys and any("c/t: CBOR tag 99 is not allowed" in p for p in tree.problems)
    assert "c/z" not in keys and any(p.startswith("c/z: a DAG-CBOR link") for p in tree.problems)
    assert served(op, tree.entries["a/7"]) == b"a7"
    assert served(op, tree.entries["c/g/1"]) == b"s1"
    run_keys = [k for _, _, ks in tree.runs for k in ks]
    assert sorted(run_keys) == sorted(keys) and len(run_keys) == len(keys)
    for parent, names, ks in tree.runs:
        assert ks == [f"{parent}/{n}" if parent else n for n in names]
    files = {n.key for n in Tree.from_runs(tree.runs).walk_files()}
    assert files == {n.key for n in Tree.from_keys(list(tree.entries)).walk_files()} == keys
    from lindifuse.formats.car import dagcbor
    from lindifuse.formats.car.layout import _bulk_links

    decoded, tag = dagcbor.decode(rb, links=False), dagcbor.tag_type()
    assert _bulk_links(decoded["a"], "a", tag) is not None  # the bulk path is the one taken
    assert _bulk_links(decoded["b"], "b", tag) is None
    assert _bulk_links(decoded["c"], "c", tag) is None


def _first_extents(car: bytes, blocks: list[tuple[bytes, bytes]]) -> dict[bytes, tuple[int, int]]:
    """multihash -> (start, end) of the first section holding it, for a CARv1 whose sections
    are ``blocks`` in order, at its end."""
    want: dict[bytes, tuple[int, int]] = {}
    pos = len(car) - sum(len(section(c, d)) for c, d in blocks)
    for c, d in blocks:
        n = len(section(c, d))
        want.setdefault(parse_cid(c, 0)[0].mh, (pos, pos + n))
        pos += n
    assert pos == len(car)
    return want


@pytest.mark.parametrize("window", [64, 97, 1000, 1 << 20])
def test_scan_finds_every_section_across_cid_shapes_and_windows(
    window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan keeps the CID shape it saw last and re-parses on any change: CIDv0, CIDv1 of
    sha2-256, blake2b-256 and identity hashes, raw and dag-cbor codecs, sections of one- and
    two-byte lengths, in windows that cut headers anywhere; a repeated block: the first serves."""
    from lindifuse.formats.car import load

    monkeypatch.setattr(load, "SCAN_WINDOW", window)
    blocks: list[tuple[bytes, bytes]] = []
    for i in range(60):
        data = bytes([i]) * (i * 7 % 300 + 1)
        kind = i % 6  # a fresh parse (blake2b's two-byte code) between two raw sha2-256
        if kind == 0:
            c = b"\x12\x20" + hashlib.sha256(data).digest()  # CIDv0
        elif kind == 2:
            c = cid(data, RAW, BLAKE2B_256)
        elif kind == 4:
            c = cid(data[:20], RAW, IDENTITY)
            data = data[:20]
        elif kind == 5:
            c = cid(data, DAG_CBOR)
        else:
            c = cid(data, RAW)
        blocks.append((c, data))
    blocks.append(blocks[4])  # the same block again, later in the file
    car = car_v1([blocks[0][0]], blocks)
    want = _first_extents(car, blocks)
    table = Opened(car).car.table
    assert sorted(table.items()) == sorted(want.items())
    assert len(table) == len(want) == 60
    back = BlockTable.from_bytes(table.to_bytes())
    assert sorted(back.items()) == sorted(want.items())


def _runs_car() -> tuple[bytes, dict[bytes, tuple[int, int]]]:
    """A CARv1 of runs of equal sections broken in every way a run can break: another length,
    another codec (one header byte), a CIDv0 run, two-byte length varints, a repeated block,
    a lone section between two runs; with the extent of each block's first section."""
    blocks: list[tuple[bytes, bytes]] = []

    def run(count: int, size: int, codec: int = RAW, v0: bool = False, tag: int = 0) -> None:
        for i in range(count):
            data = (tag.to_bytes(2, "big") + i.to_bytes(4, "big")) * (size // 6)
            data = data[:size].ljust(size, b"\x00")
            c = b"\x12\x20" + hashlib.sha256(data).digest() if v0 else cid(data, codec)
            blocks.append((c, data))

    run(1000, 100, tag=1)  # one-byte length varints
    run(3, 100, DAG_CBOR, tag=2)  # same length, another codec: the run must stop
    run(500, 100, tag=3)
    run(1, 57, tag=4)  # a lone section of another length
    run(700, 300, tag=5)  # two-byte varints
    run(300, 300, v0=True, tag=6)  # CIDv0: another shape
    blocks.append(blocks[10])  # the same block again: the first serves
    run(9, 300, tag=7)
    car = car_v1([blocks[0][0]], blocks)
    want = _first_extents(car, blocks)
    return car, want


@pytest.mark.parametrize("window", [64, 333, 4096, 65536, 1 << 22])
def test_scan_takes_runs_of_equal_sections_exactly(
    window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of sections of one length and CID shape are taken in bulk (framing.run_length):
    the table is the one a section-by-section scan makes, whatever window cuts the runs."""
    from lindifuse.formats.car import load

    car, want = _runs_car()
    monkeypatch.setattr(load, "SCAN_WINDOW", window)
    table = Opened(car).car.table
    assert sorted(table.items()) == sorted(want.items())
    # and the same without the bulk path (run_length says 1: every section one by one)
    monkeypatch.setattr(framing, "run_length", lambda *a: 1)
    assert sorted(Opened(car).car.table.items()) == sorted(want.items())


def test_run_length_counts_the_sections_whose_headers_match() -> None:
    size, head = 10, 3
    one = b"\x09ab" + b"x" * 7
    assert framing.run_length(one * 1000, 0, size, head, 1000) == 1000
    assert framing.run_length(one * 1000, 0, size, head, 37) == 37  # at most ``most``
    for cut in (1, 2, 7, 8, 9, 63, 64, 65, 600):
        for j in range(head):  # any of the header bytes may differ
            bad = bytearray(one * 1000)
            bad[cut * size + j] ^= 0xFF
            assert framing.run_length(bytes(bad), 0, size, head, 1000) == cut, (cut, j)
    # bytes past the header (the digest, the data) never break a run
    varied = b"".join(b"\x09ab" + bytes([i % 256]) * 7 for i in range(100))
    assert framing.run_length(varied, 0, size, head, 100) == 100
    assert framing.run_length(b"z" * 5 + one * 20, 5, size, head, 20) == 20  # from ``rel``


def test_scan_of_many_equal_sections_takes_few_python_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bulk path is the one taken for a CAR of equal chunks: 20,000 sections cost a few
    run_length calls, not a turn of the section loop each."""
    blocks = []
    for i in range(20_000):
        data = i.to_bytes(4, "big") * 256
        blocks.append((cid(data, RAW), data))
    car = car_v1([blocks[0][0]], blocks)
    calls: list[int] = []
    real = framing.run_length

    def counting(*a: object) -> int:
        got = real(*a)  # type: ignore[arg-type]
        calls.append(got)
        return got

    monkeypatch.setattr(framing, "run_length", counting)
    table = Opened(car).car.table
    assert len(table) == 20_000
    assert sum(calls) >= 19_990 and len(calls) <= 20, (len(calls), sum(calls))


# -- answering before the scan ends, large maps walked on first use ------------------------------


def _many_chunks(n: int, size: int = 200) -> tuple[bytes, dict[str, bytes]]:
    """An ipldstore CAR (root first, as ipldstore writes it) of one array of ``n`` chunks."""
    keys: dict[str, object] = {".zgroup": {"zarr_format": 2}, "a/.zarray": {"zarr_format": 2}}
    for i in range(n):
        keys[f"a/{i}"] = i.to_bytes(4, "little") * (size // 4)
    car, chunks = ipldstore_car(keys)  # type: ignore[arg-type]
    return car, {k: v for k, v in keys.items() if isinstance(v, bytes)}  # type: ignore[misc]


def test_growing_table_keeps_the_first_of_repeated_blocks() -> None:
    from array import array

    t = BlockTable.growing(10)
    assert t.get(b"a") is None and len(t) == 0
    t.starts.extend([10, 20])
    t.add_scanned([b"a", b"b"], 0, 30)
    t.starts.extend([30, 40, 50])
    t.add_scanned([b"b", b"c", b"c"], 2, 60)  # b again (other window), c twice (same window)
    assert [t.get(m) for m in (b"a", b"b", b"c")] == [(10, 20), (20, 30), (40, 50)]
    assert len(t) == 3
    whole = BlockTable.from_scan(
        [b"a", b"b", b"b", b"c", b"c"], array("Q", [10, 20, 30, 40, 50]), 60
    )
    assert sorted(whole.items()) == sorted(t.items())
    assert (
        BlockTable.from_bytes(t.to_bytes()).items()
        == BlockTable.from_bytes(whole.to_bytes()).items()
    )


def test_open_without_waiting_scans_as_far_as_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``open_car(wait=False)`` reads only the first window; a block further on is found by
    driving the scan there; ``finish_scan`` completes the table, which is then the very table a
    full scan makes and is marked for the cache."""
    from lindifuse.formats.car import load

    monkeypatch.setattr(load, "SCAN_WINDOW", 4096)
    data, chunks = _many_chunks(300)
    full = Opened(data)
    cache = TableCache(str(tmp_path))
    op = Opened(data, wait=False, cache=cache, validator="v")
    reads: list[int] = []
    orig = op._read

    async def counting(off: int, n: int) -> bytes:
        reads.append(off)
        return await orig(off, n)

    scan = op.car.pending[0]  # type: ignore[attr-defined]
    scan.read = counting
    assert op.car.scanning and op.car.unsaved is None and len(op.car.table) == 0
    tree = op.tree()  # the root is the first block: one window is enough
    assert len(reads) == 1 and tree.problems == []
    assert 0 < len(op.car.table) < len(full.car.table)
    last = tree.entries["a/299"]
    assert op.read(last) == chunks["a/299"]  # drives the scan to the end of the file
    assert len(reads) >= 3 and scan.done
    trio.run(op.car.finish_scan)
    assert not op.car.scanning and op.car.unsaved is not None and op.car.problems == []
    assert sorted(op.car.table.items()) == sorted(full.car.table.items())
    missing = cid_from_bytes(cid(b"not in the car", RAW))
    with pytest.raises(MissingBlock):
        trio.run(op.blocks.get, missing)


def test_a_block_not_reached_is_missing_only_once_the_scan_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lindifuse.formats.car import load

    monkeypatch.setattr(load, "SCAN_WINDOW", 4096)
    data, chunks = _many_chunks(300)
    cut = data[: len(data) - 100]
    op = Opened(cut, wait=False)
    tree = op.tree()
    assert op.car.problems == []  # the cut is not reached yet
    with pytest.raises(MissingBlock):
        op.read(tree.entries["a/299"])  # its section runs past the end: waited for, then missing
    assert op.car.pending[0].done  # type: ignore[index]
    assert len(op.car.problems) == 1 and "runs past the end" in op.car.problems[0]
    assert op.read(tree.entries["a/298"]) == chunks["a/298"]
    trio.run(op.car.finish_scan)
    assert op.car.unsaved is None  # a table with a problem is not cached


def test_a_failed_read_after_loading_ends_the_scan_with_one_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lindifuse.errors import SourceError
    from lindifuse.formats.car import load

    monkeypatch.setattr(load, "SCAN_WINDOW", 4096)
    data, _ = _many_chunks(300)
    op = Opened(data, wait=False)
    scan = op.car.pending[0]  # type: ignore[attr-defined]

    async def failing(off: int, n: int) -> bytes:
        raise SourceError("test.car: gone")

    scan.read = failing
    with pytest.raises(SourceError):  # while opening, a failed read fails the opening
        trio.run(scan.advance)
    scan.soft = True  # once the mount answers (load_car sets it)
    trio.run(op.car.finish_scan)
    assert not op.car.scanning and len(op.car.problems) == 1
    assert "scan stopped at offset" in op.car.problems[0] and "gone" in op.car.problems[0]


def test_large_maps_are_left_for_first_use_and_expand_to_the_same_entries() -> None:
    from lindifuse.formats.car.layout import LAZY_MIN

    n = LAZY_MIN + 5
    keys: dict[str, object] = {".zgroup": {"zarr_format": 2}, "a/.zarray": {"zarr_format": 2}}
    for i in range(n):
        keys[f"a/{i}"] = f"chunk {i}".encode()
    keys["a/sub/.zgroup"] = {"zarr_format": 2}  # a sub-directory inside the large map
    keys["a/sub/x"] = b"x"
    keys["small/0"] = b"s"
    data, _ = ipldstore_car(keys)  # type: ignore[arg-type]
    op = Opened(data)
    eager = op.tree()
    lazy = trio.run(lambda: build_tree(op.car.root, op.blocks.get, op.where, lazy=True))
    assert set(lazy.entries) == {".zgroup", "small/0"}  # nothing of "a" yet
    assert [m.key for m in lazy.lazy] == ["a"] and lazy.pending() == n + 2
    big = lazy.lazy[0]
    assert big.subdirs() == 1
    got = trio.run(big.expand)
    assert got.problems == [] and got.lazy == []
    assert set(got.entries) | set(lazy.entries) == set(eager.entries)
    for k, v in got.entries.items():
        assert served(op, v) == served(op, eager.entries[k])
    run_keys = sorted(k for _, _, keys_ in got.runs for k in keys_)
    assert run_keys == sorted(got.entries)


def test_tree_lazy_dir_counts_subdirs_until_filled() -> None:
    from lindifuse.fs.tree import Tree

    tree = Tree.from_runs([("", [".zgroup"], [".zgroup"])])
    node = tree.add_lazy_dir("a/b", lambda: 3)
    assert node is not None and node.children == {} and tree.by_key("a/b") is node
    assert tree.nlink(node) == 5 and tree.nlink(tree.by_key("a")) == 3  # type: ignore[arg-type]
    tree.add_run("a/b", ["0", "1"], ["a/b/0", "a/b/1"])
    tree.add_dir(node, "sub")
    tree.filled(node)
    assert tree.nlink(node) == 3
