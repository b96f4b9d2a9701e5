"""Writable LINDI archives: ``.lindi.tar`` and ``.lindi.d`` on local disk, and the offline tools.

- ``base``: what both kinds share (the ``Archive`` protocol, low-level I/O helpers, lindi.json
  loading, which members lindi.json references);
- ``tar``: :class:`~lindifuse.archive.tar.TarArchive`, crash-safe appends and commits;
- ``directory``: :class:`~lindifuse.archive.directory.DirArchive`;
- ``open``: :func:`~lindifuse.archive.open.open_archive`, either kind by path;
- ``create``, ``compact``, ``check`` (with ``repair``): the offline commands' byte-level work;
- ``space``: free-space admission for writes staged by a writable mount.

Synchronous file I/O, no FUSE and no trio: the FUSE layer (``lindifuse.fs.writer``) calls this
from a worker thread. The byte layout itself is ``lindifuse.formats.tarfmt``."""
