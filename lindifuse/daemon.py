"""Assemble one mounted file system: sources, cache, container, tree, content and operations."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from .cache import MemoryCache
from .containers import Container, open_container
from .content import ContentService
from .fs import LindiOperations
from .sources import HttpClient, LocalFiles
from .tree import Tree

log = logging.getLogger(__name__)


class FileSystem:
    """Everything one mount owns; ``aclose`` releases it (and, when writable, flushes)."""

    def __init__(
        self,
        container: Container,
        http: HttpClient,
        local: LocalFiles,
        cache: MemoryCache,
        *,
        read_only: bool,
    ) -> None:
        self.container = container
        self.http = http
        self.local = local
        self.cache = cache
        self.read_only = read_only
        t0 = time.monotonic()
        self.tree = Tree.from_keys(container.rset.refs.keys())
        log.info(
            "tree: %d files, %d directories in %.2fs",
            self.tree.nfiles,
            self.tree.ndirs,
            time.monotonic() - t0,
        )
        for key in container.rset.rejected:
            log.warning("%s: key %r rejected (empty, '.' or '..' parts)", container.source, key)
        for key in self.tree.conflicts:
            log.warning(
                "%s: key %r is also a directory prefix; showing the directory",
                container.source,
                key,
            )
        self.content = ContentService(container, http, local, cache)
        self.ops = LindiOperations(
            self.tree, self.content, mtime=container.mtime, read_only=read_only, stats=self.stats
        )

    def describe(self) -> str:
        return f"{self.container.kind}, {self.tree.nfiles} keys, {'ro' if self.read_only else 'rw'}"

    def stats(self) -> dict[str, Any]:
        h = self.http.stats
        lat = sorted(h.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {
            "source": self.container.source,
            "kind": self.container.kind,
            "http": {
                "requests": h.requests,
                "bytes": h.bytes,
                "retries": h.retries,
                "errors": h.errors,
                "full_body_fallbacks": h.full_body_fallbacks,
                "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
            },
            "memory_cache": {
                **asdict(self.cache.stats),
                "bytes": self.cache.nbytes,
                "max_bytes": self.cache.max_bytes,
            },
        }

    async def background(self) -> None:
        """Periodic work of the daemon (write flushes on writable mounts)."""
        return None

    async def aclose(self) -> None:
        await self.http.aclose()
        self.local.close()


async def build_filesystem(opts: Any) -> FileSystem:
    http = HttpClient()
    local = LocalFiles()
    try:
        container = await open_container(opts.source, http, local)
    except BaseException:
        await http.aclose()
        local.close()
        raise
    read_only = opts.read_only or container.remote or container.kind == "json"
    return FileSystem(container, http, local, MemoryCache(opts.memory_cache), read_only=read_only)
