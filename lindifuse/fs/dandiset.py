"""A dandiset mounted as one tree: folders as listed, NWB assets as lazily loaded Zarr views.

At mount, only the asset listing is read (``lindifuse.sources.dandiset``): every folder becomes a
directory, every ``.nwb`` asset an empty directory, every other asset a regular file whose bytes
are range requests to its download URL, and every Zarr asset is left out with a log line.

An NWB asset's directory is filled on its first ``lookup``/``readdir`` (``prepare_dir``): its
LINDI index is fetched from the URL template (one GET; kept in ``<cache dir>/dandi/``), and when
there is none (404), or it does not load, the HDF5 file itself is indexed through its download
URL (``hdf5.load.load_index``, kept in ``<cache dir>/indexes/``). The index's keys are grafted
under the asset's directory; the content layer resolves each key with its own asset's container
(templates, relative targets). Concurrent first lookups of one asset wait for one load; those of
different assets load in parallel. A load that fails makes that directory answer EIO (with one
log line) and is tried again after ``RETRY_AFTER`` seconds; the rest of the mount is unaffected.

An asset's content never changes (a changed file is a new asset), so its download URL's
validator is the asset's blob id and size: chunks go to the persistent cache without a probe
request and are found there again offline.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from lindifuse.cache.memory import MemoryCache
from lindifuse.errors import LindiError, RefError, SourceError
from lindifuse.formats.container import Container, Location, parse_json
from lindifuse.fs.content import ContentService, Resolved
from lindifuse.fs.fetch import Fetcher
from lindifuse.fs.filesystem import FileSystem
from lindifuse.fs.tree import Node, Tree
from lindifuse.refs import ReferenceSet
from lindifuse.sources.dandiset import (
    Asset,
    Listing,
    ListingCache,
    download_url,
    index_url,
    safe_parts,
)
from lindifuse.sources.http import HttpClient
from lindifuse.sources.local import LocalFiles

log = logging.getLogger(__name__)

RETRY_AFTER = 30.0  # seconds before a failed asset is tried again
_MISSING = object()


def _warm_imports() -> None:
    import numpy  # noqa: F401


def _parse_index(raw: bytes, where: str) -> ReferenceSet:
    return ReferenceSet.from_json(parse_json(raw, where), where)


class AssetView:
    """The state of one NWB asset's directory: not loaded, loading, loaded or failed."""

    __slots__ = ("asset", "node", "container", "how", "error", "failed_at", "loading")

    def __init__(self, asset: Asset, node: Node) -> None:
        self.asset = asset
        self.node = node
        self.container: Container | None = None
        self.how = ""  # "index" or "hdf5" once loaded
        self.error: str | None = None
        self.failed_at = 0.0
        self.loading: trio.Event | None = None


class DandisetContent(ContentService):
    """Resolves each key with the container of the asset it belongs to."""

    views: dict[int, AssetView]

    def container_of(self, node: Node) -> Container:
        n: Node | None = node
        views = self.views
        while n is not None:
            v = views.get(n.inode)
            if v is not None and v.container is not None:
                return v.container
            n = n.parent
        return self.container


def build_tree(assets: list[Asset], api: str) -> tuple[Tree, dict[int, AssetView], int]:
    """The mount's tree from the listing: NWB assets as (empty) directories with their view,
    other assets as files already resolved to their download URL. Returns (tree, views,
    skipped); Zarr assets and paths that cannot be shown are skipped with a log line."""
    tree = Tree()
    views: dict[int, AssetView] = {}
    skipped = 0
    for a in assets:
        parts = safe_parts(a.path)
        if parts is None:
            log.warning("asset %s: path %r skipped (empty, '.' or '..' parts)", a.asset_id, a.path)
            skipped += 1
            continue
        if a.kind == "zarr":
            log.info("%s: Zarr asset skipped (Zarr assets are not supported yet)", a.path)
            skipped += 1
            continue
        parent = tree.ensure_dir("/".join(parts[:-1]))
        anc = parent
        while anc is not None and anc.inode not in views:
            anc = anc.parent
        name = parts[-1]
        if parent is None or anc is not None or name in parent.children:  # type: ignore[operator]
            log.warning("%s: asset %s skipped (its path clashes with another)", a.path, a.asset_id)
            skipped += 1
            continue
        if a.kind == "nwb":
            node = tree.add_dir(parent, name)
            views[node.inode] = AssetView(a, node)
        else:
            node = tree.add_file(parent, name)
            loc = Location(download_url(api, a.asset_id), True)
            node.extra = Resolved(None, loc, 0, a.size, a.size)
            node.size = a.size
    return tree, views, skipped


