"""Assemble one mounted file system: sources, cache, container, tree, content and operations."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import trio

from lindifuse.archive.open import open_archive
from lindifuse.cache.memory import MemoryCache
from lindifuse.errors import SourceError
from lindifuse.formats.container import (
    Container,
    container_from_archive,
    open_container,
)
from lindifuse.formats.detect import HEAD_BYTES, is_tar_head
from lindifuse.fs.fetch import Fetcher
from lindifuse.fs.filesystem import FileSystem
from lindifuse.service.parts import close_clients, hdf5_settings, http_client, open_disk_cache
from lindifuse.sources.base import is_url
from lindifuse.sources.http import HttpClient
from lindifuse.sources.local import LocalFiles

log = logging.getLogger(__name__)


def _log_index(c: Container) -> None:
    ix = c.index
    if ix.from_cache:
        log.info("%s: HDF5 index from the cache (%.2fs)", c.source, ix.seconds)
        return
    r = ix.result
    extra = f", {ix.requests} range requests, {ix.bytes_read} bytes" if c.remote else ""
    log.info(
        "%s: indexed HDF5: %d objects, %d chunks, %d external array links in %.2fs%s",
        c.source,
        r.objects,
        r.chunks,
        r.external_links,
        ix.seconds,
        extra,
    )
    for w in r.warnings:
        log.warning("%s: %s", c.source, w)


def _writable_kind(source: str) -> str | None:
    """'tar' or 'dir' when SOURCE is a local archive that can be mounted read-write."""
    if is_url(source):
        return None
    if os.path.isdir(source):
        return "dir" if os.path.isfile(os.path.join(source, "lindi.json")) else None
    try:
        with open(source, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return None
    return "tar" if is_tar_head(head) else None


def _restrict(container: Container, opts: Any, http: HttpClient) -> None:
    """Apply --no-local-refs and --allowed-hosts to the references of ``container``."""
    if getattr(opts, "no_local_refs", False) or container.remote:
        container.local_refs = False
    if http.hosts:
        container.hosts = http.hosts


async def build_filesystem(opts: Any, progress: Any = None) -> FileSystem:
    """The file system for ``opts``; ``progress(objects, chunks)`` reports the indexing of an
    HDF5 source (from a worker thread)."""
    from lindifuse.sources.dandiset import parse_target

    if parse_target(opts.source) is not None:
        from lindifuse.service.dandiset import build_dandiset_filesystem

        return await build_dandiset_filesystem(opts)
    http = http_client(opts)
    local = LocalFiles()
    cache = MemoryCache(opts.memory_cache)
    disk = await open_disk_cache(opts)
    fetcher = Fetcher(http, cache, disk)
    extra = {"fetcher": fetcher, "disk": disk, "readahead": getattr(opts, "readahead", True)}
    try:
        # The xarray view is derived content: never mounted writable, however it was asked for.
        writable = not opts.read_only and not getattr(opts, "xarray", False)
        kind = _writable_kind(opts.source) if writable else None
        if kind is not None:
            archive = await trio.to_thread.run_sync(
                lambda: open_archive(opts.source, writable=True)
            )
            for line in archive.recovered:
                log.warning("%s: recovered: %s", opts.source, line)
            container = container_from_archive(archive, kind)
            _restrict(container, opts, http)
            return FileSystem(
                container, http, local, cache, read_only=False, archive=archive, **extra
            )
        container = await open_container(
            opts.source,
            http,
            local,
            fetch=fetcher.get,
            head_of=fetcher.head,
            hdf5=hdf5_settings(opts, progress),
        )
        if container.index is not None:
            _log_index(container)
        _restrict(container, opts, http)
    except BaseException:
        await close_clients(http, local, disk)
        raise
    fs = FileSystem(container, http, local, cache, read_only=True, **extra)
    await apply_xarray_view(fs, opts)
    return fs


async def apply_xarray_view(fs: FileSystem, opts: Any) -> None:
    """With --xarray, install the xarray view (lindifuse.fs.xview) on a read-only file system
    before it is served; without it, do nothing at all."""
    if not getattr(opts, "xarray", False):
        return
    assert fs.read_only, "the xarray view is only served read-only"
    from lindifuse.fs.xview import install

    t0 = time.monotonic()
    try:
        await install(fs.tree, fs.content)
    except Exception as e:  # a bug: say so in one line, keep the traceback in the log
        log.exception("building the xarray view failed")
        await fs.aclose()
        raise SourceError(f"{opts.source}: cannot build the xarray view: {e}") from None
    log.info("xarray view built in %.2fs", time.monotonic() - t0)
