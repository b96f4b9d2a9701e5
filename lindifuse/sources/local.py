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

    def fd(self, path: str) -> int:
        """The kept descriptor of ``path`` (opened on first use; RefError when it cannot be)."""
        return self._fd(path)

    def probably_cached(self, fd: int, offset: int, size: int) -> bool:
        """Whether the first and the last page of the range are in the page cache (two
        one-byte ``RWF_NOWAIT`` reads). Read-ahead fills a file in order, so the pages between
        are very likely there too; used to choose between replying from the event loop and
        from a worker thread, never for correctness."""
        if not _NOWAIT or size <= 0:
            return False
        one = bytearray(1)
        try:
            return (
                os.preadv(fd, [one], offset, os.RWF_NOWAIT) == 1
                and os.preadv(fd, [one], offset + size - 1, os.RWF_NOWAIT) == 1
            )
        except OSError:  # BlockingIOError: not cached
            return False

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

    def _nowait_into(self, path: str, offset: int, buf: bytearray) -> int:
        """Bytes read into ``buf`` by one non-blocking ``preadv2(RWF_NOWAIT)``: only what the
        page cache holds, 0 when none of it is (or the call is not available)."""
        if not _NOWAIT:
            return 0
        try:
            return os.preadv(self._fd(path), [buf], offset, os.RWF_NOWAIT)
        except (BlockingIOError, OSError, RefError):
            return 0

    def _fill(self, path: str, offset: int, buf: bytearray, done: int) -> bytearray:
        """Blocking: read the rest of ``buf`` from ``done`` on (call from a worker thread)."""
        fd = self._fd(path)
        view = memoryview(buf)
        while done < len(buf):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise RefError(
                    f"{path}: range {offset}+{len(buf)} runs past the end of the file "
                    f"(size {os.fstat(fd).st_size})"
                )
            done += n
        return buf

    def pread_cached(self, path: str, offset: int, size: int) -> bytes | None:
        """The bytes when all of them are in the page cache (a non-blocking ``preadv2`` with
        RWF_NOWAIT), else None. Lets the event loop serve a warm read without the worker-thread
        round trip, which costs more than the copy itself."""
        buf = bytearray(size)
        if self._nowait_into(path, offset, buf) != size:
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

    async def read_buffer(self, path: str, offset: int, size: int) -> bytearray:
        """``read`` for a reply handed straight to the kernel: a fresh ``bytearray`` that the
        caller owns, filled in place. Against ``read`` it saves one copy of every byte (into an
        immutable ``bytes``), and what a non-blocking attempt found in the page cache is kept
        when the worker thread reads the rest."""
        buf = bytearray(size)
        done = self._nowait_into(path, offset, buf)
        if done == size:
            self.nowait_hits += 1
            return buf
        return await trio.to_thread.run_sync(self._fill, path, offset, buf, done)

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
