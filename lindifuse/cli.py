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
  lindifuse session.lindi.tar /mnt/session -o ro,allow_other   # the form fstab uses
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


MOUNT_EPILOG = """\
-o options (comma-separated, repeatable; the spelling fstab and mount(8) use):
  every long option above without its dashes, '-' as '_': ro, rw, foreground, cache_dir=DIR,
  cache_size=SIZE, no_cache, no_readahead, memory_cache=SIZE, log_file=FILE, log_level=LEVEL,
  pid_file=FILE, uid=UID, gid=GID, umask=MASK; the FUSE options allow_other, allow_root,
  default_permissions (always on), auto_unmount and the flags nosuid, nodev, noexec, noatime,
  sync; ignored like sshfs does: defaults, auto, noauto, user, users, nofail, _netdev, x-systemd.*,
  x-gvfs-* and other x-* options. Anything else is an error.

examples:
  lindifuse mount session.lindi.tar /mnt/session
  lindifuse mount -r https://example.org/data/file.lindi.json /mnt/remote
  lindifuse mount session.lindi.tar /mnt/session -o ro,allow_other,cache_size=2G
  lindifuse session.lindi.tar /mnt/session -o ro          # the form mount.fuse3 runs
  mount -t fuse.lindifuse /data/session.lindi.tar /mnt/session -o ro
  lindifuse mount -f session.lindi.tar /mnt/session --log-level DEBUG   # foreground, log to stderr

  fstab:  /data/session.lindi.tar  /mnt/session  fuse.lindifuse  ro,allow_other,nofail  0 0"""


def _mount_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "mount",
        help="mount SOURCE at MOUNTPOINT",
        description=(
            "Mount SOURCE at MOUNTPOINT. Without -f, return once the mount answers and keep the "
            "daemon running in the background, logging to --log-file. The kind of SOURCE is "
            "detected from its content. Remote sources, plain .lindi.json files and HDF5/NWB "
            "files are always mounted read-only; a local .lindi.tar or .lindi.d is writable "
            "unless --read-only. The daemon stops cleanly, committing pending writes, on SIGTERM "
            "or SIGINT; SIGHUP reopens its log file."
        ),
        epilog=MOUNT_EPILOG,
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
        help="mount options, see below; e.g. allow_other (the mount is private to its owner "
        "otherwise)",
    )
    p.add_argument(
        "--uid",
        type=_owner_id("user"),
        metavar="UID",
        help="show files as owned by this user (number or name; default: the daemon's user)",
    )
    p.add_argument(
        "--gid",
        type=_owner_id("group"),
        metavar="GID",
        help="show files as owned by this group (number or name; default: the daemon's group)",
    )
    p.add_argument(
        "--umask",
        type=_octal,
        metavar="MASK",
        help="octal bits to clear from the modes (default 0755/0644, read-only 0555/0444)",
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
    return p


def _owner_id(kind: str) -> Any:
    """argparse type: a number, or a user/group name looked up in the system's database."""

    def convert(text: str) -> int:
        if text.isdigit():
            return int(text)
        import grp
        import pwd

        try:
            return pwd.getpwnam(text).pw_uid if kind == "user" else grp.getgrnam(text).gr_gid
        except KeyError:
            raise argparse.ArgumentTypeError(f"no such {kind}: {text!r}") from None

    convert.__name__ = kind
    return convert


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mask: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"mask out of range: {text!r}")
    return value


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
        "(so every pending write has been committed). A writable mount first commits "
        "durably; if that fails, the mount stays and the exit status is 1. A busy mount (a "
        "process has a file open or its working directory inside) is not unmounted: the "
        "processes are named and the exit status is 1; --lazy detaches it at once and the "
        "daemon exits when the last file is closed. Ordinary users unmount through fusermount3.",
        epilog="examples:\n"
        "  lindifuse umount /mnt/session\n"
        "  lindifuse umount --lazy /mnt/session      # busy: detach now, finish later\n"
        "  umount /mnt/session                       # root: the same through umount(8)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        epilog="examples:\n"
        "  lindifuse info session.lindi.tar\n"
        "  lindifuse info https://example.org/data/file.lindi.json --json\n"
        "  lindifuse info dandi://000939 --check-indexes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        epilog="examples:\n"
        "  lindifuse create new.lindi.tar                 # empty root group\n"
        "  lindifuse create notes.lindi.d                 # a folder archive\n"
        "  lindifuse create amended.lindi.tar --from https://example.org/sub-01.nwb.lindi.tar",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--from", dest="source", metavar="SOURCE", help="start from these references")

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

    from .indexcmd import add_parser as _index_parser

    _index_parser(sub, _size)

    from .cachecmd import add_parsers as _cache_parsers

    _cache_parsers(sub)
    return parser


def command_names(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """The subcommands the parser knows (taken from it, so a new command is never mistaken for
    the SOURCE of the command-less mount form)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return tuple(action.choices)
    return ()


def mount_option_table(parser: argparse.ArgumentParser) -> Any:
    """The ``-o`` names of ``lindifuse mount``: one per long option (hidden ones excluded)."""
    from .mountopts import OptionTable

    mount = next(
        a.choices["mount"] for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    long_options: dict[str, bool] = {}
    hidden: set[str] = set()
    for action in mount._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                long_options[opt] = action.nargs != 0
                if action.help == argparse.SUPPRESS:
                    hidden.add(opt)
    return OptionTable.from_long_options(long_options, frozenset(hidden))


def normalize_argv(
    argv: list[str], prog: str, commands: tuple[str, ...] | None = None
) -> tuple[list[str], bool]:
    """Turn the mount(8)/mount.fuse3 forms into ``mount ...``; returns (argv, fake).

    ``mount.lindifuse SOURCE DIR [-sfnv] [-o OPTS]`` (prog named ``mount.*``, as mount(8) runs
    helpers: ``-f`` means fake there) and ``lindifuse SOURCE DIR [-o OPTS] [-f]`` (no command,
    as mount.fuse3 runs it; ``-f`` is foreground, like sshfs) both become ``mount SOURCE DIR``.
    Raises mountopts.MountOptionError on a bad helper call.
    """
    from .mountopts import parse_helper_argv

    if prog.startswith("mount."):
        call = parse_helper_argv(argv)
        return ["mount", *call.argv], call.fake
    if commands is None:
        commands = command_names(build_parser())
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help", "--version"):
        return ["mount", *argv], False
    return argv, False


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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    if prog is None:
        prog = os.path.basename(sys.argv[0]) if argv is None else "lindifuse"
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    fake = False
    from .mountopts import MountOptionError, expand_argv

    try:
        argv, fake = normalize_argv(argv, prog, command_names(parser))
        if argv[:1] == ["mount"]:
            argv = ["mount", *expand_argv(argv[1:], mount_option_table(parser))]
    except MountOptionError as e:
        print(f"lindifuse: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if fake:  # mount -f: check the arguments, mount nothing
        return 0
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
                uid=args.uid,
                gid=args.gid,
                umask=args.umask,
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
