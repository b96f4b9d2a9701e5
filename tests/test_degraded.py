"""Degraded and offline serving (issue 9, item 1): when the origin fails (5xx after the retries,
connection refused, a server that never answers, DNS failure) a range cached earlier in the
persistent cache is served (stale-if-error), with one warning per URL and counted in the stats;
``--offline`` never touches the network. A remote SOURCE mounted once mounts again from the
cache. Ranges that were never cached fail with EIO, and the mount reads normally again once the
server is healthy.

Every fault comes from the loopback RangeServer (tests/httpserver.py), except the DNS failure,
which no server can produce: that one is a unit test with an httpx mock transport.
"""

from __future__ import annotations

import os

import pytest
from harness import expect_eio
from harness import mount_stats as stats
from plain_lindi import write_json
from remote_data import build_tar

CHUNK = 40_000
N = 16
CACHED = range(0, 8)  # read by the first mount, so cached
UNCACHED = 12  # never read before the fault


def read_chunk(m, i: int) -> bytes:
    return (m.path / "x" / str(i)).read_bytes()


@pytest.fixture
def cached_tar(mount, http_server, tmp_path):
    """A remote .lindi.tar of which chunks 0-7 were read once through a mount (so the head,
    index, lindi.json and those chunks are in ``cache``)."""
    data = build_tar(http_server.root / "d.lindi.tar", N, CHUNK)
    url = http_server.url("d.lindi.tar")
    cache = tmp_path / "cache"
    m = mount(url, None, "--cache-dir", cache, "--no-readahead")
    for i in CACHED:
        assert read_chunk(m, i) == data.expected(i)
    m.umount()
    http_server.reset_log()
    return data, url, cache


@pytest.mark.parametrize("fault", ["http-500", "refused", "stall", "503-retry-after-too-long"])
def test_origin_failure_serves_cached_ranges(mount, http_server, cached_tar, fault):
    data, url, cache = cached_tar
    srv = http_server
    if fault == "http-500":
        srv.outage = 500
    elif fault == "refused":
        srv.stop()
    elif fault == "stall":
        srv.outage = "stall"
    else:
        srv.fail_next("d.lindi.tar", 503, 1000, retry_after="3600")
    # the source itself mounts from the cache; --timeout 1 bounds each request
    m = mount(url, None, "--cache-dir", cache, "--no-readahead", "--timeout", "1")
    for i in CACHED:
        assert read_chunk(m, i) == data.expected(i), i
    for i in CACHED:  # again (memory cache): still right
        assert read_chunk(m, i) == data.expected(i), i
    # a range never cached fails, within the documented bound (twice --timeout)
    elapsed = expect_eio(m.path / "x" / str(UNCACHED))
    assert elapsed < 2 * 1 + 1.0, elapsed
    s = stats(m)
    assert s["fetch"]["stale_urls"] == 1
    assert s["fetch"]["stale_served"] >= len(CACHED)  # head, index, lindi.json and 8 chunks
    warnings = [ln for ln in m.log_text().splitlines() if "stale-if-error" in ln]
    assert len(warnings) == 1 and url in warnings[0], warnings
    # the fault was really injected (and the head request was among its victims)
    statuses = [r.status for r in srv.log]
    if fault == "http-500":
        assert statuses and set(statuses) == {500}, statuses
    elif fault == "refused":
        assert statuses == []
    elif fault == "stall":
        assert srv.stalled >= 2 and set(statuses) == {0}, statuses
    else:
        assert statuses and set(statuses) == {503}, statuses
    # the server heals: the same mount reads everything again, with the right bytes
    if fault == "refused":
        srv.start()
    srv.outage = None
    srv.release_stalls()
    srv.reset()
    for i in range(N):
        assert read_chunk(m, i) == data.expected(i), i
    assert "origin answers again" in m.log_text()
    m.umount()


def test_offline_never_touches_the_network(mount, run_cli, http_server, cached_tar):
    data, url, cache = cached_tar
    srv = http_server
    m = mount(url, None, "--cache-dir", cache, "--offline")
    for i in CACHED:
        assert read_chunk(m, i) == data.expected(i), i
    elapsed = expect_eio(m.path / "x" / str(UNCACHED))
    assert elapsed < 0.5, elapsed  # at once
    assert f"x/{UNCACHED}" in m.log_text() and "--offline" in m.log_text()
    # read-ahead is on in this mount: it too stays off the network
    for i in CACHED:
        read_chunk(m, i)
    s = stats(m)
    assert s["http"]["offline"] is True and s["http"]["requests"] == 0
    assert s["fetch"]["stale_served"] >= len(CACHED)
    res = run_cli("stats", m.path)
    assert res.rc == 0 and "OFFLINE" in res.stdout, res.describe()
    m.umount()
    assert srv.count() == 0, srv.log  # not one request, not even the head
    # a source that was never mounted: one line, nothing mounted
    res = mount(srv.url("other.lindi.tar"), None, "--cache-dir", cache, "--offline", check=False)
    assert res.result.rc != 0
    err = res.result.stderr.strip().splitlines()
    assert len(err) == 1 and "other.lindi.tar" in err[0] and "--offline" in err[0], err
    assert not res.is_mounted()
    assert srv.count() == 0


