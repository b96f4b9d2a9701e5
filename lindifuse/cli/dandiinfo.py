"""``lindifuse info dandi://...``: a dandiset version's size and, on request, its LINDI indexes.

The listing costs the paginated asset-list requests (or nothing, for a published version listed
before: the same cache as mounts). ``--check-indexes`` sends one HEAD request per NWB asset to
its LINDI index URL, at most ``--jobs`` at a time, with a progress line on a terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import trio

from lindifuse.errors import RefError
from lindifuse.progress import ProgressLine
from lindifuse.sources.dandiset import (
    DEFAULT_LINDI_TEMPLATE,
    Listing,
    ListingCache,
    api_host,
    api_root,
    index_url,
    list_dandiset,
    parse_target,
)
from lindifuse.sources.http import HttpClient


class _CheckProgress(ProgressLine):
    def text(self, done: int, total: int) -> str:  # type: ignore[override]
        return f"{self.label}: {done:,}/{total:,} NWB assets"


async def check_indexes(
    http: HttpClient, listing: Listing, template: str, jobs: int, progress: ProgressLine | None
) -> list[dict[str, Any]]:
    """For each NWB asset, whether its LINDI index exists: one HEAD each, ``jobs`` at a time.
    ``index`` is True (2xx), False (404/403/410) or None (another answer; ``error`` says)."""
    nwb = [a for a in listing.assets if a.kind == "nwb"]
    out: list[dict[str, Any]] = [{} for _ in nwb]
    limit = trio.CapacityLimiter(max(1, jobs))
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        a = nwb[i]
        url = index_url(template, listing.target.dandiset, listing.version, a.asset_id)
        row: dict[str, Any] = {"path": a.path, "asset_id": a.asset_id, "url": url}
        async with limit:
            try:
                status, _ = await http.get_doc(url, "HEAD")
            except RefError as e:
                row.update(index=None, error=str(e))
            else:
                if 200 <= status < 300:
                    row["index"] = True
                elif status in (403, 404, 410):
                    row["index"] = False
                else:
                    row.update(index=None, error=f"HTTP {status}")
        out[i] = row
        done += 1
        if progress is not None:
            progress.update(done, len(nwb))

    async with trio.open_nursery() as nursery:
        for i in range(len(nwb)):
            nursery.start_soon(one, i)
    return out


async def dandiset_summary(args: argparse.Namespace) -> dict[str, Any]:
    from lindifuse.cache.disk import default_cache_dir

    target = parse_target(args.source)
    assert target is not None
    api = api_root(args.dandi_api, target.instance)
    template = args.lindi_url_template or DEFAULT_LINDI_TEMPLATE
    if args.check_indexes:
        index_url(template, target.dandiset, "draft", "0")  # a bad template fails now
    http = HttpClient()
    host = api_host(api)
    if host not in http.dandi.hosts:
        http.dandi.hosts = (*http.dandi.hosts, host)
    try:
        listing = await list_dandiset(target, api, http, ListingCache(default_cache_dir()))
        kinds = {"nwb": 0, "file": 0, "zarr": 0}
        for a in listing.assets:
            kinds[a.kind] += 1
        summary: dict[str, Any] = {
            "source": args.source,
            "api": api,
            "dandiset": target.dandiset,
            "version": listing.version,
            "published": listing.published,
            "folder": target.path,
            "assets": len(listing.assets),
            "nwb_assets": kinds["nwb"],
            "other_assets": kinds["file"],
            "zarr_assets": kinds["zarr"],
            "total_size": listing.total_size,
            "listing_from_cache": listing.from_cache,
        }
        if args.check_indexes:
            line = _CheckProgress("checking LINDI indexes")
            try:
                rows = await check_indexes(http, listing, template, args.jobs, line)
            finally:
                line.close()
            summary["indexes"] = rows
            summary["with_index"] = sum(r.get("index") is True for r in rows)
            summary["without_index"] = sum(r.get("index") is False for r in rows)
            summary["index_errors"] = sum(r.get("index") is None for r in rows)
        return summary
    finally:
        await http.aclose()


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


def cmd_dandi_info(args: argparse.Namespace) -> int:
    # Retry warnings are not for the terminal: a failure ends as one line from the CLI.
    logging.getLogger().addHandler(logging.NullHandler())
    s = trio.run(dandiset_summary, args)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"dandiset:    {s['dandiset']}")
    print(f"version:     {s['version']} ({'published' if s['published'] else 'draft'})")
    if s["folder"]:
        print(f"folder:      {s['folder']}")
    print(f"api:         {s['api']}")
    print(
        f"assets:      {s['assets']} ({s['nwb_assets']} NWB, {s['other_assets']} other, "
        f"{s['zarr_assets']} Zarr: not mounted)"
    )
    print(f"total size:  {s['total_size']} bytes ({_human(s['total_size'])})")
    if "indexes" in s:
        print(
            f"LINDI index: {s['with_index']} with, {s['without_index']} without, "
            f"{s['index_errors']} unknown (of {s['nwb_assets']} NWB assets)"
        )
        for r in s["indexes"]:
            mark = {True: "index   ", False: "no index"}.get(r.get("index"), "error   ")
            tail = f"  ({r['error']})" if r.get("error") else ""
            print(f"  {mark}  {r['path']}{tail}")
    return 0
