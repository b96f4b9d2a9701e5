"""Local files as a byte source: ``pread`` in a worker thread, with a non-blocking
``RWF_NOWAIT`` attempt first (a page-cache hit costs no thread hop). File descriptors are kept
open per path for the life of the mount."""

from __future__ import annotations

import os
import threading

import trio

from lindifuse.errors import RefError

# preadv2(RWF_NOWAIT) exists (Linux >= 4.14 and a Python that exposes it).
_NOWAIT = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")


class LocalFiles:
    """Open file descriptors by path, shared by all references into the same file."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.nowait_hits = 0  # reads served from the page cache without a worker thread

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

    def pread_cached(self, path: str, offset: int, size: int) -> bytes | None:
        """The bytes when all of them are in the page cache (a non-blocking ``preadv2`` with
        RWF_NOWAIT), else None. Lets the event loop serve a warm read without the worker-thread
        round trip, which costs more than the copy itself."""
        if not _NOWAIT:
            return None
        try:
            fd = self._fd(path)
            buf = bytearray(size)
            n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except (BlockingIOError, OSError, RefError):
            return None
        if n != size:
            return None
        return bytes(buf)

    async def read(self, path: str, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        data = self.pread_cached(path, offset, size)
        if data is not None:
            self.nowait_hits += 1
            return data
        return await trio.to_thread.run_sync(self.pread, path, offset, size)

    def size(self, path: str) -> int:
        return os.fstat(self._fd(path)).st_size

    async def length(self, path: str) -> int:
        """``ByteSource.length``: the file's size (``fstat`` of the kept descriptor)."""
        return await trio.to_thread.run_sync(self.size, path)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
