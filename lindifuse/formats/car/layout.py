"""The key tree of a CAR's root: the ipldstore layout or a UnixFS directory.

* **ipldstore** (root codec dag-cbor): the root block is a map whose nested maps mirror the
  key hierarchy; ``.zarray``/``.zgroup``/``.zattrs``/``.zmetadata`` are stored inline as maps
  and served as their JSON text (``json.dumps``, byte-identical to ipldstore and lindi); any
  other value is a chunk: a link (to a raw block, or a dag-pb UnixFS file) or inline bytes. A
  link to another dag-cbor map is followed as a sub-tree.
* **UnixFS** (root codec dag-pb): directories (plain or HAMT-sharded) name their entries; a
  raw link is a one-block file whose size is the link's ``Tsize``; a dag-pb entry is read to
  tell a directory from a file (a file's size is its root node's; its leaves are not read).

The result maps keys to values the content layer serves: a dict (JSON text), a
``"base64:..."`` string (inline bytes) or a :class:`CarFile` (pieces read through verified
blocks). Problems below the root (a missing directory block, a bad name, a cycle) leave that
part out and are reported in ``problems``; a root that cannot be read or decoded is a
FormatError.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Any

from lindifuse.errors import FormatError, RefError
from lindifuse.formats.car import dagcbor, unixfs
from lindifuse.formats.car.cid import DAG_CBOR, DAG_PB, RAW, Cid, cid_from_bytes
from lindifuse.formats.car.pieces import GetBlock, Piece, _expand, file_piece
from lindifuse.refs import normalize_key

INLINE_JSON = (".zarray", ".zgroup", ".zattrs", ".zmetadata")
MAX_DEPTH = 256
# A (sub-)map of more entries than this is left unwalked by a lazy ``build_tree``: its
# directory is filled on first use (``LazyMap.expand``), so a mount creates nothing per chunk.
LAZY_MIN = 1024
# A DAG-CBOR link's payload that names another DAG-CBOR block (identity prefix 0x00, CIDv1,
# codec dag-cbor): a sub-map, followed as a directory.
SUBMAP_LINK = bytes((0x00, 0x01, DAG_CBOR))


class CarFile:
    """A key whose content is a file of content-addressed blocks: a Piece, or the payload of
    a DAG-CBOR link (0x00, then the binary CID) until first used (a map of 100,000 chunks
    builds no Piece at mount)."""

    __slots__ = ("_piece", "_link")

    def __init__(self, piece: Piece | None = None, link: bytes | None = None) -> None:
        self._piece = piece
        self._link = link

    @property
    def piece(self) -> Piece:
        """The file's root piece; RefError for a link that is not a CID."""
        if self._piece is None:
            assert self._link is not None
            try:
                cid = cid_from_bytes(self._link[1:])
            except ValueError as e:
                raise RefError(f"bad link ({e})") from None
            self._piece = file_piece(cid, None)
        return self._piece

    @property
    def cid(self) -> Cid | None:
        return self.piece.cid


@dataclass
class CarTree:
    layout: str  # "ipldstore" or "unixfs"
    entries: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # The entries' keys as runs of one directory, (directory, names, keys), for
    # ``Tree.from_runs``; None when the walk does not keep them (UnixFS).
    runs: list[tuple[str, list[str], list[str]]] | None = None
    # Large maps left for later (``build_tree(..., lazy=True)``); None: everything is walked.
    lazy: list[LazyMap] | None = None

    def pending(self) -> int:
        """Entries of the maps left for later (their keys are not in ``entries`` yet)."""
        return sum(map(len, self.lazy or ()))


