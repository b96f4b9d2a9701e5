"""``lindifuse cache info|clear|verify``: inspect, empty or check a persistent chunk cache
directory and the HDF5 indexes kept in it. Clearing is safe while mounts use the cache (they
refetch what they miss). ``verify`` rereads every entry: its stored checksum (size and CRC-32)
and, for the blocks of CAR sources (an entry that is exactly one CAR section), the block's hash
against its CID; entries that fail are removed."""

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
        "cache). verify: reread every entry and check it (its stored size and CRC-32; for a "
        "block of a CAR source, its hash against its CID); remove those that fail, and exit 1 "
        "if there were any.",
        epilog="examples:\n"
        "  lindifuse cache info\n"
        "  lindifuse cache verify\n"
        "  lindifuse cache clear --cache-dir /var/cache/lindifuse",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["info", "clear", "verify"])
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
        if args.action == "verify":
            print(f"{directory}: no cache here (nothing to verify)")
            return 0
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
            if args.action == "verify":
                return _verify(store, directory, args.json)
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


def _verify(store: Any, directory: str, as_json: bool) -> int:
    from lindifuse.formats.car.verify import check_section

    checked = blocks = mismatched = 0
    corrupt_before = store.stats.corrupt
    for key in store.entry_keys():
        data = store.get(key)  # checks size and CRC-32; drops a damaged entry
        if data is None:
            continue
        checked += 1
        ok = check_section(data)
        if ok is None:
            continue
        blocks += 1
        if not ok:
            mismatched += 1
            store.drop(key)
            print(f"lindifuse: {directory}: entry {key}: a CAR block that does not match its "
                  "CID; removed", file=sys.stderr)  # fmt: skip
    damaged = store.stats.corrupt - corrupt_before
    result = {
        "directory": directory,
        "entries_checked": checked,
        "car_blocks_verified": blocks,
        "car_block_mismatches": mismatched,
        "damaged_entries_removed": damaged,
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{directory}: {checked} entries read back; {blocks} CAR blocks hashed against "
            f"their CID, {mismatched} did not match; {damaged} damaged entries (size or "
            "checksum); failing entries removed"
        )
    return 1 if mismatched or damaged else 0
