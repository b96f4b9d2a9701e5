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
Mount a LINDI file (.lindi.json, .lindi.tar or .lindi.d; a local path or an http(s) URL) as a
directory tree of Zarr keys, so that zarr, xarray, ls, cp, du and any program see an ordinary
Zarr v2 directory. Reads resolve each key's reference to inline bytes, a member of the archive, a
local file or an HTTP range request, through a chunk cache."""

EPILOG = """\
examples:
  lindifuse mount session.lindi.tar /mnt/session
  lindifuse mount https://example.org/data/file.lindi.json /mnt/remote --read-only
  python -c 'import zarr; print(zarr.open_group("/mnt/session", mode="r", zarr_format=2).tree())'
  lindifuse umount /mnt/session
  lindifuse info session.lindi.tar

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
            "detected from its content. Remote sources and plain .lindi.json files are always "
            "mounted read-only."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="path or http(s) URL of a .lindi.json, .lindi.tar or .lindi.d",
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
        help="bound of the persistent cache, least recently used chunks are evicted; mounts "
        "sharing a directory keep it under the smallest bound among them "
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
    p.add_argument(
        "--offline",
        action="store_true",
        help="never use the network: remote ranges (and a remote SOURCE itself) are served "
        "from the persistent cache when an earlier mount cached them, everything else fails "
        "at once with EIO. Without it, ranges cached earlier are also served when the server "
        "fails (connection refused, DNS failure, timeout, 5xx after the retries); see "
        "docs/semantics.md",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="an attempt that makes no progress (no connection, no answer, no byte) for "
        "SECONDS fails; failed attempts are retried (at most 4 times, with backoff or as "
        "Retry-After asks, at most 30 s) only while SECONDS have not passed since the first "
        "attempt. A read from a server that accepts connections and never answers fails with "
        "EIO after about SECONDS (at most twice that); slow but steady transfers are not cut "
        "off (default 30)",
    )
    p.add_argument(
        "--allowed-hosts",
        metavar="HOST[,HOST...]",
        type=_hosts,
        action="extend",
        default=[],
        help="only these hosts may be reached, by references, redirects and the SOURCE itself: "
        "HOST, HOST:PORT or *.DOMAIN (its subdomains). A reference to another host fails with "
        "EIO, so a crafted file cannot make the daemon probe your network (default: any host)",
    )
    p.add_argument(
        "--no-local-refs",
        action="store_true",
        help="treat a local SOURCE like a remote one: its references may not read local "
        "files outside it (only URLs and ./ members of its own .lindi.tar or .lindi.d, or "
        "files in the folder of a plain .lindi.json). For files you did not make yourself",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def _size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _hosts(text: str) -> list[str]:
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    for h in hosts:
        if "/" in h or " " in h:
            raise argparse.ArgumentTypeError(f"not a host or host:port: {h!r}")
    return hosts


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
        "external URLs or files it references.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--json", action="store_true", help="machine-readable output")

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

    from .cachecmd import add_parsers as _cache_parsers

    _cache_parsers(sub)
    return parser


def cmd_info(args: argparse.Namespace) -> int:
    import trio

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
                read_only=args.read_only,
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
                offline=args.offline,
                timeout=args.timeout,
                allowed_hosts=args.allowed_hosts,
                no_local_refs=args.no_local_refs,
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
