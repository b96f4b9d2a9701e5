"""Byte sources: local files (pread in a worker thread) and HTTP(S) objects (range requests).

A source answers ``read(offset, size)`` with exactly those bytes or raises ``RefError`` with a
one-line cause. HTTP reads go through one pooled ``httpx.AsyncClient`` on trio with timeouts,
redirects, bounded retries with backoff on 5xx/connection errors, and a strict check of the
range response: a server that ignores ``Range`` and answers 200 with the whole body still yields
the right bytes (sliced), never the wrong ones.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import logging
import re
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urljoin, urlsplit

import trio

from lindifuse import __version__
from lindifuse.errors import HostNotAllowed, OriginError, RefError, VersionChanged
from lindifuse.sources.dandi import DandiResolver
from lindifuse.stormlog import StormLog

if TYPE_CHECKING:  # imported on first use: a mount of local files never needs it (~25 ms)
    import httpx

_R = TypeVar("_R")

log = logging.getLogger(__name__)
# One line when a host starts failing, then one summary a minute: never one per read.
_retry_log = StormLog(log)

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class HttpStats:
    """Counters read by ``lindifuse stats`` and the benchmarks."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    errors: int = 0
    full_body_fallbacks: int = 0
    probes: int = 0  # validator probes (one per distinct URL and mount, at most)
    version_changes: int = 0  # responses whose ETag/Last-Modified differed from the pinned one
    retry_after: int = 0  # retries that waited as a Retry-After header asked
    refused_hosts: int = 0  # requests not sent: host outside --allowed-hosts
    latencies: list[float] = field(default_factory=list)

    def record_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
        if len(self.latencies) > 10000:
            del self.latencies[:5000]


def _validator_of(headers: Mapping[str, str]) -> str | None:
    """The object's version as the server names it: its ETag, else its Last-Modified.
    ``headers``: httpx's case-insensitive headers, or a dict with lower-case names."""
    etag = headers.get("etag")
    if etag:
        return "etag:" + etag.strip()
    lm = headers.get("last-modified")
    if lm:
        return "lm:" + lm.strip()
    return None


def _host_of(url: str) -> str:
    return urlsplit(url).netloc.lower()


DEFAULT_TIMEOUT = 30.0  # seconds; --timeout
RETRY_AFTER_MAX = 30.0  # never wait longer than this for one Retry-After
DOWN_SECONDS = 2.0  # a failed version probe is not repeated for this long (per URL)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), or
    None when absent or unparsable. Never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HostRule:
    """Which hosts requests may reach (``--allowed-hosts``): ``host``, ``host:port`` or
    ``*.domain`` (the domain's subdomains, not the domain itself); case-insensitive. An empty
    rule allows every host. Checked for every request, redirects included."""

    def __init__(self, patterns: list[str] | tuple[str, ...] = ()) -> None:
        self.patterns = tuple(p.strip().lower() for p in patterns if p.strip())

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def allows(self, url: str) -> bool:
        if not self.patterns:
            return True
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # not a valid URL (bad IPv6 brackets, port out of range)
            return False
        for p in self.patterns:
            phost, pport = p, None
            m = re.fullmatch(r"(.+):(\d+)", p)
            if m and (p.count(":") == 1 or p.startswith("[")):
                phost, pport = m.group(1), int(m.group(2))
            phost = phost.strip("[]")
            if pport is not None and pport != port:
                continue
            if host == phost or (phost.startswith("*.") and host.endswith(phost[1:])):
                return True
        return False

    def check(self, url: str) -> None:
        if not self.allows(url):
            raise HostNotAllowed(f"{url}: host not in --allowed-hosts ({', '.join(self.patterns)})")


BULK_MIN = 256 * 2**10


def _short(validator: str) -> str:
    return validator if len(validator) <= 40 else validator[:37] + "..."


def pin_validator(client: HttpClient, url: str, validator: str) -> None:
    """Make ``validator`` the version of ``url`` for this mount (learnt from the persistent
    cache when the origin cannot be asked): later responses must carry the same one."""
    client.validators.setdefault(url, validator)


def _read_exactly(resp: http.client.HTTPResponse, n: int) -> bytes:
    data = resp.read(n)
    if len(data) != n:
        raise http.client.IncompleteRead(data, n - len(data))
    return data