class LazyMap:
    """A large map of the ipldstore layout, decoded but not walked: the directory ``key``,
    whose entries (and sub-directories) ``expand`` walks when the directory is first used.
    Problems found in it are reported then, not at mount."""

    __slots__ = ("key", "mapping", "get", "seen", "_subdirs")

    def __init__(
        self, key: str, mapping: dict[Any, Any], get: GetBlock, seen: frozenset[bytes]
    ) -> None:
        self.key = key
        self.mapping = mapping
        self.get = get
        self.seen = seen
        self._subdirs = -1

    def __len__(self) -> int:
        return len(self.mapping)

    def subdirs(self) -> int:
        """How many of its entries are directories (nested maps but inline metadata, links to
        DAG-CBOR maps; under good names), counted without walking it: a directory's ``st_nlink`` before it is
        filled. (A sub-map that the walk finds unreadable or empty is left out then.)"""
        if self._subdirs < 0:
            tag = dagcbor.tag_type()
            n = 0
            for name, value in self.mapping.items():
                tv = type(value)
                if (tv is dict and name not in INLINE_JSON) or (
                    tv is tag
                    and value.tag == dagcbor.LINK_TAG
                    and type(value.value) is bytes
                    and value.value.startswith(SUBMAP_LINK)
                ):
                    n += _good_name(name)
            self._subdirs = n
        return self._subdirs

    async def expand(self) -> CarTree:
        """The map's entries (keys under ``key``), runs and problems; large maps nested in it
        are left for later again."""
        tree = CarTree("ipldstore", runs=[], lazy=[])
        await _walk_map(tree, self.mapping, self.key, self.get, self.seen, defer=False)
        return tree


def _good_name(name: Any) -> bool:
    return (
        type(name) is str and bool(name) and "/" not in name and "\0" not in name
        and name not in (".", "..")
    )  # fmt: skip


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


async def build_tree(root: Cid, get: GetBlock, where: str, *, lazy: bool = False) -> CarTree:
    """The key tree under ``root``; ``get`` returns a block's verified bytes (RefError).
    ``lazy``: sub-maps of more than ``LAZY_MIN`` entries are left in ``tree.lazy`` unwalked."""
    if root.codec not in (DAG_CBOR, DAG_PB):
        raise FormatError(
            f"{where}: root {root} is a {root.codec_name} block, not a dag-cbor map "
            "(ipldstore) or a dag-pb UnixFS directory"
        )
    try:
        block = await get(root)
    except RefError as e:
        raise FormatError(f"{where}: root {root}: {e}") from None
    if root.codec == DAG_CBOR:
        tree = CarTree("ipldstore", runs=[], lazy=[] if lazy else None)
        try:
            value = dagcbor.decode(block, links=False)
        except ValueError as e:
            raise FormatError(f"{where}: root {root}: bad DAG-CBOR ({e})") from None
        if not isinstance(value, dict):
            raise FormatError(f"{where}: root {root} is not a map (ipldstore layout)")
        await _walk_map(tree, value, "", get, frozenset({root.mh}))
        return tree
    tree = CarTree("unixfs")
    try:
        node = unixfs.decode_node(block)
        fs = unixfs.decode_unixfs(node.data)
    except ValueError as e:
        raise FormatError(f"{where}: root {root}: {e}") from None
    if fs.type not in (unixfs.DIRECTORY, unixfs.HAMT_SHARD):
        raise FormatError(f"{where}: root {root} is a UnixFS {fs.type_name}, not a directory")
    await _walk_dir(tree, node, fs, "", get, frozenset({root.mh}))
    return tree


def _add(tree: CarTree, key: str, value: Any) -> None:
    norm = normalize_key(key)
    if norm is None or norm != key:
        tree.problems.append(f"unsafe key {key!r} left out")
        return
    if key in tree.entries:
        tree.problems.append(f"duplicate key {key!r} left out")
        return
    tree.entries[key] = value


