"""The persistent chunk cache through real mounts of a .lindi.tar served by a loopback server:
remounts read from disk, damaged entries are refetched, replaced objects are not served stale,
the size bound evicts, mounts share a directory, and the stats/cache commands report it."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from remote_data import MARKER, build_tar

CHUNK = 40_000  # > 32 KiB: stored in content files (the tar index and lindi.json stay inline)


@pytest.fixture
def tar(http_server):
    data = build_tar(http_server.root / "d.lindi.tar", 24, CHUNK)
    return data, http_server.url("d.lindi.tar")


def read_all(m, data, keys=None):
    for i in keys if keys is not None else range(data.nchunks):
        got = (m.path / "x" / str(i)).read_bytes()
        assert got == data.expected(i), f"chunk {i}"


def stats(m):
    return json.loads(os.getxattr(m.path, "user.lindifuse.stats"))


def test_remount_reads_from_disk_with_zero_requests(mount, http_server, tar, tmp_path):
    data, url = tar
    cache = tmp_path / "cache"
    m = mount(url, None, "--cache-dir", cache)
    read_all(m, data)
    assert stats(m)["disk_cache"]["enabled"]
    m.umount()
    http_server.reset_log()
    m2 = mount(url, None, "--cache-dir", cache)
    # mounting costs the head request only (index and lindi.json come from disk)
    assert http_server.count() == 1
    http_server.reset_log()
    read_all(m2, data)
    assert http_server.count() == 0
    s = stats(m2)
    assert s["disk_cache"]["hits"] >= 1 and s["fetch"]["requests"] == 0


def test_cache_index_mapping_follows_the_setting(mount, http_server, tar, tmp_path):
    """SQLite maps the index for reads (disk.READ_MMAP) unless LINDIFUSE_CACHE_MMAP says
    otherwise; a value that is not a number is ignored with a warning. Reads are the same."""
    from lindifuse.cache import disk

    data, url = tar
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != disk.MMAP_ENV}
    for value, want in ((None, disk.READ_MMAP), ("0", 0), ("lots", disk.READ_MMAP)):
        m = mount(
            url, None, "--cache-dir", cache, env=env | ({disk.MMAP_ENV: value} if value else {})
        )
        read_all(m, data)
        assert stats(m)["disk_cache"]["read_mmap"] == want
        m.umount()
        assert (f"{disk.MMAP_ENV}='lots' is not a number" in m.log_text()) == (value == "lots")
    http_server.reset_log()
    m = mount(url, None, "--cache-dir", cache, env=env | {disk.MMAP_ENV: "0"})
    read_all(m, data)  # everything from the index and content files the mapped mounts wrote
    assert http_server.count() == 1  # the head request


def _flip(path: Path, needle: bytes | None = None, at: int = 100) -> bool:
    raw = bytearray(path.read_bytes())
    pos = raw.find(needle) if needle is not None else at
    if pos < 0:
        return False
    raw[pos] ^= 0xFF
    path.write_bytes(bytes(raw))
    return True


def _flip_first(paths: list[Path], needles: list[bytes]) -> bool:
    return any(_flip(p, n) for n in needles for p in paths)


def test_damaged_entries_are_refetched_never_served(mount, http_server, tar, tmp_path):
    data, url = tar
    cache = tmp_path / "cache"
    m = mount(url, None, "--cache-dir", cache, "--no-readahead")
    read_all(m, data)
    m.umount()
    root = cache / "v1"
    files = sorted(p for p in (root / "data").rglob("*") if p.is_file())
    assert len(files) == data.nchunks
    assert _flip(files[0])  # flipped bytes in a content file
    os.truncate(files[1], 100)  # a torn write
    # flipped bytes inside an entry stored in the SQLite index (lindi.json holds the marker)
    # (SQLite may split the value across pages: look for a piece of the marker)
    needles = [MARKER.encode(), b"test-marker", b"marker"]
    assert _flip_first(sorted(root.glob("index.sqlite*")), needles)
    http_server.reset_log()
    m2 = mount(url, None, "--cache-dir", cache, "--no-readahead")
    read_all(m2, data)
    assert (m2.path / "x" / ".zattrs").read_text().find(MARKER) >= 0
    s = stats(m2)
    assert s["disk_cache"]["corrupt"] == 3
    # the head request, lindi.json and the two damaged chunks; everything else from disk
    assert http_server.count() == 4, [r.range for r in http_server.log]


def test_replaced_object_is_refetched_after_remount(mount, http_server, tar, tmp_path):
    data, url = tar
    cache = tmp_path / "cache"
    m = mount(url, None, "--cache-dir", cache)
    read_all(m, data)
    m.umount()
    new = build_tar(data.path, data.nchunks, CHUNK, seed=1)  # same layout, new bytes, new ETag
    http_server.reset_log()
    m2 = mount(url, None, "--cache-dir", cache)
    read_all(m2, new)
    assert stats(m2)["disk_cache"]["hits"] == 0
    assert http_server.count() > 1


def test_small_cache_size_evicts(mount, run_cli, tar, tmp_path):
    data, url = tar
    cache = tmp_path / "cache"
    limit = 5 * CHUNK
    m = mount(url, None, "--cache-dir", cache, "--cache-size", str(limit))
    read_all(m, data)
    m.umount()
    res = run_cli("cache", "info", "--cache-dir", cache, "--json")
    assert res.rc == 0, res.describe()
    info = json.loads(res.stdout)
    assert 0 < info["bytes"] <= limit
    assert info["entries"] < data.nchunks
    # what survived is the most recently read data
    m2 = mount(url, None, "--cache-dir", cache, "--cache-size", str(limit), "--no-readahead")
    read_all(m2, data, [data.nchunks - 1])
    assert stats(m2)["disk_cache"]["hits"] >= 1


def test_two_mounts_share_one_cache_dir(mount, http_server, tar, tmp_path):
    data, url = tar
    cache = tmp_path / "cache"
    a = mount(url, None, "--cache-dir", cache)
    b = mount(url, None, "--cache-dir", cache)
    errors = []

    def reader(m, order):
        try:
            read_all(m, data, order)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=reader, args=(a, range(data.nchunks))),
        threading.Thread(target=reader, args=(b, reversed(range(data.nchunks)))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    a.umount()
    b.umount()
    http_server.reset_log()
    c = mount(url, None, "--cache-dir", cache)
    http_server.reset_log()
    read_all(c, data)
    assert http_server.count() == 0


def test_stats_and_cache_commands(mount, run_cli, http_server, tar, tmp_path):
    data, url = tar
    cache = tmp_path / "cache"
    m = mount(url, None, "--cache-dir", cache)
    read_all(m, data, range(6))
    res = run_cli("stats", m.path)
    assert res.rc == 0, res.describe()
    for word in (
        "requests:",
        "latency:",
        "memory cache:",
        "disk cache:",
        "merging:",
        "read-ahead:",
    ):
        assert word in res.stdout
    res = run_cli("stats", m.path, "--json")
    s = json.loads(res.stdout)
    assert s["http"]["requests"] >= 3 and s["http"]["latency_ms"]["p50"] is not None
    assert s["fetch"]["readahead_windows"] >= 1
    m.umount()
    res = run_cli("stats", tmp_path)
    assert res.rc == 1 and "not a mounted lindifuse" in res.stderr

    info = json.loads(run_cli("cache", "info", "--cache-dir", cache, "--json").stdout)
    assert info["entries"] > 6 and info["urls"] == 1
    res = run_cli("cache", "info", "--cache-dir", cache)
    assert "entries:" in res.stdout and str(cache) in res.stdout
    res = run_cli("cache", "clear", "--cache-dir", cache)
    assert res.rc == 0 and "removed" in res.stdout, res.describe()
    info = json.loads(run_cli("cache", "info", "--cache-dir", cache, "--json").stdout)
    assert info["entries"] == 0 and info["bytes"] == 0
    # default directory: under $XDG_CACHE_HOME (the test session's own)
    res = run_cli("cache", "info")
    assert res.rc == 0 and os.environ["XDG_CACHE_HOME"] in res.stdout


def test_no_cache_flag(mount, http_server, tar, tmp_path):
    data, url = tar
    cache = tmp_path / "cache"
    m = mount(url, None, "--cache-dir", cache, "--no-cache")
    read_all(m, data, range(3))
    assert stats(m)["disk_cache"] == {"enabled": False}
    assert not cache.exists()
