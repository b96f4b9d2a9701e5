"""A read-only file object over a byte-range reader, shaped for h5py's metadata reads.

h5py opens a Python file object with many small reads (object headers, B-tree nodes, heaps,
often a few hundred bytes each) scattered over the file. Sending each as its own range request
makes indexing a remote file request-bound. ``BlockFile`` answers reads from aligned blocks kept
in memory and fetches missing blocks with one request per run of them:

- the first read fetches ``first`` bytes (the superblock, root group and, in files written by
  h5py and pynwb, much of the early metadata);
- a miss fetches ``block`` bytes; a miss right after the previous one (a forward scan) doubles the
  window, up to ``max_window``, the way a kernel's read-ahead grows, and a jump resets it;
- a read larger than the window is fetched whole, in one request;
- during a forward scan, ``prefetch(offset, size)`` (when given; it must not block) is told the
  next window before the current one is read, so the two requests overlap.

Blocks are aligned, so a second indexing of the same file (after a changed option, say) asks the
fetcher — and its memory and disk caches — for the same ranges again.

``read_range(offset, size)`` must return exactly those bytes (clipped at the end of the file by
this class, never by the reader) or raise; it is called from the thread that runs h5py.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable

KiB = 1024
MiB = 1024 * KiB


class BlockFile(io.RawIOBase):
    def __init__(
        self,
        read_range: Callable[[int, int], bytes],
        size: int,
        *,
        block: int = 256 * KiB,
        first: int = 1 * MiB,
        max_window: int = 8 * MiB,
        max_cached: int = 512 * MiB,
        prefetch: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__()
        self._read_range = read_range
        self._prefetch = prefetch
        self.prefetches = 0
        self.size = size
        self.block = block
        self.first = max(first, block)
        self.max_window = max(max_window, block)
        self.max_cached = max_cached
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self._pos = 0
        self._window = block
        self._last_miss_end = -1
        self.requests = 0
        self.bytes_fetched = 0

    # -- io.RawIOBase ----------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.pread(self._pos, len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._pos
        data = self.pread(self._pos, size)
        self._pos += len(data)
        return data

    # -- blocks ----------------------------------------------------------------------------

    def seed(self, head: bytes) -> None:
        """Take the file's first ``len(head)`` bytes as if the first read had fetched them (the
        caller sniffed the file with them); the next read right after them is a forward scan."""
        n = len(head) if len(head) >= self.size else len(head) // self.block * self.block
        if n == 0:
            return
        for b in range(-(-n // self.block)):
            piece = head[b * self.block : min((b + 1) * self.block, n)]
            self._blocks[b] = piece
            self._cached += len(piece)
        self.requests = max(self.requests, 1)  # the first window is done
        self._last_miss_end = n

    def pread(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        b0, b1 = offset // self.block, (end - 1) // self.block
        missing = [b for b in range(b0, b1 + 1) if b not in self._blocks]
        if missing:
            self._fetch(missing[0], missing[-1])
        parts = []
        for b in range(b0, b1 + 1):
            data = self._blocks[b]
            self._blocks.move_to_end(b)
            start = b * self.block
            lo = max(offset, start) - start
            hi = min(end, start + len(data)) - start
            parts.append(data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _span(self, first_block: int, last_block: int, window: int) -> tuple[int, int]:
        """The byte range to fetch for a miss on blocks ``first_block..last_block``: at least
        ``window`` bytes, stopping before a block already held and at the end of the file."""
        start = first_block * self.block
        end = max((last_block + 1) * self.block, start + window)
        for b in range(last_block + 1, -(-end // self.block)):
            if b in self._blocks:
                end = b * self.block
                break
        return start, min(end, self.size)

    def _fetch(self, first_block: int, last_block: int) -> None:
        start = first_block * self.block
        sequential = False
        if self.requests == 0:
            want = self.first
            sequential = True
        else:
            if start == self._last_miss_end:
                self._window = min(self._window * 2, self.max_window)
                sequential = True
            else:
                self._window = self.block
            want = self._window
        start, end = self._span(first_block, last_block, want)
        if sequential and self._prefetch is not None and end < self.size:
            # a forward scan: start the next window now, so its latency overlaps h5py's work on
            # this one; the read of that window later joins the request in flight
            nb = end // self.block
            nstart, nend = self._span(nb, nb, min(self._window * 2, self.max_window))
            if nend > nstart:
                self._prefetch(nstart, nend - nstart)
                self.prefetches += 1
        data = self._read_range(start, end - start)
        if len(data) != end - start:
            raise OSError(f"short read: {len(data)} of {end - start} bytes at {start}")
        self.requests += 1
        self.bytes_fetched += len(data)
        self._last_miss_end = end
        for i, b in enumerate(range(first_block, -(-end // self.block))):
            piece = data[i * self.block : (i + 1) * self.block]
            old = self._blocks.pop(b, None)
            if old is not None:
                self._cached -= len(old)
            self._blocks[b] = piece
            self._cached += len(piece)
        while self._cached > self.max_cached and len(self._blocks) > 1:
            _, old = self._blocks.popitem(last=False)
            self._cached -= len(old)
