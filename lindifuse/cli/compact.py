"""``lindifuse compact IN OUT``: copy an archive keeping only what lindi.json references
(``lindifuse.archive.compact``)."""

from __future__ import annotations

import argparse
from typing import Any

from lindifuse.errors import LindiError, SourceError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compact",
        help="rewrite an archive without trashed or unreferenced members",
        description="Copy IN to OUT keeping only the members lindi.json references (trashed JSON "
        "members, spares, overwritten and deleted blobs are left out).",
        epilog="examples:\n  lindifuse compact session.lindi.tar session.compact.lindi.tar",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="IN")
    p.add_argument("dst", metavar="OUT")


def run(args: argparse.Namespace) -> int:
    for line in compact(args.src, args.dst):
        print(line)
    return 0


def compact(src: str, dst: str) -> list[str]:
    from lindifuse.archive.compact import compact as compact_archive

    try:
        return compact_archive(src, dst)
    except FileExistsError:
        raise SourceError(f"{dst}: already exists") from None
    except LindiError:
        raise
    except OSError as e:
        raise SourceError(f"{e.filename or src}: {e.strerror or e}") from None
