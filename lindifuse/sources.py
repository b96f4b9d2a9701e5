"""Byte sources: local files (pread in a worker thread) and HTTP(S) objects (range requests).

A source answers ``read(offset, size)`` with exactly those bytes or raises ``RefError`` with a
one-line cause. HTTP reads go through one pooled ``httpx.AsyncClient`` on trio with timeouts,
redirects, bounded retries with backoff on 5xx/connection errors, and a strict check of the
range response: a server that ignores ``Range`` and answers 200 with the whole body still yields
the right bytes (sliced), never the wrong ones.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field

import httpx
import trio

from . import __version__
from .errors import RefError

log = logging.getLogger(__name__)

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


@dataclass
class HttpStats:
    """Counters read by ``lindifuse stats`` and the benchmarks."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    errors: int = 0
    full_body_fallbacks: int = 0
    latencies: list[float] = field(default_factory=list)

    def record_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
        if len(self.latencies) > 10000:
            del self.latencies[:5000]


class HttpClient:
    """Pooled async HTTP client with retries; one per daemon."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_connections: int = 32,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.stats = HttpStats()
        self._client = httpx.AsyncClient(
            follow_redirects=True,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": f"lindifuse/{__version__}"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(
        self, url: str, headers: dict[str, str], method: str = "GET"
    ) -> httpx.Response:
        """One request with retries on connection errors, timeouts and 5xx/429."""
        attempt = 0
        while True:
            t0 = trio.current_time()
            self.stats.requests += 1
            try:
                resp = await self._client.request(method, url, headers=headers)
            except httpx.TransportError as e:
                cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if attempt >= self.retries:
                    self.stats.errors += 1
                    raise RefError(f"{url}: {cause} (after {attempt + 1} attempts)") from None
            else:
                self.stats.record_latency(trio.current_time() - t0)
                if resp.status_code < 500 and resp.status_code != 429:
                    return resp
                cause = f"HTTP {resp.status_code}"
                if attempt >= self.retries:
                    self.stats.errors += 1
                    raise RefError(f"{url}: {cause} (after {attempt + 1} attempts)")
            attempt += 1
            self.stats.retries += 1
            log.warning("%s: %s, retry %d/%d", url, cause, attempt, self.retries)
            await trio.sleep(self.backoff * (2 ** (attempt - 1)))

    async def get_range(self, url: str, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset`` of ``url``."""
        if size == 0:
            return b""
        end = offset + size - 1
        resp = await self._request(url, {"Range": f"bytes={offset}-{end}"})
        body = resp.content
        if resp.status_code == 206:
            m = _CONTENT_RANGE_RE.fullmatch(resp.headers.get("content-range", "").strip())
            if not m or int(m.group(1)) != offset:
                self.stats.errors += 1
                raise RefError(
                    f"{url}: bad Content-Range {resp.headers.get('content-range')!r} "
                    f"for bytes {offset}-{end}"
                )
            if len(body) != size:
                self.stats.errors += 1
                total = m.group(3)
                raise RefError(
                    f"{url}: range {offset}-{end} runs past the end of the object (size {total})"
                )
            self.stats.bytes += len(body)
            return body
        if resp.status_code == 200:
            # The server ignored Range: the body is the whole object; slice it.
            self.stats.full_body_fallbacks += 1
            self.stats.bytes += len(body)
            if len(body) < offset + size:
                raise RefError(
                    f"{url}: range {offset}-{end} runs past the end of the object "
                    f"(size {len(body)})"
                )
            return body[offset : offset + size]
        self.stats.errors += 1
        if resp.status_code == 416:
            raise RefError(f"{url}: range {offset}-{end} not satisfiable (HTTP 416)")
        raise RefError(f"{url}: HTTP {resp.status_code} {resp.reason_phrase}".rstrip())

    async def get_all(self, url: str) -> bytes:
        """The whole object (used for a remote lindi.json)."""
        resp = await self._request(url, {})
        if resp.status_code != 200:
            self.stats.errors += 1
            raise RefError(f"{url}: HTTP {resp.status_code} {resp.reason_phrase}".rstrip())
        self.stats.bytes += len(resp.content)
        return resp.content

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
        _, total = await self.get_head(url, 1)
        if total is None:
            raise RefError(f"{url}: server did not report the object size")
        return total


class LocalFiles:
    """Open file descriptors by path, shared by all references into the same file."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    try:
                        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as e:
                        raise RefError(f"{path}: {e.strerror}") from None
                    self._fds[path] = fd
        return fd

    def pread(self, path: str, offset: int, size: int) -> bytes:
        """Blocking read of exactly ``size`` bytes (call from a worker thread)."""
        fd = self._fd(path)
        data = os.pread(fd, size, offset)
        if len(data) < size:
            # pread may legitimately return short; retry once for the rest before giving up.
            more = os.pread(fd, size - len(data), offset + len(data))
            data += more
            if len(data) < size:
                raise RefError(
                    f"{path}: range {offset}+{size} runs past the end of the file "
                    f"(size {os.fstat(fd).st_size})"
                )
        return data

    async def read(self, path: str, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        return await trio.to_thread.run_sync(self.pread, path, offset, size)

    def size(self, path: str) -> int:
        return os.fstat(self._fd(path)).st_size

    def invalidate(self, path: str) -> None:
        """Forget a descriptor (the file was replaced)."""
        with self._lock:
            fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