def test_remote_json_and_its_chunk_urls_mount_offline(mount, http_server, tmp_path):
    """A remote lindi.json larger than the head request, whose refs point at another URL of
    the server: both the reference file and the chunks come from the cache offline."""
    srv = http_server
    blob = os.urandom(300_000)
    (srv.root / "data.bin").write_bytes(blob)
    refs = {".zgroup": {"zarr_format": 2}}
    refs.update({f"k/{i}": [srv.url("data.bin"), i * 1000, 1000] for i in range(200)})
    (srv.root / "whole.bin").write_bytes(b"W" * 5000)
    refs["whole"] = [srv.url("whole.bin")]  # its size comes from the server (or the cache)
    write_json(srv.root / "r.lindi.json", {"refs": refs})
    assert (srv.root / "r.lindi.json").stat().st_size > 1536
    cache = tmp_path / "cache"
    m = mount(srv.url("r.lindi.json"), None, "--cache-dir", cache, "--no-readahead")
    for i in range(0, 200, 2):
        assert (m.path / "k" / str(i)).read_bytes() == blob[i * 1000 : i * 1000 + 1000]
    assert (m.path / "whole").read_bytes() == b"W" * 5000
    m.umount()
    srv.reset_log()
    url = srv.url("r.lindi.json")
    for extra in (["--offline"], ["--timeout", "1"]):
        if extra[0] == "--timeout":
            srv.stop()  # connection refused
        m = mount(url, None, "--cache-dir", cache, *extra)
        assert sorted(os.listdir(m.path / "k"), key=int) == [str(i) for i in range(200)]
        for i in range(0, 200, 2):
            assert (m.path / "k" / str(i)).read_bytes() == blob[i * 1000 : i * 1000 + 1000]
        expect_eio(m.path / "k" / "1")
        assert (m.path / "whole").read_bytes() == b"W" * 5000
        s = stats(m)
        assert s["fetch"]["stale_urls"] == 3  # the lindi.json, data.bin and whole.bin
        m.umount()
    srv.start()
    assert srv.count() == 0


def test_replaced_object_is_not_served_stale(mount, http_server, cached_tar):
    """The cache serves only the version the origin last reported: after the object was
    replaced (and a mount saw the new version), the old bytes are never served, even when the
    origin fails afterwards."""
    data, url, cache = cached_tar
    new = build_tar(data.path, N, CHUNK, seed=5)
    m = mount(url, None, "--cache-dir", cache, "--no-readahead")
    assert read_chunk(m, 0) == new.expected(0)
    m.umount()
    http_server.outage = 500
    m = mount(url, None, "--cache-dir", cache, "--no-readahead", "--timeout", "1")
    assert read_chunk(m, 0) == new.expected(0)  # cached under the new version
    expect_eio(m.path / "x" / "1")  # cached only under the old version: not served
    m.umount()


def test_dns_failure_serves_cached_ranges(tmp_path):
    """DNS failure (no real server can produce it): an httpx transport that raises what httpx
    raises when a name does not resolve."""
    import httpx
    import trio

    from lindifuse.cache.disk import AsyncDiskCache, DiskCache
    from lindifuse.cache.memory import MemoryCache
    from lindifuse.errors import RefError
    from lindifuse.fs.fetch import Fetcher
    from lindifuse.sources.http import HttpClient

    blob = os.urandom(50_000)
    url = "http://data.lindifuse-test.invalid/blob.bin"
    requests = []

    def healthy(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        a, b = request.headers["range"].removeprefix("bytes=").split("-")
        a, b = int(a), int(b)
        return httpx.Response(
            206,
            content=blob[a : b + 1],
            headers={"ETag": '"v1"', "Content-Range": f"bytes {a}-{b}/{len(blob)}"},
        )

    def dns_fails(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)

    async def run(handler, ranges):
        http = HttpClient(timeout=2, backoff=0.01, bulk_min=None)
        await http._client.aclose()
        http._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        disk = AsyncDiskCache(DiskCache(str(tmp_path / "c"), 2**30))
        f = Fetcher(http, MemoryCache(), disk)
        out = []
        try:
            for off, size in ranges:
                try:
                    out.append(await f.get(url, off, size))
                except RefError as e:
                    out.append(e)
        finally:
            await disk.aclose()
            await http.aclose()
        return out, f.stats

    got, _ = trio.run(run, healthy, [(0, 1000), (5000, 2000)])
    assert got == [blob[:1000], blob[5000:7000]]
    requests.clear()
    got, st = trio.run(run, dns_fails, [(0, 1000), (5000, 2000), (9000, 10)])
    assert got[:2] == [blob[:1000], blob[5000:7000]]
    assert isinstance(got[2], RefError) and "Name or service not known" in str(got[2])
    assert st.stale_served == 2 and st.stale_urls == 1
    assert 0 < len(requests) <= 10  # a bounded number of attempts
