"""Free-space admission for writable mounts: refuse a write with ENOSPC while it can still be
refused, instead of failing a commit later.

Writes are staged (in memory, or in a temporary file next to the archive) and committed into the
archive later: on close, rename, fsync, the flush timer or unmount. If the archive's file system
filled up only at commit time, the program that wrote would already have seen its ``write`` and
``close`` succeed, and the only way left to report the problem would be a failed ``fsync`` or
unmount. So a write that makes a file grow is admitted only when the file system holding the
archive has room for everything staged and not yet committed, plus this growth, plus a reserve
for rewriting ``lindi.json`` and the index (the commit point). Otherwise the write gets ENOSPC,
as it would on a local file system. A commit can still meet a full disk (another program
filled it meanwhile); the archive code then rolls back the partial member and the commit is
retried later (see ``lindifuse.archive.tar.TarArchive._append`` and ``lindifuse.fs.writer``).

Pure logic (:func:`admits`) is separate from the ``statvfs`` call for the unit tests.
"""

from __future__ import annotations

import errno
import os

RESERVE_MIN = 64 * 2**10
"""Bytes always kept free beyond what the staged files need (tar headers, padding, trailer)."""
JSON_FACTOR = 4
"""A commit may append a new lindi.json and index padded to up to 4 times their text (lindi's
growth rule), when no spare member fits: reserve that much of their current size."""


def reserve_for(json_bytes: int) -> int:
    """Bytes to keep free for the next commit of JSON members totalling ``json_bytes`` now."""
    return RESERVE_MIN + JSON_FACTOR * max(0, json_bytes)


def admits(free: int, pending: int, growth: int, reserve: int) -> bool:
    """Can ``growth`` more bytes be staged, with ``pending`` bytes staged and not committed
    (counted twice for staged temporary files: they already use the file system and will be
    copied into the archive), ``free`` bytes available and ``reserve`` bytes kept?"""
    if growth <= 0:
        return True
    return pending + growth + reserve <= free


def free_bytes(path: str) -> int | None:
    """Bytes available to unprivileged writers on the file system holding ``path`` (None:
    unknown, e.g. the path vanished: then nothing is refused)."""
    try:
        v = os.statvfs(path)
    except OSError:
        return None
    return v.f_bavail * v.f_frsize


def no_space(where: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)


def is_no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
