"""Fast tests of the pure and in-process parts of remote reading: the merge planner, DANDI
signed-URL expiry and host rules, the persistent store (checksums, eviction, sharing, clear),
and the fetcher against a loopback server (merging, disk hits, validators, DANDI resolution)."""

from __future__ import annotations

import calendar
import os
import time

import pytest
import trio

from lindifuse.cache.disk import AsyncDiskCache, DiskCache, make_key
from lindifuse.cache.memory import MemoryCache
from lindifuse.fs.fetch import Fetcher, plan_merges
from lindifuse.sources.dandi import DandiResolver, parse_hosts, reuse_until, signed_url_expiry
from lindifuse.sources.http import HttpClient

# -- merge planner ---------------------------------------------------------------------------


def test_plan_merges_joins_neighbours_within_gap_and_size():
    spans = plan_merges([(0, 10), (12, 10), (100, 5)], max_gap=2, max_size=1000)
    assert [(s.start, s.end, len(s.ranges)) for s in spans] == [(0, 22, 2), (100, 105, 1)]


def test_plan_merges_respects_max_size_and_dedupes_and_sorts():
    ranges = [(30, 10), (0, 10), (10, 10), (20, 10), (0, 10)]
    spans = plan_merges(ranges, max_gap=0, max_size=20)
    assert [(s.start, s.end) for s in spans] == [(0, 20), (20, 40)]
    assert sum(len(s.ranges) for s in spans) == 4


def test_plan_merges_overlaps_and_oversized_ranges():
    spans = plan_merges([(0, 100), (50, 10), (200, 5000)], max_gap=0, max_size=1000)
    assert [(s.start, s.end) for s in spans] == [(0, 100), (200, 5200)]
    assert plan_merges([]) == []


# -- DANDI -----------------------------------------------------------------------------------


def test_signed_url_expiry_forms():
    t0 = calendar.timegm((2024, 1, 2, 3, 4, 5, 0, 0, 0))
    url = "https://s3/x?X-Amz-Date=20240102T030405Z&X-Amz-Expires=600&X-Amz-Signature=ab"
    assert signed_url_expiry(url) == t0 + 600
    assert signed_url_expiry("https://s3/x?Expires=1700000000&Signature=z") == 1700000000
    assert signed_url_expiry("https://s3/x?foo=1") is None
    assert signed_url_expiry("https://s3/x?X-Amz-Date=garbage&X-Amz-Expires=5") is None
    # reused until a margin before the expiry (10% of what is left, at most a minute)
    assert reuse_until(url, t0) == t0 + 600 - 60
    short = "https://s3/x?Expires=1010"
    assert reuse_until(short, 1000) == pytest.approx(1009)


def test_dandi_hosts_and_auth():
    r = DandiResolver(parse_hosts("api.example.org, 127.0.0.1:8080"), "KEY")
    assert r.is_api("https://api.example.org/api/assets/1/download/")
    assert r.is_api("http://127.0.0.1:8080/x")
    assert not r.is_api("http://127.0.0.1:9090/x")
    assert r.auth_headers("http://127.0.0.1:8080/x") == {"Authorization": "token KEY"}
    assert r.auth_headers("https://bucket.s3.amazonaws.com/x") == {}
    assert parse_hosts(None) == ("api.dandiarchive.org",)
    r.remember("u", "https://s3/x?Expires=1010", now=1000)
    assert r.cached("u", now=1005) == "https://s3/x?Expires=1010"
    assert r.cached("u", now=1009.5) is None and r.stats.expired == 1


# -- the persistent store ----------------------------------------------------------------------


def _items(n, size, url="http://h/x"):
    return [(make_key(url, "etag:1", i * size, size), url, os.urandom(size)) for i in range(n)]


def test_store_roundtrip_inline_and_files(tmp_path):
    c = DiskCache(str(tmp_path), 10 * 2**20, inline_max=1000)
    small, big = _items(3, 100), _items(3, 5000)
    c.put_many(small + big)
    for k, _, data in small + big:
        assert c.get(k) == data
    assert c.get(make_key("http://h/x", "etag:2", 0, 100)) is None  # other validator
    info = c.info()
    assert info["entries"] == 6 and info["files"] == 3 and info["bytes"] == 15300
    c.close()
    # survives a restart
    c2 = DiskCache(str(tmp_path), 10 * 2**20, inline_max=1000)
    assert c2.get(big[0][0]) == big[0][2]
    c2.close()