def _bulk_links(
    mapping: dict[Any, Any], prefix: str, tag: type
) -> tuple[list[str], list[str], list[bytes]] | None:
    """(names, keys, link payloads) of a map whose entries, but for its inline metadata, are
    all links to non-map blocks under good names (an array's chunks); None for any other map.
    Every test is a C-level pass (``set(map(...))``, one ``join``), so a map of 100,000
    chunks is walked in milliseconds, not a Python turn per entry."""
    names = list(mapping)
    values = list(mapping.values())
    for special in INLINE_JSON:
        if special in mapping:
            i = names.index(special)
            del names[i], values[i]
    if (
        set(map(type, names)) != {str}
        or set(map(type, values)) != {tag}
        or set(map(_tag_number, values)) != {dagcbor.LINK_TAG}
        or not mapping.keys().isdisjoint(("", ".", ".."))
    ):
        return None
    payloads = list(map(_tag_value, values))
    if set(map(type, payloads)) != {bytes} or not all(
        map(bytes.startswith, payloads, repeat(b"\x00"))
    ):
        return None
    joined = "/".join(names)
    if joined.count("/") != len(names) - 1 or "\0" in joined:
        return None
    if any(map(bytes.startswith, payloads, repeat(SUBMAP_LINK))):
        return None
    keys = list(map((prefix + "/").__add__, names)) if prefix else list(names)
    return names, keys, payloads


_tag_number = attrgetter("tag")
_tag_value = attrgetter("value")


async def _walk_map(
    tree: CarTree,
    mapping: dict[str, Any],
    prefix: str,
    get: GetBlock,
    seen: frozenset[bytes],
    *,
    defer: bool = True,
) -> None:
    """The entries of one (sub-)map, decoded with ``links=False``: links are cbor2 tags.
    A large sub-map is left for later when the tree keeps such maps (and ``defer``)."""
    if len(seen) > MAX_DEPTH:
        tree.problems.append(f"{prefix}: nested deeper than {MAX_DEPTH} levels")
        return
    if defer and prefix and tree.lazy is not None and len(mapping) > LAZY_MIN:
        tree.lazy.append(LazyMap(prefix, mapping, get, seen))
        return
    entries = tree.entries
    tag = dagcbor.tag_type()
    run_names: list[str] = []
    run_keys: list[str] = []
    items: Any = mapping.items()
    if len(mapping) > 16:
        bulk = _bulk_links(mapping, prefix, tag)
        if bulk is not None:
            run_names, run_keys, links = bulk
            entries.update(zip(run_keys, map(CarFile, repeat(None), links), strict=True))
            items = [(n, mapping[n]) for n in INLINE_JSON if n in mapping]  # done below
    for name, value in items:
        if not _good_name(name):
            tree.problems.append(f"{prefix or '/'}: bad name {name!r} left out")
            continue
        key = f"{prefix}/{name}" if prefix else name
        tv = type(value)
        if tv is tag:
            try:
                payload = dagcbor.link_payload(value)
            except ValueError as e:
                tree.problems.append(f"{key}: {e}; left out")
                continue
            if payload.startswith(SUBMAP_LINK):
                await _sub_map(tree, payload[1:], key, get, seen)
                continue
            entries[key] = CarFile(None, payload)  # a map's keys are unique: no clash
        elif name in INLINE_JSON:
            try:
                text = json.dumps(value)  # what ipldstore serves (and lindi for dict values)
            except (TypeError, ValueError):
                tree.problems.append(f"{key}: inline metadata holds links or bytes; left out")
                continue
            if tv is dict:
                entries[key] = value  # the content layer serves json.dumps(value)
            else:
                entries[key] = "base64:" + base64.b64encode(text.encode()).decode("ascii")
        elif tv is dict:
            await _walk_map(tree, value, key, get, seen)
            continue
        elif tv is bytes:
            entries[key] = "base64:" + base64.b64encode(value).decode("ascii")
        else:
            tree.problems.append(f"{key}: a {tv.__name__} is not a chunk; left out")
            continue
        run_names.append(name)
        run_keys.append(key)
    if run_names and tree.runs is not None:
        tree.runs.append((prefix, run_names, run_keys))


