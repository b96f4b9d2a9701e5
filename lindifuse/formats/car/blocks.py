"""The block table of one CAR: multihash -> section extent, and its cache form.

CARv1 has no index, so its sections are scanned once (:func:`lindifuse.formats.car.framing.scan`)
and the table is kept in the index cache (``to_bytes``/``from_bytes``) so the next mount
reads no section. CARv2 with a MultihashIndexSorted index gives section offsets only: the
extent of a section is bounded by the next indexed offset (the reader parses the section's
own varint for its exact end, so an unindexed section in between does no harm).
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array
from collections.abc import Iterable
from typing import Any

from lindifuse.formats.car.cid import varint
from lindifuse.formats.car.framing import CarError

MAGIC = b"LFCARBT3"


def _u64(values: list[int]) -> array:
    a = array("Q", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def _u64_from(raw: bytes, pos: int, n: int) -> array:
    a = array("Q")
    a.frombytes(raw[pos : pos + 8 * n])
    if sys.byteorder != "little":
        a.byteswap()
    return a


_next = (1).__add__


class _Run:
    """``n`` sorted multihashes of ``width`` bytes back to back in ``raw``, as a sequence (for
    ``bisect``): item ``i`` is sliced out when asked for."""

    __slots__ = ("raw", "pos", "width", "n")

    def __init__(self, raw: bytes, pos: int, width: int, n: int) -> None:
        self.raw, self.pos, self.width, self.n = raw, pos, width, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> bytes:
        if not 0 <= i < self.n:
            raise IndexError(i)
        at = self.pos + i * self.width
        return self.raw[at : at + self.width]


class BlockTable:
    """Where each block's section lies: ``get(mh)`` -> (start, bound), absolute offsets.

    Three forms, one contract. A scan gives the multihashes in file order with an ``array`` of
    section starts (sections follow each other, so each ends where the next starts) and a
    dict from multihash to position, built by one C-level ``dict(zip(...))``: no per-block
    tuple or offset object (``from_scan``). An index (and ``add_sections``) fills a dict of
    extents. The cache's form is read back as sorted fixed-width multihash runs (one per
    multihash length) searched by bisection, with ``array`` offsets, so loading the table of
    a CAR of 100,000 blocks creates no per-block Python object (a few milliseconds, and no
    numpy import)."""

    __slots__ = ("_loc", "_groups", "_count", "exact", "_pos", "_starts", "_end", "scan")

    def __init__(self, exact: bool = True) -> None:
        self._pos: dict[bytes, int] | None = None  # a scan: multihash -> index in _starts
        self._starts = array("Q")
        self._end = 0
        self._loc: dict[bytes, tuple[int, int]] | None = {}
        # width -> (sorted digests 'S<width>', starts, bounds), for a table loaded from bytes
        self._groups: dict[int, tuple[Any, Any, Any]] = {}
        self._count = 0
        # True: each extent is exactly its section (scanned); False: an upper bound (an index)
        self.exact = exact
        # While a scan still fills the table: what drives it on (``advance()``, see
        # ``load.CarScan``); None once the table is complete.
        self.scan: Any = None

    @classmethod
    def from_scan(cls, mhs: list[bytes], starts: array, end: int) -> BlockTable:
        """From a scan (``framing.scan_into``): the multihash and start of each section in file
        order, and where the last one ends. A repeated block: the first serves."""
        table = cls.growing(end)
        table._starts = starts
        table.add_scanned(mhs, 0, end)
        return table

    @classmethod
    def growing(cls, start: int) -> BlockTable:
        """An empty scanned table that a scan fills window by window (``add_scanned``); the
        first section starts at ``start``."""
        table = cls()
        table._loc = None
        table._pos = {}
        table._end = start
        return table

    @property
    def starts(self) -> array:
        """The section starts of a scanned table, in file order (the scan appends to it)."""
        return self._starts

    def add_scanned(self, mhs: list[bytes], first: int, end: int) -> None:
        """The multihashes of sections ``first``, ``first + 1``... whose starts are already in
        ``starts``; the last of them ends at ``end``. One C-level ``dict(zip(...))`` per
        window; a multihash seen before (a repeated block) keeps its first section."""
        pos = self._pos
        assert pos is not None
        n = len(mhs)
        # reversed, so the first of repeated multihashes is the one written last, and kept
        new = dict(zip(reversed(mhs), range(first + n - 1, first - 1, -1), strict=True))
        if not pos:
            self._pos = new
        elif new.keys().isdisjoint(pos.keys()):
            pos.update(new)
        else:
            for mh, i in new.items():
                pos.setdefault(mh, i)
        self._end = end

    async def locate(self, mh: bytes) -> tuple[int, int] | None:
        """``get``, waiting for a scan still under way to reach the block (or to end)."""
        loc = self.get(mh)
        while loc is None and self.scan is not None:
            await self.scan.advance()
            loc = self.get(mh)
        return loc

    def __len__(self) -> int:
        if self._pos is not None:
            return len(self._pos)
        return len(self._loc) if self._loc is not None else self._count

    def __contains__(self, mh: bytes) -> bool:
        return self.get(mh) is not None

    def get(self, mh: bytes) -> tuple[int, int] | None:
        if self._pos is not None:
            i = self._pos.get(mh)
            if i is None:
                return None
            starts = self._starts
            return starts[i], starts[i + 1] if i + 1 < len(starts) else self._end
        if self._loc is not None:
            return self._loc.get(mh)
        group = self._groups.get(len(mh))
        if group is None:
            return None
        keys, starts, bounds = group
        i = bisect.bisect_left(keys, mh)
        if i < len(keys) and keys[i] == mh:
            return starts[i], bounds[i]
        return None

    def items(self) -> list[tuple[bytes, tuple[int, int]]]:
        if self._pos is not None:
            return [(mh, self.get(mh)) for mh in self._pos]  # type: ignore[misc]
        if self._loc is not None:
            return list(self._loc.items())
        out = []
        for keys, starts, bounds in self._groups.values():
            mhs = [keys[i] for i in range(len(keys))]
            out.extend(zip(mhs, zip(starts.tolist(), bounds.tolist(), strict=True), strict=True))
        return out

    def add_sections(self, sections: Iterable[tuple[bytes, int, int]]) -> None:
        """(multihash, start, end) of scanned sections; a repeated block: the first serves."""
        loc = self._loc
        assert loc is not None, "a scanned table, or one read back from the cache, is not added to"
        for mh, start, end in sections:
            if mh not in loc:
                loc[mh] = (start, end)

    def data_size(
        self, cid_raw: bytes, mh: bytes, loc: tuple[int, int] | None = None
    ) -> int | None:
        """The block size of an exactly known section whose CID is ``cid_raw`` (the reader
        checks it again when the block is read): lets a listing show the size of a raw chunk
        without reading it. None when unknown (or not scanned yet: see ``locate``)."""
        if loc is None:
            loc = self.get(mh)
        if loc is None or not self.exact:
            return None
        total = loc[1] - loc[0]
        for k in range(1, 10):
            length = total - k
            if length >= 0 and len(varint(length)) == k:
                size = length - len(cid_raw)
                return size if size >= 0 else None
        return None

    @classmethod
    def from_index(
        cls, pairs: Iterable[tuple[bytes, int]], payload: int, first: int, end: int
    ) -> BlockTable:
        """From CARv2 index pairs (multihash, offset relative to the payload)."""
        table = cls(exact=False)
        loc = table._loc
        assert loc is not None
        items = sorted((payload + off, mh) for mh, off in pairs)
        for i, (start, mh) in enumerate(items):
            if not first <= start < end:
                raise CarError(f"CARv2 index offset {start - payload} lies outside the data")
            bound = end
            j = i + 1
            while j < len(items) and items[j][0] == start:
                j += 1
            if j < len(items):
                bound = items[j][0]
            loc.setdefault(mh, (start, bound))
        return table

    def to_bytes(self) -> bytes:
        """MAGIC, count, exact flag, group count; per group (multihashes of one length):
        width (u16) and count (u32), the sorted multihashes, then starts and bounds (u64 LE)."""
        # Sorting the multihashes alone (bytes compare in C) and looking their extents up
        # is ~10x faster than sorting (multihash, extent) tuples.
        if self._pos is not None:
            keys: Any = self._pos
            ext = self._starts + array("Q", [self._end])
            pos = self._pos.__getitem__

            def extents(mhs: list[bytes]) -> tuple[list[int], list[int]]:
                idx = list(map(pos, mhs))  # all C-level: a pass per column, not per block
                return list(map(ext.__getitem__, idx)), list(map(ext.__getitem__, map(_next, idx)))
        else:
            keys = self._loc if self._loc is not None else dict(self.items())

            def extents(mhs: list[bytes]) -> tuple[list[int], list[int]]:
                got = list(map(keys.__getitem__, mhs))
                return [e[0] for e in got], [e[1] for e in got]

        by_width: dict[int, list[bytes]] = {}
        for width in set(map(len, keys)):
            by_width[width] = []
        if len(by_width) == 1:
            by_width[next(iter(by_width))] = list(keys)
        else:
            for mh in keys:
                by_width[len(mh)].append(mh)
        parts = [MAGIC, struct.pack("<IBH", len(keys), 1 if self.exact else 0, len(by_width))]
        for width, mhs in sorted(by_width.items()):
            mhs.sort()
            starts, bounds = extents(mhs)
            parts.append(struct.pack("<HI", width, len(mhs)))
            parts.append(b"".join(mhs))
            parts.append(_u64(starts).tobytes())
            parts.append(_u64(bounds).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> BlockTable:
        """Inverse of ``to_bytes``; ValueError when ``raw`` is not such a table."""
        if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 7:
            raise ValueError("not a CAR block table")
        count, exact, ngroups = struct.unpack_from("<IBH", raw, len(MAGIC))
        pos = len(MAGIC) + 7
        table = cls(exact=bool(exact))
        table._loc = None
        total = 0
        for _ in range(ngroups):
            if pos + 6 > len(raw):
                raise ValueError("truncated CAR block table")
            width, n = struct.unpack_from("<HI", raw, pos)
            pos += 6
            need = n * (width + 16)
            if width == 0 or pos + need > len(raw):
                raise ValueError("truncated CAR block table")
            keys = _Run(raw, pos, width, n)
            pos += n * width
            starts = _u64_from(raw, pos, n)
            pos += 8 * n
            bounds = _u64_from(raw, pos, n)
            pos += 8 * n
            table._groups[width] = (keys, starts, bounds)
            total += n
        if pos != len(raw) or total != count:
            raise ValueError("CAR block table: wrong length")
        table._count = count
        return table
