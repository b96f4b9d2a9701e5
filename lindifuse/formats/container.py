"""Containers: turn a SOURCE (path or URL) into a reference set plus a way to resolve targets.

Kinds: ``json`` (a lindi.json / kerchunk v1 file), ``tar`` (.lindi.tar), ``dir`` (.lindi.d),
``car`` (a CAR archive of a Zarr store, read-only, every block verified; see
``lindifuse.formats.car``) and ``hdf5`` (an HDF5/NWB file, indexed into the same refs lindi would write; see
``lindifuse.formats.hdf5``). The kind is detected from content by ``lindifuse.formats.detect`` (tar magic, ``{``, the HDF5
signature at offset 0 or at a user-block offset 512, 1024, 2048..., a folder holding
lindi.json); the extension is only used to word the error when the content matches nothing. A remote tar costs
three requests (head+entry, index, lindi.json) and is never downloaded whole.

``Container.resolve(target)`` maps a reference target to a concrete location (absolute path or
URL) plus the byte window it may address, enforcing the safety rules: a remote SOURCE may not
reference local files, and ``./`` targets may not escape their container.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import orjson
import trio

from lindifuse.errors import FormatError, RefError, SourceError
from lindifuse.formats import tarfmt
from lindifuse.formats.detect import (
    HEAD_BYTES,
    SUPERBLOCK_OFFSETS,
    hdf5_superblock,
    is_tar_head,
    looks_hdf5,
    sniff,
)
from lindifuse.refs import ReferenceSet, may_hold_links
from lindifuse.sources.base import is_url
from lindifuse.sources.http import HostRule, HttpClient
from lindifuse.sources.local import LocalFiles

HDF5_HEAD_BYTES = 1 << 20  # the HDF5 indexer's first window (hdf5.blockfile)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a reference's bytes live: ``offset`` is absolute in ``where``; ``limit`` bounds it."""

    where: str  # absolute local path or URL
    remote: bool
    base: int = 0  # offset of the window (tar member data) inside ``where``
    limit: int | None = None  # size of the window, if bounded (tar member size)


@dataclass
class Container:
    kind: str  # "json", "tar", "dir", "car" or "hdf5"
    source: str  # as given by the user (URL or absolute path)
    remote: bool
    rset: ReferenceSet
    mtime: float
    json_size: int
    members: dict[str, tarfmt.Member] = field(default_factory=dict)
    total_size: int | None = None
    index: Any = (
        None  # "hdf5": the hdf5.load.Loaded that produced rset; "car": car.source.CarLoaded
    )
    # False (--no-local-refs, always for remote sources): references may read only URLs and
    # the container's own members, as for a remote source.
    local_refs: bool = True
    hosts: HostRule | None = None  # --allowed-hosts (None or empty: any host)
    # Blocking jobs the daemon runs in a worker thread once the mount answers, work that
    # need not delay it (writing a freshly scanned CAR block table to the cache); run again
    # at close in case the mount ended first, so each must do nothing the second time.
    after_mount: list[Callable[[], None]] = field(default_factory=list)
    # The keys of ``rset`` as runs of one directory, (directory, names, keys), when the loader
    # walked them so (a CAR's maps): the tree is built from them without splitting each key.
    key_runs: list[tuple[str, list[str], list[str]]] | None = None
    # Directories whose keys the loader left for their first use (a CAR's large maps): each
    # has ``key``, ``len()``, ``subdirs()`` and ``async expand()`` -> an object with
    # ``entries``, ``runs``, ``lazy`` and ``problems`` (see ``car.layout.LazyMap``).
    lazy_dirs: list[Any] = field(default_factory=list)
    # Async jobs the daemon runs beside the mount once it answers (the rest of a CARv1 scan).
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def resolve(self, target: str) -> Location:
        """Concrete location of a (template-expanded) reference target; RefError if refused."""
        if target.startswith("./"):
            name = posixpath.normpath(target[2:])
            if name.startswith("../") or name in ("..", ".") or name.startswith("/"):
                raise RefError(f"reference {target!r} escapes its container")
            if self.kind == "tar":
                m = self.members.get(name)
                if m is None:
                    raise RefError(f"reference {target!r}: no member {name!r} in the archive")
                return Location(self.source, self.remote, m.d, m.s)
            if self.remote:
                return Location(urljoin(self.source, name), True)
            folder = self.source if self.kind == "dir" else os.path.dirname(self.source)
            path = os.path.join(folder, name)
            if self.kind == "dir" or not self.local_refs:
                # A symlink may not lead a member out of its .lindi.d (nor, for an untrusted
                # plain lindi.json, out of its folder).
                real, top = os.path.realpath(path), os.path.realpath(folder)
                if real != top and not real.startswith(top.rstrip("/") + "/"):
                    raise RefError(f"reference {target!r} leads outside {folder} (symlink)")
            return Location(path, False)
        if is_url(target):
            if self.hosts is not None and not self.hosts.allows(target):
                raise RefError(f"reference {target!r}: host not in --allowed-hosts")
            return Location(target, True)
        if self.remote:
            raise RefError(f"reference {target!r}: a remote source may not read local files")
        if not self.local_refs:
            raise RefError(f"reference {target!r}: --no-local-refs: local files may not be read")
        path = target[7:] if target.startswith("file://") else target
        if not os.path.isabs(path):
            folder = self.source if self.kind == "dir" else os.path.dirname(self.source)
            path = os.path.join(folder, path)
        return Location(path, False)


