"""One mounted file system: the tree, content service, fetcher, operations and (when writable)
writer of one mount, put together from parts the caller opened (``lindifuse.service`` opens the
sources and caches and hands them in, so this layer never decides options).

:class:`FileSystem` also resolves ``_EXTERNAL_ARRAY_LINK`` arrays on first use of their
directory, serves the ``stats`` counters and hosts the mount's background work; ``aclose``
releases everything (flushing a writable mount first)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import trio

from lindifuse.cache.disk import AsyncDiskCache
from lindifuse.cache.memory import MemoryCache
from lindifuse.errors import RefError
from lindifuse.formats.container import (
    Container,
)
from lindifuse.formats.hdf5.extlink import chunk_refs, find_link
from lindifuse.fs.content import ContentService
from lindifuse.fs.fetch import Fetcher
from lindifuse.fs.ops import LindiOperations, WritableOperations
from lindifuse.fs.readahead import ReadAhead
from lindifuse.fs.tree import Node, Tree
from lindifuse.fs.writer import Writer
from lindifuse.refs import expand_templates
from lindifuse.sources.http import HttpClient
from lindifuse.sources.local import LocalFiles

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _long_lived() -> Iterator[None]:
    """As at mount (``service.mount``): what is made inside lives as long as the mount (the
    nodes and entries of a directory filled on first use), so no collection runs while it is
    made, and it is frozen afterwards, out of every later collection's way."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.freeze()
            gc.enable()


