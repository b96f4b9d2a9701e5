"""A DANDI dandiset as a SOURCE: parse its name, choose the version, list its assets.

``dandi://DANDISET[@VERSION][/sub/folder]`` (``DANDISET`` may be prefixed by an instance name,
``dandi://dandi/000939``, as dandi-cli writes it) and the archive's web URL of a dandiset
(``https://<archive>/dandiset/000939[/VERSION][/files?location=sub/folder]``) name one version of
one dandiset, or a folder of it. Without a version, the most recent published version is taken,
else the draft.

The archive's REST API is reached at the API root (``--dandi-api``, else ``LINDIFUSE_DANDI_API``,
else ``DEFAULT_API``):

- ``GET {api}/dandisets/{id}/`` -> the dandiset, its ``most_recent_published_version`` and
  ``draft_version``;
- ``GET {api}/dandisets/{id}/versions/{version}/info/`` -> one version (``asset_count``,
  ``size``, ``status``);
- ``GET {api}/dandisets/{id}/versions/{version}/assets/?order=path&metadata=false&page_size=N``
  -> pages of ``{asset_id, blob, zarr, path, size, ...}`` linked by ``next``;
- ``{api}/assets/{asset_id}/download/`` redirects to the asset's bytes.

A published version never changes, so its listing is kept in ``<cache dir>/dandi/`` and a second
mount needs no request at all; a draft is listed again at every mount.

Everything above the ``DandiApi`` class is pure (unit-tested without a network).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from lindifuse.errors import RefError, SourceError

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.dandiarchive.org/api"
API_ENV = "LINDIFUSE_DANDI_API"
DEFAULT_LINDI_TEMPLATE = (
    "https://lindi.neurosift.org/dandi/dandisets/{dandiset}/assets/{asset_id}/nwb.lindi.json"
)
PAGE_SIZE = 1000  # the archive's largest page
NWB_SUFFIX = ".nwb"
LISTING_FORMAT = 1

_DANDI_RE = re.compile(r"^dandi://(?:(?P<inst>[A-Za-z][\w.-]*)/)?(?P<id>\d{6})(?P<rest>.*)$")
_WEB_RE = re.compile(r"^/(?:#/)?dandiset/(?P<id>\d{6})(?:/(?P<ver>[^/?#]+))?(?:/files)?/?$")
_VERSION_RE = re.compile(r"^(draft|\d+\.\d+\.\d+)$")


@dataclass(frozen=True)
class DandiTarget:
    """What a dandi SOURCE names: a dandiset, maybe a version, maybe a folder (no slashes at
    either end; '' for the whole dandiset)."""

    dandiset: str
    version: str | None = None
    path: str = ""
    instance: str | None = None  # dandi-cli's instance name in dandi://INSTANCE/DANDISET

    def describe(self) -> str:
        v = f"@{self.version}" if self.version else ""
        p = f"/{self.path}" if self.path else ""
        return f"dandi://{self.dandiset}{v}{p}"


def _clean_path(path: str, source: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise SourceError(f"{source}: '.' and '..' are not allowed in a dandiset path")
    return "/".join(parts)


def _check_version(version: str, source: str) -> str:
    if not _VERSION_RE.match(version):
        raise SourceError(
            f"{source}: bad version {version!r} (expected 'draft' or a published version "
            "such as 0.230101.1234)"
        )
    return version


def parse_target(source: str) -> DandiTarget | None:
    """The dandiset SOURCE names, None when SOURCE is not a dandiset at all (a plain file or
    URL); SourceError when it is one but malformed."""
    if source.startswith("dandi://"):
        m = _DANDI_RE.match(source)
        if m is None:
            raise SourceError(
                f"{source}: not a dandiset (expected dandi://DANDISET[@VERSION][/path] with a "
                "six-digit DANDISET)"
            )
        rest = m.group("rest")
        version = None
        if rest.startswith("@"):
            version, _, rest = rest[1:].partition("/")
            version = _check_version(version, source)
            rest = "/" + rest
        if rest and not rest.startswith("/"):
            raise SourceError(f"{source}: expected '@VERSION' or '/path' after the dandiset")
        return DandiTarget(m.group("id"), version, _clean_path(rest, source), m.group("inst"))
    if not source.startswith(("http://", "https://")):
        return None
    parts = urlsplit(source)
    path = parts.path
    if parts.fragment.startswith("/dandiset/"):  # the archive's older hash-routed pages
        path = "/#" + parts.fragment.split("?")[0]
    m = _WEB_RE.match(path)
    if m is None:
        return None
    version = m.group("ver")
    if version is not None:
        version = _check_version(version, source)
    location = parse_qs(parts.query).get("location", [""])[0]
    return DandiTarget(m.group("id"), version, _clean_path(location, source))


def api_root(option: str | None, instance: str | None = None) -> str:
    """The API root: the option, else $LINDIFUSE_DANDI_API, else the public archive's. A
    dandi:// name of another instance than ``dandi`` needs one of the first two."""
    root = option or os.environ.get(API_ENV)
    if root is None:
        if instance is not None and instance.lower() != "dandi":
            raise SourceError(
                f"dandi://{instance}/...: unknown DANDI instance {instance!r}; give its API "
                f"root with --dandi-api (or ${API_ENV})"
            )
        root = DEFAULT_API
    return root.rstrip("/")


