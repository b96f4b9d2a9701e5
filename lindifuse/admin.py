"""Offline commands on archives: ``create``, ``check`` (``--repair``) and ``compact``.

The byte-level work is in ``lindifuse.archive``; this module resolves sources and reports.
"""

from __future__ import annotations

import errno
from typing import Any

from . import archive
from .containers import Container, load_container
from .errors import FormatError, LindiError, RefError, SourceError
from .refs import Range, decode_value, expand_templates


def absolute_refs(c: Container) -> dict[str, Any]:
    """The reference set of ``c`` with container-relative targets made absolute.

    A remote ``.lindi.tar``'s internal references become byte ranges of the tar's URL, so a new
    archive created from it reads its data remotely and only stores what is added later.
    """
    refs: dict[str, Any] = {}
    for key, value in c.rset.refs.items():
        if isinstance(value, list):
            ref = decode_value(key, value)
            assert isinstance(ref, Range)
            target = expand_templates(ref.target, c.rset.templates)
            try:
                loc = c.resolve(target)
            except RefError as e:
                raise FormatError(f"{c.source}: key {key!r}: {e}") from None
            if ref.size is None and loc.limit is None:
                value = [loc.where]
            else:
                size = ref.size if ref.size is not None else (loc.limit or 0) - ref.offset
                value = [loc.where, loc.base + ref.offset, size]
        refs[key] = value
    doc = {k: v for k, v in c.rset.extra.items() if k != "templates"}
    doc["refs"] = refs
    return doc


async def create(target: str, source: str | None) -> str:
    rfs = None
    if source is not None:
        rfs = absolute_refs(await load_container(source))
    try:
        archive.create(target, rfs)
    except FileExistsError:
        raise SourceError(f"{target}: already exists") from None
    except OSError as e:
        raise SourceError(f"{target}: {e.strerror or e}") from None
    n = len(rfs["refs"]) if rfs else 1
    return f"created {target} with {n} keys"


def check(path: str, *, repair: bool) -> tuple[list[str], list[str]]:
    """(problems found, fixes made). With ``repair`` the problems are those left after fixing."""
    try:
        problems = archive.check(path)
        fixes: list[str] = []
        if problems and repair:
            fixes = archive.repair(path)
            problems = archive.check(path)
        return problems, fixes
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise SourceError(f"{path}: No such file or directory") from None
        raise SourceError(f"{path}: {e.strerror or e}") from None


def compact(src: str, dst: str) -> list[str]:
    try:
        return archive.compact(src, dst)
    except FileExistsError:
        raise SourceError(f"{dst}: already exists") from None
    except LindiError:
        raise
    except OSError as e:
        raise SourceError(f"{e.filename or src}: {e.strerror or e}") from None