class FileSystem:
    """Everything one mount owns; ``aclose`` releases it (and, when writable, flushes).

    ``tree`` (default: built from the container's keys) and ``content_class`` let a dandiset
    mount (``lindifuse.fs.dandiset``) graft its assets' keys lazily under one tree.
    """

    content_class: type[ContentService] = ContentService

    def __init__(
        self,
        container: Container,
        http: HttpClient,
        local: LocalFiles,
        cache: MemoryCache,
        *,
        read_only: bool,
        archive: Any = None,
        fetcher: Fetcher | None = None,
        disk: AsyncDiskCache | None = None,
        readahead: bool = True,
        tree: Tree | None = None,
    ) -> None:
        self.container = container
        self.http = http
        self.local = local
        self.cache = cache
        self.disk = disk
        self.fetcher = fetcher if fetcher is not None else Fetcher(http, cache, disk)
        self.read_only = read_only
        t0 = time.monotonic()
        if tree is None:
            runs = container.key_runs
            if runs is not None:
                tree = Tree.from_runs(runs)
            elif read_only:  # a tree that never changes: large directories filled on first use
                tree = Tree.from_keys_lazy(container.rset.refs)
            else:
                tree = Tree.from_keys(container.rset.refs)
        self.tree = tree
        # Directories the loader left to fill on first use (a CAR's large maps): inode -> the
        # loader's lazy directory (see ``Container.lazy_dirs``), and those being filled now.
        self._lazy: dict[int, Any] = {}
        self._lazy_filling: dict[int, trio.Event] = {}
        for lazy in container.lazy_dirs:
            self._add_lazy(lazy)
        later = ""
        if self._lazy or tree.pending:
            later = f" (and {self._lazy_entries()} entries of"
            later += f" {len(self._lazy) + len(tree.pending)} directories filled on first use)"
        log.info(
            "tree: %d files, %d directories%s in %.2fs",
            self.tree.nfiles,
            self.tree.ndirs,
            later,
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
        # Chunk refs of arrays stored as _EXTERNAL_ARRAY_LINK, found on first use of their
        # directory; kept apart from the reference set so a writable mount never commits them.
        self.ext_refs: dict[str, Any] = {}
        self.ext_links = self._find_external_links()
        self._ext_loading: dict[int, trio.Event] = {}
        self.content = self.content_class(
            container, http, local, cache, fetcher=self.fetcher, get_value=self._value
        )
        if readahead:
            self.content.readahead = ReadAhead(self.content, self.fetcher)
        self.archive = archive
        self.writer: Writer | None = None
        if archive is None:
            self.ops: LindiOperations = LindiOperations(
                self.tree, self.content, mtime=container.mtime, read_only=True, stats=self.stats
            )
        else:
            folder = os.path.dirname(container.source.rstrip("/"))
            self.writer = Writer(
                archive,
                self.tree,
                self.content,
                container.rset.refs,
                container.rset.extra,
                staging_dir=folder,
            )
            self.ops = WritableOperations(
                self.tree,
                self.content,
                self.writer,
                mtime=container.mtime,
                statvfs_path=folder,
                stats=self.stats,
            )
        if self.ext_links or self._lazy or self.tree.pending:
            self.ops.prepare_dir = self.prepare_dir

    def _value(self, key: str) -> Any:
        try:
            return self.container.rset.refs[key]
        except KeyError:
            return self.ext_refs[key]

    def _find_external_links(
        self, refs: dict[str, Any] | None = None, prefix: str = ""
    ) -> dict[int, dict[str, str]]:
        """Directories holding an ``_EXTERNAL_ARRAY_LINK`` among ``refs`` (default: the
        container's), whose keys sit under ``prefix`` in the tree."""
        links: dict[int, dict[str, str]] = {}
        if refs is None and not self.container.rset.may_link:
            return links
        for key, value in (self.container.rset.refs if refs is None else refs).items():
            if key.endswith(".zattrs") and (key == ".zattrs" or key.endswith("/.zattrs")):
                link = find_link(value)
                where = key.rpartition("/")[0]
                if prefix:
                    where = f"{prefix}/{where}" if where else prefix
                node = self.tree.by_key(where) if link else None
                if link and node is not None:
                    links[node.inode] = link
        if links:
            log.info("%d arrays are external HDF5 dataset links", len(links))
        return links

    def _add_lazy(self, lazy: Any) -> None:
        node = self.tree.add_lazy_dir(lazy.key, lazy.subdirs)
        if node is None:
            log.warning("%s: key %r is also a file; left out", self.container.source, lazy.key)
            return
        self._lazy[node.inode] = lazy

    def _lazy_entries(self) -> int:
        """Entries not in the tree yet: of the loader's lazy directories, and of the tree's."""
        return sum(map(len, self._lazy.values())) + self.tree.npending

    async def _fill_lazy(self, node: Node) -> None:
        """Fill a directory the loader left for its first use (once; concurrent users wait).
        Inodes are given here, once, so they stay stable for the life of the mount."""
        ev = self._lazy_filling.get(node.inode)
        while ev is not None:  # another request is filling it (and, should that fail, retry)
            await ev.wait()
            if node.inode not in self._lazy:
                return
            ev = self._lazy_filling.get(node.inode)
        lazy = self._lazy[node.inode]
        ev = self._lazy_filling[node.inode] = trio.Event()
        try:
            with _long_lived():
                t0 = time.monotonic()
                got = await lazy.expand()
                refs = self.container.rset.refs
                refs.update(got.entries)
                zattrs = {}
                for parent_path, names, keys in got.runs:
                    self.tree.add_run(parent_path, names, keys)
                    if ".zattrs" in names:
                        key = keys[names.index(".zattrs")]
                        zattrs[key] = refs[key]
                for sub in got.lazy:
                    self._add_lazy(sub)
                del self._lazy[node.inode]
                self.tree.filled(node)
                if zattrs:
                    self.ext_links.update(self._find_external_links(zattrs))
                log.debug(
                    "%s: %d keys filled in on first use in %.3fs",
                    node.key,
                    len(got.entries),
                    time.monotonic() - t0,
                )
                if got.problems:
                    src = self.container.source
                    more = f" (and {len(got.problems) - 1} more)" if len(got.problems) > 1 else ""
                    log.warning("%s: %s%s", src, got.problems[0], more)
                    for p in got.problems[1:]:
                        log.debug("%s: %s", src, p)
        finally:
            del self._lazy_filling[node.inode]
            ev.set()

    def _fill_pending(self, node: Node) -> None:
        """Make the files of a directory the tree left for its first use."""
        with _long_lived():
            t0 = time.monotonic()
            made = self.tree.fill(node)
        log.debug("%s: %d files made on first use in %.3fs", node.key, made, time.monotonic() - t0)

    async def prepare_dir(self, node: Node) -> None:
        """Before a directory is used: fill it if the loader left it for its first use; list
        the chunks of an external array link (once)."""
        if self._lazy and node.inode in self._lazy:
            await self._fill_lazy(node)
        if self.tree.pending and node.inode in self.tree.pending:
            self._fill_pending(node)
        link = self.ext_links.get(node.inode)
        if link is None:
            return
        ev = self._ext_loading.get(node.inode)
        if ev is not None:
            await ev.wait()
            if node.inode in self.ext_links:
                raise RefError(f"{node.key}: external array link could not be resolved")
            return
        ev = self._ext_loading[node.inode] = trio.Event()
        try:
            container = self.content.container_of(node)
            target = expand_templates(link["url"], container.rset.templates)
            loc = container.resolve(target)
            t0 = time.monotonic()
            opener = None
            if loc.remote:
                opener = await self._remote_opener(loc.where)
            try:
                found = await trio.to_thread.run_sync(
                    chunk_refs, loc.where, loc.remote, target, link["name"], opener
                )
            except Exception as e:  # h5py/remfile raise many kinds
                raise RefError(
                    f"{node.key}: external array link to {link['name']} in {target}: {e}"
                ) from None
            for name, value in found.items():
                if self.tree.lookup(node, name) is None:
                    self.ext_refs[f"{node.key}/{name}" if node.key else name] = value
                    self.tree.add_file(node, name)
            del self.ext_links[node.inode]
            log.info(
                "%s: %d chunks from external HDF5 dataset %s in %.2fs",
                node.key,
                len(found),
                link["name"],
                time.monotonic() - t0,
            )
        finally:
            del self._ext_loading[node.inode]
            ev.set()

    async def _remote_opener(self, url: str) -> Any:
        """A file object for h5py over ``url`` whose reads go through this mount's fetcher (and
        so its memory and disk caches), in aligned blocks: see ``hdf5.blockfile``."""
        from lindifuse.formats.hdf5.blockfile import BlockFile

        size = await self.http.content_length(url)
        token = trio.lowlevel.current_trio_token()
        fetch = self.fetcher.get

        def read_range(offset: int, n: int) -> bytes:
            return trio.from_thread.run(fetch, url, offset, n, trio_token=token)

        return BlockFile(read_range, size)

    @property
    def nkeys(self) -> int:
        """Files of the mount, counting those not made yet."""
        return self.tree.nfiles + self._lazy_entries()

    def describe(self) -> str:
        return f"{self.container.kind}, {self.nkeys} keys, {'ro' if self.read_only else 'rw'}"

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
                "version_changes": h.version_changes,
                "retry_after_waits": h.retry_after,
                "refused_hosts": h.refused_hosts,
                "offline": self.http.offline,
                "timeout": self.http.timeout,
                "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
            },
            "memory_cache": {
                **asdict(self.cache.stats),
                "bytes": self.cache.nbytes,
                "max_bytes": self.cache.max_bytes,
            },
            **self._fetch_stats(),
            "writer": None
            if self.writer is None
            else {
                "commits": self.writer.commits,
                "flushes": self.writer.flushes,
                "staged_files": len(self.writer.staged),
                "pending_refs": self.writer.refs_dirty,
                "refused_writes": self.writer.refused_writes,
                "full_commits": self.writer.full_commits,
            },
        }

    def _fetch_stats(self) -> dict[str, Any]:
        """Persistent cache, request merging, read-ahead and DANDI counters."""
        d = self.disk
        disk: dict[str, Any] = {"enabled": d is not None}
        if d is not None:
            disk.update(
                asdict(d.stats),
                directory=d.store.directory,
                max_bytes=d.store.max_bytes,
                read_mmap=d.store.read_mmap,
                broken=d.store.broken,
            )
        return {
            "disk_cache": disk,
            "fetch": {
                **asdict(self.fetcher.stats),
                "probes": self.http.stats.probes,
                "readahead": self.content.readahead is not None,
                "local_nowait_reads": self.local.nowait_hits,
            },
            "requests": dict(self.ops.requests),
            "no_open": self.ops.no_open,
            "request_burst": self.ops.request_burst,
            "file_range": self.ops.enable_splice_write,
            "file_range_replies": self.ops.range_replies,
            "file_range_thread_replies": self.ops.range_thread_replies,
            "dandi": asdict(self.http.dandi.stats),
        }

    async def background(self) -> None:
        """Periodic work of the daemon (write flushes on writable mounts), the host of
        background fetches (read-ahead) and the container's ``after_mount`` jobs."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.fetcher.run)
            if self.disk is not None:
                nursery.start_soon(trio.to_thread.run_sync, self.disk.store.remove_orphans)
            for job in self.container.after_mount:
                nursery.start_soon(trio.to_thread.run_sync, job)
            for ajob in self.container.background:
                nursery.start_soon(ajob)
            if self.writer is not None:
                await self.writer.run_timer()

    async def aclose(self) -> None:
        try:
            for job in self.container.after_mount:  # an unmount may have come first
                await trio.to_thread.run_sync(job)
            if self.writer is not None:
                await self.writer.close()
        finally:
            if self.disk is not None:
                await self.disk.aclose()  # commits the queued chunks
            await self.http.aclose()
            self.local.close()