def api_host(api: str) -> str:
    """``host`` or ``host:port`` of the API root (as the DANDI resolver's host list spells it)."""
    parts = urlsplit(api)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


def dandiset_url(api: str, dandiset: str) -> str:
    return f"{api}/dandisets/{dandiset}/"


def version_info_url(api: str, dandiset: str, version: str) -> str:
    return f"{api}/dandisets/{dandiset}/versions/{quote(version)}/info/"


def assets_url(api: str, dandiset: str, version: str, prefix: str = "", page_size: int = 0) -> str:
    """First page of the asset listing, ordered by path, without metadata."""
    q: dict[str, Any] = {
        "order": "path",
        "metadata": "false",
        "page_size": page_size or PAGE_SIZE,
    }
    if prefix:
        q["path"] = prefix + "/"
    return f"{api}/dandisets/{dandiset}/versions/{quote(version)}/assets/?{urlencode(q)}"


def download_url(api: str, asset_id: str) -> str:
    return f"{api}/assets/{asset_id}/download/"


def index_url(template: str, dandiset: str, version: str, asset_id: str) -> str:
    """The LINDI index URL of an asset from ``--lindi-url-template``."""
    try:
        return template.format(dandiset=dandiset, version=version, asset_id=asset_id)
    except (KeyError, IndexError, ValueError) as e:
        raise SourceError(
            f"--lindi-url-template {template!r}: {e} (fields: {{dandiset}}, {{version}}, "
            "{asset_id})"
        ) from None


@dataclass(slots=True)
class Asset:
    """One asset of the listing; ``path`` relative to the mounted folder."""

    asset_id: str
    path: str
    size: int
    blob: str | None = None
    zarr: str | None = None

    @property
    def kind(self) -> str:
        """'zarr' (a Zarr asset: not supported), 'nwb' (a directory: its Zarr view) or 'file'."""
        if self.zarr:
            return "zarr"
        if self.path.lower().endswith(NWB_SUFFIX):
            return "nwb"
        return "file"

    @property
    def validator(self) -> str:
        """The version of the asset's bytes: an asset id (and its blob) never changes content."""
        return f"dandi:{self.blob or self.asset_id}:{self.size}"

    def to_json(self) -> list[Any]:
        return [self.asset_id, self.path, self.size, self.blob, self.zarr]

    @classmethod
    def from_json(cls, row: list[Any]) -> Asset:
        return cls(row[0], row[1], row[2], row[3], row[4])


def choose_version(doc: Any, requested: str | None, where: str) -> tuple[str, bool]:
    """(version, published) from the dandiset document: the requested one, else the most
    recent published version, else the draft."""
    if not isinstance(doc, dict):
        raise SourceError(f"{where}: unexpected answer from the DANDI API (not an object)")
    if requested is not None:
        return requested, requested != "draft"
    pub = doc.get("most_recent_published_version")
    if isinstance(pub, dict) and pub.get("version"):
        return str(pub["version"]), True
    return "draft", False


