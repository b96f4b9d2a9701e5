"""Verified block reads of a mounted CAR: the ``fetch(start, size, check)`` of ``CarBlocks``.

A block is read as its whole section and checked (``check``: the section's CID must carry the
multihash asked for, and the block bytes must hash to it) the first time it comes from the
source, before any of it is cached or served:

* a URL goes through the mount's :class:`~lindifuse.fs.fetch.Fetcher` (memory cache, persistent
  cache, merged range requests), which runs ``check`` on fresh bytes before caching them;
* a local file is read and checked once, then kept in the memory cache (so the kernel's
  128 KiB reads of a 1 MiB block hash it once, not eight times).

A mismatch is a RefError (EIO for the file that needed the block; the FUSE layer logs one line
naming the key and the CID) and counts once per block in the fetcher's ``block_mismatches``.
"""

from __future__ import annotations

from collections.abc import Callable

from lindifuse.cache.memory import MemoryCache
from lindifuse.formats.car.verify import BlockMismatch
from lindifuse.fs.fetch import Fetcher
from lindifuse.sources.local import LocalFiles

Check = Callable[[bytes], None]


class VerifiedFetch:
    def __init__(
        self, where: str, remote: bool, fetcher: Fetcher, local: LocalFiles, memory: MemoryCache
    ) -> None:
        self.where = where
        self.remote = remote
        self.fetcher = fetcher
        self.local = local
        self.memory = memory
        self._bad: set[bytes] = set()

    def _counted(self, check: Check) -> Check:
        stats = self.fetcher.stats

        def run(data: bytes) -> None:
            try:
                check(data)
            except BlockMismatch as e:
                if e.cid.mh not in self._bad:
                    self._bad.add(e.cid.mh)
                    stats.block_mismatches += 1
                raise
            stats.blocks_verified += 1
            stats.verified_bytes += len(data)

        return run

    async def __call__(self, start: int, size: int, check: Check) -> bytes:
        checked = self._counted(check)
        if self.remote:
            return await self.fetcher.get(self.where, start, size, check=checked)

        async def load() -> bytes:
            data = await self.local.read(self.where, start, size)
            checked(data)
            return data

        return await self.memory.get(("car", self.where, start, size), load)