def test_store_drops_damaged_entries(tmp_path):
    c = DiskCache(str(tmp_path), 10 * 2**20, inline_max=1000)
    items = _items(3, 5000)
    c.put_many(items)
    files = sorted(
        os.path.join(d, n) for d, _, ns in os.walk(c.data_dir) for n in ns if not n.startswith(".")
    )
    assert len(files) == 3
    with open(files[0], "r+b") as f:  # flipped bytes
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    os.truncate(files[1], 10)  # torn write
    os.unlink(files[2])  # lost file
    for k, _, _ in items:
        assert c.get(k) is None
    assert c.stats.corrupt == 3
    assert c.info()["entries"] == 0  # dropped, so the next read refetches and stores again
    c.close()


@pytest.mark.parametrize("read_mmap", [0, 2**30])
def test_store_get_many_spans_batches_misses_and_damage(tmp_path, read_mmap):
    """get_many selects GET_BATCH keys per query: every stored key comes back intact across
    batch edges, missing keys and damaged entries are left out (the damaged dropped), and the
    hits are touched for LRU like get(); with the index read by pread and through a mapping."""
    from lindifuse.cache import disk

    c = DiskCache(str(tmp_path), 100 * 2**20, inline_max=1000, read_mmap=read_mmap)
    assert c.read_mmap == read_mmap  # this SQLite maps up to 2 GiB
    small = _items(disk.GET_BATCH + 7, 200)  # inline rows, more than one batch
    big = _items(4, 5000, url="http://h/big")  # content files
    c.put_many(small + big)
    fname = _only_file(c, big[1][0])
    victim = os.path.join(c.data_dir, fname[:2], fname)
    os.truncate(victim, 10)
    absent = [make_key("http://h/none", "etag:1", i, 1) for i in range(3)]
    ask = [k for k, _, _ in small] + absent + [k for k, _, _ in big]
    got = c.get_many(ask)
    want = {k: d for k, _, d in small + big if k != big[1][0]}
    assert got == want
    assert c.stats.hits == len(want) and c.stats.misses == len(absent) + 1
    assert c.stats.corrupt == 1 and c.get(big[1][0]) is None  # dropped, refetched next time
    assert c._touched == {}  # all were stored within the minute: no row is rewritten
    c.touch_min = 0
    assert c.get_many(ask) == want
    assert set(c._touched) == set(want)
    assert c.get_many([]) == {}
    c.close()


def test_store_touches_an_entry_once_a_minute(tmp_path, monkeypatch):
    """A read records the access time only when the recorded one is over TOUCH_MIN_SECONDS
    old, and the flush writes it: the eviction order is kept to the minute."""
    from lindifuse.cache import disk

    c = DiskCache(str(tmp_path), 10 * 2**20, inline_max=1000)
    items = _items(2, 100)
    (k, _, data), (k2, _, _) = items
    c.put_many(items)
    assert c.get(k) == data and c._touched == {}
    later = time.time() + disk.TOUCH_MIN_SECONDS + 5
    monkeypatch.setattr(disk.time, "time", lambda: later)
    assert c.get(k) == data
    assert c._touched == {k: later}
    c.flush_touched(force=True)
    with c._lock:
        rows = dict(c._read_db.execute("SELECT key, atime FROM entries"))
    assert rows[k] == later and rows[k2] < later - disk.TOUCH_MIN_SECONDS
    assert c.get(k) == data and c._touched == {}  # just touched: not again
    c.close()


def test_store_removes_only_old_orphans(tmp_path):
    """remove_orphans deletes content files older than min_age that no row names (a file of an
    unknown key, a leftover temporary file, an older file of a key whose row names another);
    every file a row names, and a young orphan, stay, and the entries still read back."""
    c = DiskCache(str(tmp_path), 100 * 2**20, inline_max=1000)
    items = _items(3, 5000) + _items(2, 100, url="http://h/small")
    c.put_many(items)
    named = _only_file(c, items[0][0])
    folder = os.path.join(c.data_dir, named[:2])
    orphans = [
        os.path.join(folder, f"{make_key('http://h/gone', 'e', 0, 1)}-0badc0de"),
        os.path.join(folder, f".tmp-{named}"),
        os.path.join(folder, f"{items[1][0]}-11111111"),  # the key exists, its row names another
    ]
    young = os.path.join(folder, f"{make_key('http://h/new', 'e', 0, 1)}-12345678")
    for p in [*orphans, young]:
        with open(p, "wb") as f:
            f.write(b"x")
    old = time.time() - 7200
    for d, _, names in os.walk(c.data_dir):
        for n in names:
            if os.path.join(d, n) != young:
                os.utime(os.path.join(d, n), (old, old))
    assert c.remove_orphans(min_age=3600) == len(orphans)
    assert not any(os.path.exists(p) for p in orphans) and os.path.exists(young)
    for k, _, data in items:
        assert c.get(k) == data
    assert c.remove_orphans(min_age=0) == 1  # now the young one too
    c.close()


