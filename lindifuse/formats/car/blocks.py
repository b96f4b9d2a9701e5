"""The block table of one CAR: multihash -> section extent, and its cache form.

CARv1 has no index, so its sections are scanned once (:func:`lindifuse.formats.car.framing.scan`)
and the table is kept in the index cache (``to_bytes``/``from_bytes``) so the next mount
reads no section. CARv2 with a MultihashIndexSorted index gives section offsets only: the
extent of a section is bounded by the next indexed offset (the reader parses the section's
own varint for its exact end, so an unindexed section in between does no harm).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from lindifuse.formats.car.framing import CarError, Section

MAGIC = b"LFCARBT1"
_REC = struct.Struct("<HQQ")


class BlockTable:
    """Where each block's section lies: ``get(mh)`` -> (start, bound), absolute offsets."""

    __slots__ = ("_loc",)

    def __init__(self) -> None:
        self._loc: dict[bytes, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._loc)

    def __contains__(self, mh: bytes) -> bool:
        return mh in self._loc

    def get(self, mh: bytes) -> tuple[int, int] | None:
        return self._loc.get(mh)

    def add_sections(self, sections: Iterable[Section]) -> None:
        loc = self._loc
        for s in sections:
            mh = s.cid.mh
            if mh not in loc:  # a repeated block: the first copy serves
                loc[mh] = (s.start, s.end)

    @classmethod
    def from_index(
        cls, pairs: Iterable[tuple[bytes, int]], payload: int, first: int, end: int
    ) -> BlockTable:
        """From CARv2 index pairs (multihash, offset relative to the payload)."""
        table = cls()
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
            table._loc.setdefault(mh, (start, bound))
        return table

    def to_bytes(self) -> bytes:
        parts = [MAGIC, struct.pack("<I", len(self._loc))]
        pack = _REC.pack
        for mh, (start, bound) in self._loc.items():
            parts.append(pack(len(mh), start, bound))
            parts.append(mh)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> BlockTable:
        """Inverse of ``to_bytes``; ValueError when ``raw`` is not such a table."""
        if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4:
            raise ValueError("not a CAR block table")
        (count,) = struct.unpack_from("<I", raw, len(MAGIC))
        pos = len(MAGIC) + 4
        loc: dict[bytes, tuple[int, int]] = {}
        unpack = _REC.unpack_from
        size = _REC.size
        try:
            for _ in range(count):
                n, start, bound = unpack(raw, pos)
                pos += size
                loc[raw[pos : pos + n]] = (start, bound)
                pos += n
        except struct.error:
            raise ValueError("truncated CAR block table") from None
        if pos != len(raw):
            raise ValueError("CAR block table has trailing bytes")
        table = cls()
        table._loc = loc
        return table
