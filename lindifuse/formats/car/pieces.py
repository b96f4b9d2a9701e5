"""A file made of content-addressed blocks, expanded lazily, read by byte range.

A :class:`Piece` is the content under one CID: a raw block (all its bytes), a dag-pb UnixFS
leaf (its ``Data``) or a dag-pb UnixFS node (its own ``Data`` followed by its children's
content, in order; balanced and trickle DAGs alike). A piece's ``size`` is known from its
parent (UnixFS ``blocksizes``) or from the directory link; its children are learnt the first
time a read reaches it. A read therefore fetches only the blocks on the paths to the bytes it
covers: the leaves it overlaps and the interior nodes above them (kept once decoded).

The block getter is supplied by the caller (it fetches and verifies); this module does no
I/O. Errors are RefError (EIO for the one file): a missing block, a node whose children do not
add up to its size, an unknown codec, a cycle or a DAG deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lindifuse.errors import RefError
from lindifuse.formats.car import unixfs
from lindifuse.formats.car.cid import DAG_PB, RAW, Cid
from lindifuse.formats.car.verify import IDENTITY

GetBlock = Callable[[Cid], Awaitable[bytes]]
MAX_DEPTH = 64


@dataclass(slots=True, eq=False)
class Piece:
    cid: Cid | None  # None: inline bytes (a node's own data)
    size: int | None  # content bytes; None until known
    depth: int = 0
    ancestors: frozenset[bytes] = frozenset()
    data: bytes | None = None  # content held here: a node's own data, an identity CID
    leaf: bool = False  # content is the block (raw) or its UnixFS data (not kept here)
    children: list[Piece] | None = None
    starts: list[int] = field(default_factory=list)


def file_piece(cid: Cid, size: int | None) -> Piece:
    """The root piece of a file whose content is under ``cid`` (size if already known)."""
    p = Piece(cid, size)
    if cid.code == IDENTITY and cid.codec == RAW:
        p.data = cid.digest
        p.size = len(cid.digest)
    return p


def _expand(piece: Piece, block: bytes) -> bytes | None:
    """Learn ``piece``'s shape from its (verified) block; returns the content of a leaf."""
    cid = piece.cid
    assert cid is not None
    if cid.codec == RAW:
        _check_size(piece, len(block))
        piece.leaf = True
        return block
    if cid.codec != DAG_PB:
        raise RefError(f"block {cid}: codec {cid.codec_name} is not a file")
    try:
        node = unixfs.decode_node(block)
        fs = unixfs.decode_unixfs(node.data)
    except ValueError as e:
        raise RefError(f"block {cid}: {e}") from None
    if fs.type not in (unixfs.FILE, unixfs.RAW):
        raise RefError(f"block {cid}: UnixFS {fs.type_name}, not a file")
    own = fs.data
    if not node.links:
        _check_size(piece, len(own))
        piece.leaf = True
        return own
    if len(fs.blocksizes) != len(node.links):
        raise RefError(f"block {cid}: {len(node.links)} links but {len(fs.blocksizes)} block sizes")
    total = len(own) + sum(fs.blocksizes)
    _check_size(piece, total)
    if fs.filesize is not None and fs.filesize != total:
        raise RefError(f"block {cid}: filesize {fs.filesize} but the parts add up to {total}")
    depth = piece.depth + 1
    if depth > MAX_DEPTH:
        raise RefError(f"block {cid}: file DAG deeper than {MAX_DEPTH} levels")
    ancestors = piece.ancestors | {cid.mh}
    children: list[Piece] = []
    starts: list[int] = []
    pos = 0
    if own:
        children.append(Piece(None, len(own), depth, ancestors, data=own))
        starts.append(0)
        pos = len(own)
    for link, bsize in zip(node.links, fs.blocksizes, strict=True):
        if link.cid.mh in ancestors:
            raise RefError(f"block {cid}: cycle in the file DAG (links back to {link.cid})")
        child = Piece(link.cid, bsize, depth, ancestors)
        if link.cid.code == IDENTITY and link.cid.codec == RAW:
            child.data = link.cid.digest
            _check_size(child, len(child.data))
        starts.append(pos)
        children.append(child)
        pos += bsize
    piece.starts = starts
    piece.children = children
    return None


def _leaf_content(cid: Cid, block: bytes) -> bytes:
    if cid.codec == RAW:
        return block
    try:
        return unixfs.decode_unixfs(unixfs.decode_node(block).data).data
    except ValueError as e:
        raise RefError(f"block {cid}: {e}") from None


def _check_size(piece: Piece, actual: int) -> None:
    if piece.size is None:
        piece.size = actual
    elif piece.size != actual:
        raise RefError(
            f"block {piece.cid}: holds {actual} bytes of content where {piece.size} were announced"
        )


async def resolve_size(piece: Piece, get: GetBlock) -> int:
    """The content size of ``piece`` (reads its block when neither parent nor link told)."""
    if piece.size is None:
        assert piece.cid is not None
        _expand(piece, await get(piece.cid))
    assert piece.size is not None
    return piece.size


async def read(piece: Piece, offset: int, size: int, get: GetBlock) -> bytes:
    """``size`` bytes of ``piece``'s content from ``offset`` (fewer at its end)."""
    total = await resolve_size(piece, get)
    end = min(offset + size, total)
    if offset >= end:
        return b""
    out: list[bytes] = []
    await _read_into(piece, offset, end, get, out)
    return b"".join(out)


async def _read_into(piece: Piece, start: int, end: int, get: GetBlock, out: list[bytes]) -> None:
    if piece.data is not None:
        out.append(piece.data[start:end])
        return
    if piece.children is None:
        assert piece.cid is not None
        block = await get(piece.cid)
        content = _leaf_content(piece.cid, block) if piece.leaf else _expand(piece, block)
        if content is not None:
            out.append(content[start:end])
            return
    assert piece.children is not None
    starts = piece.starts
    i = bisect.bisect_right(starts, start) - 1
    while i < len(starts) and starts[i] < end:
        child = piece.children[i]
        cs = starts[i]
        csize = child.size or 0
        lo, hi = max(start, cs) - cs, min(end, cs + csize) - cs
        if hi > lo:
            await _read_into(child, lo, hi, get, out)
        i += 1
