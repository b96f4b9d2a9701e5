"""A CAR file as a mount source: open it, build its key tree, report what was found.

``load_car`` is called by ``lindifuse.formats.container.open_container`` once the content says
CAR (CARv1 header or CARv2 pragma). Reads come in two kinds:

* **framing** (the header, a CARv2 index, the CARv1 scan): ``read_raw``, never through the
  caches, since these windows are not blocks and must never be mistaken for one;
* **blocks** needed for the tree (the root, directories, file roots): ``fetch_checked(start,
  size, check)``, which verifies before it caches (the daemon passes its fetcher for a URL).

The scanned block table is kept in the ``TableCache`` under the source and its version, so the
second mount of an unchanged CAR reads no section (local or remote, ``--offline`` too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lindifuse.errors import FormatError, RefError
from lindifuse.formats.car.layout import CarTree, build_tree
from lindifuse.formats.car.load import CarArchive, ReadAt, TableCache, open_car
from lindifuse.formats.car.store import CarBlocks, Check

log = logging.getLogger(__name__)

FetchChecked = Callable[[int, int, Check], Awaitable[bytes]]


@dataclass
class CarSettings:
    """``--root CID`` and the table cache (None: scan on every mount, ``--no-cache``).

    ``answer_early`` (mounts): a CARv1 scan goes on after loading (``CarLoaded.finish``, which
    the daemon runs once the mount answers) and large maps are walked on first use
    (``layout.LazyMap``); otherwise (``info``, tests) everything is done before returning."""

    root: str | None = None
    cache: TableCache | None = None
    answer_early: bool = False


@dataclass
class CarLoaded:
    archive: CarArchive
    tree: CarTree
    seconds: float
    problems: list[str] = field(default_factory=list)
    reported: int = 0  # the archive's problems in ``problems`` (those of a later scan are not)

    def describe(self) -> str:
        a = self.archive
        how = {
            "cache": "block table from the cache",
            "index": "CARv2 index",
            "scan": f"scanned CARv{a.header.version}",
        }[a.how]
        blocks = f"{len(a.table)} blocks ({how})"
        if a.scanning:
            blocks = (
                f"{len(a.table)} blocks so far (scanning CARv{a.header.version}: the mount "
                "answers meanwhile)"
            )
        keys = len(self.tree.entries) + self.tree.pending()
        return (
            f"{a.where}: CAR ({self.tree.layout} layout), root {a.root}, {blocks}, "
            f"{keys} keys in {self.seconds:.2f}s"
        )

    @property
    def finish(self) -> Callable[[], Awaitable[None]] | None:
        """The rest of a scan still under way (log it, cache the table); None if complete."""
        return self._finish if self.archive.scanning else None

    async def _finish(self) -> None:
        import trio

        a = self.archive
        scan = a.pending[0] if a.pending is not None else None
        await a.finish_scan()
        log.info(
            "%s: scanned CARv%d: %d blocks in %.2fs (%d windows; the mount answered meanwhile)",
            a.where,
            a.header.version,
            len(a.table),
            scan.seconds if scan is not None else 0.0,
            scan.windows if scan is not None else 0,
        )
        new = a.problems[self.reported :]
        if new:
            more = f" (and {len(new) - 1} more)" if len(new) > 1 else ""
            log.warning("%s%s", new[0], more)
            for p in new[1:]:
                log.debug("%s", p)
        await trio.to_thread.run_sync(a.save_table)


async def load_car(
    where: str,
    size: int,
    head: bytes,
    read_raw: ReadAt,
    fetch_checked: FetchChecked,
    validator: str | None,
    settings: CarSettings | None,
) -> CarLoaded:
    settings = settings or CarSettings()
    t0 = time.monotonic()
    archive = await open_car(
        where,
        size,
        read_raw,
        head,
        root=settings.root,
        cache=settings.cache,
        validator=validator,
        wait=not settings.answer_early,
    )
    blocks = CarBlocks(archive.table, fetch_checked, where)
    try:
        tree = await build_tree(archive.root, blocks.get, where, lazy=settings.answer_early)
    except RefError as e:  # e.g. the root is not in the archive
        raise FormatError(f"{where}: {e}") from None
    problems = archive.problems + [f"{where}: {p}" for p in tree.problems]
    if archive.pending is not None:
        archive.pending[0].soft = True
    return CarLoaded(archive, tree, time.monotonic() - t0, problems, len(archive.problems))
