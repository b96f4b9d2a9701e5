"""Remote fetch scheduling: memory cache -> disk cache -> merged, bounded range requests.

:class:`Fetcher` answers ``get(url, offset, size)`` for remote byte ranges:

1. the memory cache (single-flight: concurrent askers share one fetch);
2. the persistent disk cache, keyed by (url, the server's validator for it, offset, size);
3. the network, through a per-URL *batch*: the first miss opens a batch and waits a short
   window (``merge_window``, default 1 ms) for other misses of the same URL; the batch is then
   planned (:func:`plan_merges`: neighbouring ranges with gaps of at most ``merge_gap`` bytes
   join one span of at most ``merge_max`` bytes) and each span costs one range request, whose
   body is split back into the ranges asked for (each also stored on disk). A gap is not
   bridged over bytes this mount already served or that another request is fetching, so readers
   sharing the mount (the Dask workers of a node) never make the origin send a byte twice.

Read-ahead for sequential readers (``lindifuse.fs.readahead``) feeds this fetcher through
:meth:`Fetcher.prefetch`, bounded by ``readahead_active`` windows in flight.

**Degraded and offline serving (stale-if-error).** The persistent cache records, per URL, the
validator the origin last reported. When the origin cannot be asked for the current one (the
version probe fails with connection refused, DNS failure, timeout, or 5xx/429 after the retries;
or ``--offline``), that recorded version is pinned for the mount and the ranges cached under it
are served; a range not cached fails (EIO) with the origin's error. One log line per URL, and
the ``stale_served``/``stale_urls`` counters, say so. Once a request to the origin succeeds
again, its responses are checked against the pinned version like any other (a replaced object
is never mixed with the cached one: see ``HttpClient._note``).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from lindifuse.cache.disk import AsyncDiskCache, make_key
from lindifuse.cache.memory import MemoryCache
from lindifuse.errors import OriginError, RefError
from lindifuse.sources.http import HttpClient, pin_validator

log = logging.getLogger(__name__)

MERGE_GAP = 256 * 2**10
MERGE_MAX = 16 * 2**20
MERGE_WINDOW = 0.001
READAHEAD_ACTIVE = 4  # read-ahead windows in flight at once (all directories)


@dataclass(frozen=True, slots=True)
class Span:
    """One request: bytes ``start .. end`` covering the ``ranges`` (offset, size) it serves."""

    start: int
    end: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return self.end - self.start


class IntervalSet:
    """Byte intervals ``[start, end)`` as sorted disjoint runs (touching ones merge), so a
    sequential read of a whole file is one run. ``overlaps`` is a binary search."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, intervals: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in intervals:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)  # first run ending at or after start
        j = bisect.bisect_right(self._starts, end)  # runs starting at or before end
        if i < j:
            start, end = min(start, self._starts[i]), max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def overlaps(self, start: int, end: int) -> bool:
        """Some byte of ``[start, end)`` is in the set."""
        i = bisect.bisect_right(self._ends, start)  # first run ending after start
        return i < len(self._starts) and self._starts[i] < end and start < end

    def runs(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)


def plan_merges(
    ranges: Iterable[tuple[int, int]],
    max_gap: int = MERGE_GAP,
    max_size: int = MERGE_MAX,
    blocked: Callable[[int, int], bool] | None = None,
) -> list[Span]:
    """Group (offset, size) ranges of one URL into request spans.

    Ranges are sorted and deduplicated; a range joins the current span when the gap from the
    span's end is at most ``max_gap`` (overlaps count as gap 0) and the grown span stays within
    ``max_size``. A range larger than ``max_size`` is a span of its own (never split).

    ``blocked(start, end)`` says that bytes of a gap are already held or being fetched (cached
    chunks, another reader's request in flight): such a gap is not bridged, so no byte is
    fetched twice when several readers (the Dask workers of a node) share one mount.
    """
    spans: list[Span] = []
    cur: list[tuple[int, int]] = []
    start = end = 0
    for off, size in sorted(set(ranges)):
        r_end = off + size
        if (
            cur
            and off - end <= max_gap
            and max(end, r_end) - start <= max_size
            and (off <= end or blocked is None or not blocked(end, off))
        ):
            cur.append((off, size))
            end = max(end, r_end)
            continue
        if cur:
            spans.append(Span(start, end, tuple(cur)))
        cur, start, end = [(off, size)], off, r_end
    if cur:
        spans.append(Span(start, end, tuple(cur)))
    return spans


