"""Index an HDF5 source from the daemon or the CLI: local path or URL, with the index cache.

``load_index`` is the one entry point. For a URL, h5py reads the file through a ``BlockFile``
whose ranges go to the caller's ``read(url, offset, size)`` coroutine (the daemon's fetcher, so
metadata blocks land in the memory and persistent caches); h5py runs in a worker thread and each
block is fetched on the trio loop with ``trio.from_thread.run``.

Finished indexes are kept in ``<cache dir>/indexes/`` under a key made of the source, its version
(ETag or Last-Modified for a URL, size and mtime for a local file), the index options and
``INDEX_FORMAT``, so an unchanged file is not indexed twice and a changed one always is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson
import outcome
import trio

from lindifuse.cache.indexfiles import IndexFiles
from lindifuse.errors import FormatError, SourceError
from lindifuse.formats.hdf5.blockfile import BlockFile
from lindifuse.formats.hdf5.options import INDEX_FORMAT, IndexOptions, Progress

if TYPE_CHECKING:
    from lindifuse.formats.hdf5.indexer import IndexResult

log = logging.getLogger(__name__)

ReadRange = Callable[[str, int, int], Awaitable[bytes]]


@dataclass
class Loaded:
    """An index and how it was obtained."""

    rfs: dict[str, Any]
    from_cache: bool
    seconds: float
    result: IndexResult | None = None  # None when it came from the cache
    requests: int = 0  # range requests h5py's reads turned into (remote, not cached)
    bytes_read: int = 0
    http_requests: int = 0  # all HTTP requests of the command (set by ``lindifuse index``)


class IndexCache:
    """Finished indexes on disk, one JSON file each, written atomically."""

    def __init__(self, directory: str) -> None:
        self.files = IndexFiles(directory, ".json")
        self.root = self.files.root

    @staticmethod
    def key(source: str, validator: str, options: IndexOptions) -> str:
        raw = json.dumps([INDEX_FORMAT, source, validator, asdict(options)], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.files.read(key)
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("cached index %s is damaged: indexing again", self.files.path(key))
            return None
        return doc if isinstance(doc, dict) and "refs" in doc else None

    def info(self) -> tuple[int, int]:
        """(indexes kept, their bytes)."""
        n = size = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                if name.endswith(".json"):
                    n += 1
                    with contextlib.suppress(OSError):
                        size += os.stat(os.path.join(folder, name)).st_size
        return n, size

    def clear(self) -> tuple[int, int]:
        """Delete every kept index (mounts index again what they mount next); (count, bytes)."""
        n, size = self.info()
        for folder, _, names in os.walk(self.root, topdown=False):
            for name in names:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        return n, size

    def put(self, key: str, rfs: dict[str, Any]) -> None:
        self.files.write(key, orjson.dumps(rfs), "index")


def local_validator(path: str) -> str:
    st = os.stat(path)
    return f"size:{st.st_size}:mtime:{st.st_mtime_ns}"


def _open_h5(fileobj_or_path: Any, where: str) -> Any:
    import h5py

    try:
        return h5py.File(fileobj_or_path, "r")
    except OSError as e:
        msg = str(e)
        if "truncated file" in msg:
            msg = "truncated HDF5 file"
        elif "file signature not found" in msg:
            msg = "not an HDF5 file (no superblock signature)"
        raise FormatError(f"{where}: cannot open as HDF5: {msg}") from None


def index_local(
    path: str, url: str, options: IndexOptions, progress: Progress | None
) -> IndexResult:
    """Blocking: index the local HDF5 file ``path``; chunk refs name ``url``."""
    f = _open_h5(path, path)
    try:
        return _run_index(f, url, options, progress, path)
    finally:
        f.close()


def _run_index(
    f: Any, url: str, options: IndexOptions, progress: Progress | None, where: str
) -> IndexResult:
    from lindifuse.formats.hdf5.indexer import index_file

    try:
        return index_file(f, url, options, progress)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        # h5py raises these for damaged metadata (a truncated or corrupt file)
        raise FormatError(f"{where}: damaged HDF5 file: {e}") from None


async def load_index(
    source: str,
    *,
    remote: bool,
    size: int | None,
    read: ReadRange | None,
    validator: str | None,
    options: IndexOptions | None = None,
    cache: IndexCache | None = None,
    progress: Progress | None = None,
    head: bytes = b"",
) -> Loaded:
    """The LINDI refs of the HDF5 file ``source`` (absolute path or URL).

    ``validator`` names the file's version (None: unknown, so the index is not cached); for a
    URL, ``size`` is its length and ``read`` fetches its ranges; ``head``, the file's first bytes
    when the caller has them already, saves reading them again.
    """
    options = options or IndexOptions()
    t0 = time.monotonic()
    key = IndexCache.key(source, validator, options) if cache and validator else None
    if key is not None and cache is not None:
        doc = await trio.to_thread.run_sync(cache.get, key)
        if doc is not None:
            return Loaded(doc, True, time.monotonic() - t0)
    if remote:
        if read is None or size is None:
            raise SourceError(f"{source}: the server did not report the file's size")
        token = trio.lowlevel.current_trio_token()
        reader = read

        def read_range(offset: int, n: int) -> bytes:
            return trio.from_thread.run(reader, source, offset, n, trio_token=token)

        async def prefetch_one(offset: int, n: int) -> None:
            # on failure the read that needs these bytes fetches them again and reports
            with contextlib.suppress(Exception):
                await reader(source, offset, n)

        async with trio.open_nursery() as nursery:

            def prefetch(offset: int, n: int) -> None:
                trio.from_thread.run_sync(
                    nursery.start_soon, prefetch_one, offset, n, trio_token=token
                )

            bf = BlockFile(read_range, size, prefetch=prefetch)
            if head:
                bf.seed(head)

            def work() -> IndexResult:
                f = _open_h5(bf, source)
                try:
                    return _run_index(f, source, options, progress, source)
                finally:
                    f.close()

            # captured, so that an error leaves the nursery as itself, not in an ExceptionGroup
            got = await outcome.acapture(trio.to_thread.run_sync, work, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()
        result = got.unwrap()
        requests, nbytes = bf.requests, bf.bytes_fetched
    else:
        result = await trio.to_thread.run_sync(
            index_local, source, source, options, progress, abandon_on_cancel=True
        )
        requests = nbytes = 0
    if key is not None and cache is not None:
        await trio.to_thread.run_sync(cache.put, key, result.rfs)
    return Loaded(result.rfs, False, time.monotonic() - t0, result, requests, nbytes)