def parse_json(raw: bytes, where: str) -> Any:
    """Parse a reference file: orjson (about twice as fast as json on multi-megabyte files);
    on failure, json once more for a message with line and column."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise FormatError(f"{where}: not a LINDI file (not UTF-8 JSON)") from None
    except json.JSONDecodeError as e:
        raise FormatError(
            f"{where}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except ValueError as e:  # e.g. numbers json accepts but orjson does not
        raise FormatError(f"{where}: invalid JSON: {e}") from None


async def _rset_from_bytes(raw: bytes, where: str) -> ReferenceSet:
    def parse() -> ReferenceSet:
        rset = ReferenceSet.from_json(parse_json(raw, where), where)
        rset.may_link = may_hold_links(raw)
        return rset

    if len(raw) > 1_000_000:
        return await trio.to_thread.run_sync(parse)
    return parse()


class Reader:
    """Reads byte ranges of local paths or URLs during loading; remote ranges go through
    ``fetch`` (the daemon's fetcher: memory and disk cache) when given."""

    def __init__(self, http: HttpClient, local: LocalFiles, fetch: Any = None) -> None:
        self.http = http
        self.local = local
        self.fetch = fetch

    async def read(self, where: str, offset: int, size: int) -> bytes:
        if is_url(where):
            if self.fetch is not None:
                return await self.fetch(where, offset, size)
            return await self.http.get_range(where, offset, size)
        return await self.local.read(where, offset, size)


async def _load_tar(
    reader: Reader, where: str, head: bytes, total: int | None, remote: bool
) -> tuple[ReferenceSet, dict[str, tarfmt.Member], int]:
    if len(head) < HEAD_BYTES:
        raise FormatError(f"{where}: truncated archive ({len(head)} bytes)")
    first = tarfmt.decode_header(head[:512])
    if first is None or first.name != ".tar_entry.json":
        raise FormatError(f"{where}: not a .lindi.tar (first member is not .tar_entry.json)")
    entry = tarfmt.parse_entry(head[512:HEAD_BYTES], where)
    if total is not None and entry.d + entry.s > total:
        raise FormatError(
            f"{where}: index at {entry.d}+{entry.s} is past the end of the archive ({total} bytes)"
        )
    try:
        raw_index = await reader.read(where, entry.d, entry.s)
    except RefError as e:
        raise FormatError(f"{where}: cannot read the index: {e}") from None
    members = tarfmt.parse_index(raw_index, entry, where, total)
    lj = members.get("lindi.json")
    if lj is None:
        raise FormatError(f"{where}: the archive index has no lindi.json")
    try:
        raw = await reader.read(where, lj.d, lj.s)
    except RefError as e:
        raise FormatError(f"{where}: cannot read lindi.json: {e}") from None
    return await _rset_from_bytes(raw, f"{where}:lindi.json"), members, len(raw)


@dataclass
class HDF5Settings:
    """How an HDF5 source is indexed: lindi's options, the index cache, a progress callback
    (``progress(objects, chunks)``, called from a worker thread)."""

    options: Any = None  # hdf5.indexer.IndexOptions; None: lindi's defaults
    cache: Any = None  # hdf5.load.IndexCache or None
    progress: Any = None


async def _load_hdf5(
    reader: Reader,
    source: str,
    remote: bool,
    total: int | None,
    settings: HDF5Settings | None,
    head: bytes = b"",
) -> Container:
    from lindifuse.formats.hdf5.load import load_index, local_validator

    settings = settings or HDF5Settings()
    if remote:
        validator = await reader.http.validator(source)
        read = reader.read
        mtime = time.time()
    else:
        validator = local_validator(source)
        read = None
        mtime = os.stat(source).st_mtime
    loaded = await load_index(
        source,
        remote=remote,
        size=total,
        read=read,
        validator=validator,
        options=settings.options,
        cache=settings.cache,
        progress=settings.progress,
        head=head,
    )
    rset = ReferenceSet.from_index(loaded.rfs)
    c = Container("hdf5", source, remote, rset, mtime, 0, total_size=total)
    c.index = loaded
    return c


async def _load_car(
    reader: Reader,
    source: str,
    remote: bool,
    total: int | None,
    head: bytes,
    settings: Any,
    fetch_checked: Any,
) -> Container:
    from lindifuse.formats.car.source import load_car

    if total is None:
        raise SourceError(f"{source}: the server did not report the file's size")
    if remote:
        validator = await reader.http.validator(source)
        mtime = time.time()

        async def read_raw(offset: int, size: int) -> bytes:
            try:
                return await reader.http.get_range(source, offset, size)
            except RefError as e:
                raise SourceError(f"{source}: {e}") from None

        async def fetch(start: int, size: int, check: Any) -> bytes:
            if fetch_checked is not None:
                return await fetch_checked(source, start, size, check)
            data = await reader.http.get_range(source, start, size)
            check(data)
            return data
    else:
        st = os.stat(source)
        validator = f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
        mtime = st.st_mtime

        async def read_raw(offset: int, size: int) -> bytes:
            # a scan window is mostly not in the page cache: straight to a worker thread (a
            # non-blocking attempt first would allocate the window twice)
            try:
                return await trio.to_thread.run_sync(reader.local.pread, source, offset, size)
            except RefError as e:
                raise SourceError(f"{source}: {e}") from None

        async def fetch(start: int, size: int, check: Any) -> bytes:
            data = await reader.local.read(source, start, size)
            check(data)
            return data

    loaded = await load_car(source, total, head, read_raw, fetch, validator, settings)
    rset = ReferenceSet(refs=loaded.tree.entries, templates={}, rejected=[], extra={})
    c = Container("car", source, remote, rset, mtime, 0, total_size=total)
    c.index = loaded
    c.key_runs = loaded.tree.runs
    c.lazy_dirs = loaded.tree.lazy or []
    if loaded.finish is not None:
        c.background.append(loaded.finish)
    if loaded.archive.unsaved is not None:
        c.after_mount.append(loaded.archive.save_table)
    return c


async def open_container(
    source: str,
    http: HttpClient,
    local: LocalFiles,
    fetch: Any = None,
    hdf5: HDF5Settings | None = None,
    head_of: Any = None,
    car: Any = None,
    fetch_checked: Any = None,
) -> Container:
    """Load SOURCE; raise SourceError/FormatError with a one-line message on any problem.
    ``fetch(url, offset, size)``, when given, reads the remote index and lindi.json (cached),
    and an HDF5 file's metadata; ``head_of(url, size) -> (bytes, total)``, when given, reads
    the first bytes of a remote SOURCE (the daemon's fetcher keeps them in the persistent cache,
    so that a source mounted once mounts again while its server fails, or with --offline).
    ``car`` (a ``car.source.CarSettings``) and ``fetch_checked(url, offset, size, check)``
    (the fetcher's verifying read: ``check`` runs before anything is cached) serve CAR sources."""
    reader = Reader(http, local, fetch)
    if is_url(source):
        # an HDF5 file by its name: ask for the indexer's whole first window at once, so that
        # sniffing and h5py's first reads cost one request
        head_size = HDF5_HEAD_BYTES if looks_hdf5(source.split("?")[0]) else HEAD_BYTES
        try:
            if head_of is not None:
                head, total = await head_of(source, head_size)
            else:
                head, total = await http.get_head(source, head_size)
        except RefError as e:
            raise SourceError(str(e)) from None
        if total is not None:
            http.sizes.setdefault(source, total)
        if hdf5_superblock(head) is None and looks_hdf5(source.split("?")[0]) and total:
            # a user block larger than 1 KiB: look further for the signature
            try:
                more = await reader.read(source, 0, min(total, SUPERBLOCK_OFFSETS[-1] + 8))
            except RefError as e:
                raise SourceError(str(e)) from None
            if hdf5_superblock(more) is not None:
                head = more
        kind = sniff(head, source.split("?")[0])
        members: dict[str, tarfmt.Member] = {}
        if kind == "tar":
            rset, members, jsize = await _load_tar(reader, source, head, total, True)
        elif kind == "json":
            try:
                if total is not None and len(head) >= total:
                    raw = head
                elif total is not None and fetch is not None:
                    raw = await fetch(source, 0, total)  # kept in the persistent cache
                else:
                    raw = await http.get_all(source)
            except RefError as e:
                raise SourceError(str(e)) from None
            rset, jsize = await _rset_from_bytes(raw, source), len(raw)
        elif kind == "car":
            return await _load_car(reader, source, True, total, head, car, fetch_checked)
        else:
            return await _load_hdf5(reader, source, True, total, hdf5, head)
        return Container(kind, source, True, rset, time.time(), jsize, members, total)

    path = os.path.abspath(source)
    try:
        st = os.stat(path)
    except OSError as e:
        raise SourceError(f"{source}: {e.strerror}") from None
    if os.path.isdir(path):
        lj = os.path.join(path, "lindi.json")
        if not os.path.isfile(lj):
            raise SourceError(f"{source}: not a .lindi.d directory (no lindi.json inside)")
        raw = await trio.Path(lj).read_bytes()
        rset = await _rset_from_bytes(raw, lj)
        return Container("dir", path, False, rset, os.stat(lj).st_mtime, len(raw))
    try:
        head = await local.read(path, 0, min(HEAD_BYTES, st.st_size))
        if hdf5_superblock(head) is None and not is_tar_head(head) and st.st_size > HEAD_BYTES:
            more = await local.read(path, 0, min(st.st_size, SUPERBLOCK_OFFSETS[-1] + 8))
            if hdf5_superblock(more) is not None:
                head = more
    except (RefError, OSError) as e:
        raise SourceError(f"{source}: {e}") from None
    kind = sniff(head, source)
    if kind == "tar":
        rset, members, jsize = await _load_tar(reader, path, head, st.st_size, False)
        return Container("tar", path, False, rset, st.st_mtime, jsize, members, st.st_size)
    if kind == "json":
        raw = await trio.Path(path).read_bytes()
        rset = await _rset_from_bytes(raw, source)
        return Container("json", path, False, rset, st.st_mtime, len(raw))
    if kind == "car":
        return await _load_car(reader, path, False, st.st_size, head, car, None)
    return await _load_hdf5(reader, path, False, st.st_size, hdf5)


def container_from_archive(archive: Any, kind: str) -> Container:
    """A Container over an archive opened for writing: it shares the archive's member table, so
    blobs appended by the writer resolve at once."""
    where = archive.path
    rset = ReferenceSet.from_json(archive.rfs, where)
    lj = os.path.join(where, "lindi.json") if kind == "dir" else where
    return Container(
        kind,
        os.path.abspath(where),
        False,
        rset,
        os.stat(lj).st_mtime,
        0,
        archive.members if kind == "tar" else {},
    )


async def load_container(source: str, hdf5: HDF5Settings | None = None) -> Container:
    """``open_container`` with clients of its own, closed again: for one-shot commands
    (``info``, ``create --from``) that only need the reference set."""
    http, local = HttpClient(), LocalFiles()
    try:
        return await open_container(source, http, local, hdf5=hdf5)
    finally:
        await http.aclose()
        local.close()