def parse_page(doc: Any, where: str) -> tuple[list[dict[str, Any]], str | None]:
    """The rows and the ``next`` URL of one page of a paginated listing."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise SourceError(f"{where}: unexpected answer from the DANDI API (no 'results' list)")
    nxt = doc.get("next")
    return doc["results"], nxt if isinstance(nxt, str) and nxt else None


def assets_from_rows(rows: list[dict[str, Any]], prefix: str, where: str) -> list[Asset]:
    """Assets under ``prefix`` (a folder path, '' for all) with paths relative to it; rows that
    are not assets are refused with a one-line error."""
    out: list[Asset] = []
    start = prefix + "/" if prefix else ""
    for row in rows:
        try:
            path, asset_id, size = row["path"], row["asset_id"], int(row.get("size") or 0)
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{where}: unexpected asset entry {json.dumps(row)[:120]}") from None
        if not isinstance(path, str) or not isinstance(asset_id, str):
            raise SourceError(f"{where}: unexpected asset entry {json.dumps(row)[:120]}")
        if start and not path.startswith(start):
            continue
        out.append(Asset(asset_id, path[len(start) :], size, row.get("blob"), row.get("zarr")))
    return out


def safe_parts(path: str) -> list[str] | None:
    """The components of an asset path, None when it could escape or alias the tree."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or "\0" in p for p in parts):
        return None
    return parts


@dataclass
class Listing:
    """One version of a dandiset (or a folder of it), listed."""

    target: DandiTarget
    api: str
    version: str
    published: bool
    assets: list[Asset]
    from_cache: bool = False
    requests: int = 0

    @property
    def total_size(self) -> int:
        return sum(a.size for a in self.assets)


class ListingCache:
    """Listings of published versions (and the last version chosen for a dandiset) under
    ``<cache dir>/dandi/``, one JSON file each, written atomically; never an error."""

    def __init__(self, directory: str) -> None:
        self.root = os.path.join(directory, "dandi")

    def _path(self, kind: str, *parts: str) -> str:
        h = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return os.path.join(self.root, kind, h[:2], h + ".json")

    def _read(self, path: str) -> Any:
        try:
            with open(path, "rb") as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    def _write(self, path: str, doc: Any) -> None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f, separators=(",", ":"))
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            log.warning("cannot keep the dandiset listing in %s: %s", self.root, e)

    def get_listing(self, api: str, dandiset: str, version: str, prefix: str) -> list[Asset] | None:
        doc = self._read(self._path("listings", api, dandiset, version, prefix))
        if not isinstance(doc, dict) or doc.get("format") != LISTING_FORMAT:
            return None
        try:
            return [Asset.from_json(r) for r in doc["assets"]]
        except (KeyError, IndexError, TypeError):
            return None

    def put_listing(
        self, api: str, dandiset: str, version: str, prefix: str, assets: list[Asset]
    ) -> None:
        doc = {"format": LISTING_FORMAT, "assets": [a.to_json() for a in assets]}
        self._write(self._path("listings", api, dandiset, version, prefix), doc)

    def get_choice(self, api: str, dandiset: str) -> str | None:
        doc = self._read(self._path("choice", api, dandiset))
        return doc.get("version") if isinstance(doc, dict) else None

    def put_choice(self, api: str, dandiset: str, version: str) -> None:
        self._write(self._path("choice", api, dandiset), {"version": version})

    # Per-asset facts of published versions: which view was loaded (so a second mount goes
    # straight to it) and the LINDI index documents fetched.
    def get_asset(self, key: str) -> dict[str, Any] | None:
        doc = self._read(self._path("assets", key))
        return doc if isinstance(doc, dict) else None

    def put_asset(self, key: str, doc: dict[str, Any]) -> None:
        self._write(self._path("assets", key), doc)

    def index_path(self, url: str) -> str:
        return self._path("lindi", url)

    def get_index(self, url: str) -> bytes | None:
        try:
            with open(self.index_path(url), "rb") as f:
                return f.read()
        except OSError:
            return None

    def put_index(self, url: str, raw: bytes) -> None:
        path = self.index_path(url)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot keep the LINDI index in %s: %s", self.root, e)


