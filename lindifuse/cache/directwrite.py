"""Write a new cache file with ``O_DIRECT``: the bytes go from one reused, aligned buffer to the
device, and no page of the page cache is allocated for them.

Why: a chunk fetched for a reader already sits in three places (the daemon's memory cache, the
kernel's page cache of the FUSE file, and the HTTP receive buffer); a buffered write of its cache
file makes the kernel allocate and fill a fourth copy. Allocating fresh pages is the expensive part
(measured on the project's 2-core VM, 512 files of 1 MiB into a new directory on ext4: buffered
1.3-1.8 CPU-s, ``O_DIRECT`` from a reused buffer 0.27-0.32 CPU-s), and it is paid on the daemon's
CPU while readers wait for it. The file is read again only by a later mount or after the memory
cache evicted it, when it comes from the disk either way once the page cache has moved on.

Contract: :meth:`DirectWriter.write` writes ``data`` to the path ``path`` (created, or truncated)
and returns True, or returns False having written nothing that the caller needs to clean up
beyond ``path`` itself, when this file system or this size does not take ``O_DIRECT`` (tmpfs
refuses it at ``open``; some file systems refuse an alignment at ``write``); the caller then
writes the file the ordinary way. After the first refusal at ``open`` the writer stays off.
Writes are padded to the block alignment and the file cut back to its length (``ftruncate``).
One buffer per thread, so the cache's writer thread and a command writing entries in the
foreground never share one.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

ALIGN = 4096  # a multiple of every logical block size in use (512 B and 4 KiB devices)
MIN_SIZE = 64 * 1024  # below this the copy and the synchronous device write gain nothing
MAX_SIZE = 64 * 2**20  # the largest buffer a thread keeps; larger files are written buffered

_O_DIRECT = getattr(os, "O_DIRECT", 0)


class DirectWriter:
    """``O_DIRECT`` writes of whole files through one aligned buffer per thread."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and _O_DIRECT != 0
        self.files = 0  # files written this way (stats, tests)
        self._local = threading.local()

    def _buffer(self, size: int) -> memoryview:
        mv: memoryview | None = getattr(self._local, "mv", None)
        if mv is None or len(mv) < size:
            # mmap gives page-aligned memory; sized in MiB steps so a thread re-allocates rarely
            n = -(-size // 2**20) * 2**20
            self._local.mv = mv = memoryview(mmap.mmap(-1, n))
        return mv

    def write(self, path: str, data: bytes) -> bool:
        n = len(data)
        if not self.enabled or n < MIN_SIZE or n > MAX_SIZE:
            return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o644)
        except OSError as e:
            if e.errno == errno.EINVAL:  # this file system does not take O_DIRECT at all
                self.enabled = False
                return False
            raise
        try:
            padded = -(-n // ALIGN) * ALIGN
            buf = self._buffer(padded)
            buf[:n] = data
            if padded > n:
                buf[n:padded] = bytes(padded - n)
            try:
                done = os.write(fd, buf[:padded])
            except OSError as e:
                if e.errno == errno.EINVAL:  # alignment refused: write this one buffered
                    return False
                raise
            if done != padded:  # a short direct write (full disk): as the buffered path would
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            os.ftruncate(fd, n)
        finally:
            os.close(fd)
        self.files += 1
        return True
