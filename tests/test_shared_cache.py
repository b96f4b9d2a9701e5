"""Several mounts sharing one persistent cache directory keep its total under the smallest
``--cache-size`` among them (issue 9, item 6); a bound registered by a process that died is
ignored."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from harness import wait_until
from remote_data import build_tar

from lindifuse.cache.disk import DiskCache

CHUNK = 40_000


def cache_bytes(run_cli, cache) -> int:
    res = run_cli("cache", "info", "--cache-dir", cache, "--json")
    assert res.rc == 0, res.describe()
    return json.loads(res.stdout)["bytes"]


def test_total_stays_under_the_smallest_bound(mount, run_cli, http_server, tmp_path):
    data = build_tar(http_server.root / "d.lindi.tar", 24, CHUNK)  # 960 kB of chunks
    url = http_server.url("d.lindi.tar")
    cache = tmp_path / "cache"
    small = 6 * CHUNK
    big = mount(url, None, "--cache-dir", cache, "--cache-size", "64M", "--no-readahead")
    tiny = mount(url, None, "--cache-dir", cache, "--cache-size", str(small), "--no-readahead")
    for i in range(data.nchunks):  # everything is read through the big mount only
        assert (big.path / "x" / str(i)).read_bytes() == data.expected(i)

    def written() -> int:
        return json.loads(os.getxattr(big.path, "user.lindifuse.stats"))["disk_cache"]["writes"]

    assert wait_until(lambda: written() >= data.nchunks, 10)
    assert 0 < cache_bytes(run_cli, cache) <= small
    tiny.umount()
    # the small bound is gone with its mount: the big one may use its own again
    big.umount()
    big = mount(url, None, "--cache-dir", cache, "--cache-size", "64M", "--no-readahead")
    for i in range(data.nchunks):
        assert (big.path / "x" / str(i)).read_bytes() == data.expected(i)
    assert wait_until(lambda: written() >= 1, 10)
    big.umount()
    assert cache_bytes(run_cli, cache) > small


def test_bound_of_a_dead_process_is_ignored(tmp_path):
    d = str(tmp_path / "c")
    # a process that registers a tiny bound and dies without closing the store
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[2]);"
        "from lindifuse.cache.disk import DiskCache; DiskCache(sys.argv[1], 1000); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, d, os.getcwd()], check=True)
    with sqlite3.connect(os.path.join(d, "v1", "index.sqlite")) as db:
        assert db.execute("SELECT max_bytes FROM limits").fetchall() == [(1000,)]
    c = DiskCache(d, 10 * 2**20)
    try:
        assert c.effective_max() == 10 * 2**20  # the dead process's 1000 does not count
        other = DiskCache(d, 50_000)
        assert c.effective_max() == 50_000  # a live one does
        other.close()
        assert c.effective_max() == 10 * 2**20
        c.put_many([(f"k{i}", "u", os.urandom(20_000)) for i in range(10)])
        assert c.info()["bytes"] == 200_000
    finally:
        c.close()