class DandiApi:
    """The archive's REST API over lindifuse's HTTP client (retries, API key to API hosts)."""

    def __init__(self, http: Any, api: str) -> None:
        self.http = http
        self.api = api
        self.requests = 0

    async def get_json(self, url: str, what: str) -> Any:
        """The JSON document at ``url``; SourceError naming ``what`` on any failure."""
        self.requests += 1
        try:
            status, body = await self.http.get_doc(url)
        except RefError as e:
            raise SourceError(f"{what}: the DANDI API at {self.api} does not answer: {e}") from None
        if status == 200:
            try:
                return json.loads(body)
            except ValueError:
                raise SourceError(f"{what}: the DANDI API answered with invalid JSON") from None
        if status in (401, 403):
            if self.http.dandi.api_key:
                raise SourceError(f"{what}: access denied by the DANDI API (HTTP {status})")
            raise SourceError(
                f"{what}: access denied (HTTP {status}); an embargoed dandiset needs "
                "DANDI_API_KEY set to the key of an account allowed to read it"
            )
        if status == 404:
            raise SourceError(f"{what}: not found (HTTP 404)")
        raise SourceError(f"{what}: the DANDI API answered HTTP {status}")

    async def dandiset(self, dandiset: str) -> dict[str, Any]:
        doc = await self.get_json(dandiset_url(self.api, dandiset), f"dandiset {dandiset}")
        if not isinstance(doc, dict):
            raise SourceError(f"dandiset {dandiset}: unexpected answer from the DANDI API")
        return doc

    async def version_info(self, dandiset: str, version: str) -> dict[str, Any]:
        what = f"dandiset {dandiset} version {version}"
        doc = await self.get_json(version_info_url(self.api, dandiset, version), what)
        if not isinstance(doc, dict):
            raise SourceError(f"{what}: unexpected answer from the DANDI API")
        return doc

    async def assets(self, dandiset: str, version: str, prefix: str) -> list[Asset]:
        """Every asset under ``prefix``: the paginated listing, following ``next``."""
        what = f"dandiset {dandiset} version {version}"
        url: str | None = assets_url(self.api, dandiset, version, prefix)
        out: list[Asset] = []
        seen: set[str] = set()
        while url is not None:
            if url in seen:
                raise SourceError(f"{what}: the asset listing loops ({url})")
            seen.add(url)
            rows, url = parse_page(await self.get_json(url, what), what)
            out.extend(assets_from_rows(rows, prefix, what))
        return out


async def list_dandiset(
    target: DandiTarget, api: str, http: Any, cache: ListingCache | None
) -> Listing:
    """List ``target``: from the cache for a published version seen before (no request), else
    from the API (and then kept when published). SourceError with one line when the dandiset
    or version does not exist, is embargoed without a key, or the API does not answer."""
    client = DandiApi(http, api)
    version = target.version
    published = version is not None and version != "draft"
    if version is None:
        try:
            version, published = choose_version(
                await client.dandiset(target.dandiset), None, f"dandiset {target.dandiset}"
            )
        except SourceError as e:
            remembered = cache.get_choice(api, target.dandiset) if cache else None
            if remembered is None or "does not answer" not in str(e):
                raise
            log.warning("%s; using version %s listed before", e, remembered)
            version, published = remembered, True
    if published and cache is not None:
        assets = cache.get_listing(api, target.dandiset, version, target.path)
        if assets is not None:
            if target.version is None:
                cache.put_choice(api, target.dandiset, version)
            return Listing(target, api, version, True, assets, True, client.requests)
    if target.version is not None:
        # An explicit version: a clear error when it does not exist (the listing's 404 does not
        # say whether the dandiset or the version is missing).
        await client.dandiset(target.dandiset)
    assets = await client.assets(target.dandiset, version, target.path)
    if target.path and not assets:
        raise SourceError(f"{target.describe()}: no assets under {target.path!r}")
    if published and cache is not None:
        cache.put_listing(api, target.dandiset, version, target.path, assets)
        if target.version is None:
            cache.put_choice(api, target.dandiset, version)
    return Listing(target, api, version, published, assets, False, client.requests)
