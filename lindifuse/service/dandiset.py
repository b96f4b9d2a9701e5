"""A dandiset mount put together: list the dandiset (through the listing cache), open the
same parts as any mount (``lindifuse.service.parts``) and build its
:class:`~lindifuse.fs.dandiset.DandisetFileSystem`."""

from __future__ import annotations

from typing import Any

from lindifuse.cache.disk import default_cache_dir
from lindifuse.cache.memory import MemoryCache
from lindifuse.errors import SourceError
from lindifuse.fs.dandiset import DandisetFileSystem
from lindifuse.fs.fetch import Fetcher
from lindifuse.service.parts import close_clients, hdf5_settings, http_client, open_disk_cache
from lindifuse.sources.dandiset import (
    DEFAULT_LINDI_TEMPLATE,
    ListingCache,
    api_host,
    api_root,
    index_url,
    list_dandiset,
    parse_target,
)
from lindifuse.sources.local import LocalFiles


async def build_dandiset_filesystem(opts: Any) -> Any:
    """List the dandiset ``opts.source`` names and build its file system (nothing is loaded
    beyond the listing). SourceError (one line) when the dandiset cannot be listed."""
    target = parse_target(opts.source)
    assert target is not None
    if getattr(opts, "xarray", False):
        raise SourceError(f"{opts.source}: --xarray is not supported for dandisets yet")
    api = api_root(getattr(opts, "dandi_api", None), target.instance)
    template: str | None = None
    if not getattr(opts, "no_lindi_index", False):
        template = getattr(opts, "lindi_url_template", None) or DEFAULT_LINDI_TEMPLATE
        index_url(template, target.dandiset, "draft", "0")  # a bad template fails now
    http = http_client(opts)
    host = api_host(api)
    if host not in http.dandi.hosts:
        http.dandi.hosts = (*http.dandi.hosts, host)
    local = LocalFiles()
    cache = MemoryCache(opts.memory_cache)
    disk = None
    try:
        lc = None
        if not getattr(opts, "no_cache", False):
            lc = ListingCache(getattr(opts, "cache_dir", None) or default_cache_dir())
        listing = await list_dandiset(target, api, http, lc)
        disk = await open_disk_cache(opts)
        fetcher = Fetcher(http, cache, disk)
        return DandisetFileSystem(
            listing,
            http,
            local,
            cache,
            fetcher=fetcher,
            disk=disk,
            readahead=getattr(opts, "readahead", True),
            template=template,
            listing_cache=lc,
            hdf5=hdf5_settings(opts),
        )
    except BaseException:
        await close_clients(http, local, disk)
        raise
