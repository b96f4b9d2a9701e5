"""``lindifuse check ARCHIVE [--repair]``: verify a ``.lindi.tar`` or ``.lindi.d``
(``lindifuse.archive.check``), print one line per problem, exit 1 when any is left."""

from __future__ import annotations

import argparse
import errno
from typing import Any

from lindifuse.errors import SourceError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="verify an archive (exit 1 with a list of problems)",
        description="Verify a .lindi.tar or .lindi.d: tar headers against the index, the entry "
        "and index self-references, lindi.json, and that every internal reference lies inside "
        "its member. Exits 0 when clean, 1 with one line per problem otherwise.",
        epilog="examples:\n"
        "  lindifuse check session.lindi.tar\n"
        "  lindifuse check --repair session.lindi.tar   # after a crash: fix, then re-check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="ARCHIVE")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed, then re-check")


def run(args: argparse.Namespace) -> int:
    problems, fixes = check(args.source, repair=args.repair)
    for f in fixes:
        print(f"fixed: {f}")
    for p in problems:
        print(f"{args.source}: {p}")
    if not problems:
        print(f"{args.source}: ok")
    return 1 if problems else 0


def check(path: str, *, repair: bool) -> tuple[list[str], list[str]]:
    """(problems found, fixes made). With ``repair`` the problems are those left after fixing."""
    from lindifuse.archive.check import check as check_archive
    from lindifuse.archive.check import repair as repair_archive

    try:
        problems = check_archive(path)
        fixes: list[str] = []
        if problems and repair:
            fixes = repair_archive(path)
            problems = check_archive(path)
        return problems, fixes
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise SourceError(f"{path}: No such file or directory") from None
        raise SourceError(f"{path}: {e.strerror or e}") from None
