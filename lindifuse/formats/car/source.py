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
    """``--root CID`` and the table cache (None: scan on every mount, ``--no-cache``)."""

    root: str | None = None
    cache: TableCache | None = None


@dataclass
class CarLoaded:
    archive: CarArchive
    tree: CarTree
    seconds: float
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        a = self.archive
        how = {
            "cache": "block table from the cache",
            "index": "CARv2 index",
            "scan": f"scanned CARv{a.header.version}",
        }[a.how]
        return (
            f"{a.where}: CAR ({self.tree.layout} layout), root {a.root}, {len(a.table)} blocks "
            f"({how}), {len(self.tree.entries)} keys in {self.seconds:.2f}s"
        )


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
    )
    blocks = CarBlocks(archive.table, fetch_checked, where)
    try:
        tree = await build_tree(archive.root, blocks.get, where)
    except RefError as e:  # e.g. the root is not in the archive
        raise FormatError(f"{where}: {e}") from None
    problems = archive.problems + [f"{where}: {p}" for p in tree.problems]
    return CarLoaded(archive, tree, time.monotonic() - t0, problems)
