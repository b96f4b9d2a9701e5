"""Chunk cache: a bytes-bounded in-memory LRU with single-flight fetching.

``get(key, fetch)`` returns the cached bytes for ``key`` or runs ``fetch()`` once, however many
tasks ask concurrently: the first caller fetches, the others wait on the same in-flight entry and
share its result (or its error). Entries larger than a quarter of the budget are returned but
not kept, so one huge object cannot flush everything else.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import trio


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    shared: int = 0  # requests satisfied by waiting for an in-flight fetch
    evictions: int = 0


class _InFlight:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: bytes | None = None
        self.error: BaseException | None = None


class MemoryCache:
    """LRU of immutable byte strings, bounded by total size."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.stats = CacheStats()
        self._lru: OrderedDict[Hashable, bytes] = OrderedDict()
        self._inflight: dict[Hashable, _InFlight] = {}

    def peek(self, key: Hashable) -> bytes | None:
        data = self._lru.get(key)
        if data is not None:
            self._lru.move_to_end(key)
        return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:
            return
        old = self._lru.pop(key, None)
        if old is not None:
            self.nbytes -= len(old)
        self._lru[key] = data
        self.nbytes += len(data)
        while self.nbytes > self.max_bytes and self._lru:
            _, evicted = self._lru.popitem(last=False)
            self.nbytes -= len(evicted)
            self.stats.evictions += 1

    def discard(self, key: Hashable) -> None:
        old = self._lru.pop(key, None)
        if old is not None:
            self.nbytes -= len(old)

    # -- in-flight entries filled by someone else (read-ahead fetching several keys at once) --

    def begin(self, key: Hashable) -> _InFlight | None:
        """Claim ``key`` for a fetch done by the caller: None when it is cached or already in
        flight; otherwise askers of ``key`` wait until ``finish`` or ``abort``."""
        if key in self._lru or key in self._inflight:
            return None
        flight = self._inflight[key] = _InFlight()
        return flight

    def finish(self, key: Hashable, flight: _InFlight, data: bytes) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        flight.value = data
        self.put(key, data)
        flight.done.set()

    def abort(self, key: Hashable, flight: _InFlight) -> None:
        """Give up a claimed key: waiters retry (and fetch it themselves)."""
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        flight.done.set()

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        while True:
            data = self.peek(key)
            if data is not None:
                self.stats.hits += 1
                return data
            flight = self._inflight.get(key)
            if flight is None:
                break
            self.stats.shared += 1
            await flight.done.wait()
            if flight.value is not None:
                return flight.value
            if flight.error is not None and not isinstance(flight.error, trio.Cancelled):
                raise flight.error
            # The fetching task was cancelled (e.g. its FUSE request was interrupted): retry.
        self.stats.misses += 1
        flight = _InFlight()
        self._inflight[key] = flight
        try:
            data = await fetch()
        except BaseException as e:
            flight.error = e
            raise
        else:
            flight.value = data
            self.put(key, data)
            return data
        finally:
            del self._inflight[key]
            flight.done.set()
