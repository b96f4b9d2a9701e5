"""Verified chunks beyond CAR: a sha256 per chunk recorded in a LINDI index, checked on fetch.

The digests live in one top-level member of the reference file system, which lindi (and any
kerchunk reader) ignores::

    "lindifuse_chunk_hashes": {"algorithm": "sha256", "chunks": {"<key>": "<64 hex digits>"}}

``lindifuse index --hashes`` fills it for every chunk reference (``[target, offset, size]``);
a mount of such an index fetches a hashed chunk whole and checks it before it is cached or
served (``lindifuse.fs.content``), as for a CAR block: a mismatch is EIO for that file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from lindifuse.errors import RefError, SourceError

MEMBER = "lindifuse_chunk_hashes"
ALGORITHM = "sha256"


def direct_reader(http: Any, local: Any, label: str) -> Callable[[str, int, int], Awaitable[bytes]]:
    """``read(where, offset, n)`` straight from the source (an ``HttpClient`` for URLs, a
    ``LocalFiles`` for paths), never through a cache: reads that compute digests check the
    file and must not trust a copy. A failed read is a ``SourceError`` starting with
    ``label``."""
    from lindifuse.sources.base import is_url

    async def read(where: str, offset: int, n: int) -> bytes:
        try:
            if is_url(where):
                return await http.get_range(where, offset, n)
            return await local.read(where, offset, n)
        except RefError as e:
            raise SourceError(f"{label}cannot read a chunk to hash it: {e}") from None

    return read


class ChunkMismatch(RefError):
    """A chunk's bytes do not hash to the digest its index records."""


def chunk_hashes(extra: dict[str, Any]) -> dict[str, Any] | None:
    """The key -> hex digest map of a reference set's top-level members, or None. The map
    itself (not a copy): a writable mount updates it as chunks are written, and reads look it
    up live. Values that are not 64-character strings are ignored by ``digest_of``."""
    member = extra.get(MEMBER)
    if not isinstance(member, dict) or member.get("algorithm") != ALGORITHM:
        return None
    chunks = member.get("chunks")
    return chunks if isinstance(chunks, dict) else None


def digest_of(hashes: dict[str, Any] | None, key: str) -> str | None:
    want = hashes.get(key) if hashes else None
    return want if type(want) is str and len(want) == 64 else None


def new_member(chunks: dict[str, str] | None = None) -> dict[str, Any]:
    return {"algorithm": ALGORITHM, "chunks": dict(chunks or {})}


def checker(key: str, want: str) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != want:
            raise ChunkMismatch(f"chunk does not match its recorded sha256 {want[:16]}...")

    return check


async def compute(
    refs: dict[str, Any],
    read: Callable[[str, int, int], Awaitable[bytes]],
    resolve: Callable[[str], str],
    workers: int = 8,
) -> dict[str, str]:
    """sha256 of every ``[target, offset, size]`` reference of ``refs``; ``resolve`` maps a
    target to what ``read(where, offset, size)`` reads. Up to ``workers`` reads at once."""
    import trio

    items = [
        (k, v) for k, v in refs.items() if type(v) is list and len(v) == 3 and type(v[0]) is str
    ]
    out: dict[str, str] = {}
    limit = trio.CapacityLimiter(workers)

    async def one(key: str, target: str, offset: int, size: int) -> None:
        async with limit:
            data = await read(resolve(target), offset, size)
        out[key] = hashlib.sha256(data).hexdigest()

    async with trio.open_nursery() as nursery:
        for key, (target, offset, size) in items:
            nursery.start_soon(one, key, target, offset, size)
    return dict(sorted(out.items()))