def _only_file(c: DiskCache, key: str) -> str:
    with c._lock:
        return c._read_db.execute("SELECT file FROM entries WHERE key = ?", (key,)).fetchone()[0]


def test_store_evicts_least_recently_used(tmp_path):
    c = DiskCache(str(tmp_path), 10_000, inline_max=100)
    c.touch_min = 0  # every read counts (by default, to the minute: the next test)
    items = _items(5, 1000)
    c.put_many(items[:5])
    for k, _, _ in items[:2]:
        c.get(k)  # recently used
    c.flush_touched(force=True)
    more = _items(8, 1000, url="http://h/y")
    c.put_many(more)  # 13000 > 10000: evict down to 9000
    info = c.info()
    assert info["bytes"] <= 10_000
    assert c.stats.evictions >= 4
    assert c.get(items[2][0]) is None  # least recently used went first
    assert c.get(more[-1][0]) == more[-1][2]
    c.close()


def test_store_shared_by_two_instances_and_clear(tmp_path):
    a = DiskCache(str(tmp_path), 10 * 2**20, inline_max=1000)
    b = DiskCache(str(tmp_path), 10 * 2**20, inline_max=1000)
    items = _items(4, 3000)
    a.put_many(items[:2])
    b.put_many(items[1:])  # one key written by both
    for k, _, data in items:
        assert a.get(k) == data and b.get(k) == data
    assert a.info()["entries"] == 4
    n, nbytes = b.clear()
    assert (n, nbytes) == (4, 12000)
    assert a.get(items[0][0]) is None
    assert not [n for _, _, ns in os.walk(a.data_dir) for n in ns]
    a.close()
    b.close()


def test_store_damaged_index_disables_cache(tmp_path):
    c = DiskCache(str(tmp_path), 2**20)
    c.close()
    db = os.path.join(c.root, "index.sqlite")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    with open(db, "wb") as f:
        f.write(b"SQLite format 3\0" + os.urandom(8000))
    try:
        c2 = DiskCache(str(tmp_path), 2**20)
    except Exception:
        return  # refusing to open is fine too: the daemon then runs without a disk cache
    assert c2.get("k") is None
    c2.close()


# -- the fetcher against a loopback server ----------------------------------------------------


def _serve_blob(srv, size=1 << 20):
    data = os.urandom(size)
    (srv.root / "blob.bin").write_bytes(data)
    return data, srv.url("blob.bin")


def test_fetcher_merges_concurrent_neighbouring_ranges(http_server):
    data, url = _serve_blob(http_server)
    http_server.latency = 0.02

    async def main():
        http = HttpClient()
        f = Fetcher(http, MemoryCache(), merge_window=0.005)
        got = {}
        async with trio.open_nursery() as n:
            for i in range(8):

                async def one(i=i):
                    got[i] = await f.get(url, i * 4096 + 100, 4000)

                n.start_soon(one)
        await http.aclose()
        return f, got

    f, got = trio.run(main)
    for i in range(8):
        assert got[i] == data[i * 4096 + 100 :][:4000]
    assert http_server.count("blob.bin") == 1
    assert f.stats.merged_requests == 1 and f.stats.merged_ranges == 8


def test_fetcher_disk_cache_keyed_by_validator(http_server, tmp_path):
    data, url = _serve_blob(http_server)

    async def read(ranges):
        http = HttpClient()
        disk = AsyncDiskCache(DiskCache(str(tmp_path / "c"), 2**30))
        f = Fetcher(http, MemoryCache(), disk)
        out = [await f.get(url, o, s) for o, s in ranges]
        await disk.aclose()
        await http.aclose()
        return out, f, http

    ranges = [(0, 70000), (500000, 1000)]
    out, f, http = trio.run(read, ranges)
    assert out == [data[o : o + s] for o, s in ranges]
    assert http.stats.probes == 1  # one validator probe for the URL, then the data
    http_server.reset_log()
    out, f, http = trio.run(read, ranges)
    assert out == [data[o : o + s] for o, s in ranges]
    assert http_server.count("blob.bin") == 1  # only the probe: both ranges from disk
    # the object is replaced: a new validator, so nothing stale is served
    time.sleep(0.01)
    new = os.urandom(len(data))
    (http_server.root / "blob.bin").write_bytes(new)
    out, f, http = trio.run(read, ranges)
    assert out == [new[o : o + s] for o, s in ranges]