class DandisetFileSystem(FileSystem):
    """A dandiset mount: the listing's tree, NWB asset directories loaded on first use."""

    content_class = DandisetContent

    def __init__(
        self,
        listing: Listing,
        http: HttpClient,
        local: LocalFiles,
        cache: MemoryCache,
        *,
        fetcher: Fetcher,
        disk: Any,
        readahead: bool,
        template: str | None,
        listing_cache: ListingCache | None,
        hdf5: Any,
    ) -> None:
        t0 = time.monotonic()
        tree, views, skipped = build_tree(listing.assets, listing.api)
        root = Container(
            "dandiset",
            listing.target.describe(),
            True,
            ReferenceSet({}, {}, [], {}),
            time.time(),
            0,
        )
        self.listing = listing
        self.views = views
        self.views_by_path = {v.node.key: v for v in views.values()}
        self.template = template
        self.listing_cache = listing_cache
        self.hdf5 = hdf5
        self.skipped = skipped
        super().__init__(
            root,
            http,
            local,
            cache,
            read_only=True,
            fetcher=fetcher,
            disk=disk,
            readahead=readahead,
            tree=tree,
        )
        self.content.views = views  # type: ignore[attr-defined]
        self.ops.prepare_dir = self.prepare_dir
        for a in self.listing.assets:
            if a.kind == "file":
                self._seed(a)
        log.info(
            "dandiset %s version %s%s: %d assets (%d NWB), %d bytes; listed in %.2fs (%s)",
            self.listing.target.dandiset,
            self.listing.version,
            f" folder {self.listing.target.path}" if self.listing.target.path else "",
            len(self.listing.assets),
            len(views),
            self.listing.total_size,
            time.monotonic() - t0,
            "from the cache"
            if self.listing.from_cache
            else f"{self.listing.requests} API requests",
        )

    def _seed(self, a: Asset) -> str:
        """Tell the HTTP client the asset's size and version (no probe request needed)."""
        url = download_url(self.listing.api, a.asset_id)
        if url not in self.http.pinned:
            self.http.pin(url, a.validator, a.size)
        return url

    # -- keys of grafted views -------------------------------------------------------

    def _view_of_key(self, key: str) -> AssetView | None:
        low = key.lower()
        i = low.find(".nwb/")
        while i >= 0:
            v = self.views_by_path.get(key[: i + 4])
            if v is not None:
                return v
            i = low.find(".nwb/", i + 1)
        return None

    def _value(self, key: str) -> Any:
        v = self._view_of_key(key)
        if v is not None and v.container is not None:
            value = v.container.rset.refs.get(key[len(v.node.key) + 1 :], _MISSING)
            if value is not _MISSING:
                return value
        return self.ext_refs[key]

    # -- lazy loading ----------------------------------------------------------------

    async def prepare_dir(self, node: Node) -> None:
        view = self.views.get(node.inode)
        if view is not None and view.container is None:
            await self._ensure_view(view)
        if node.inode in self.ext_links:
            await super().prepare_dir(node)

    async def _ensure_view(self, view: AssetView) -> None:
        while view.container is None:
            if view.loading is not None:
                await view.loading.wait()
                if view.container is None and view.error:
                    raise RefError(view.error)
                continue
            if view.error and time.monotonic() - view.failed_at < RETRY_AFTER:
                raise RefError(view.error)
            view.loading = trio.Event()
            try:
                await self._load_view(view)
            finally:
                view.loading.set()
                view.loading = None

    async def _load_view(self, view: AssetView) -> None:
        a = view.asset
        t0 = time.monotonic()
        try:
            container, how = await self._open_asset(a)
        except LindiError as e:
            view.error = f"{a.path}: {e}"
        except Exception as e:  # h5py and friends raise many kinds
            view.error = f"{a.path}: cannot load: {type(e).__name__}: {e}"
        else:
            conflicts = self.tree.graft(view.node, container.rset.refs.keys())
            view.container, view.how, view.error = container, how, None
            for key in container.rset.rejected:
                log.warning("%s: key %r rejected (empty, '.' or '..' parts)", a.path, key)
            for key in conflicts:
                log.warning("%s: key %r is also a directory prefix", a.path, key)
            self.ext_links.update(self._find_external_links(container.rset.refs, view.node.key))
            log.info(
                "%s: %d keys from %s in %.2fs",
                a.path,
                len(container.rset.refs),
                "its LINDI index" if how == "index" else "the HDF5 file",
                time.monotonic() - t0,
            )
            return
        view.failed_at = time.monotonic()
        log.error("%s", view.error)
        raise RefError(view.error)

    def _asset_key(self, a: Asset) -> str:
        return f"{self.listing.api}\n{a.asset_id}\n{self.template or ''}"

    async def _open_asset(self, a: Asset) -> tuple[Container, str]:
        """The asset's container: its LINDI index, else its HDF5 file indexed."""
        url = self._seed(a)
        lc = self.listing_cache
        known = lc.get_asset(self._asset_key(a)) if lc is not None else None
        if self.template is not None and (known is None or known.get("view") == "index"):
            iurl = index_url(
                self.template, self.listing.target.dandiset, self.listing.version, a.asset_id
            )
            container = await self._open_index(a, iurl)
            if container is not None:
                if lc is not None and self.listing.published and known is None:
                    lc.put_asset(self._asset_key(a), {"view": "index"})
                return container, "index"
        container = await self._open_hdf5(a, url)
        if lc is not None and self.listing.published and known is None:
            lc.put_asset(self._asset_key(a), {"view": "hdf5"})
        return container, "hdf5"

    async def _open_index(self, a: Asset, iurl: str) -> Container | None:
        """The LINDI index at ``iurl`` as a container, None (and a log line) when there is
        none or it does not load: the caller then indexes the HDF5 file."""
        lc = self.listing_cache
        raw = await trio.to_thread.run_sync(lc.get_index, iurl) if lc is not None else None
        fresh = raw is None
        if raw is None:
            try:
                status, body = await self.http.get_doc(iurl)
            except RefError as e:
                log.warning("%s: LINDI index unreachable (%s): indexing the HDF5 file", a.path, e)
                return None
            if status != 200:
                log.info(
                    "%s: no LINDI index at %s (HTTP %d): indexing the HDF5 file",
                    a.path,
                    iurl,
                    status,
                )
                return None
            raw = body
        try:
            if not raw.lstrip().startswith(b"{"):
                raise SourceError(f"{iurl}: not a LINDI JSON index")
            # Off the trio thread: an index can be tens of megabytes, and every other request
            # of the mount waits while the loop is busy.
            rset = await trio.to_thread.run_sync(_parse_index, raw, iurl)
        except LindiError as e:
            log.warning("%s: LINDI index unusable (%s): indexing the HDF5 file", a.path, e)
            return None
        if fresh and lc is not None:
            await trio.to_thread.run_sync(lc.put_index, iurl, raw)
        return Container("json", iurl, True, rset, time.time(), len(raw))

    async def _open_hdf5(self, a: Asset, url: str) -> Container:
        from lindifuse.formats.hdf5.load import load_index

        loaded = await load_index(
            url,
            remote=True,
            size=a.size,
            read=self.fetcher.get,
            validator=a.validator,
            options=self.hdf5.options,
            cache=self.hdf5.cache,
        )
        rset = await trio.to_thread.run_sync(ReferenceSet.from_json, loaded.rfs, url)
        if loaded.result is not None:
            for w in loaded.result.warnings:
                log.warning("%s: %s", a.path, w)
        # Not kept: loaded.rfs (the same refs again); memory grows with assets opened.
        return Container("hdf5", url, True, rset, time.time(), 0, total_size=a.size)

    async def background(self) -> None:
        """As every mount, plus: import numpy (the chunk padding rule needs it on the first
        read of any array) in a worker thread right after mounting, while the user is still
        listing folders, instead of during the first read."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, _warm_imports)
            await super().background()

    # -- reporting -------------------------------------------------------------------

    def describe(self) -> str:
        return (
            f"dandiset {self.listing.target.dandiset} version {self.listing.version}, "
            f"{len(self.listing.assets)} assets, ro"
        )

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        loaded = [v for v in self.views.values() if v.container is not None]
        out["dandiset"] = {
            "dandiset": self.listing.target.dandiset,
            "version": self.listing.version,
            "published": self.listing.published,
            "folder": self.listing.target.path,
            "assets": len(self.listing.assets),
            "nwb_assets": len(self.views),
            "skipped": self.skipped,
            "listing_from_cache": self.listing.from_cache,
            "listing_requests": self.listing.requests,
            "loaded": len(loaded),
            "from_index": sum(v.how == "index" for v in loaded),
            "from_hdf5": sum(v.how == "hdf5" for v in loaded),
            "failed": sum(v.container is None and v.error is not None for v in self.views.values()),
            "keys": self.tree.nfiles,
        }
        return out
