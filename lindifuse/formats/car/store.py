"""Verified blocks of one CAR: ``CarBlocks.get(cid)`` -> the block's bytes, checked.

The caller supplies ``fetch(start, size, check)``: it returns the bytes of the CAR at
``start .. start+size`` and must call ``check(data)`` on bytes fresh from the source *before*
it caches or returns them (bytes from its own persistent cache were checked on entry and are
trusted by key). ``check`` parses the section (its CID must carry the multihash asked for)
and hashes the block bytes against it (:func:`lindifuse.formats.car.verify.check`); a mismatch
raises BlockMismatch, so nothing of that block is cached or served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from lindifuse.errors import RefError
from lindifuse.formats.car import verify
from lindifuse.formats.car.blocks import BlockTable
from lindifuse.formats.car.cid import Cid
from lindifuse.formats.car.framing import CarError, split_section

Check = Callable[[bytes], None]
Fetch = Callable[[int, int, Check], Awaitable[bytes]]


class MissingBlock(RefError):
    """A link names a block that is not in the archive."""


class CarBlocks:
    def __init__(self, table: BlockTable, fetch: Fetch, where: str) -> None:
        self.table = table
        self.fetch = fetch
        self.where = where

    async def extent(self, cid: Cid) -> tuple[int, int]:
        """(start, size) of the section to fetch for ``cid``; MissingBlock if absent. While
        the archive is still being scanned, waits for the scan to reach the block (or end)."""
        loc = await self.table.locate(cid.mh)
        if loc is None:
            raise MissingBlock(f"block {cid} is not in {self.where}")
        return loc[0], loc[1] - loc[0]

    async def data_size(self, cid: Cid) -> int | None:
        """``BlockTable.data_size`` of a block, waiting for a scan under way to reach it."""
        loc = await self.table.locate(cid.mh)
        return None if loc is None else self.table.data_size(cid.raw, cid.mh, loc)

    async def get(self, cid: Cid) -> bytes:
        if cid.code == verify.IDENTITY:
            return cid.digest
        if not verify.supported(cid.code):
            raise verify.UnverifiableBlock(
                f"block {cid}: unsupported hash function {verify.hash_name(cid.code)}"
            )
        start, size = await self.extent(cid)

        def check(section: bytes) -> None:
            try:
                _, data = split_section(section, cid)
            except CarError as e:
                raise RefError(f"{self.where}: at offset {start}: {e}") from None
            verify.check(cid, data)

        section = await self.fetch(start, size, check)
        try:
            _, data = split_section(section, cid)
        except CarError as e:
            raise RefError(f"{self.where}: at offset {start}: {e}") from None
        return bytes(data)
