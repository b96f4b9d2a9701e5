"""File content: resolve a key's reference, compute its served size, read byte ranges.

Sits between the FUSE layer (which knows inodes) and the sources (which know bytes). Knows the
reference forms, templates, container-relative targets, lindi's zero-padding of short chunks and
the fetch policy: local bytes are read exactly as asked (the kernel page cache does the rest);
remote chunks are fetched whole, once, through the memory cache, however the kernel splits the
read; very large remote objects are fetched in aligned blocks instead.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lindifuse.cache.memory import MemoryCache
from lindifuse.errors import RefError
from lindifuse.formats.car import pieces
from lindifuse.formats.car.cid import RAW, Cid
from lindifuse.formats.car.layout import CarFile
from lindifuse.formats.car.store import CarBlocks
from lindifuse.formats.container import Container, Location
from lindifuse.formats.hashes import ChunkMismatch, chunk_hashes, digest_of
from lindifuse.formats.hashes import checker as hash_checker
from lindifuse.fs.fetch import Fetcher
from lindifuse.fs.tree import Node
from lindifuse.refs import (
    Inline,
    decode_value,
    expand_templates,
    inline_size,
    is_chunk_name,
    padded_chunk_size,
)
from lindifuse.sources.http import HttpClient
from lindifuse.sources.local import LocalFiles

log = logging.getLogger(__name__)

# Local reads from this size on may be replied straight from the source file's descriptor
# (local_range); smaller ones are cheaper as bytes read without a worker thread.
LOCAL_RANGE_MIN = 32 * 2**10
WHOLE_FETCH_MAX = 32 * 2**20  # remote objects up to this size are fetched in one request
BLOCK = 8 * 2**20  # larger ones in aligned blocks of this size


@dataclass(slots=True)
class Resolved:
    """A key's content: either ``inline`` bytes or ``stored`` bytes at ``offset`` of ``loc``;
    ``size`` is what the file shows (``stored`` plus lindi's zero padding)."""

    inline: bytes | None
    loc: Location | None
    offset: int
    stored: int
    size: int
    car: CarFile | None = None  # a file of verified CAR blocks (lindifuse.formats.car)

    def describe(self) -> Any:
        """The JSON form shown in the ``user.lindi.ref`` extended attribute."""
        if self.car is not None:
            return {"car": str(self.car.cid)}
        if self.loc is None:
            return "inline"
        return [self.loc.where, self.offset, self.stored]


class ReadHook(Protocol):
    """Told (synchronously, cheaply) when a remote chunk file's first bytes are read: the
    read-ahead of ``lindifuse.fs.readahead`` implements it. A protocol here, not an import,
    so that content sits below read-ahead (which resolves keys through content)."""

    def on_read(self, node: Node, r: Resolved) -> None: ...


class Derived:
    """A key whose content is computed from another reference (the ``--xarray`` view).

    ``source`` is an ordinary reference value (read like any other); ``convert`` maps its
    bytes to the served bytes. The result is computed on first use and kept in the node.
    """

    __slots__ = ("source", "convert")

    def __init__(self, source: Any, convert: Callable[[bytes], bytes]) -> None:
        self.source = source
        self.convert = convert


class _DirPad:
    """Per-directory memo of the padded chunk size derived from its ``.zarray``."""

    __slots__ = ("pad",)

    def __init__(self, pad: int) -> None:
        self.pad = pad


class ContentService:
    """Resolves and reads the content of file nodes; errors are RefError (EIO on that file)."""

    def __init__(
        self,
        container: Container,
        http: HttpClient,
        local: LocalFiles,
        cache: MemoryCache,
        get_value: Callable[[str], Any] | None = None,
        fetcher: Fetcher | None = None,
    ) -> None:
        self.container = container
        self.http = http
        self.local = local
        self.cache = cache
        # Remote reads: memory cache -> disk cache -> merged range requests (lindifuse.fs.fetch).
        self.fetcher = fetcher if fetcher is not None else Fetcher(http, cache)
        self.readahead: ReadHook | None = None  # set by the daemon unless --no-readahead
        self._get_value = get_value or container.rset.refs.__getitem__
        self._sizes: dict[str, int] = {}  # sizes of whole-target references
        self._local_sizes: dict[str, int] = {}  # checked sizes of local targets
        self._car_blocks: CarBlocks | None = None
        # key -> sha256 hex of chunks whose digest the index records (lindifuse.formats.hashes)
        self._hashes = chunk_hashes(container.rset.extra) if container.rset.extra else None
        if self._hashes:
            self._register_hash_checks()

    async def resolve(self, node: Node) -> Resolved:
        cached = node.extra
        if isinstance(cached, Resolved):
            return cached
        try:
            value = self._get_value(node.key)
        except KeyError:
            raise RefError(f"{node.key}: no such key") from None
        r = await self._resolve_value(node, value)
        node.extra = r
        node.size = r.size
        return r

    def container_of(self, node: Node) -> Container:
        """The container whose templates and safety rules resolve ``node``'s reference: the
        mount's one container here; a dandiset mount answers the node's asset."""
        return self.container

    def set_overrides(self, overrides: dict[str, Any]) -> None:
        """Serve ``overrides[key]`` (a reference value or a ``Derived``) instead of the key's
        own reference. Only the --xarray view uses this; without it lookups are unchanged."""
        if not overrides:
            return
        base = self._get_value

        def get_value(key: str) -> Any:
            value = overrides.get(key)
            return base(key) if value is None else value

        self._get_value = get_value

    def value_of(self, key: str) -> Any:
        """The reference value served for ``key`` (KeyError when there is none)."""
        return self._get_value(key)

    async def _resolve_derived(self, node: Node, value: Derived) -> Resolved:
        r = await self._resolve_value(node, value.source)
        if r.inline is not None:
            raw = r.inline[: r.stored]
        else:
            raw = await self._read_stored(node, r, 0, r.stored)
        try:
            data = value.convert(raw)
        except Exception as e:  # codecs raise many kinds
            raise RefError(f"{node.key}: cannot convert for the xarray view: {e}") from None
        return Resolved(data, None, 0, len(data), len(data))

    def _register_hash_checks(self) -> None:
        """Tell the fetcher which remote ranges carry a recorded digest, so that every fetch
        of them (a read's or read-ahead's) is checked before it is cached."""
        assert self._hashes is not None
        refs, c = self.container.rset.refs, self.container
        for key in self._hashes:
            want = digest_of(self._hashes, key)
            value = refs.get(key)
            if want is None:
                continue
            if type(value) is not list or len(value) != 3:
                continue
            try:
                loc = c.resolve(expand_templates(value[0], c.rset.templates))
            except (RefError, KeyError):
                continue
            if loc.remote:
                rng = (loc.where, loc.base + value[1], value[2])
                self.fetcher.fixed_checks[rng] = self._counted(hash_checker(key, want))

    def _counted(self, check: Callable[[bytes], None]) -> Callable[[bytes], None]:
        stats = self.fetcher.stats

        def run(data: bytes) -> None:
            try:
                check(data)
            except ChunkMismatch:
                stats.chunk_mismatches += 1
                raise
            stats.chunks_verified += 1

        return run

    async def _read_hashed(self, node: Node, r: Resolved, want: str) -> bytes:
        """The whole stored chunk, checked against its recorded sha256 before it is cached."""
        loc = r.loc
        assert loc is not None
        check = self._counted(hash_checker(node.key, want))
        if loc.remote:
            return await self.fetcher.get(loc.where, r.offset, r.stored, check=check)

        async def load() -> bytes:
            data = await self.local.read(loc.where, r.offset, r.stored)
            check(data)
            return data

        return await self.cache.get(("sha256", loc.where, r.offset, r.stored), load)

    def _car_store(self) -> CarBlocks:
        if self._car_blocks is None:
            from lindifuse.fs.carfetch import VerifiedFetch

            c = self.container
            fetch = VerifiedFetch(c.source, c.remote, self.fetcher, self.local, self.cache)
            self._car_blocks = CarBlocks(c.index.archive.table, fetch, c.source)
        return self._car_blocks

    async def _car_get(self, cid: Cid) -> bytes:
        """A verified block of the mounted CAR (see lindifuse.fs.carfetch)."""
        return await self._car_store().get(cid)

    async def _car_size_hint(self, value: CarFile) -> int | None:
        """The size of a file without reading a block: known from its link or parent, or, for
        a raw block of a scanned CAR, from its section's extent (checked when read; a scan
        still under way is waited for until it reaches the block)."""
        piece = value.piece
        if piece.size is None and piece.cid is not None and piece.cid.codec == RAW:
            piece.size = await self._car_store().data_size(piece.cid)
        return piece.size

    async def _resolve_car(self, node: Node, value: CarFile) -> Resolved:
        try:
            await self._car_size_hint(value)
            size = await pieces.resolve_size(value.piece, self._car_get)
        except RefError as e:
            raise RefError(f"{node.key}: {e}") from None
        return Resolved(None, None, 0, size, size, value)

    async def _resolve_value(self, node: Node, value: Any) -> Resolved:
        if type(value) is CarFile:
            return await self._resolve_car(node, value)
        if type(value) is Derived:
            return await self._resolve_derived(node, value)
        ref = decode_value(node.key, value)
        if isinstance(ref, Inline):
            stored = len(ref.data)
            return Resolved(ref.data, None, 0, stored, await self._padded(node, stored))
        container = self.container_of(node)
        target = expand_templates(ref.target, container.rset.templates)
        try:
            loc = container.resolve(target)
        except RefError as e:
            raise RefError(f"{node.key}: {e}") from None
        size = ref.size
        if size is None:
            try:
                size = await self._whole_size(loc) - ref.offset
            except RefError as e:
                raise RefError(f"{node.key}: {e}") from None
            if size < 0:
                raise RefError(f"{node.key}: offset {ref.offset} is past the end of {target}")
        if loc.limit is not None and ref.offset + size > loc.limit:
            raise RefError(
                f"{node.key}: range {ref.offset}+{size} runs past the end of {target} "
                f"({loc.limit} bytes)"
            )
        if not loc.remote and loc.limit is None:
            try:
                self._check_local(loc.where, ref.offset + size)
            except RefError as e:
                raise RefError(f"{node.key}: {e}") from None
        return Resolved(None, loc, loc.base + ref.offset, size, await self._padded(node, size))

    def _check_local(self, path: str, end: int) -> None:
        """A local target must be a regular file holding at least ``end`` bytes: otherwise the
        file would claim a size it cannot deliver (or, for a FIFO, block its reader), so
        ``open`` fails instead (EIO). Sizes are remembered per path; a file that seems too
        short is looked at again (it may have grown since)."""
        known = self._local_sizes.get(path)
        if known is not None and end <= known:
            return
        try:
            st = os.stat(path)
        except OSError as e:
            raise RefError(f"{path}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise RefError(f"{path}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise RefError(f"{path}: not a regular file")
        self._local_sizes[path] = st.st_size
        if end > st.st_size:
            raise RefError(
                f"{path}: range ending at {end} runs past the end of the file (size {st.st_size})"
            )

    async def _whole_size(self, loc: Location) -> int:
        if loc.limit is not None:
            return loc.limit
        size = self._sizes.get(loc.where)
        if size is None:
            if loc.remote:
                size = await self.fetcher.size_of(loc.where)
            else:
                try:
                    st = os.stat(loc.where)
                except OSError as e:
                    raise RefError(f"{loc.where}: {e.strerror}") from None
                if not stat.S_ISREG(st.st_mode):
                    what = "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                    raise RefError(f"{loc.where}: {what}")
                size = st.st_size
            self._sizes[loc.where] = size
        return size

    async def _padded(self, node: Node, stored: int) -> int:
        """lindi's padding rule (see refs.padded_chunk_size); 0-byte chunks are not padded."""
        if stored == 0 or not is_chunk_name(node.name) or node.parent is None:
            return stored
        parent = node.parent
        memo = parent.extra
        if not isinstance(memo, _DirPad):
            memo = _DirPad(await self._dir_pad(parent))
            parent.extra = memo
        return memo.pad if stored < memo.pad else stored

    async def _dir_pad(self, parent: Node) -> int:
        zarray = parent.children.get(".zarray") if parent.children else None
        if zarray is None:
            return 0
        try:
            meta = json.loads(await self.read(zarray, 0, 1 << 24))
        except (RefError, ValueError):
            return 0
        if not isinstance(meta, dict):
            return 0
        return padded_chunk_size(meta) or 0

    def forget_dir_meta(self, parent: Node) -> None:
        """Drop the padding memo of a directory (its .zarray changed)."""
        if isinstance(parent.extra, _DirPad):
            parent.extra = None

    async def size(self, node: Node) -> int:
        if node.size >= 0:
            return node.size
        value = self._get_value(node.key)
        if type(value) is CarFile:
            try:
                hint = await self._car_size_hint(value)
            except RefError as e:
                raise RefError(f"{node.key}: {e}") from None
            if hint is not None:
                node.size = hint  # from the link, the parent node or the block table
                return node.size
        if type(value) is list and len(value) == 3:
            # Fast path for listings: the size is in the reference; no need to resolve it.
            node.size = await self._padded(node, value[2])
            return node.size
        if type(value) is str:
            n = inline_size(value)
            if n is not None:
                # Inline content: its size without decoding it (a cold walk lists them all).
                node.size = await self._padded(node, n)
                return node.size
        return (await self.resolve(node)).size

    async def read(self, node: Node, offset: int, size: int) -> bytes | bytearray:
        """``size`` bytes of ``node`` from ``offset`` (fewer at its end). A local stored range
        comes as a fresh ``bytearray`` (see ``LocalFiles.read_buffer``)."""
        r = await self.resolve(node)
        end = min(offset + size, r.size)
        if offset >= end:
            return b""
        if r.car is not None:
            try:
                return await pieces.read(r.car.piece, offset, end - offset, self._car_get)
            except RefError as e:
                raise RefError(f"{node.key}: {e}") from None
        stored_end = min(end, r.stored)
        data: bytes | bytearray = b""
        if offset < stored_end:
            if r.inline is not None:
                data = r.inline[offset:stored_end]
            else:
                data = await self._read_stored(node, r, offset, stored_end - offset)
        if end > max(offset, r.stored):
            data += bytes(end - max(offset, r.stored))
        return data

    async def local_range(
        self, node: Node, offset: int, size: int
    ) -> tuple[int, int, int, bool] | None:
        """``(fd, offset, size, cached)`` when what ``read(node, offset, size)`` would return is
        one range of a local file as it is stored, at least ``LOCAL_RANGE_MIN`` long: the
        reply can then be sent from the descriptor without the bytes becoming a Python object
        (``fs.features.file_range``). ``cached``: its pages are probably in the page cache
        (``LocalFiles.probably_cached``). None for anything else: inline, remote, CAR,
        checked by a recorded digest, zero padding, short ranges."""
        r = await self.resolve(node)
        loc = r.loc
        if loc is None or loc.remote or r.car is not None or r.inline is not None:
            return None
        end = min(offset + size, r.size)
        if end - offset < LOCAL_RANGE_MIN or end > r.stored:
            return None
        if digest_of(self._hashes, node.key) is not None:
            return None
        try:
            fd = self.local.fd(loc.where)
        except RefError as e:
            raise RefError(f"{node.key}: {e}") from None
        start = r.offset + offset
        return fd, start, end - offset, self.local.probably_cached(fd, start, end - offset)

    async def _read_stored(
        self, node: Node, r: Resolved, offset: int, size: int
    ) -> bytes | bytearray:
        loc = r.loc
        assert loc is not None
        want = digest_of(self._hashes, node.key)
        try:
            if want is not None:
                blob = await self._read_hashed(node, r, want)
                return blob[offset : offset + size]
            if not loc.remote:
                # No read-ahead of our own: the kernel's for the source file does better here
                # (lindifuse.fs.readahead says why).
                return await self.local.read_buffer(loc.where, r.offset + offset, size)
            if r.stored <= WHOLE_FETCH_MAX:
                if offset == 0 and self.readahead is not None:
                    self.readahead.on_read(node, r)
                blob = await self.fetcher.get(loc.where, r.offset, r.stored)
                return blob[offset : offset + size]
            parts = []
            pos = offset
            while pos < offset + size:
                bstart = pos - pos % BLOCK
                blen = min(BLOCK, r.stored - bstart)
                abs_start = r.offset + bstart
                blob = await self.fetcher.get(loc.where, abs_start, blen)
                take = min(offset + size, bstart + blen) - pos
                parts.append(blob[pos - bstart : pos - bstart + take])
                pos += take
            return b"".join(parts)
        except RefError as e:
            raise RefError(f"{node.key}: {e}") from None