async def _sub_map(
    tree: CarTree, link: bytes, key: str, get: GetBlock, seen: frozenset[bytes]
) -> None:
    """A link to another DAG-CBOR map: followed as the sub-tree ``key``."""
    try:
        cid = cid_from_bytes(link)
    except ValueError as e:
        tree.problems.append(f"{key}: bad link ({e}); left out")
        return
    if cid.mh in seen:
        tree.problems.append(f"{key}: cycle (links back to {cid}); left out")
        return
    try:
        sub = dagcbor.decode(await get(cid), links=False)
    except (RefError, ValueError) as e:
        tree.problems.append(f"{key}: {e}")
        return
    if isinstance(sub, dict):
        await _walk_map(tree, sub, key, get, seen | {cid.mh})
    else:
        tree.problems.append(f"{key}: link {cid} is not a map; left out")


async def _walk_dir(
    tree: CarTree,
    node: unixfs.DagPbNode,
    fs: unixfs.UnixFSData,
    prefix: str,
    get: GetBlock,
    seen: frozenset[bytes],
) -> None:
    if len(seen) > MAX_DEPTH:
        tree.problems.append(f"{prefix}: nested deeper than {MAX_DEPTH} levels")
        return
    width = 0
    if fs.type == unixfs.HAMT_SHARD:
        if not fs.fanout or fs.fanout & (fs.fanout - 1):
            tree.problems.append(f"{prefix or '/'}: HAMT shard with fanout {fs.fanout}")
            return
        width = len(f"{fs.fanout - 1:X}")
    for link in node.links:
        name = link.name or ""
        cid = link.cid
        if width:
            if len(name) < width:
                tree.problems.append(f"{prefix or '/'}: bad HAMT entry {name!r}")
                continue
            if len(name) == width:  # a sub-shard of the same directory
                sub = await _child(tree, cid, prefix, get, seen)
                if sub is not None:
                    _, snode, sfs = sub
                    if sfs.type != unixfs.HAMT_SHARD:
                        tree.problems.append(f"{prefix or '/'}: HAMT bucket is a {sfs.type_name}")
                        continue
                    await _walk_dir(tree, snode, sfs, prefix, get, seen | {cid.mh})
                continue
            name = name[width:]
        if not name or "/" in name or name in (".", ".."):
            tree.problems.append(f"{prefix or '/'}: bad name {name!r} left out")
            continue
        key = _join(prefix, name)
        if cid.codec == RAW:
            _add(tree, key, CarFile(file_piece(cid, link.tsize)))
            continue
        if cid.codec != DAG_PB:
            tree.problems.append(f"{key}: {cid.codec_name} block {cid} is not UnixFS; left out")
            continue
        got = await _child(tree, cid, key, get, seen)
        if got is None:
            continue
        cblock, cnode, cfs = got
        if cfs.type in (unixfs.DIRECTORY, unixfs.HAMT_SHARD):
            await _walk_dir(tree, cnode, cfs, key, get, seen | {cid.mh})
        elif cfs.type in (unixfs.FILE, unixfs.RAW):
            piece = Piece(cid, None)
            try:
                _expand(piece, cblock)
            except RefError as e:
                tree.problems.append(f"{key}: {e}")
                continue
            _add(tree, key, CarFile(piece))
        else:
            tree.problems.append(f"{key}: UnixFS {cfs.type_name} left out")


async def _child(
    tree: CarTree, cid: Cid, key: str, get: GetBlock, seen: frozenset[bytes]
) -> tuple[bytes, unixfs.DagPbNode, unixfs.UnixFSData] | None:
    """A dag-pb child's block, node and UnixFS data; None (a problem noted) if unusable."""
    if cid.mh in seen:
        tree.problems.append(f"{key or '/'}: cycle (links back to {cid}); left out")
        return None
    try:
        block = await get(cid)
        node = unixfs.decode_node(block)
        return block, node, unixfs.decode_unixfs(node.data)
    except (RefError, ValueError) as e:
        tree.problems.append(f"{key or '/'}: {e}")
        return None