def test_http_client_resolves_dandi_urls_once(tmp_path):
    from httpserver import RangeServer

    (tmp_path / "s3").mkdir()
    (tmp_path / "api").mkdir()
    data = os.urandom(10000)
    (tmp_path / "s3" / "blob.bin").write_bytes(data)
    with RangeServer(tmp_path / "s3") as s3, RangeServer(tmp_path / "api") as api:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        api.add_redirect(
            "api/assets/a1/download/",
            s3.url(f"blob.bin?X-Amz-Date={stamp}&X-Amz-Expires=3600&X-Amz-Signature=s"),
        )
        asset = api.url("api/assets/a1/download/")

        async def main():
            http = HttpClient(dandi=DandiResolver((f"127.0.0.1:{api.port}",), "SECRET"))
            out = [await http.get_range(asset, i * 1000, 1000) for i in range(5)]
            s3.fail_next("blob.bin", 403)  # the signature was revoked: resolve again
            out.append(await http.get_range(asset, 5000, 1000))
            await http.aclose()
            return out, http

        out, http = trio.run(main)
        assert out == [data[i * 1000 : (i + 1) * 1000] for i in range(6)]
        assert api.count() == 2  # resolved once, then again after the 403
        assert all(r.authorization == "token SECRET" for r in api.log)
        assert all(r.authorization is None for r in s3.log)
        assert all("X-Amz-Signature" in r.query for r in s3.log)
        assert http.dandi.stats.forbidden == 1
        assert http.validators[asset]  # validators are keyed by the stable asset URL


def test_large_ranges_through_worker_threads_retry_and_fall_back(http_server):
    """Ranges of at least 256 KiB go through blocking connections in worker threads: the same
    checks, retries and fallbacks as the async client."""
    data, url = _serve_blob(http_server, 3 << 20)
    srv = http_server
    size = 1 << 20

    async def main():
        http = HttpClient(retries=3, backoff=0.01)
        out = []
        out.append(await http.get_range(url, 5, size))  # plain
        srv.fail_next("blob.bin", 500, 2)
        out.append(await http.get_range(url, size, size))  # two 500s, then served
        srv.fail_next("blob.bin", "truncate")
        out.append(await http.get_range(url, 2 * size, size))  # half a body: retried
        srv.fail_next("blob.bin", "reset")
        out.append(await http.get_range(url, 7, size))  # connection closed: retried
        srv.ignore_range.add("blob.bin")
        out.append(await http.get_range(url, 11, size))  # 200 with the whole body: sliced
        srv.ignore_range.discard("blob.bin")
        srv.add_redirect("moved.bin", "blob.bin?X-Sig=1")
        out.append(await http.get_range(srv.url("moved.bin"), 13, size))  # redirect: followed
        with pytest.raises(Exception) as e:
            await http.get_range(url, len(data) - 10, size)  # past the end
        await http.aclose()
        return out, http.stats, str(e.value)

    out, stats, err = trio.run(main)
    offsets = [5, size, 2 * size, 7, 11, 13]
    assert out == [data[o : o + size] for o in offsets]
    # (the reset hit a reused keep-alive connection: replaced at once, not counted as a retry)
    assert stats.retries >= 3 and stats.full_body_fallbacks == 1
    assert "blob.bin" in err and "\n" not in err


def test_large_ranges_of_dandi_assets(tmp_path):
    from httpserver import RangeServer

    (tmp_path / "s3").mkdir()
    (tmp_path / "api").mkdir()
    data = os.urandom(2 << 20)
    (tmp_path / "s3" / "big.bin").write_bytes(data)
    with RangeServer(tmp_path / "s3") as s3, RangeServer(tmp_path / "api") as api:
        api.add_redirect("api/assets/b2/download/", s3.url("big.bin?Expires=9999999999&Sig=x"))
        asset = api.url("api/assets/b2/download/")

        async def main():
            http = HttpClient(dandi=DandiResolver((f"127.0.0.1:{api.port}",), "K"))
            a = await http.get_range(asset, 0, 1 << 20)
            s3.fail_next("big.bin", 403)
            b = await http.get_range(asset, 1 << 20, 1 << 20)
            await http.aclose()
            return a + b

        assert trio.run(main) == data
        assert api.count() == 2 and all(r.authorization == "token K" for r in api.log)
        assert all(r.authorization is None for r in s3.log)
