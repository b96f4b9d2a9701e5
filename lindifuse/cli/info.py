"""``lindifuse info SOURCE``: what a LINDI or HDF5 source holds and where its bytes live
(``lindifuse.formats.summary``); for a dandiset, its version, size and indexes
(``lindifuse.cli.dandiinfo``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lindifuse.cli.args import dandi_options


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="summarize a LINDI source",
        description="Print the kind of SOURCE, its keys, groups and arrays, the bytes "
        "stored inline, inside the container and externally, and the "
        "external URLs or files it references. For a dandiset (dandi://DANDISET[@VERSION]"
        "[/folder] or its web URL): the version chosen, the asset count and total size, "
        "and with --check-indexes which NWB assets have a LINDI index.",
        epilog="examples:\n"
        "  lindifuse info session.lindi.tar\n"
        "  lindifuse info https://example.org/data/file.lindi.json --json\n"
        "  lindifuse info dandi://000939 --check-indexes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    dandi_options(p)
    p.add_argument(
        "--check-indexes",
        action="store_true",
        help="dandisets: ask, with one HEAD request per NWB asset, whether its LINDI index "
        "exists (--lindi-url-template), and list the answer for each",
    )
    p.add_argument("--lindi-url-template", metavar="TEMPLATE", help="dandisets: as for mount")
    p.add_argument(
        "--jobs",
        type=int,
        default=8,
        metavar="N",
        help="dandisets: HEAD requests in flight at once with --check-indexes (default 8)",
    )


def run(args: argparse.Namespace) -> int:
    import trio

    from lindifuse.sources.dandiset import parse_target

    if parse_target(args.source) is not None:
        from lindifuse.cli.dandiinfo import cmd_dandi_info

        return cmd_dandi_info(args)

    from lindifuse.formats.summary import summarize

    summary = trio.run(summarize, args.source)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"source:      {summary['source']}")
    print(f"kind:        {summary['kind']}{' (remote)' if summary['remote'] else ''}")
    print(f"keys:        {summary['keys']}")
    print(f"groups:      {summary['groups']}")
    print(f"arrays:      {summary['arrays']}")
    b = summary["bytes"]
    print(
        f"bytes:       inline {b['inline']}, in container {b['container']}, external {b['external']}"
    )
    if summary["external"]:
        print("external references:")
        for e in summary["external"]:
            print(f"  {e['target']}  ({e['refs']} refs, {e['bytes']} bytes)")
    for k in summary["rejected_keys"]:
        print(f"warning: rejected key {k!r}")
    for w in summary.get("left_out", []):
        print(f"warning: {w}")
    return 0
