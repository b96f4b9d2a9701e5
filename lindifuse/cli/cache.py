"""``lindifuse cache info|clear``: inspect or empty a persistent chunk cache directory and the
HDF5 indexes kept in it. Clearing is safe while mounts use the cache (they refetch what they
miss)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lindifuse.cli.stats import mib


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="inspect or clear the persistent chunk cache",
        description="info: entries, bytes and disk usage of the cache directory, and the HDF5 "
        "indexes kept there. clear: delete every entry and index (safe while mounts use the "
        "cache).",
        epilog="examples:\n"
        "  lindifuse cache info\n"
        "  lindifuse cache clear --cache-dir /var/cache/lindifuse",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument(
        "--cache-dir", metavar="DIR", help="cache directory (default $XDG_CACHE_HOME/lindifuse)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from lindifuse.cache.disk import FORMAT_DIR, DiskCache, default_cache_dir
    from lindifuse.formats.hdf5.load import IndexCache

    directory = os.path.abspath(args.cache_dir or default_cache_dir())
    indexes = IndexCache(directory)
    if args.action == "clear":
        n_ix, ix_bytes = indexes.clear()
        if n_ix and not args.json:
            print(f"{directory}: removed {n_ix} HDF5 indexes ({mib(ix_bytes)})")
    else:
        n_ix, ix_bytes = indexes.info()
    if not os.path.isdir(os.path.join(directory, FORMAT_DIR)):
        if args.action == "clear":
            if not n_ix:
                print(f"{directory}: no cache here (nothing to clear)")
            return 0
        info: dict[str, Any] = {
            "directory": directory,
            "entries": 0,
            "bytes": 0,
            "urls": 0,
            "files": 0,
            "disk_usage": 0,
        }
    else:
        try:
            store = DiskCache(directory, 0, register=False)
        except (OSError, sqlite3.Error) as e:
            print(f"lindifuse: {directory}: cannot open the cache: {e}", file=sys.stderr)
            return 1
        try:
            if args.action == "clear":
                n, nbytes = store.clear()
                if args.json:
                    print(json.dumps({"directory": directory, "entries": n, "bytes": nbytes}))
                else:
                    print(f"{directory}: removed {n} entries ({mib(nbytes)})")
                return 0
            info = store.info()
        finally:
            store.close()
    info["hdf5_indexes"] = n_ix
    info["hdf5_index_bytes"] = ix_bytes
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"directory:  {info['directory']}")
        print(f"entries:    {info['entries']} ({info['files']} in files, the rest inline)")
        print(f"bytes:      {info['bytes']} ({mib(info['bytes'])})")
        print(f"urls:       {info['urls']}")
        print(f"disk usage: {info['disk_usage']} ({mib(info['disk_usage'])})")
        print(f"HDF5 indexes: {n_ix} ({mib(ix_bytes)})")
    return 0