def span_cuts(span: Span) -> list[int] | None:
    """How to cut the body of ``span`` into its ranges: sizes of consecutive pieces (gaps
    included), or None when it serves one range or its ranges overlap (then it is sliced)."""
    if len(span.ranges) < 2:
        return None
    cuts: list[int] = []
    pos = span.start
    for off, size in span.ranges:
        if off < pos:
            return None
        if off > pos:
            cuts.append(off - pos)
        cuts.append(size)
        pos = off + size
    if pos < span.end:  # cannot happen with plan_merges' spans; kept exact anyway
        cuts.append(span.end - pos)
    return cuts


@dataclass
class FetchStats:
    requests: int = 0  # range requests made for data (not counting probes, retries)
    ranges: int = 0  # ranges those requests served
    merged_requests: int = 0  # requests that served more than one range
    merged_ranges: int = 0  # ranges served by merged requests
    gap_bytes: int = 0  # bytes fetched only to join neighbouring ranges
    readahead_windows: int = 0  # read-ahead windows started
    readahead_requests: int = 0  # range requests made by read-ahead
    readahead_chunks: int = 0  # chunks fetched over the network by read-ahead
    readahead_disk_chunks: int = 0  # chunks read-ahead loaded from the disk cache
    readahead_bytes: int = 0
    readahead_cancelled: int = 0
    readahead_errors: int = 0
    stale_served: int = 0  # ranges served from disk while the origin failed (or --offline)
    stale_urls: int = 0  # URLs served that way (one log line each)
    readahead_window_max: int = 0  # largest window started, in chunks
    blocks_verified: int = 0  # content-addressed blocks hashed against their CID (CAR)
    verified_bytes: int = 0
    block_mismatches: int = 0  # distinct blocks whose bytes did not match their CID
    chunks_verified: int = 0  # chunks checked against the sha256 their index records
    chunk_mismatches: int = 0  # ... that did not match (EIO, never cached)


class _Waiter:
    __slots__ = ("offset", "size", "done", "value", "error")

    def __init__(self, offset: int, size: int) -> None:
        self.offset = offset
        self.size = size
        self.done = trio.Event()
        self.value: bytes | None = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[_Waiter] = []


