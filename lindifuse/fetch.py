"""Remote fetch scheduling: memory cache -> disk cache -> merged, bounded range requests.

:class:`Fetcher` answers ``get(url, offset, size)`` for remote byte ranges:

1. the memory cache (single-flight: concurrent askers share one fetch);
2. the persistent disk cache, keyed by (url, the server's validator for it, offset, size);
3. the network, through a per-URL *batch*: the first miss opens a batch and waits a short
   window (``merge_window``, default 1 ms) for other misses of the same URL; the batch is then
   planned (:func:`plan_merges`: neighbouring ranges with gaps of at most ``merge_gap`` bytes
   join one span of at most ``merge_max`` bytes) and each span costs one range request, whose
   body is split back into the ranges asked for (each also stored on disk).

:class:`ReadAhead` watches which chunk files of a directory are read: when chunk *k* is read
and the reads look sequential (chunk 0, or one of the 3 predecessors was read recently, or *k* lies in
the window already prefetched), the next sibling chunk files in chunk-index order whose
references point into the same URL are fetched in the background, split into memory (and disk)
cache entries. The window grows like the kernel's (see :mod:`lindifuse.seqwindow`: 4 MiB first,
doubled while the reader keeps up, up to 64 MiB) and goes out as several concurrent requests;
the next window starts while the reader is inside the current one. Chunks already on disk are
loaded into memory with one worker-thread call for the whole window. For local sources the
window is only advised to the kernel (``POSIX_FADV_WILLNEED``). Read-ahead is bounded (bytes per
window, windows in flight) and cancelled at unmount.

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

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .cache import MemoryCache
from .disk_cache import AsyncDiskCache, make_key
from .errors import OriginError, RefError
from .refs import is_chunk_name
from .seqwindow import SeqWindow
from .sources import HttpClient, pin_validator

if TYPE_CHECKING:
    from .content import ContentService, Resolved
    from .tree import Node

log = logging.getLogger(__name__)

MERGE_GAP = 256 * 2**10
MERGE_MAX = 16 * 2**20
MERGE_WINDOW = 0.001
READAHEAD_BYTES = 64 * 2**20  # largest window (also at most a quarter of the memory cache)
READAHEAD_INITIAL = 4 * 2**20  # first window of a directory; doubles while the reader keeps up
READAHEAD_REQUESTS = 8  # a window is fetched as up to this many concurrent requests
READAHEAD_SPAN_MIN = 2 * 2**20  # ... of at least this many bytes each
READAHEAD_MAX_CHUNKS = 1024
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


def plan_merges(
    ranges: Iterable[tuple[int, int]], max_gap: int = MERGE_GAP, max_size: int = MERGE_MAX
) -> list[Span]:
    """Group (offset, size) ranges of one URL into request spans.

    Ranges are sorted and deduplicated; a range joins the current span when the gap from the
    span's end is at most ``max_gap`` (overlaps count as gap 0) and the grown span stays within
    ``max_size``. A range larger than ``max_size`` is a span of its own (never split).
    """
    spans: list[Span] = []
    cur: list[tuple[int, int]] = []
    start = end = 0
    for off, size in sorted(set(ranges)):
        r_end = off + size
        if cur and off - end <= max_gap and max(end, r_end) - start <= max_size:
            cur.append((off, size))
            end = max(end, r_end)
            continue
        if cur:
            spans.append(Span(start, end, tuple(cur)))
        cur, start, end = [(off, size)], off, r_end
    if cur:
        spans.append(Span(start, end, tuple(cur)))
    return spans


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
    readahead_local_bytes: int = 0  # bytes of local sources advised to the kernel (WILLNEED)


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

    async def get(self, url: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of ``url``: memory, then disk, then the network."""
        return await self.memory.get((url, offset, size), lambda: self._load(url, offset, size))

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
        spans = plan_merges(((w.offset, w.size) for w in waiters), self.merge_gap, self.merge_max)
        by_range: dict[tuple[int, int], list[_Waiter]] = {}
        for w in waiters:
            by_range.setdefault((w.offset, w.size), []).append(w)

        def deliver(rng: tuple[int, int], data: bytes | None, err: BaseException | None) -> None:
            for w in by_range.get(rng, ()):
                w.value, w.error = data, err
                w.done.set()

        await self._fetch_spans(url, spans, deliver)

    async def _fetch_spans(self, url: str, spans: list[Span], deliver: Any) -> None:
        """One request per span (concurrently); ``deliver(range, data, error)`` per range."""

        async def one(span: Span) -> None:
            t0 = trio.current_time()
            try:
                body, validator = await self.http.get_range_ex(url, span.start, span.size)
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
            for off, size in span.ranges:
                piece = body if len(span.ranges) == 1 else bytes(mv[off - span.start :][:size])
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
                    self.memory.finish((url, *rng), flights.pop(rng), data)
                    s.readahead_disk_chunks += 1
                    if url in self._stale:
                        s.stale_served += 1
            if not flights or self.http.offline:
                return
            spans = plan_merges(
                flights, self.merge_gap, min(span_max or self.merge_max, self.merge_max)
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


def _chunk_sort_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split("."))


@dataclass
class _DirState:
    order: list[Node]
    index: dict[str, int]
    win: SeqWindow | None = None  # the window policy, sized from the first chunk read


