"""``lindifuse stats MOUNTPOINT``: the live counters of a mount.

They are read through the mount's control channel, the root extended attribute
``user.lindifuse.stats`` (JSON written by the daemon on each read of it); nothing is parsed from
logs.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Any

XATTR_STATS = "user.lindifuse.stats"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "stats",
        help="show the request and cache counters of a live mount",
        description="Print the HTTP requests, bytes fetched, memory and disk cache hits and "
        "misses, merged requests, read-ahead, retries, errors and request latency percentiles "
        "of the mount at MOUNTPOINT (read from its user.lindifuse.stats attribute).",
        epilog="examples:\n  lindifuse stats /mnt/session\n  lindifuse stats --json /mnt/session",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="the raw counters as JSON")


def mib(n: int | float | None) -> str:
    if n is None:
        return "-"
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    if n < 2**30:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**30:.2f} GiB"


def read_stats(mountpoint: str) -> dict[str, Any]:
    """The counters of the mount at ``mountpoint``; OSError when it is not a lindifuse mount."""
    return json.loads(os.getxattr(mountpoint, XATTR_STATS))


def format_stats(s: dict[str, Any]) -> str:
    h = s.get("http", {})
    lat = h.get("latency_ms", {})
    m = s.get("memory_cache", {})
    d = s.get("disk_cache", {})
    f = s.get("fetch", {})
    dandi = s.get("dandi", {})
    lines = [
        f"source:       {s.get('source')} ({s.get('kind')})",
        f"requests:     {h.get('requests', 0)}  bytes fetched {mib(h.get('bytes', 0))}  "
        f"retries {h.get('retries', 0)}  errors {h.get('errors', 0)}  "
        f"version probes {f.get('probes', 0)}",
        "latency:      "
        + "  ".join(
            f"{k} {lat[k]:.1f} ms" if lat.get(k) is not None else f"{k} -"
            for k in ("p50", "p90", "p99")
        ),
        f"memory cache: hits {m.get('hits', 0)}  misses {m.get('misses', 0)}  "
        f"shared {m.get('shared', 0)}  evictions {m.get('evictions', 0)}  "
        f"holding {mib(m.get('bytes'))} of {mib(m.get('max_bytes'))}",
    ]
    if d.get("enabled"):
        lines.append(
            f"disk cache:   hits {d.get('hits', 0)}  misses {d.get('misses', 0)}  "
            f"corrupt {d.get('corrupt', 0)}  writes {d.get('writes', 0)} "
            f"({mib(d.get('bytes_written', 0))})  evictions {d.get('evictions', 0)}  "
            f"errors {d.get('errors', 0)}  [{d.get('directory')}, max {mib(d.get('max_bytes'))}]"
            + (f"  DISABLED: {d['broken']}" if d.get("broken") else "")
        )
    else:
        lines.append("disk cache:   off")
    lines.append(
        f"merging:      {f.get('requests', 0)} data requests for {f.get('ranges', 0)} ranges; "
        f"{f.get('merged_requests', 0)} merged requests served {f.get('merged_ranges', 0)} "
        f"ranges (+{mib(f.get('gap_bytes', 0))} of gaps)"
    )
    if f.get("readahead", True):
        lines.append(
            f"read-ahead:   {f.get('readahead_windows', 0)} windows  "
            f"{f.get('readahead_requests', 0)} requests  "
            f"{f.get('readahead_chunks', 0)} chunks fetched ({mib(f.get('readahead_bytes', 0))})"
            f"  {f.get('readahead_disk_chunks', 0)} loaded from disk  "
            f"{f.get('readahead_cancelled', 0)} cancelled"
        )
    else:
        lines.append("read-ahead:   off")
    if f.get("local_nowait_reads") or s.get("file_range_replies"):
        lines.append(
            f"local reads:  {f.get('local_nowait_reads', 0)} from the page cache without a "
            f"thread  {s.get('file_range_replies', 0)} replied from the source's descriptor "
            f"({s.get('file_range_thread_replies', 0)} from a worker thread)"
        )
    if f.get("blocks_verified") or f.get("block_mismatches"):
        lines.append(
            f"verified:     {f.get('blocks_verified', 0)} blocks "
            f"({mib(f.get('verified_bytes', 0))}) hashed against their CID  "
            f"{f.get('block_mismatches', 0)} did not match (EIO, never cached)"
        )
    if f.get("chunks_verified") or f.get("chunk_mismatches"):
        lines.append(
            f"verified:     {f.get('chunks_verified', 0)} chunks checked against the sha256 of "
            f"their index  {f.get('chunk_mismatches', 0)} did not match (EIO, never cached)"
        )
    if h.get("offline") or f.get("stale_urls") or h.get("version_changes"):
        lines.append(
            f"degraded:     {'OFFLINE  ' if h.get('offline') else ''}"
            f"{f.get('stale_served', 0)} ranges of {f.get('stale_urls', 0)} URLs served from "
            f"the cache while the origin failed  {h.get('version_changes', 0)} responses "
            "refused (object changed on the server)"
        )
    if any(dandi.values()):
        lines.append(
            f"dandi:        {dandi.get('resolutions', 0)} resolutions  "
            f"{dandi.get('reuses', 0)} reuses  {dandi.get('expired', 0)} expired  "
            f"{dandi.get('forbidden', 0)} re-resolved after 403"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        stats = read_stats(args.mountpoint)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, getattr(errno, "ENOATTR", errno.ENODATA)):
            why = "not a mounted lindifuse file system"
        else:
            why = e.strerror or str(e)
        print(f"lindifuse: {args.mountpoint}: {why}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0