class Fetcher:
    """Memory cache, disk cache and merged range requests for remote byte ranges."""

    def __init__(
        self,
        http: HttpClient,
        memory: MemoryCache,
        disk: AsyncDiskCache | None = None,
        *,
        merge_gap: int = MERGE_GAP,
        merge_max: int = MERGE_MAX,
        merge_window: float = MERGE_WINDOW,
        readahead_active: int = READAHEAD_ACTIVE,
    ) -> None:
        self.http = http
        self.memory = memory
        self.disk = disk
        self.merge_gap = merge_gap
        self.merge_max = merge_max
        self.merge_window = merge_window
        self.stats = FetchStats()
        self._batches: dict[str, _Batch] = {}
        self._nursery: trio.Nursery | None = None
        self._ra_active = 0
        self.readahead_active = readahead_active
        self._noted: dict[str, str] = {}  # URL -> validator recorded in the disk cache
        self._stale: dict[str, str] = {}  # URL -> why its cached bytes are served unconfirmed
        self._held: dict[str, IntervalSet] = {}  # URL -> byte ranges served from disk or network
        # (url, offset, size) -> verification of fresh bytes (CAR blocks; see ``get``)
        self._checks: dict[tuple[str, int, int], Callable[[bytes], None]] = {}
        # the same for the life of the mount: ranges whose digest the index records (chunk
        # hashes), so that read-ahead's fetches of them are checked too
        self.fixed_checks: dict[tuple[str, int, int], Callable[[bytes], None]] = {}

    # -- background tasks ------------------------------------------------------------------

    async def run(self) -> None:
        """Host background fetches (read-ahead) until cancelled (at unmount)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def can_start(self) -> bool:
        return self._nursery is not None and self._ra_active < self.readahead_active

    def start_soon(self, fn: Any, *args: Any) -> bool:
        if not self.can_start():
            return False
        assert self._nursery is not None
        self._ra_active += 1

        async def wrapped() -> None:
            try:
                await fn(*args)
            except Exception:
                self.stats.readahead_errors += 1
                log.exception("read-ahead failed")
            finally:
                self._ra_active -= 1

        self._nursery.start_soon(wrapped)
        return True

    # -- reads ---------------------------------------------------------------------------

    async def get(
        self, url: str, offset: int, size: int, check: Callable[[bytes], None] | None = None
    ) -> bytes:
        """``size`` bytes at ``offset`` of ``url``: memory, then disk, then the network.

        ``check(data)``, when given, runs on bytes fresh from the network before they are
        cached (memory or disk) or returned; if it raises (a CAR block that does not match its
        hash), nothing is cached and the error goes to the caller. Bytes already in a cache
        were checked on entry and are trusted by their key."""
        key = (url, offset, size)
        if check is None:
            return await self.memory.get(key, lambda: self._load(url, offset, size))
        self._checks[key] = check
        try:
            return await self.memory.get(key, lambda: self._load(url, offset, size))
        finally:
            self._checks.pop(key, None)

    async def _version(self, url: str) -> str | None:
        """The validator under which disk entries of ``url`` are looked up: the origin's
        (probed once per mount, and recorded in the disk cache), or, when the origin cannot be
        asked, the one recorded earlier (see ``_stale_version``). None: no disk cache, or the
        object has no validator. OriginError when the origin fails and nothing is recorded."""
        if self.disk is None or self.disk.store.broken:
            return None
        try:
            v = await self.http.validator(url)
        except OriginError as e:
            return await self._stale_version(url, e)
        if v is not None and self._noted.get(url) != v:
            self._noted[url] = v
            await self.disk.note_version(url, v, self.http.sizes.get(url))
        return v

    async def _stale_version(self, url: str, err: OriginError) -> str:
        """The origin failed with ``err``: pin the version recorded in the disk cache for this
        mount (so later responses must match it) and return it; re-raise ``err`` if none."""
        got = await self.disk.last_version(url) if self.disk is not None else None
        if got is None:
            if self.http.offline:
                raise OriginError(f"{url}: not in the persistent cache (--offline)") from None
            raise err
        v, size = got
        pin_validator(self.http, url, v)
        if size is not None:
            self.http.sizes.setdefault(url, size)
        self._noted[url] = v
        if url not in self._stale:
            self._stale[url] = str(err)
            self.stats.stale_urls += 1
            if self.http.offline:
                log.info("%s: offline: serving the ranges cached for version %s", url, v)
            else:
                log.warning(
                    "%s: origin unavailable (%s): serving the ranges cached for version %s "
                    "(stale-if-error); ranges not cached fail until it answers",
                    url,
                    err,
                    v,
                )
        return self.http.validators.get(url) or v

    def _confirmed(self, url: str) -> None:
        """A request to the origin of ``url`` succeeded (with the pinned version)."""
        if self._stale.pop(url, None) is not None:
            log.warning("%s: origin answers again", url)

    async def _load(self, url: str, offset: int, size: int) -> bytes:
        validator = await self._version(url)
        if validator is not None:
            assert self.disk is not None
            data = await self.disk.get(make_key(url, validator, offset, size))
            if data is not None:
                if url in self._stale:
                    self.stats.stale_served += 1
                self._hold(url, offset, size)
                return data
        try:
            return await self._batched(url, offset, size)
        except OriginError:
            if self.http.offline:
                raise OriginError(
                    f"{url}: bytes {offset}+{size} are not in the persistent cache (--offline)"
                ) from None
            raise

    async def size_of(self, url: str) -> int:
        """Total size of ``url`` (for ``[url]`` references): from the origin, else, when it
        cannot be asked, as recorded in the persistent cache with the version served."""
        try:
            return await self.http.content_length(url)
        except OriginError as e:
            if self.disk is None or self.disk.store.broken:
                raise
            await self._stale_version(url, e)
            size = self.http.sizes.get(url)
            if size is None:
                raise
            return size

    async def head(self, url: str, size: int) -> tuple[bytes, int | None]:
        """The first ``size`` bytes of ``url`` (fewer if shorter) and its total size, to load a
        remote source. From the origin, then kept in the persistent cache with the object's
        version, so that the source mounts again when the origin fails or with --offline
        (its index and lindi.json are cached by ``get`` like any range)."""
        try:
            head, total = await self.http.get_head(url, size)
        except OriginError as e:
            return await self._stale_head(url, size, e)
        v = self.http.validators.get(url)
        if self.disk is not None and not self.disk.store.broken and v is not None and total:
            self._noted[url] = v
            await self.disk.note_version(url, v, total)
            await self.disk.put(make_key(url, v, 0, len(head)), url, head)
        return head, total

    async def _stale_head(self, url: str, size: int, err: OriginError) -> tuple[bytes, int]:
        got = await self.disk.last_version(url) if self.disk is not None else None
        if got is None or not got[1]:
            if self.http.offline:
                raise OriginError(f"{url}: not in the persistent cache (--offline)") from None
            raise err
        v, total = got
        data = await self.disk.get(make_key(url, v, 0, min(size, total)))  # type: ignore[union-attr]
        if data is None:
            if self.http.offline:
                raise OriginError(f"{url}: not in the persistent cache (--offline)") from None
            raise err
        await self._stale_version(url, err)
        self.stats.stale_served += 1
        return data, total

    async def _batched(self, url: str, offset: int, size: int) -> bytes:
        while True:
            batch = self._batches.get(url)
            leader = batch is None
            if batch is None:
                batch = self._batches[url] = _Batch()
            w = _Waiter(offset, size)
            batch.waiters.append(w)
            if leader:
                try:
                    try:
                        await trio.sleep(self.merge_window)
                    finally:
                        if self._batches.get(url) is batch:
                            del self._batches[url]
                    await self._run_batch(url, batch.waiters)
                finally:
                    for other in batch.waiters:
                        if not other.done.is_set():
                            other.done.set()  # neither value nor error: the waiter retries
            await w.done.wait()
            if w.value is not None:
                return w.value
            if w.error is not None:
                raise w.error
            # The leader was cancelled before serving us: try again (maybe as the leader).

    async def _run_batch(self, url: str, waiters: list[_Waiter]) -> None:
        by_range: dict[tuple[int, int], list[_Waiter]] = {}
        for w in waiters:
            by_range.setdefault((w.offset, w.size), []).append(w)
        spans = plan_merges(by_range, self.merge_gap, self.merge_max, self._blocked(url, by_range))

        def deliver(rng: tuple[int, int], data: bytes | None, err: BaseException | None) -> None:
            for w in by_range.get(rng, ()):
                w.value, w.error = data, err
                w.done.set()

        await self._fetch_spans(url, spans, deliver)

    async def _fetch_spans(self, url: str, spans: list[Span], deliver: Any) -> None:
        """One request per span (concurrently); ``deliver(range, data, error)`` per range."""

        async def one(span: Span) -> None:
            t0 = trio.current_time()
            cuts = span_cuts(span)
            parts: list[bytes] = []
            try:
                if cuts is None:
                    body, validator = await self.http.get_range_ex(url, span.start, span.size)
                else:  # received straight into one bytes object per range: no slicing copies
                    body = b""
                    parts, validator = await self.http.get_range_split(
                        url, span.start, span.size, cuts
                    )
            except RefError as e:
                for rng in span.ranges:
                    deliver(rng, None, e)
                return
            self._confirmed(url)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "fetched %s bytes %d+%d (%d ranges) in %.3f s",
                    url,
                    span.start,
                    span.size,
                    len(span.ranges),
                    trio.current_time() - t0,
                )
            self._count(span)
            pieces = []
            mv = memoryview(body)
            at = {}  # cut start -> piece
            if cuts is not None:
                pos = span.start
                for n, part in zip(cuts, parts, strict=True):
                    at[pos] = part
                    pos += n
            for off, size in span.ranges:
                if cuts is not None:
                    piece = at[off]
                elif len(span.ranges) == 1:
                    piece = body
                else:
                    piece = bytes(mv[off - span.start :][:size])
                check = self._checks.get((url, off, size)) or self.fixed_checks.get(
                    (url, off, size)
                )
                if check is not None:
                    try:
                        check(piece)
                    except RefError as e:  # never cached, never served
                        deliver((off, size), None, e)
                        continue
                self._hold(url, off, size)
                deliver((off, size), piece, None)
                pieces.append((off, size, piece))
            if self.disk is not None and validator is not None:
                for off, size, piece in pieces:
                    await self.disk.put(make_key(url, validator, off, size), url, piece)

        if len(spans) == 1:
            await one(spans[0])
            return
        async with trio.open_nursery() as nursery:
            for span in spans:
                nursery.start_soon(one, span)

    def _hold(self, url: str, offset: int, size: int) -> None:
        held = self._held.get(url)
        if held is None:
            held = self._held[url] = IntervalSet()
        held.add(offset, offset + size)

    def _blocked(self, url: str, mine: Any) -> Callable[[int, int], bool]:
        """For plan_merges: a gap is not bridged over bytes this mount already served (cached)
        or that others are fetching now (memory-cache flights of ``url`` not in ``mine``)."""
        held = self._held.get(url)
        flying = IntervalSet(
            (k[1], k[1] + k[2])
            for k in self.memory.inflight_keys()
            if type(k) is tuple and len(k) == 3 and k[0] == url and (k[1], k[2]) not in mine
        )

        def blocked(start: int, end: int) -> bool:
            return flying.overlaps(start, end) or (held is not None and held.overlaps(start, end))

        return blocked

    def _count(self, span: Span) -> None:
        s = self.stats
        s.requests += 1
        s.ranges += len(span.ranges)
        if len(span.ranges) > 1:
            s.merged_requests += 1
            s.merged_ranges += len(span.ranges)
            covered = 0
            pos = span.start
            for off, size in span.ranges:
                end = off + size
                if end > pos:
                    covered += end - max(off, pos)
                    pos = end
            s.gap_bytes += span.size - covered

    async def prefetch(
        self, url: str, ranges: list[tuple[int, int]], span_max: int | None = None
    ) -> None:
        """Bring ``ranges`` of ``url`` into the memory cache: those on disk with one thread call,
        the rest as merged requests of at most ``span_max`` bytes (default ``merge_max``),
        fetched concurrently. Askers of a range meanwhile wait for this fetch."""
        flights = {}
        for rng in ranges:
            key = (url, *rng)
            f = self.memory.begin(key)
            if f is not None:
                flights[rng] = f
        if not flights:
            return
        s = self.stats
        try:
            try:
                validator = await self._version(url)
            except OriginError:
                return  # the origin fails and nothing is cached: readers get the error
            if validator is not None:
                assert self.disk is not None
                keys = {make_key(url, validator, *rng): rng for rng in flights}
                found = await self.disk.get_many(list(keys))
                for k, data in found.items():
                    rng = keys[k]
                    self._hold(url, *rng)
                    self.memory.finish((url, *rng), flights.pop(rng), data)
                    s.readahead_disk_chunks += 1
                    if url in self._stale:
                        s.stale_served += 1
            if not flights or self.http.offline:
                return
            spans = plan_merges(
                flights,
                self.merge_gap,
                min(span_max or self.merge_max, self.merge_max),
                self._blocked(url, flights),
            )
            s.readahead_requests += len(spans)

            def deliver(rng: tuple[int, int], data: bytes | None, err: BaseException | None):
                f = flights.pop(rng, None)
                if f is None:
                    return
                if data is not None:
                    s.readahead_chunks += 1
                    s.readahead_bytes += len(data)
                    self.memory.finish((url, *rng), f, data)
                else:
                    self.memory.abort((url, *rng), f)

            await self._fetch_spans(url, spans, deliver)
        except trio.Cancelled:
            s.readahead_cancelled += 1
            raise
        finally:
            for rng, f in flights.items():
                self.memory.abort((url, *rng), f)