class ReadAhead:
    """Sequential-read detection per directory of chunk files, and read-ahead windows."""

    def __init__(
        self,
        content: ContentService,
        fetcher: Fetcher,
        *,
        max_bytes: int = READAHEAD_BYTES,
        max_chunks: int = READAHEAD_MAX_CHUNKS,
        whole_fetch_max: int = 32 * 2**20,
        initial_bytes: int = READAHEAD_INITIAL,
        window_requests: int = READAHEAD_REQUESTS,
        span_min: int = READAHEAD_SPAN_MIN,
    ) -> None:
        self.content = content
        self.fetcher = fetcher
        self.max_bytes = min(max_bytes, max(1, fetcher.memory.max_bytes // 4))
        self.initial_bytes = min(initial_bytes, self.max_bytes)
        self.window_requests = window_requests
        self.span_min = span_min
        self.max_chunks = max_chunks
        self.whole_fetch_max = whole_fetch_max
        self._dirs: dict[int, _DirState] = {}

    def _state(self, parent: Node) -> _DirState:
        st = self._dirs.get(parent.inode)
        if st is None:
            kids = [n for n in (parent.children or {}).values() if n.children is None]
            order = sorted(
                (n for n in kids if is_chunk_name(n.name)), key=lambda n: _chunk_sort_key(n.name)
            )
            st = _DirState(order, {n.name: i for i, n in enumerate(order)})
            self._dirs[parent.inode] = st
        return st

    def forget(self, parent: Node) -> None:
        """Drop a directory's state (its listing changed)."""
        self._dirs.pop(parent.inode, None)

    def on_read(self, node: Node, r: Resolved) -> None:
        """Called (synchronously, cheaply) when a remote chunk file's first bytes are read."""
        parent = node.parent
        if parent is None or not is_chunk_name(node.name) or r.loc is None:
            return
        st = self._state(parent)
        i = st.index.get(node.name)
        if i is None:
            return
        win = st.win
        if win is None:
            per = max(1, r.stored)
            win = st.win = SeqWindow(
                len(st.order),
                initial=max(2, self.initial_bytes // per),
                maximum=max(1, min(self.max_chunks, self.max_bytes // per)),
            )
        # The window starts small and doubles while the reader keeps up (lindifuse.seqwindow);
        # the next window is started while the reader is still inside the current one.
        span = win.on_read(i, self.fetcher.can_start())
        if span is None:
            return
        start, end = span
        self.fetcher.stats.readahead_windows += 1
        self.fetcher.stats.readahead_window_max = max(
            self.fetcher.stats.readahead_window_max, end - start
        )
        fn = self._window if r.loc.remote else self._local_window
        self.fetcher.start_soon(fn, r.loc.where, st.order[start:end])

    async def _ranges(self, url: str, nodes: list[Node], remote: bool) -> list[tuple[int, int]]:
        ranges = []
        total = 0
        for n in nodes:
            try:
                r = await self.content.resolve(n)
            except RefError:
                continue
            loc = r.loc
            if loc is None or loc.remote != remote or loc.where != url or r.stored == 0:
                continue
            if r.stored > self.whole_fetch_max:
                break
            ranges.append((r.offset, r.stored))
            total += r.stored
            if total >= self.max_bytes:
                break
        return ranges

    async def _window(self, url: str, nodes: list[Node]) -> None:
        ranges = await self._ranges(url, nodes, True)
        if ranges:
            # Several requests per window (spans of at most span_max bytes), fetched at once:
            # one request stream alone does not fill the link.
            total = sum(s for _, s in ranges)
            span_max = max(self.span_min, -(-total // self.window_requests))
            await self.fetcher.prefetch(url, ranges, span_max)

    async def _local_window(self, path: str, nodes: list[Node]) -> None:
        """Local source: ask the kernel to read the window into the page cache now
        (POSIX_FADV_WILLNEED), so the disk works while the reader is served from memory."""
        ranges = await self._ranges(path, nodes, False)
        spans = plan_merges(ranges, MERGE_GAP, 1 << 62)
        if spans:
            local = self.content.local
            await trio.to_thread.run_sync(local.advise, path, [(s.start, s.size) for s in spans])
            self.fetcher.stats.readahead_local_bytes += sum(s.size for s in spans)


KERNEL_READAHEAD_KB = 1024


def tune_kernel_readahead(mountpoint: str, kb: int = KERNEL_READAHEAD_KB) -> bool:
    """Raise the kernel's read-ahead for this FUSE mount (its own backing device) to ``kb``.

    The default (128 KiB) makes the kernel split a 1 MiB chunk file into eight FUSE reads, each
    a round trip through the daemon; at 1 MiB one read usually fetches a whole chunk (libfuse
    allows requests of that size). Only root may write ``/sys/class/bdi/*/read_ahead_kb``:
    elsewhere this quietly does nothing. The device is found in /proc/self/mountinfo, never by
    touching the mount point (whose daemon may not be serving yet).
    """
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    dev = None
    for line in lines:
        parts = line.split()
        if len(parts) > 4 and parts[4].replace("\\040", " ") == target:
            dev = parts[2]  # the last mount on the point wins
    if dev is None:
        return False
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path) as f:
            if int(f.read().strip() or 0) >= kb:
                return True
        with open(path, "w") as f:
            f.write(str(kb))
    except (OSError, ValueError) as e:
        log.debug("kernel read-ahead of %s left as is: %s", mountpoint, e)
        return False
    log.info("kernel read-ahead of %s set to %d KiB", mountpoint, kb)
    return True


async def tune_kernel_readahead_when_up(mountpoint: str) -> None:
    """``tune_kernel_readahead`` once the kernel has the FUSE session's INIT answer (which
    resets the value): a ``stat`` of the mount point from a worker thread returns only after
    the daemon has answered INIT and that GETATTR."""
    try:
        await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    except OSError:
        return
    await trio.to_thread.run_sync(tune_kernel_readahead, mountpoint)
