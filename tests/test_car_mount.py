"""CAR archives mounted for real (local and over the loopback HTTP server), read with plain
file reads and zarr-python 3: the fixtures made by ipldstore, the JS UnixFS importer and
``ipfs-car``; CARv2 with its index; the block table kept for the next mount (``--offline`` too);
``--root``; and bad input: a tampered block in the middle of a multi-block file (EIO there,
correct bytes everywhere else, one log line naming the CID, a counter in ``stats``), a
truncated CAR, an unknown hash function."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from carwriter import DAG_CBOR, RAW, car_v1, cid, dag_cbor, ipldstore_car, link, unixfs_tree

from lindifuse.formats.car.cid import cid_from_bytes

FIX = Path(__file__).parent / "fixtures" / "car"
UNIXFS = ["unixfs-balanced-raw", "unixfs-trickle-pb", "unixfs-hamt", "ipfs-car-pack"]


def _digests(root: Path) -> dict[str, list]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            b = p.read_bytes()
            assert p.stat().st_size == len(b), p
            out[str(p.relative_to(root))] = [hashlib.sha256(b).hexdigest(), len(b)]
    return out


def _stats(mp: Path) -> dict:
    return json.loads(os.getxattr(mp, "user.lindifuse.stats"))


def test_ipldstore_car_mounts_as_ipldstore_serves_it(mount, tmp_path):
    expected = json.loads((FIX / "ipldstore.expected.json").read_text())["keys"]
    m = mount(FIX / "ipldstore.car", None, "--cache-dir", tmp_path / "c")
    assert _digests(m.path) == expected
    g = zarr.open_group(str(m.path), mode="r", zarr_format=2)
    assert np.array_equal(g["raw_i2"][:], np.arange(30, dtype="<i2").reshape(6, 5))
    assert np.array_equal(g["zlib_f8"][:], np.linspace(0.0, 1.0, 1000))
    assert np.array_equal(g["sub/u1"][:], np.arange(10, dtype="u1"))
    assert g.attrs["title"] == "ipldstore fixture"
    s = _stats(m.path)
    assert s["kind"] == "car"
    assert s["fetch"]["blocks_verified"] >= 6 and s["fetch"]["block_mismatches"] == 0
    with pytest.raises(OSError) as e:
        (m.path / "new").write_bytes(b"x")
    assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


@pytest.mark.parametrize("name", UNIXFS)
def test_unixfs_car_mounts_the_packed_folder(mount, tmp_path, name):
    expected = json.loads((FIX / "unixfs.expected.json").read_text())["keys"]
    m = mount(FIX / f"{name}.car", None, "--cache-dir", tmp_path / "c")
    assert _digests(m.path) == expected
    g = zarr.open_group(str(m.path), mode="r", zarr_format=2)
    assert np.array_equal(g["big_i4"][:], np.arange(1500, dtype="<i4") * 7)
    assert np.array_equal(g["zlib_f8"][:], np.linspace(-1.0, 1.0, 300))


def test_tampered_block_in_the_middle_of_a_file(mount, tmp_path):
    """An 8 MiB file in 32 raw leaves of 256 KiB; leaf 16 (bytes 4 MiB .. 4.25 MiB) altered in
    the CAR. Reads that need it fail with EIO; every other byte of the file, and every other
    file, is served right; one log line names the block; stats count it once."""
    rng = np.random.default_rng(7)
    content = rng.integers(0, 256, 8 * 2**20, dtype=np.uint8).tobytes()
    small = b"x" * 1000
    root, blocks, leaves = unixfs_tree(
        {"big": content, "small": small, ".zgroup": b'{"zarr_format": 2}'}, chunk=2**18
    )
    data = bytearray(car_v1([root], blocks))
    leaf = content[16 * 2**18 : 17 * 2**18]
    at = bytes(data).find(leaf)
    assert at > 0
    data[at + 1000] ^= 0xFF
    car = tmp_path / "tampered.car"
    car.write_bytes(bytes(data))
    bad_cid = str(cid_from_bytes(leaves["big"][16]))
    m = mount(car, None, "--cache-dir", tmp_path / "c")
    f = m.path / "big"
    assert f.stat().st_size == len(content)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(fd, 2**20, 0) == content[: 2**20]
        assert os.pread(fd, 2**20, 5 * 2**20) == content[5 * 2**20 : 6 * 2**20]
        assert os.pread(fd, 2**20, 7 * 2**20) == content[7 * 2**20 :]
        for off in (4 * 2**20, 4 * 2**20 + 5000, 4 * 2**20 + 2**18 - 10):
            with pytest.raises(OSError) as e:
                os.pread(fd, 100, off)
            assert e.value.errno == errno.EIO
        # the leaf right after the bad one
        assert os.pread(fd, 4096, 17 * 2**18) == content[17 * 2**18 : 17 * 2**18 + 4096]
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        f.read_bytes()
    assert e.value.errno == errno.EIO
    assert (m.path / "small").read_bytes() == small
    s = _stats(m.path)
    assert s["fetch"]["block_mismatches"] == 1
    lines = [ln for ln in m.log_text().splitlines() if "does not match its hash" in ln]
    assert len(lines) == 1, lines
    assert bad_cid in lines[0] and "big" in lines[0]


def test_carv2_with_index_mounts(mount, tmp_path):
    chunk = np.arange(64, dtype="<f4").tobytes()
    meta = {
        "chunks": [32], "compressor": None, "dtype": "<f4", "fill_value": 0.0,
        "filters": None, "order": "C", "shape": [64], "zarr_format": 2,
    }  # fmt: skip
    car, _ = ipldstore_car(
        {".zgroup": {"zarr_format": 2}, "a/.zarray": meta, "a/0": chunk[:128], "a/1": chunk[128:]},
        version=2,
    )
    p = tmp_path / "v2.car"
    p.write_bytes(car)
    m = mount(p, None, "--cache-dir", tmp_path / "c")
    g = zarr.open_group(str(m.path), mode="r", zarr_format=2)
    assert np.array_equal(g["a"][:], np.arange(64, dtype="<f4"))
    assert "CARv2 index" in m.log_text()


def test_scanned_table_is_kept_for_the_next_mount(mount, tmp_path):
    cache = tmp_path / "c"
    m = mount(FIX / "unixfs-trickle-pb.car", None, "--cache-dir", cache)
    assert "scanned" in m.log_text()
    m.umount()
    m2 = mount(FIX / "unixfs-trickle-pb.car", None, "--cache-dir", cache)
    assert "block table from the cache" in m2.log_text()
    expected = json.loads((FIX / "unixfs.expected.json").read_text())["keys"]
    assert _digests(m2.path) == expected


def test_remote_car_then_offline(mount, tmp_path, http_server):
    http_server.add_file("store.car", FIX / "ipldstore.car")
    url = http_server.url("store.car")
    cache = tmp_path / "c"
    expected = json.loads((FIX / "ipldstore.expected.json").read_text())["keys"]
    m = mount(url, None, "--cache-dir", cache)
    assert _digests(m.path) == expected
    assert _stats(m.path)["fetch"]["blocks_verified"] >= 6
    m.umount()
    http_server.stop()
    m2 = mount(url, None, "--cache-dir", cache, "--offline")
    assert "block table from the cache" in m2.log_text()
    assert _digests(m2.path) == expected


def test_remote_tampered_block_is_not_cached(mount, tmp_path, http_server):
    car, chunks = ipldstore_car(
        {".zgroup": {"zarr_format": 2}, "a/0": b"A" * 5000, "a/1": b"B" * 10}
    )
    bad = bytearray(car)
    at = bytes(bad).find(b"A" * 100)
    bad[at + 50] = ord("Z")
    (http_server.root / "bad.car").write_bytes(bytes(bad))
    url = http_server.url("bad.car")
    cache = tmp_path / "c"
    m = mount(url, None, "--cache-dir", cache)
    assert (m.path / "a" / "1").read_bytes() == b"B" * 10
    for _ in range(2):
        with pytest.raises(OSError) as e:
            (m.path / "a" / "0").read_bytes()
        assert e.value.errno == errno.EIO
    http_server.reset_log()
    with pytest.raises(OSError):
        (m.path / "a" / "0").read_bytes()
    assert http_server.count("bad.car") >= 1  # not served from a cache: fetched (and refused) again
    m.umount()
    # nothing of the bad block reached the persistent cache: offline, it is simply not there
    m2 = mount(url, None, "--cache-dir", cache, "--offline")
    assert (m2.path / "a" / "1").read_bytes() == b"B" * 10
    with pytest.raises(OSError) as e:
        (m2.path / "a" / "0").read_bytes()
    assert e.value.errno == errno.EIO
    assert "not in the persistent cache" in m2.log_text()
    assert "does not match its hash" not in m2.log_text()


def test_truncated_car_is_one_line_and_eio_for_what_is_missing(mount, tmp_path):
    data = (FIX / "ipldstore.car").read_bytes()
    p = tmp_path / "cut.car"
    p.write_bytes(data[: len(data) - 100])
    m = mount(p, None, "--cache-dir", tmp_path / "c")
    warn = [ln for ln in m.log_text().splitlines() if "runs past the end" in ln]
    assert len(warn) == 1
    ok = eio = 0
    for dirpath, _, names in os.walk(m.path):
        for n in names:
            try:
                (Path(dirpath) / n).read_bytes()
                ok += 1
            except OSError as e:
                assert e.errno == errno.EIO
                eio += 1
    assert ok >= 5 and eio >= 1


def test_not_a_car_fails_in_one_line(mount, tmp_path):
    p = tmp_path / "junk.car"
    p.write_bytes(b"\x00\x01garbage" * 10)
    m = mount(p, None, check=False)
    assert m.result.rc != 0
    err = m.result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lindifuse: ") and "junk.car" in err[0]
    assert "Traceback" not in m.result.stderr


def test_unknown_hash_and_missing_block_are_eio(mount, tmp_path):
    sha3 = cid(b"data", RAW, 0x16)
    missing = cid(b"not here", RAW)
    root = dag_cbor(
        {".zgroup": {"zarr_format": 2}, "a": link(sha3), "b": link(missing), "c": b"ok"}
    )
    rc = cid(root, DAG_CBOR)
    p = tmp_path / "odd.car"
    p.write_bytes(car_v1([rc], [(rc, root), (sha3, b"data")]))
    m = mount(p, None, "--cache-dir", tmp_path / "c")
    assert (m.path / "c").read_bytes() == b"ok"
    for name in ("a", "b"):
        with pytest.raises(OSError) as e:
            (m.path / name).read_bytes()
        assert e.value.errno == errno.EIO
    log = m.log_text()
    assert "unsupported hash function 0x16" in log and "is not in" in log


def test_multiple_roots_first_or_root_option(mount, tmp_path):
    a = dag_cbor({".zgroup": {"zarr_format": 2}, "x": b"first"})
    b = dag_cbor({".zgroup": {"zarr_format": 2}, "y": b"second"})
    ca, cb = cid(a, DAG_CBOR), cid(b, DAG_CBOR)
    p = tmp_path / "two.car"
    p.write_bytes(car_v1([ca, cb], [(ca, a), (cb, b)]))
    m = mount(p, None, "--cache-dir", tmp_path / "c")
    assert sorted(os.listdir(m.path)) == [".zgroup", "x"]
    assert "2 roots; mounting the first" in m.log_text()
    m.umount()
    text = str(cid_from_bytes(cb))
    m2 = mount(p, None, "--cache-dir", tmp_path / "c", "-o", f"root={text}")
    assert (m2.path / "y").read_bytes() == b"second"
    m2.umount()
    m3 = mount(p, None, "--root", "bafynotacid", check=False)
    assert m3.result.rc != 0 and "not a CID" in m3.result.stderr
    shutil.rmtree(tmp_path / "c", ignore_errors=True)


def test_cache_verify_rechecks_car_blocks(mount, tmp_path, http_server, run_cli):
    """Blocks enter the persistent cache verified and are trusted by key; ``cache verify``
    hashes them again: an entry altered behind the cache's back (with a valid CRC) is found,
    reported and removed."""
    import sqlite3
    import zlib

    http_server.add_file("store.car", FIX / "ipldstore.car")
    cache = tmp_path / "c"
    m = mount(http_server.url("store.car"), None, "--cache-dir", cache)
    _digests(m.path)
    m.umount()
    r = run_cli("cache", "verify", "--cache-dir", cache, "--json")
    assert r.rc == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["car_blocks_verified"] >= 6 and first["car_block_mismatches"] == 0
    db = sqlite3.connect(cache / "v1" / "index.sqlite")
    try:
        rows = db.execute("SELECT key, data FROM entries WHERE data IS NOT NULL").fetchall()
        key, data = next((k, d) for k, d in rows if len(d) > 60 and d[0] < 0x80 and d[1] == 1)
        bad = bytearray(data)
        bad[-1] ^= 0xFF
        db.execute(
            "UPDATE entries SET data = ?, crc = ? WHERE key = ?",
            (bytes(bad), zlib.crc32(bytes(bad)), key),
        )
        db.commit()
    finally:
        db.close()
    r = run_cli("cache", "verify", "--cache-dir", cache)
    assert r.rc == 1
    assert "does not match its CID; removed" in r.stderr and key in r.stderr
    assert "1 did not match" in r.stdout
    r = run_cli("cache", "verify", "--cache-dir", cache, "--json")
    assert (
        r.rc == 0
        and json.loads(r.stdout)["car_blocks_verified"] == first["car_blocks_verified"] - 1
    )


def _big_array_car(n: int = 2500, size: int = 4096) -> tuple[bytes, dict[str, bytes]]:
    """An ipldstore CAR larger than one scan window (8 MiB, so its scan goes on after the mount
    answers), root first as ipldstore writes it, one array ``a`` of ``n`` chunks (a map larger
    than LAZY_MIN: filled on first use) holding a sub-group ``a/sub`` too."""
    keys: dict = {".zgroup": {"zarr_format": 2}, "a/.zarray": {"zarr_format": 2}}
    for i in range(n):
        keys[f"a/{i}"] = i.to_bytes(4, "little") * (size // 4)
    keys["a/sub/.zgroup"] = {"zarr_format": 2}
    keys["a/sub/x"] = b"x"
    car, _ = ipldstore_car(keys)
    assert len(car) > 8 * 2**20
    return car, {k: v for k, v in keys.items() if isinstance(v, bytes)}


def _wait_for_log(m, text: str, timeout: float = 20.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while text not in m.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{m.log_text()[-3000:]}"
        time.sleep(0.05)
    return m.log_text()


def test_large_car_answers_before_its_scan_ends(mount, tmp_path):
    """The mount answers once the root is known; a read of a block the scan has not reached
    waits for it; the large map's directory is filled on first use with stable inodes and the
    right nlink before and after; the complete table is cached for the next mount."""
    car, chunks = _big_array_car()
    p = tmp_path / "big.car"
    p.write_bytes(car)
    cache = tmp_path / "c"
    m = mount(p, None, "--cache-dir", cache)
    assert "blocks so far (scanning CARv1" in m.log_text()
    a = m.path / "a"
    assert os.stat(a).st_nlink == 3  # before it is filled: counted from the map ("sub")
    last = a / "2499"
    assert last.read_bytes() == chunks["a/2499"]  # waits for the scan to reach its block
    ino = os.stat(last).st_ino
    assert os.stat(a).st_nlink == 3
    names = sorted(os.listdir(a))
    assert names == sorted([".zarray", "sub", *(str(i) for i in range(2500))])
    assert os.stat(last).st_ino == ino and os.stat(a / "sub" / "x").st_size == 1
    for key, want in chunks.items():
        f = m.path / key
        assert f.stat().st_size == len(want) and f.read_bytes() == want, key
    log = _wait_for_log(m, "scanned CARv1: 2502 blocks")
    assert "runs past" not in log and "WARNING" not in log
    m.umount()
    m2 = mount(p, None, "--cache-dir", cache)
    assert "block table from the cache" in m2.log_text()
    assert (m2.path / "a" / "1234").read_bytes() == chunks["a/1234"]


def test_large_truncated_car_reports_once_when_its_scan_ends(mount, tmp_path):
    car, chunks = _big_array_car()
    p = tmp_path / "cut.car"
    p.write_bytes(car[:-100])
    m = mount(p, None, "--cache-dir", tmp_path / "c")
    assert "blocks so far (scanning CARv1" in m.log_text()  # the cut was not reached yet
    assert (m.path / "a" / "0").read_bytes() == chunks["a/0"]
    with pytest.raises(OSError) as e:
        (m.path / "a" / "2499").read_bytes()  # its section is cut: waited for, then EIO
    assert e.value.errno == errno.EIO
    assert (m.path / "a" / "2498").read_bytes() == chunks["a/2498"]
    log = _wait_for_log(m, "scanned CARv1")
    warn = [ln for ln in log.splitlines() if "runs past the end" in ln]
    assert len(warn) == 1, warn
    m.umount()
    m2 = mount(p, None, "--cache-dir", tmp_path / "c")
    assert "block table from the cache" not in m2.log_text()  # a damaged table is not kept


def test_large_remote_car_scan_goes_on_then_offline(mount, tmp_path, http_server):
    """Over HTTP too: the mount answers after the first window, the scan's later windows are
    range requests beside the mount, and its complete table serves the next mount offline."""
    car, chunks = _big_array_car()
    (http_server.root / "big.car").write_bytes(car)
    url = http_server.url("big.car")
    cache = tmp_path / "c"
    m = mount(url, None, "--cache-dir", cache)
    assert "blocks so far (scanning CARv1" in m.log_text()
    assert (m.path / "a" / "2499").read_bytes() == chunks["a/2499"]
    _wait_for_log(m, "scanned CARv1: 2502 blocks")
    assert (m.path / "a" / "7").read_bytes() == chunks["a/7"]
    m.umount()
    m2 = mount(url, None, "--cache-dir", cache, "--offline")
    assert "block table from the cache" in m2.log_text()
    assert (m2.path / "a" / "2499").read_bytes() == chunks["a/2499"]
    assert (m2.path / "a" / "7").read_bytes() == chunks["a/7"]
