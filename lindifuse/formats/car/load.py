"""Open a CAR: header, block table (CARv2 index, cached scan or a fresh scan), root.

``open_car`` reads through ``read(offset, size)`` (local file or HTTP range, supplied by the
caller) and never reads a block's bytes to build the table: a CARv2 index gives section
offsets; a CARv1 is scanned once, section header by section header, in windows of
``SCAN_WINDOW`` bytes (``CarScan``: with ``wait=False`` the scan goes on after opening, as far
as lookups need it and then to the end, so a mount answers before it ends), and the table is
kept by the caller's cache (``TableCache``, beside the HDF5 indexes, keyed by source and
version; written by ``CarArchive.save_table`` once the mount answers and the scan is complete)
so the next mount of an unchanged file reads no section at all. A CAR cut short mounts what it
holds: the scan stops at the broken section and says so (one line); blocks after it are
missing (EIO for the files that need them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lindifuse.cache.indexfiles import IndexFiles
from lindifuse.errors import FormatError, LindiError
from lindifuse.formats.car.blocks import BlockTable
from lindifuse.formats.car.cid import Cid, cid_from_string
from lindifuse.formats.car.framing import (
    CarError,
    CarHeader,
    NeedMore,
    parse_header,
    read_index,
    scan_into,
)

log = logging.getLogger(__name__)

ReadAt = Callable[[int, int], Awaitable[bytes]]
SCAN_WINDOW = 8 * 2**20
TABLE_FORMAT = 1


@dataclass
class CarArchive:
    where: str
    size: int
    header: CarHeader
    table: BlockTable
    root: Cid
    problems: list[str] = field(default_factory=list)
    how: str = "scan"  # "scan", "index" (CARv2) or "cache"
    # The scanned table, still to be written to the cache (``save_table``): the mount does
    # that once it answers, since serialising 100,000 blocks takes longer than scanning them.
    unsaved: tuple[TableCache, str] | None = None
    # A scan still under way (``open_car(..., wait=False)``), and where its table goes when
    # it is complete and clean: (scan, cache, key).
    pending: tuple[CarScan, TableCache | None, str | None] | None = None
    _saving: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def scanning(self) -> bool:
        """True while the block table is still being filled by the scan."""
        return self.pending is not None

    async def finish_scan(self) -> None:
        """Scan to the end: the table is complete (and, when clean, to be cached)."""
        if self.pending is None:
            return
        scan, cache, key = self.pending
        await scan.finish()
        self.pending = None
        if cache is not None and key is not None and not self.problems:
            self.unsaved = (cache, key)

    def save_table(self) -> None:
        """Write a freshly scanned table to the cache (blocking: run it in a worker thread);
        nothing the second time, nor for a scan not finished."""
        with self._saving:
            if self.unsaved is None:
                return
            cache, key = self.unsaved
            self.unsaved = None
        cache.put(key, self.table)


class CarScan:
    """The section scan of a CARv1 (or of a CARv2 without an index), window by window, into
    a table that grows as it goes (``BlockTable.growing``), so a mount can answer before it
    ends: the blocks it needs first lie near the start when the root is the first section,
    as ipldstore writes it (and tests/carwriter.py, benchmarks/_cargen.py). A CAR whose root is
    last gains nothing: the root is found at the end of the scan. The UnixFS importers
    (``ipfs-car pack``, the JS importer) write leaves first and the root last, so a UnixFS CAR
    is scanned whole before its mount answers, as before. A lookup of a block not reached yet
    drives the scan on itself (``BlockTable.locate`` -> ``advance``), one caller at a time,
    so a block is never missing because of timing; the rest is driven by the mount's
    background task (``finish``). Problems go to ``problems`` when met (the scan stops there,
    as ``scan_table`` does)."""

    def __init__(
        self, where: str, header: CarHeader, size: int, read: ReadAt, problems: list[str]
    ) -> None:
        import trio

        self.where = where
        self.read = read
        self.problems = problems
        self.limit = header.payload_end if header.payload_end is not None else size
        self.pos = header.first_section
        self.table = BlockTable.growing(self.pos)
        self.table.scan = self
        # False while the CAR is being opened (a failed read fails the opening); True once the
        # mount answers (a failed read ends the scan there: blocks after it are missing, EIO)
        self.soft = False
        self.windows = 0  # windows scanned so far
        self.seconds = 0.0  # time spent reading and parsing them
        self._lock = trio.Lock()

    @property
    def done(self) -> bool:
        return self.table.scan is None

    async def advance(self) -> None:
        """Scan the next window, unless another caller scanned one while this one waited."""
        seen = self.windows
        async with self._lock:
            if self.windows == seen and not self.done:
                await self._step()

    async def finish(self) -> None:
        while not self.done:
            await self.advance()

    async def _step(self) -> None:
        t0 = time.monotonic()
        pos, limit, table = self.pos, self.limit, self.table
        try:
            if pos >= limit:
                return self._end(pos)
            try:
                buf = await self.read(pos, min(SCAN_WINDOW, limit - pos))
            except LindiError as e:
                if not self.soft:
                    raise
                self.problems.append(
                    f"{self.where}: scan stopped at offset {pos} ({e}); later blocks are missing"
                )
                return self._end(pos)
            if not buf:
                self.problems.append(
                    f"{self.where}: truncated CAR: no data at offset {pos} (size {limit})"
                )
                return self._end(pos)
            mhs: list[bytes] = []
            first = len(table.starts)
            nxt, problem = scan_into(buf, pos, pos, limit, mhs, table.starts)
            table.add_scanned(mhs, first, nxt)
            if problem is not None:
                self.problems.append(
                    f"{self.where}: {problem}; the {len(table.starts)} blocks before it are served"
                )
                return self._end(nxt)
            if nxt == pos:  # the first section header does not fit the window: the file is cut
                self.problems.append(
                    f"{self.where}: truncated CAR: section header at offset {pos} is cut"
                )
                return self._end(pos)
            self.pos = nxt
            if nxt >= limit:
                self._end(nxt)
        finally:
            self.windows += 1
            self.seconds += time.monotonic() - t0

    def _end(self, pos: int) -> None:
        self.pos = pos
        self.table.scan = None


class TableCache:
    """Block tables of scanned CARs, one file each under ``<cache dir>/indexes``."""

    def __init__(self, directory: str) -> None:
        self.files = IndexFiles(directory, ".car")
        self.root = self.files.root

    @staticmethod
    def key(source: str, validator: str) -> str:
        raw = json.dumps(["car-table", TABLE_FORMAT, source, validator])
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> BlockTable | None:
        raw = self.files.read(key)
        if raw is None:
            return None
        try:
            return BlockTable.from_bytes(raw)
        except ValueError:
            log.warning(
                "cached CAR block table %s is damaged: scanning again", self.files.path(key)
            )
            return None

    def put(self, key: str, table: BlockTable) -> None:
        self.files.write(key, table.to_bytes(), "CAR block table")


async def read_header(where: str, size: int, read: ReadAt, head: bytes) -> CarHeader:
    buf = head
    for _ in range(8):
        try:
            return parse_header(buf, size)
        except NeedMore as e:
            if e.need > size:
                raise FormatError(f"{where}: truncated CAR header") from None
            buf = await read(0, min(size, max(e.need, 2 * len(buf))))
        except CarError as e:
            raise FormatError(f"{where}: {e}") from None
    raise FormatError(f"{where}: CAR header too large")


async def scan_table(
    where: str, header: CarHeader, size: int, read: ReadAt, problems: list[str]
) -> BlockTable:
    """Scan the sections into a table, window by window (sequential reads: the kernel's
    read-ahead keeps a local disk ahead of the scan; telling it of the next window with
    POSIX_FADV_WILLNEED was measured and gained nothing)."""
    scan = CarScan(where, header, size, read, problems)
    await scan.finish()
    return scan.table


async def open_car(
    where: str,
    size: int,
    read: ReadAt,
    head: bytes = b"",
    *,
    root: str | None = None,
    cache: TableCache | None = None,
    validator: str | None = None,
    wait: bool = True,
) -> CarArchive:
    """Open the CAR ``where`` of ``size`` bytes. FormatError for a bad header or root.
    ``wait=False``: a CAR to scan is returned with its scan under way (``pending``; the
    table fills as blocks are asked for, ``finish_scan`` completes it)."""
    header = await read_header(where, size, read, head)
    if not header.roots and root is None:
        raise FormatError(f"{where}: the CAR names no root (give one with --root CID)")
    problems: list[str] = []
    if root is not None:
        chosen = cid_from_string(root)
    else:
        chosen = header.roots[0]
        if len(header.roots) > 1:
            log.info(
                "%s: %d roots; mounting the first, %s (choose another with --root CID)",
                where,
                len(header.roots),
                chosen,
            )
    key = TableCache.key(where, validator) if cache is not None and validator else None
    if key is not None and cache is not None:
        import trio

        table = await trio.to_thread.run_sync(cache.get, key)
        if table is not None:
            return CarArchive(where, size, header, table, chosen, problems, "cache")
    table = None
    how = "scan"
    if header.version == 2 and header.index_offset:
        try:
            raw = await read(header.index_offset, size - header.index_offset)
            assert header.payload_end is not None
            table = BlockTable.from_index(
                read_index(raw), header.payload, header.first_section, header.payload_end
            )
            how = "index"
        except CarError as e:
            problems.append(f"{where}: CARv2 index unusable ({e}); scanning the data instead")
    if table is None:
        scan = CarScan(where, header, size, read, problems)
        archive = CarArchive(where, size, header, scan.table, chosen, problems, how)
        archive.pending = (scan, cache, key)
        if wait:
            await archive.finish_scan()
        return archive
    return CarArchive(where, size, header, table, chosen, problems, how)