def split_body(body: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``body`` cut into consecutive pieces of the sizes ``cuts`` (one copy of each piece)."""
    mv = memoryview(body)
    out, pos = [], 0
    for n in cuts:
        out.append(body if n == len(body) and pos == 0 else bytes(mv[pos : pos + n]))
        pos += n
    return out


class _BulkPool:
    """Keep-alive ``http.client`` connections used from worker threads for large ranges.

    The body of a range response is received with ``readinto`` straight into one buffer of the
    announced size: the socket reads run without the GIL and without per-piece Python work, so
    the transfer of a cold read proceeds on another core while the trio thread answers the
    kernel. A reused connection that the server has meanwhile closed is replaced once,
    silently; every other failure is the caller's to retry.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            if self._ssl is None:
                try:
                    import certifi

                    self._ssl = ssl.create_default_context(cafile=certifi.where())
                except ImportError:
                    self._ssl = ssl.create_default_context()
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self._ssl)
        return http.client.HTTPConnection(netloc, timeout=self.timeout)

    def fetch(
        self, url: str, headers: dict[str, str], size: int, cuts: Sequence[int] | None = None
    ) -> tuple[int, dict[str, str], bytes | list[bytes], str]:
        """(status, lower-cased headers, body, reason) of a GET of ``url`` (blocking).

        A 206 answer of the announced ``size`` is received straight into the bytes objects
        returned (no join, no copy afterwards); with ``cuts`` (sizes adding up to ``size``) as
        one bytes object per cut, so that a merged span arrives already split into the ranges
        it serves. Any other answer is one bytes object."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        hdrs = {"User-Agent": f"lindifuse/{__version__}", **headers}
        for fresh in (False, True):
            conn = None
            if not fresh:
                with self._lock:
                    idle = self._idle.get(key)
                    conn = idle.pop() if idle else None
            reused = conn is not None
            if conn is None:
                conn = self._connect(*key)
            try:
                conn.request("GET", path, headers=hdrs)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError):
                conn.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection: once more
                raise
            except BaseException:
                conn.close()
                raise
            try:
                rh = {k.lower(): v for k, v in resp.getheaders()}
                body: bytes | list[bytes]
                if resp.status == 206 and resp.length == size and not resp.chunked:
                    # BufferedReader.read(n) allocates the n bytes once and receives into them
                    parts = [_read_exactly(resp, n) for n in cuts or (size,)]
                    body = parts if cuts else parts[0]
                else:
                    body = resp.read()
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle.setdefault(key, []).append(conn)
            return resp.status, rh, body, resp.reason or ""
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()


class HttpClient:
    """Pooled async HTTP client with retries; one per daemon.

    Also the one place that knows, per URL, the server's validator (ETag / Last-Modified, probed
    once per URL and mount, or taken from any earlier response such as the tar's head request),
    bounds concurrent requests per host, and resolves DANDI asset URLs to their pre-signed
    targets (see :mod:`lindifuse.sources.dandi`). Callers always pass the stable (logical) URL.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff: float = 0.25,
        max_connections: int = 32,
        per_host: int = 16,
        dandi: DandiResolver | None = None,
        bulk_min: int | None = BULK_MIN,
        offline: bool = False,
        allowed_hosts: HostRule | None = None,
    ) -> None:
        self.retries = retries
        self.timeout = timeout
        # --offline: no request is ever sent; every one fails at once with OriginError.
        self.offline = offline
        self.hosts = allowed_hosts if allowed_hosts is not None else HostRule()
        self._down: dict[str, tuple[float, OriginError]] = {}  # URL -> recent failed probe
        # Ranges of at least bulk_min bytes are received by blocking connections in worker
        # threads (None: never), everything else by the pooled async client.
        self.bulk_min = bulk_min or 0
        self._bulk = _BulkPool(timeout) if bulk_min is not None else None
        self.backoff = backoff
        self.stats = HttpStats()
        self.per_host = per_host
        self.dandi = dandi if dandi is not None else DandiResolver.from_env()
        self.validators: dict[str, str | None] = {}  # logical URL -> validator (None: none)
        self.sizes: dict[str, int] = {}  # logical URL -> total size, when a response said
        # Logical URLs whose version is known without asking (a DANDI asset id never changes
        # content): their validator is this, whatever the server that answers says.
        self.pinned: dict[str, str] = {}
        self._origin_validators: dict[str, str | None] = {}  # of pinned URLs, as served
        self._probes: dict[str, trio.Event] = {}
        self._resolving: dict[str, trio.Event] = {}
        self._host_limits: dict[str, trio.Semaphore] = {}
        self._max_connections = max_connections
        self._async_client: httpx.AsyncClient | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        """The pooled async client, made on first use: making one loads the system's CA
        certificates and httpcore (about 60 ms), and importing httpx 25 ms more, which a mount
        of local files never needs."""
        if self._async_client is None:
            import httpx

            n = self._max_connections
            self._async_client = httpx.AsyncClient(
                follow_redirects=True,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                headers={"User-Agent": f"lindifuse/{__version__}"},
                event_hooks={"request": [self._check_request]} if self.hosts else None,
            )
        return self._async_client

    @_client.setter
    def _client(self, client: httpx.AsyncClient) -> None:
        self._async_client = client

    async def _check_request(self, request: httpx.Request) -> None:
        """httpx hook: every request, redirects included, must go to an allowed host."""
        url = str(request.url)
        if not self.hosts.allows(url):
            self.stats.refused_hosts += 1
            self.hosts.check(url)

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()
        if self._bulk is not None:
            self._bulk.close()

    # -- DANDI asset URLs --------------------------------------------------------------------

    async def _physical(self, url: str) -> str:
        """The URL to send a request for ``url`` to (the resolved target of a DANDI asset)."""
        if not self.dandi.is_api(url):
            return url
        while True:
            final = self.dandi.cached(url)
            if final is not None:
                return final
            ev = self._resolving.get(url)
            if ev is None:
                break
            await ev.wait()
        ev = self._resolving[url] = trio.Event()
        try:
            final = await self._resolve(url)
            self.dandi.remember(url, final)
            return final
        finally:
            del self._resolving[url]
            ev.set()

    async def _resolve(self, url: str) -> str:
        """Follow the API's redirects by hand (at most 5), sending the API key only to API
        hosts; the first URL off the API hosts (or one that answers with content) is final."""
        cur = url
        for _ in range(5):
            self.dandi.stats.resolutions += 1
            resp = await self._send(
                cur, {"Range": "bytes=0-0", **self.dandi.auth_headers(cur)}, redirects=False
            )
            if resp.is_redirect and "location" in resp.headers:
                cur = urljoin(cur, resp.headers["location"])
                if not self.dandi.is_api(cur):
                    return cur
                continue
            if resp.status_code < 300:
                return cur
            self.stats.errors += 1
            raise RefError(f"{url}: cannot resolve: HTTP {resp.status_code}")
        raise RefError(f"{url}: cannot resolve: too many redirects")

    # -- requests ----------------------------------------------------------------------------

    def _limit(self, url: str) -> trio.Semaphore:
        host = _host_of(url)
        sem = self._host_limits.get(host)
        if sem is None:
            sem = self._host_limits[host] = trio.Semaphore(self.per_host)
        return sem

    async def _retrying(
        self,
        url: str,
        attempt_once: Callable[[], Awaitable[_R]],
        status_of: Callable[[_R], int],
        transport_errors: tuple[type[BaseException], ...],
        retry_after_of: Callable[[_R], str | None] = lambda _: None,
    ) -> _R:
        """Run ``attempt_once`` (one request, under the per-host bound) until it answers with a
        status below 500 other than 429; retry connection errors, timeouts, 5xx and 429 with
        exponential backoff (or after the delay a ``Retry-After`` header asks, at most
        RETRY_AFTER_MAX), at most ``self.retries`` times and only while ``self.timeout`` seconds
        have not passed since the first attempt; OriginError when they run out.

        Each attempt gives up after ``self.timeout`` seconds without progress (httpx's and the
        sockets' per-operation timeouts), so a request to a server that accepts connections and
        never answers fails after about that long, at most twice (an attempt started just
        before the budget ran out); a slow but steady transfer is not cut off."""
        if self.offline:
            raise OriginError(f"{url}: not fetched: --offline")
        if not self.hosts.allows(url):
            self.stats.refused_hosts += 1
            self.hosts.check(url)
        attempt = 0
        start = trio.current_time()
        while True:
            t0 = trio.current_time()
            self.stats.requests += 1
            wait: float | None = None
            try:
                async with self._limit(url):
                    got = await attempt_once()
            except transport_errors as e:
                cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                self.stats.record_latency(trio.current_time() - t0)
                status = status_of(got)
                if status < 500 and status != 429:
                    return got
                cause = f"HTTP {status}"
                wait = parse_retry_after(retry_after_of(got))
            elapsed = trio.current_time() - start
            delay = self.backoff * (2**attempt)
            if wait is not None:
                if wait > RETRY_AFTER_MAX or elapsed + wait > self.timeout:
                    self.stats.errors += 1
                    raise OriginError(
                        f"{url}: {cause}, Retry-After {wait:.0f} s is beyond the bound "
                        f"(after {attempt + 1} attempts)"
                    )
                delay = max(delay, wait)
            if attempt >= self.retries or elapsed + delay >= self.timeout:
                self.stats.errors += 1
                raise OriginError(f"{url}: {cause} (after {attempt + 1} attempts)")
            attempt += 1
            self.stats.retries += 1
            if wait is not None:
                self.stats.retry_after += 1
            _retry_log.warning(
                urlsplit(url).netloc or url,
                "%s: %s, retry %d/%d",
                url,
                cause,
                attempt,
                self.retries,
            )
            await trio.sleep(delay)

    async def _send(
        self, url: str, headers: dict[str, str], method: str = "GET", *, redirects: bool = True
    ) -> httpx.Response:
        """One request with retries on connection errors, timeouts and 5xx/429."""
        import httpx

        return await self._retrying(
            url,
            lambda: self._client.request(method, url, headers=headers, follow_redirects=redirects),
            lambda resp: resp.status_code,
            (httpx.TransportError,),
            lambda resp: resp.headers.get("retry-after"),
        )

    async def _request(
        self, url: str, headers: dict[str, str], method: str = "GET"
    ) -> httpx.Response:
        """A request for logical ``url``: resolved (DANDI), retried, and re-resolved once when
        a resolved URL answers 403 (its signature expired or was revoked)."""
        target = await self._physical(url)
        resp = await self._send(target, {**headers, **self.dandi.auth_headers(target)}, method)
        if resp.status_code == 403 and target != url:
            self.dandi.stats.forbidden += 1
            self.dandi.forget(url)
            target = await self._physical(url)
            resp = await self._send(target, {**headers, **self.dandi.auth_headers(target)}, method)
        if resp.status_code in (200, 206):
            self._note(url, resp.status_code, resp.headers)
        return resp

    def _note(self, url: str, status: int, headers: Mapping[str, str]) -> None:
        """Remember the first validator and the size a response reveals for ``url``.

        The first validator is the version of ``url`` this mount serves: a later response
        with another one means the object was replaced on the server, and its bytes would mix
        two versions (VersionChanged; the caller serves nothing from it)."""
        got = _validator_of(headers)
        # A URL pinned by the caller (pin()) is cached under the caller's validator; the
        # server's own validator is still watched, apart, for a change.
        seen = self._origin_validators if url in self.pinned else self.validators
        if url not in seen:
            seen[url] = got
        else:
            pinned = seen[url]
            if pinned is not None and got is not None and got != pinned:
                self.stats.version_changes += 1
                self.stats.errors += 1
                raise VersionChanged(
                    f"{url}: the object changed on the server ({_short(pinned)} -> "
                    f"{_short(got)}); this mount keeps serving the version it started with "
                    "and never mixes two: remount to read the new one"
                )
        if url not in self.sizes:
            if status == 206:
                m = _CONTENT_RANGE_RE.fullmatch(headers.get("content-range", "").strip())
                if m and m.group(3) != "*":
                    self.sizes[url] = int(m.group(3))
            elif "content-length" in headers:
                with contextlib.suppress(ValueError):
                    self.sizes[url] = int(headers["content-length"])

    # -- large ranges: blocking connections in worker threads ----------------------------------

    async def _bulk_request(
        self, url: str, offset: int, size: int, cuts: Sequence[int] | None = None
    ) -> tuple[int, Mapping[str, str], bytes | list[bytes], str] | None:
        """A large range request sent from a worker thread (see :class:`_BulkPool`), with the
        same retries, DANDI resolution and per-host bound as every other request. None when
        the answer is a redirect: the caller then uses the pooled async client, which follows
        it."""
        target = await self._physical(url)
        rng = {"Range": f"bytes={offset}-{offset + size - 1}"}
        status, headers, body, reason = await self._bulk_send(
            target, {**rng, **self.dandi.auth_headers(target)}, size, cuts
        )
        if status == 403 and target != url:
            self.dandi.stats.forbidden += 1
            self.dandi.forget(url)
            target = await self._physical(url)
            status, headers, body, reason = await self._bulk_send(
                target, {**rng, **self.dandi.auth_headers(target)}, size, cuts
            )
        if 300 <= status < 400:
            return None
        if status in (200, 206):
            self._note(url, status, headers)
        return status, headers, body, reason

    async def _bulk_send(
        self, url: str, headers: dict[str, str], size: int, cuts: Sequence[int] | None = None
    ) -> tuple[int, Mapping[str, str], bytes | list[bytes], str]:
        return await self._retrying(
            url,
            lambda: trio.to_thread.run_sync(
                self._bulk.fetch, url, headers, size, cuts, abandon_on_cancel=True
            ),
            lambda got: got[0],
            (OSError, http.client.HTTPException),
            lambda got: got[1].get("retry-after"),
        )

    def pin(self, url: str, validator: str, size: int) -> None:
        """Declare the version and size of ``url`` (no probe request; cached bytes are kept and
        found under ``validator``, also offline)."""
        self.pinned[url] = self.validators[url] = validator
        self.sizes[url] = size

    async def validator(self, url: str) -> str | None:
        """The validator of ``url`` for this mount: known from an earlier response, else probed
        once (a 1-byte range request). None when the server sends neither ETag nor
        Last-Modified, or answered the probe with an error such as 404: such objects are not
        cached on disk. OriginError when the origin cannot be reached (the caller may then
        serve what the persistent cache holds); such a failure is remembered for DOWN_SECONDS,
        so that the readers waiting for one probe do not each probe again."""
        while url not in self.validators:
            down = self._down.get(url)
            if down is not None:
                if trio.current_time() - down[0] < DOWN_SECONDS:
                    raise down[1]
                del self._down[url]
            ev = self._probes.get(url)
            if ev is not None:
                await ev.wait()
                continue
            ev = self._probes[url] = trio.Event()
            self.stats.probes += 1
            try:
                await self.get_head(url, 1)
            except OriginError as e:
                self._down[url] = (trio.current_time(), e)
                raise
            except RefError as e:
                log.warning("%s: cannot probe its version (%s): not cached on disk", url, e)
                self.validators.setdefault(url, None)
            finally:
                del self._probes[url]
                ev.set()
        return self.validators[url]

    async def read(self, url: str, offset: int, size: int) -> bytes:
        """``ByteSource.read``: the same as :meth:`get_range`."""
        return await self.get_range(url, offset, size)

    async def length(self, url: str) -> int:
        """``ByteSource.length``: the same as :meth:`content_length`."""
        return await self.content_length(url)

    async def get_range(self, url: str, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset`` of ``url``."""
        return (await self.get_range_ex(url, offset, size))[0]

    async def get_range_ex(self, url: str, offset: int, size: int) -> tuple[bytes, str | None]:
        """Exactly ``size`` bytes at ``offset`` of ``url``, and the validator of the response
        that carried them (store them on disk under that one, never under an older one)."""
        body, validator = await self._get_range(url, offset, size, None)
        assert type(body) is bytes
        return body, validator

    async def get_range_split(
        self, url: str, offset: int, size: int, cuts: Sequence[int]
    ) -> tuple[list[bytes], str | None]:
        """As :meth:`get_range_ex`, the bytes cut into consecutive pieces of the sizes ``cuts``
        (adding up to ``size``). A large range is received straight into the pieces."""
        body, validator = await self._get_range(url, offset, size, cuts)
        return (body if type(body) is list else split_body(body, cuts)), validator

    async def _get_range(
        self, url: str, offset: int, size: int, cuts: Sequence[int] | None
    ) -> tuple[bytes | list[bytes], str | None]:
        if size == 0:
            return b"", self.validators.get(url)
        end = offset + size - 1
        got = None
        if self._bulk is not None and size >= self.bulk_min:
            got = await self._bulk_request(url, offset, size, cuts)
        if got is None:
            resp = await self._request(url, {"Range": f"bytes={offset}-{end}"})
            got = (resp.status_code, resp.headers, resp.content, resp.reason_phrase)
        status, headers, body, reason = got
        if status == 206:
            m = _CONTENT_RANGE_RE.fullmatch(headers.get("content-range", "").strip())
            if not m or int(m.group(1)) != offset:
                self.stats.errors += 1
                raise RefError(
                    f"{url}: bad Content-Range {headers.get('content-range')!r} "
                    f"for bytes {offset}-{end}"
                )
            got_size = len(body) if type(body) is bytes else sum(map(len, body))
            if got_size != size:
                self.stats.errors += 1
                total = m.group(3)
                raise RefError(
                    f"{url}: range {offset}-{end} runs past the end of the object (size {total})"
                )
            self.stats.bytes += got_size
            return body, self.pinned.get(url) or _validator_of(headers)
        assert type(body) is bytes  # pieces come only with a 206 of the announced size
        if status == 200:
            # The server ignored Range: the body is the whole object; slice it.
            self.stats.full_body_fallbacks += 1
            self.stats.bytes += len(body)
            if len(body) < offset + size:
                raise RefError(
                    f"{url}: range {offset}-{end} runs past the end of the object "
                    f"(size {len(body)})"
                )
            return body[offset : offset + size], self.pinned.get(url) or _validator_of(headers)
        self.stats.errors += 1
        if status == 416:
            raise RefError(f"{url}: range {offset}-{end} not satisfiable (HTTP 416)")
        raise RefError(f"{url}: HTTP {status} {reason}".rstrip())

    async def get_all(self, url: str) -> bytes:
        """The whole object (used for a remote lindi.json)."""
        resp = await self._request(url, {})
        if resp.status_code != 200:
            self.stats.errors += 1
            raise RefError(f"{url}: HTTP {resp.status_code} {resp.reason_phrase}".rstrip())
        self.stats.bytes += len(resp.content)
        return resp.content

    async def get_doc(self, url: str, method: str = "GET") -> tuple[int, bytes]:
        """(status, body) of a plain request for a document (a DANDI API answer, a LINDI index):
        retried like every request, the API key sent to API hosts only, redirects followed,
        but not resolved as an asset URL (an API page is not a redirect to data). Statuses
        other than 5xx/429 are the caller's to judge; RefError when retries run out."""
        resp = await self._send(url, self.dandi.auth_headers(url), method)
        if resp.status_code == 200:
            self.stats.bytes += len(resp.content)
        return resp.status_code, resp.content

    async def get_head(self, url: str, size: int) -> tuple[bytes, int | None]:
        """First ``size`` bytes (or fewer if the object is shorter) and the object's total size."""
        resp = await self._request(url, {"Range": f"bytes=0-{size - 1}"})
        if resp.status_code == 206:
            m = _CONTENT_RANGE_RE.fullmatch(resp.headers.get("content-range", "").strip())
            total = int(m.group(3)) if m and m.group(3) != "*" else None
            self.stats.bytes += len(resp.content)
            return resp.content[:size], total
        if resp.status_code == 200:
            self.stats.full_body_fallbacks += 1
            self.stats.bytes += len(resp.content)
            return resp.content[:size], len(resp.content)
        if resp.status_code == 416:  # empty object
            return b"", 0
        self.stats.errors += 1
        raise RefError(f"{url}: HTTP {resp.status_code} {resp.reason_phrase}".rstrip())

    async def content_length(self, url: str) -> int:
        """Total size of the object: one request (a 1-byte range, which also works without HEAD)."""
        if url in self.sizes:
            return self.sizes[url]
        _, total = await self.get_head(url, 1)
        if total is None:
            raise RefError(f"{url}: server did not report the object size")
        return total
