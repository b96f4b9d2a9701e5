"""``lindifuse mount SOURCE MOUNTPOINT``: the options, and the hand-over to the daemon's life
cycle (``lindifuse.service.mount``): in the foreground, or as a detached daemon that this
process waits for until the mount answers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from lindifuse.cli import args as args_types

MOUNT_EPILOG = """\
-o options (comma-separated, repeatable; the spelling fstab and mount(8) use):
  every long option above without its dashes, '-' as '_': ro, rw, foreground, cache_dir=DIR,
  cache_size=SIZE, no_cache, allow_remote_cache, no_readahead, memory_cache=SIZE, log_file=FILE,
  log_level=LEVEL, pid_file=FILE, uid=UID, gid=GID, umask=MASK; the FUSE options allow_other, allow_root,
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
  lindifuse mount store.car /mnt/store                  # a CAR of a Zarr store (verified blocks)
  lindifuse mount https://example.org/store.car /mnt/store -o root=bafy...

  fstab:  /data/session.lindi.tar  /mnt/session  fuse.lindifuse  ro,allow_other,nofail  0 0"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "mount",
        help="mount SOURCE at MOUNTPOINT",
        description=(
            "Mount SOURCE at MOUNTPOINT. Without -f, return once the mount answers and keep the "
            "daemon running in the background, logging to --log-file. The kind of SOURCE is "
            "detected from its content. Remote sources, plain .lindi.json files, HDF5/NWB "
            "files and CAR archives are always mounted read-only; a local .lindi.tar or .lindi.d is writable "
            "unless --read-only. The daemon stops cleanly, committing pending writes, on SIGTERM "
            "or SIGINT; SIGHUP reopens its log file."
        ),
        epilog=MOUNT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="path or http(s) URL of a .lindi.json, .lindi.tar, .lindi.d, HDF5/NWB file or "
        "CAR archive (CARv1/CARv2 of an ipldstore or UnixFS Zarr store; every block is verified "
        "against its CID), or a dandiset: dandi://DANDISET[@VERSION][/folder] or its web URL",
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
        type=args_types.owner_id("user"),
        metavar="UID",
        help="show files as owned by this user (number or name; default: the daemon's user)",
    )
    p.add_argument(
        "--gid",
        type=args_types.owner_id("group"),
        metavar="GID",
        help="show files as owned by this group (number or name; default: the daemon's group)",
    )
    p.add_argument(
        "--umask",
        type=args_types.octal,
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
        type=args_types.size,
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
        type=args_types.size,
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
        "--allow-remote-cache",
        action="store_true",
        help="use a --cache-dir on a network file system (NFS, CIFS/SMB, Lustre, GPFS, BeeGFS, "
        "CephFS, AFS, 9p, or a network FUSE file system such as sshfs or s3fs) anyway. Without "
        "it such a cache directory is refused: the cache is SQLite in WAL mode, whose locking "
        "and shared memory work only within one machine, so two nodes sharing it can corrupt "
        "it or hang. On a cluster give each node a cache on its local disk",
    )
    p.add_argument(
        "--no-readahead",
        action="store_true",
        help="do not prefetch the next chunks of an array that is read sequentially",
    )
    args_types.dandi_options(p)
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
        type=args_types.seconds,
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
        type=args_types.hosts,
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
    p.add_argument(
        "--root",
        metavar="CID",
        help="for a CAR SOURCE: mount the DAG under this root CID (bafy..., Qm...) instead of "
        "the first root the CAR header names (a CAR with several roots mounts the first and "
        "says so in the log). The block must be in the archive",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace) -> int:
    """Mount as ``args`` says: in this process with ``-f``, else in a forked daemon."""
    from lindifuse.service.mount import MountOptions, run_foreground, start_background

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
        allow_remote_cache=args.allow_remote_cache,
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
        root=args.root,
    )
    if args.foreground:
        return run_foreground(opts)
    status = start_background(opts)
    if status == 0:
        # The mount answers and the daemon runs on its own: nothing of this process is left to
        # tear down but the interpreter, whose finalization costs 10-15 ms of every mount.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return status
