"""Several readers of one mount (the Dask workers of a node): no byte of the origin is fetched
twice. The merge planner does not bridge a gap over bytes already served or being fetched by
someone else (``plan_merges(blocked=...)``, ``IntervalSet``); the fetcher against a loopback
server, with concurrent readers and a read-ahead window with holes, fetches each byte once."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from lindifuse.cache.memory import MemoryCache
from lindifuse.fs.fetch import Fetcher, IntervalSet, plan_merges
from lindifuse.sources.http import HttpClient

# -- pure ---------------------------------------------------------------------------------------


def test_interval_set_merges_touching_runs_and_finds_overlaps():
    s = IntervalSet()
    for a, b in [(10, 20), (30, 40), (20, 25), (50, 60), (0, 5), (35, 52)]:
        s.add(a, b)
    assert s.runs() == [(0, 5), (10, 25), (30, 60)]
    assert s.overlaps(4, 6) and s.overlaps(24, 31) and s.overlaps(59, 100)
    assert not s.overlaps(5, 10) and not s.overlaps(25, 30) and not s.overlaps(60, 70)
    assert not s.overlaps(7, 7)  # empty
    s.add(5, 10)
    assert s.runs() == [(0, 25), (30, 60)] and len(s) == 2


def test_interval_set_against_a_byte_map():
    rng = np.random.default_rng(3)
    s, ref = IntervalSet(), np.zeros(1000, bool)
    for _ in range(200):
        a = int(rng.integers(0, 990))
        b = a + int(rng.integers(0, 10))
        s.add(a, b)
        ref[a:b] = True
        c = int(rng.integers(0, 990))
        d = c + int(rng.integers(1, 10))
        assert s.overlaps(c, d) == bool(ref[c:d].any()), (c, d, s.runs())
    runs = s.runs()
    assert all(e < s2 for (_, e), (s2, _) in zip(runs, runs[1:], strict=False))  # disjoint, apart


def test_plan_merges_does_not_bridge_a_blocked_gap():
    ranges = [(0, 10), (20, 10), (40, 10)]
    held = IntervalSet([(32, 35)])  # bytes inside the second gap are held elsewhere
    spans = plan_merges(ranges, max_gap=100, max_size=1000, blocked=held.overlaps)
    assert [(s.start, s.end) for s in spans] == [(0, 30), (40, 50)]
    # without the predicate: one span, as before
    assert [(s.start, s.end) for s in plan_merges(ranges, 100, 1000)] == [(0, 50)]
    # overlapping and touching ranges have no gap: never split
    spans = plan_merges([(0, 10), (10, 10), (15, 10)], 100, 1000, blocked=lambda a, b: True)
    assert [(s.start, s.end) for s in spans] == [(0, 25)]


# -- the fetcher against a real server ------------------------------------------------------------


CHUNK = 4096
N = 64


@pytest.fixture
def served(http_server):
    data = np.random.default_rng(1).integers(0, 256, CHUNK * N, dtype=np.uint8).tobytes()
    (http_server.root / "blob.bin").write_bytes(data)
    return http_server, data


def byte_hits(srv, size: int) -> np.ndarray:
    from httpserver import parse_range

    hits = np.zeros(size, np.int32)
    for r in srv.requests_for("blob.bin"):
        if r.method != "GET":
            continue
        rng = parse_range(r.range, size)
        if isinstance(rng, tuple):
            hits[rng[0] : rng[1] + 1] += 1
        elif rng is None:
            hits += 1
    return hits


def test_concurrent_readers_and_read_ahead_fetch_each_byte_once(served):
    """Readers in scattered order (four "workers", each reading every chunk) and read-ahead
    windows with holes where chunks are cached or in flight: each byte fetched once."""
    srv, data = served
    url = srv.url("blob.bin")
    srv.latency = 0.005

    async def main():
        http = HttpClient()
        f = Fetcher(http, MemoryCache(64 * 2**20), None, merge_gap=1 << 20)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(f.run)

                async def reader(order):
                    for i in order:
                        got = await f.get(url, i * CHUNK, CHUNK)
                        assert got == data[i * CHUNK : (i + 1) * CHUNK]

                async with trio.open_nursery() as readers:
                    rng = np.random.default_rng(5)
                    for _ in range(4):
                        readers.start_soon(reader, [int(i) for i in rng.permutation(N)])
                    readers.start_soon(f.prefetch, url, [(i * CHUNK, CHUNK) for i in range(N)])
                nursery.cancel_scope.cancel()
        finally:
            await http.aclose()

    trio.run(main)
    hits = byte_hits(srv, len(data))
    assert hits.max() == 1 and hits.min() == 1, np.unique(hits, return_counts=True)
