"""The parts every kind of mount is built from, opened as the options ask: the HTTP client
(``--timeout``, ``--offline``, ``--allowed-hosts``), the persistent cache (``--cache-dir``,
``--cache-size``, ``--no-cache``) and the HDF5 index settings. One definition, so a dandiset
mount and a single-source mount cannot drift apart."""

from __future__ import annotations

import functools
import logging
import sqlite3
from typing import Any

import trio

from lindifuse.cache.disk import (
    AsyncDiskCache,
    DiskCache,
    default_cache_dir,
    default_cache_size,
    read_mmap_setting,
)
from lindifuse.formats.container import (
    HDF5Settings,
)
from lindifuse.sources.http import DEFAULT_TIMEOUT, HostRule, HttpClient
from lindifuse.sources.local import LocalFiles

log = logging.getLogger(__name__)


def cache_refusal(opts: Any) -> str | None:
    """One line when the persistent cache directory is on a network file system (NFS, CIFS,
    Lustre, GPFS, sshfs...) and ``--allow-remote-cache`` was not given, else None. SQLite's WAL
    mode, which the cache uses, needs the locking and shared memory of one kernel."""
    if getattr(opts, "no_cache", False) or getattr(opts, "allow_remote_cache", False):
        return None
    from lindifuse.cache.fstype import remote_filesystem

    directory = getattr(opts, "cache_dir", None) or default_cache_dir()
    kind = remote_filesystem(directory)
    if kind is None:
        return None
    return (
        f"{directory}: the persistent cache is on a network file system ({kind}), and SQLite's "
        "WAL mode needs local locking: give a node-local --cache-dir (or --no-cache), or "
        "--allow-remote-cache to use it anyway"
    )


async def open_disk_cache(opts: Any) -> AsyncDiskCache | None:
    """The persistent chunk cache the options ask for, or None (--no-cache, or it cannot be
    opened: then the mount works without it and says so in the log)."""
    if getattr(opts, "no_cache", False):
        return None
    directory = getattr(opts, "cache_dir", None) or default_cache_dir()
    size = getattr(opts, "cache_size", None) or default_cache_size(directory)
    read_mmap = read_mmap_setting()
    if read_mmap and getattr(opts, "allow_remote_cache", False):
        from lindifuse.cache.fstype import remote_filesystem

        if remote_filesystem(directory):
            read_mmap = 0  # mapped pages of a network file system fail as SIGBUS, not EIO
    try:
        store = await trio.to_thread.run_sync(
            functools.partial(DiskCache, directory, size, read_mmap=read_mmap)
        )
    except (OSError, sqlite3.Error) as e:
        log.warning("persistent cache %s unavailable (%s): running without it", directory, e)
        return None
    log.info("persistent cache %s, at most %d bytes", store.root, size)
    return AsyncDiskCache(store)


def hdf5_settings(opts: Any, progress: Any = None) -> HDF5Settings:
    """How the mount indexes an HDF5 source: lindi's options; finished indexes kept in the
    persistent cache's directory (none with --no-cache)."""
    from lindifuse.formats.hdf5.load import IndexCache

    cache = None
    if not getattr(opts, "no_cache", False):
        cache = IndexCache(getattr(opts, "cache_dir", None) or default_cache_dir())
    return HDF5Settings(cache=cache, progress=progress)


def car_settings(opts: Any) -> Any:
    """How the mount opens a CAR source: ``--root CID``; scanned block tables kept beside the
    HDF5 indexes in the persistent cache's directory (none with --no-cache)."""
    from lindifuse.formats.car.load import TableCache
    from lindifuse.formats.car.source import CarSettings

    cache = None
    if not getattr(opts, "no_cache", False):
        cache = TableCache(getattr(opts, "cache_dir", None) or default_cache_dir())
    # The mount answers before a CARv1 scan ends, and fills large maps on first use.
    xarray = getattr(opts, "xarray", False)
    return CarSettings(root=getattr(opts, "root", None), cache=cache, answer_early=not xarray)


def http_client(opts: Any) -> HttpClient:
    """The mount's HTTP client, as the options ask (--timeout, --offline, --allowed-hosts)."""
    return HttpClient(
        timeout=getattr(opts, "timeout", None) or DEFAULT_TIMEOUT,
        offline=getattr(opts, "offline", False),
        allowed_hosts=HostRule(getattr(opts, "allowed_hosts", None) or ()),
    )


async def close_clients(http: HttpClient, local: LocalFiles, disk: AsyncDiskCache | None) -> None:
    """Release what a file system under construction opened (it failed to build)."""
    if disk is not None:
        await disk.aclose()
    await http.aclose()
    local.close()
