"""Command line: ``lindifuse mount|umount|info ...``.

Every failure the user can cause prints one line, ``lindifuse: <file>: <problem>``, and exits
non-zero; tracebacks are for bugs only (and go to the log with --log-level DEBUG).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import __version__

DESCRIPTION = """\
Mount a LINDI file (.lindi.json, .lindi.tar or .lindi.d) or an HDF5/NWB file (a local path or
an http(s) URL) as a directory tree of Zarr keys, so that zarr, xarray, ls, cp, du and any program
see an ordinary Zarr v2 directory. Reads resolve each key's reference to inline bytes, a member of
the archive, a local file or an HTTP range request, through a chunk cache. An HDF5 file is
indexed on its first mount (the same view lindi gives) and the index kept in the cache.
A whole DANDI dandiset (dandi://DANDISET[@VERSION][/folder], or its web page's URL) mounts as
its folders, with every NWB asset a Zarr directory loaded on first use."""

EPILOG = """\
examples:
  lindifuse mount session.lindi.tar /mnt/session
  lindifuse mount https://example.org/data/file.lindi.json /mnt/remote --read-only
  python -c 'import zarr; print(zarr.open_group("/mnt/session", mode="r", zarr_format=2).tree())'
  lindifuse umount /mnt/session
  lindifuse mount sub-01_ses-01.nwb /mnt/nwb          # HDF5/NWB directly, read-only
  lindifuse index sub-01_ses-01.nwb -o sub-01.lindi.json
  lindifuse info session.lindi.tar
  lindifuse mount dandi://000939 /mnt/000939          # a whole dandiset, NWB files as Zarr
  lindifuse info dandi://000939@0.240101.1234 --check-indexes
  lindifuse mount session.nwb.lindi.tar /mnt/nwb --xarray    # for xarray.open_datatree

exit status: 0 on success, 1 when the source, the mount point or the operation failed
(one line on stderr says which file and why), 2 on a usage error.

See docs/semantics.md for exactly which file operations work and how."""


def _mount_parser(sub: Any) -> None:
    p = sub.add_parser(
        "mount",
        help="mount SOURCE at MOUNTPOINT",
        description=(
            "Mount SOURCE at MOUNTPOINT. Without -f, return once the mount answers and keep the "
            "daemon running in the background, logging to --log-file. The kind of SOURCE is "
            "detected from its content. Remote sources, plain .lindi.json files and HDF5/NWB files "
            "are always "
            "mounted read-only."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="path or http(s) URL of a .lindi.json, .lindi.tar, .lindi.d or HDF5/NWB file, "
        "or a dandiset: dandi://DANDISET[@VERSION][/folder] or its web URL",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    p.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="stay in the foreground (log to stderr unless --log-file is given)",
    )
    p.add_argument(
        "-r",
        "--read-only",
        action="store_true",
        help="mount read-only: files 0444, directories 0555, every write gets EROFS",
    )
    p.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="FUSE mount options, e.g. allow_other (the mount is private to its owner otherwise)",
    )
    p.add_argument(
        "--log-file",
        metavar="FILE",
        help="log file (default in the background: $XDG_STATE_HOME/lindifuse/<mountpoint>.log)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity (default INFO)",
    )
    p.add_argument("--pid-file", metavar="FILE", help="write the daemon's PID to FILE once mounted")
    p.add_argument(
        "--memory-cache",
        type=_size,
        default="256M",
        metavar="SIZE",
        help="bytes of remote chunks kept in memory (default 256M; K, M, G suffixes)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="persistent chunk cache, shared by mounts (default $XDG_CACHE_HOME/lindifuse)",
    )
    p.add_argument(
        "--cache-size",
        type=_size,
        metavar="SIZE",
        help="bound of the persistent cache, least recently used chunks are evicted "
        "(default min(10G, 10%% of the free space))",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="no persistent cache: remote chunks are kept in memory only",
    )
    p.add_argument(
        "--no-readahead",
        action="store_true",
        help="do not prefetch the next chunks of an array that is read sequentially",
    )
    _dandi_options(p)
    p.add_argument(
        "--lindi-url-template",
        metavar="TEMPLATE",
        help="dandisets: URL of an NWB asset's LINDI index, with the fields {dandiset}, "
        "{version} and {asset_id} (default: the neurosift pattern "
        "https://lindi.neurosift.org/dandi/dandisets/{dandiset}/assets/{asset_id}/"
        "nwb.lindi.json); an asset without one (404) is indexed from its HDF5 file",
    )
    p.add_argument(
        "--no-lindi-index",
        action="store_true",
        help="dandisets: do not look for LINDI indexes; index every NWB asset from its HDF5 file",
    )
    p.add_argument(
        "--xarray",
        action="store_true",
        help="serve an xarray-ready view (read-only): every array's .zattrs gains "
        "_ARRAY_DIMENSIONS named from the NWB schema embedded in the file (<array>_dim_<i> "
        "where the schema says nothing), zero fill values become null, and lindi's "
        "JSON-encoded string, reference and compound arrays are served as strings or "
        "structured arrays that zarr 3 reads; see docs/semantics.md",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def _dandi_options(p: Any) -> None:
    p.add_argument(
        "--dandi-api",
        metavar="URL",
        help="dandisets: root of the DANDI API (default $LINDIFUSE_DANDI_API, else "
        "https://api.dandiarchive.org/api); its host also gets DANDI_API_KEY and has its asset "
        "download redirects resolved once",
    )


def _size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lindifuse",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lindifuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _mount_parser(sub)

    p = sub.add_parser(
        "umount",
        help="unmount and wait for the daemon to exit",
        description="Unmount MOUNTPOINT and wait until its daemon has exited "
        "(so every pending write has been committed).",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="lazy unmount (detach even if busy)")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the daemon to exit (default 120)",
    )

    p = sub.add_parser(
        "info",
        help="summarize a LINDI source",
        description="Print the kind of SOURCE, its keys, groups and arrays, the bytes "
        "stored inline, inside the container and externally, and the "
        "external URLs or files it references. For a dandiset (dandi://DANDISET[@VERSION]"
        "[/folder] or its web URL): the version chosen, the asset count and total size, "
        "and with --check-indexes which NWB assets have a LINDI index.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _dandi_options(p)
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

    p = sub.add_parser(
        "create",
        help="create a new .lindi.tar or .lindi.d",
        description="Create TARGET (a .lindi.tar, or a .lindi.d folder when the name ends in .d) "
        "holding an empty root group that lindi opens, or, with --from, the references of SOURCE "
        "(a local or remote lindi.json or .lindi.tar; the internal references of a remote tar "
        "become byte ranges of its URL). Mount TARGET to add data without copying SOURCE.",
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--from", dest="source", metavar="SOURCE", help="start from these references")

    p = sub.add_parser(
        "check",
        help="verify an archive (exit 1 with a list of problems)",
        description="Verify a .lindi.tar or .lindi.d: tar headers against the index, the entry "
        "and index self-references, lindi.json, and that every internal reference lies inside "
        "its member. Exits 0 when clean, 1 with one line per problem otherwise.",
    )
    p.add_argument("source", metavar="ARCHIVE")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed, then re-check")

    p = sub.add_parser(
        "compact",
        help="rewrite an archive without trashed or unreferenced members",
        description="Copy IN to OUT keeping only the members lindi.json references (trashed JSON "
        "members, spares, overwritten and deleted blobs are left out).",
    )
    p.add_argument("src", metavar="IN")
    p.add_argument("dst", metavar="OUT")

    from .indexcmd import add_parser as _index_parser

    _index_parser(sub, _size)

    from .cachecmd import add_parsers as _cache_parsers

    _cache_parsers(sub)
    return parser


def cmd_info(args: argparse.Namespace) -> int:
    import trio

    from .dandiset import parse_target

    if parse_target(args.source) is not None:
        from .dandiinfo import cmd_dandi_info

        return cmd_dandi_info(args)

    from .info import summarize

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from .errors import LindiError

    try:
        if args.command == "mount":
            from .mount import MountOptions, run_foreground, start_background

            opts = MountOptions(
                source=args.source if "://" in args.source else os.path.abspath(args.source),
                mountpoint=os.path.abspath(args.mountpoint),
                read_only=args.read_only or args.xarray,
                fuse_options=args.fuse_options,
                log_file=args.log_file,
                log_level=args.log_level,
                pid_file=args.pid_file,
                memory_cache=args.memory_cache,
                ready_fd=args.ready_fd,
                cache_dir=os.path.abspath(args.cache_dir) if args.cache_dir else None,
                cache_size=args.cache_size,
                no_cache=args.no_cache,
                readahead=not args.no_readahead,
                dandi_api=args.dandi_api,
                lindi_url_template=args.lindi_url_template,
                no_lindi_index=args.no_lindi_index,
                xarray=args.xarray,
            )
            if args.foreground:
                return run_foreground(opts)
            child_argv = [a for a in argv if a not in ("-f", "--foreground")]
            return start_background(opts, child_argv)
        if args.command == "umount":
            from .mount import umount

            return umount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "create":
            import trio

            from .admin import create

            print(trio.run(create, args.target, args.source))
            return 0
        if args.command == "check":
            from .admin import check

            problems, fixes = check(args.source, repair=args.repair)
            for f in fixes:
                print(f"fixed: {f}")
            for p in problems:
                print(f"{args.source}: {p}")
            if not problems:
                print(f"{args.source}: ok")
            return 1 if problems else 0
        if args.command == "compact":
            from .admin import compact

            for line in compact(args.src, args.dst):
                print(line)
            return 0
        if args.command == "index":
            from .indexcmd import cmd_index

            return cmd_index(args)
        if args.command == "stats":
            from .cachecmd import cmd_stats

            return cmd_stats(args)
        if args.command == "cache":
            from .cachecmd import cmd_cache

            return cmd_cache(args)
    except LindiError as e:
        print(f"lindifuse: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
