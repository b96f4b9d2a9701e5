"""Open an archive of either kind by its path: a directory is a ``.lindi.d``, a file a
``.lindi.tar``."""

from __future__ import annotations

import os

from lindifuse.archive.directory import DirArchive
from lindifuse.archive.tar import TarArchive


def open_archive(path: str, *, writable: bool = False) -> TarArchive | DirArchive:
    """Open a ``.lindi.d`` directory or a ``.lindi.tar`` file (see the classes' ``open``)."""
    if os.path.isdir(path):
        return DirArchive.open(path, writable=writable)
    return TarArchive.open(path, writable=writable)
