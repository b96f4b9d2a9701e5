"""Unit tests of lindifuse.cache.MemoryCache: the bytes bound, LRU order, oversized entries,
and single-flight fetching under concurrency (shared results, shared errors, a cancelled
fetcher whose waiters carry on)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from lindifuse.cache.memory import MemoryCache
from lindifuse.errors import RefError

# -- LRU and the bytes bound -----------------------------------------------------------------


def test_put_peek_and_bound():
    c = MemoryCache(max_bytes=1000)
    for i in range(10):
        c.put(i, bytes([i]) * 200)  # each under max/4
        assert c.nbytes <= 1000
    assert c.nbytes == 1000
    assert [k for k in range(10) if c.peek(k) is not None] == [5, 6, 7, 8, 9]
    assert c.stats.evictions == 5
    assert c.peek(9) == b"\x09" * 200


def test_lru_order_follows_use():
    c = MemoryCache(max_bytes=1000)
    for k in "abcde":
        c.put(k, b"x" * 200)
    assert c.peek("a") is not None  # a becomes most recently used
    c.put("f", b"y" * 200)  # evicts b, the least recently used
    assert c.peek("b") is None
    assert all(c.peek(k) is not None for k in "acdef")


def test_replacing_a_key_keeps_the_count_exact():
    c = MemoryCache(max_bytes=1000)
    c.put("a", b"1" * 100)
    c.put("a", b"2" * 150)
    assert c.nbytes == 150 and c.peek("a") == b"2" * 150
    c.discard("a")
    assert c.nbytes == 0 and c.peek("a") is None
    c.discard("a")  # discarding a missing key is fine
    assert c.nbytes == 0


def test_oversized_entries_are_returned_but_not_kept():
    c = MemoryCache(max_bytes=1000)
    c.put("small", b"s" * 100)
    c.put("big", b"b" * 251)  # over a quarter of the budget
    assert c.peek("big") is None
    assert c.peek("small") is not None and c.nbytes == 100

    async def main():
        return await c.get("big2", _returning(b"B" * 600))

    assert trio.run(main) == b"B" * 600
    assert c.peek("big2") is None and c.nbytes == 100


def test_bound_holds_under_random_use():
    import random

    rng = random.Random(7)
    c = MemoryCache(max_bytes=10_000)
    for _ in range(2000):
        k = rng.randrange(100)
        if rng.random() < 0.7:
            c.put(k, b"z" * rng.randrange(0, 3000))
        else:
            c.peek(k)
        assert c.nbytes <= 10_000
        assert c.nbytes == sum(len(v) for v in c._lru.values())


# -- single flight -----------------------------------------------------------------------------


def _returning(value: bytes, calls: list | None = None, delay: float = 0.0):
    async def fetch() -> bytes:
        if calls is not None:
            calls.append(1)
        if delay:
            await trio.sleep(delay)
        return value

    return fetch


def test_concurrent_askers_share_one_fetch():
    c = MemoryCache()
    calls: list = []
    results: list = []

    async def ask():
        results.append(await c.get("k", _returning(b"value", calls, delay=0.05)))

    async def main():
        async with trio.open_nursery() as n:
            for _ in range(20):
                n.start_soon(ask)

    trio.run(main)
    assert len(calls) == 1
    assert results == [b"value"] * 20
    assert c.stats.misses == 1 and c.stats.shared == 19
    assert c.peek("k") == b"value"


def test_different_keys_fetch_independently_and_concurrently():
    c = MemoryCache()
    active = 0
    peak = 0

    def fetcher(v: bytes):
        async def fetch():
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await trio.sleep(0.02)
            active -= 1
            return v

        return fetch

    async def main():
        out = {}

        async def ask(k):
            out[k] = await c.get(k, fetcher(k.encode()))

        async with trio.open_nursery() as n:
            for k in ("a", "b", "c", "a", "b"):
                n.start_soon(ask, k)
        return out

    out = trio.run(main)
    assert out == {"a": b"a", "b": b"b", "c": b"c"}
    assert peak == 3 and c.stats.misses == 3


def test_later_askers_hit_the_cache():
    c = MemoryCache()
    calls: list = []

    async def main():
        for _ in range(5):
            assert await c.get("k", _returning(b"v", calls)) == b"v"

    trio.run(main)
    assert len(calls) == 1 and c.stats.hits == 4


def test_an_error_reaches_every_waiter_and_is_not_cached():
    c = MemoryCache()
    calls: list = []
    errors: list = []

    async def failing():
        calls.append(1)
        await trio.sleep(0.05)
        raise RefError("http://h/x: HTTP 404 Not Found")

    async def ask():
        try:
            await c.get("k", failing)
        except RefError as e:
            errors.append(str(e))

    async def main():
        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(ask)
        # the failure was not cached: the next ask fetches again
        return await c.get("k", _returning(b"ok", calls))

    assert trio.run(main) == b"ok"
    assert errors == ["http://h/x: HTTP 404 Not Found"] * 5
    assert len(calls) == 2
    assert c._inflight == {}


def test_a_cancelled_fetcher_does_not_fail_its_waiters():
    """The first asker's FUSE request is interrupted while it fetches: the others must not see
    Cancelled (nor hang); one of them fetches again and all get the bytes."""
    c = MemoryCache()
    calls: list = []
    results: list = []

    async def main():
        with trio.fail_after(5):
            await scenario()

    async def scenario():
        async def first(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await c.get("k", _returning(b"data", calls, delay=10))
            results.append("first cancelled")

        async def waiter():
            results.append(await c.get("k", _returning(b"data", calls, delay=0.02)))

        async with trio.open_nursery() as n:
            scope = await n.start(first)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(4):
                n.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert c.stats.shared == 4
            scope.cancel()

    trio.run(main)
    assert sorted(results, key=str) == sorted(["first cancelled"] + [b"data"] * 4, key=str)
    assert len(calls) == 2  # the cancelled fetch and exactly one retry
    assert c.peek("k") == b"data"
    assert c._inflight == {}


def test_cancelling_a_waiter_leaves_the_fetch_alone():
    c = MemoryCache()
    calls: list = []
    results: list = []

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(_ask_into, c, results, calls)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.01):
                await c.get("k", _returning(b"other", calls))
            results.append("waiter gave up")

    trio.run(main)
    assert results == ["waiter gave up", b"slow"]
    assert len(calls) == 1 and c.peek("k") == b"slow"


async def _ask_into(c: MemoryCache, results: list, calls: list) -> None:
    results.append(await c.get("k", _returning(b"slow", calls, delay=0.1)))


def test_claimed_keys_make_askers_wait_for_the_claimer():
    c = MemoryCache()
    got: list = []

    async def main():
        flight = c.begin("k")
        assert flight is not None
        assert c.begin("k") is None  # already claimed

        async def ask():
            got.append(await c.get("k", _returning(b"not used")))

        async with trio.open_nursery() as n:
            n.start_soon(ask)
            n.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            c.finish("k", flight, b"claimed")
        assert c.begin("k") is None  # cached now

    trio.run(main)
    assert got == [b"claimed", b"claimed"]


def test_aborted_claim_lets_askers_fetch_themselves():
    c = MemoryCache()
    calls: list = []
    got: list = []

    async def main():
        flight = c.begin("k")

        async def ask():
            got.append(await c.get("k", _returning(b"fetched", calls, delay=0.01)))

        with trio.fail_after(5):
            await both(ask, flight)

    async def both(ask, flight):
        async with trio.open_nursery() as n:
            n.start_soon(ask)
            n.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            c.abort("k", flight)

    trio.run(main)
    assert got == [b"fetched", b"fetched"] and len(calls) == 1


@pytest.mark.parametrize("n", [1, 8, 64])
def test_many_concurrent_keys_and_askers(n):
    c = MemoryCache(max_bytes=1 << 20)
    calls: dict = {}

    async def main():
        async def ask(k):
            async def fetch():
                calls[k] = calls.get(k, 0) + 1
                await trio.sleep(0.001 * (k % 3))
                return str(k).encode() * 10

            assert await c.get(k, fetch) == str(k).encode() * 10

        async with trio.open_nursery() as nursery:
            for i in range(n * 4):
                nursery.start_soon(ask, i % n)

    trio.run(main)
    assert calls == {k: 1 for k in range(n)}
