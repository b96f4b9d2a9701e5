"""A fake DANDI archive on 127.0.0.1 for tests and benchmarks.

Three servers: the API (this module's threaded HTTP server), a "bucket" ``RangeServer`` holding
the asset blobs (the API's download endpoint redirects there with a pre-signed-looking query),
and an index ``RangeServer`` serving LINDI indexes at the neurosift layout
``dandi/dandisets/{dandiset}/assets/{asset_id}/nwb.lindi.json`` for the assets given one.

    with FakeArchive(tmp_path) as fa:
        ds = fa.add_dandiset("000001", published=["0.240101.0001"])
        a = fa.add_asset("000001", "sub-01/x.nwb", path_to_file, versions=["draft", "0.240101.0001"])
        fa.set_index("000001", a, path_to_index_json)
        fa.api_url, fa.template, fa.count("assets"), fa.log

API endpoints (the real archive's shapes, only the fields lindifuse reads plus a few):
``GET /api/dandisets/{id}/``, ``GET /api/dandisets/{id}/versions/{v}/info/``,
``GET /api/dandisets/{id}/versions/{v}/assets/?order=path&page_size=N&page=P[&path=PREFIX]``
(paginated, ``next`` absolute), ``GET|HEAD /api/assets/{asset_id}/download/`` (302 to the
bucket). An embargoed dandiset answers 401 unless ``Authorization: token <api_key>``. Setting
``down`` makes every API request answer 503.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from httpserver import RangeServer

_ASSETS_RE = re.compile(r"^/api/dandisets/(\d{6})/versions/([^/]+)/assets/$")
_INFO_RE = re.compile(r"^/api/dandisets/(\d{6})/versions/([^/]+)/info/$")
_DANDISET_RE = re.compile(r"^/api/dandisets/(\d{6})/$")
_DOWNLOAD_RE = re.compile(r"^/api/assets/([0-9a-f-]+)/download/$")


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict
    authorization: str | None
    kind: str  # "dandiset", "info", "assets", "download", "other"


@dataclass
class FakeDandiset:
    identifier: str
    published: list[str]
    embargoed: bool = False
    versions: dict[str, list[dict]] = field(default_factory=dict)  # version -> assets by path


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head=False):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, doc, head=False):
        body = json.dumps(doc).encode()
        self._send(200, body, {"Content-Type": "application/json"}, head)

    def _serve(self, head: bool):
        fa: FakeArchive = self.server.owner
        parts = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        path = parts.path
        kind = "other"
        for name, rx in (
            ("assets", _ASSETS_RE),
            ("info", _INFO_RE),
            ("dandiset", _DANDISET_RE),
            ("download", _DOWNLOAD_RE),
        ):
            m = rx.match(path)
            if m:
                kind = name
                break
        auth = self.headers.get("Authorization")
        fa._record(ApiRequest(self.command, path, query, auth, kind))
        if fa.latency:
            time.sleep(fa.latency)
        if fa.down:
            return self._send(503, b"down\n", head=head)
        if m is None:
            return self._send(404, b'{"detail":"Not found."}', head=head)
        if kind == "download":
            asset = fa.assets_by_id.get(m.group(1))
            if asset is None:
                return self._send(404, b'{"detail":"Not found."}', head=head)
            now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            loc = fa.bucket.url(
                f"blobs/{asset['blob']}?X-Amz-Date={now}&X-Amz-Expires=3600&X-Amz-Signature=f"
            )
            return self._send(302, b"", {"Location": loc}, head)
        ds = fa.dandisets.get(m.group(1))
        if ds is None:
            return self._send(404, b'{"detail":"Not found."}', head=head)
        if ds.embargoed and auth != f"token {fa.api_key}":
            return self._send(401, b'{"detail":"Authentication required."}', head=head)
        if kind == "dandiset":
            return self._json(fa._dandiset_doc(ds), head)
        version = urllib.parse.unquote(m.group(2))
        if version not in ds.versions:
            return self._send(404, b'{"detail":"Not found."}', head=head)
        if kind == "info":
            return self._json(fa._version_doc(ds, version), head)
        rows = ds.versions[version]
        prefix = query.get("path", "")
        if prefix:
            rows = [r for r in rows if r["path"].startswith(prefix)]
        page_size = min(int(query.get("page_size", 100)), 1000)
        page = int(query.get("page", 1))
        chunk = rows[(page - 1) * page_size : page * page_size]
        nxt = None
        if page * page_size < len(rows):
            q = dict(query, page=str(page + 1))
            nxt = f"{fa.api_url}/dandisets/{ds.identifier}/versions/{version}/assets/?" + (
                urllib.parse.urlencode(q)
            )
        fields = ("asset_id", "blob", "zarr", "path", "size", "created", "modified")
        self._json(
            {
                "count": len(rows),
                "next": nxt,
                "previous": None,
                "results": [{k: r[k] for k in fields} for r in chunk],
            },
            head,
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    owner: FakeArchive


class FakeArchive:
    """The fake API plus its bucket and index servers (see the module docstring)."""

    def __init__(self, root: Path, latency: float = 0.0) -> None:
        self.root = Path(root)
        (self.root / "bucket").mkdir(parents=True, exist_ok=True)
        (self.root / "lindi").mkdir(parents=True, exist_ok=True)
        self.bucket = RangeServer(self.root / "bucket")
        self.indexes = RangeServer(self.root / "lindi")
        self.dandisets: dict[str, FakeDandiset] = {}
        self.assets_by_id: dict[str, dict] = {}
        self.api_key = "secret-key"
        self.down = False
        self.latency = latency
        self.log: list[ApiRequest] = []
        self._lock = threading.Lock()
        self._httpd: _Server | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> FakeArchive:
        self.bucket.start()
        self.indexes.start()
        self.bucket.latency = self.indexes.latency = self.latency
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._httpd.server_close()
            self._httpd = None
        self.bucket.stop()
        self.indexes.stop()

    def __enter__(self) -> FakeArchive:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def host(self) -> str:
        assert self._httpd is not None
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}/api"

    @property
    def template(self) -> str:
        """--lindi-url-template for the index server."""
        return (
            f"{self.indexes.base_url}/dandi/dandisets/{{dandiset}}/assets/{{asset_id}}/"
            "nwb.lindi.json"
        )

    def download_url(self, asset: dict) -> str:
        return f"{self.api_url}/assets/{asset['asset_id']}/download/"

    # -- content ----------------------------------------------------------------------------

    def add_dandiset(
        self, identifier: str, published: list[str] | None = None, embargoed: bool = False
    ) -> FakeDandiset:
        ds = FakeDandiset(identifier, list(published or []), embargoed)
        ds.versions["draft"] = []
        for v in ds.published:
            ds.versions[v] = []
        self.dandisets[identifier] = ds
        return ds

    def add_blob(self, source: Path | bytes) -> tuple[str, int]:
        """Put bytes (or a file) in the bucket; returns (blob id, size)."""
        blob = str(uuid.uuid4())
        dest = self.root / "bucket" / "blobs" / blob
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            dest.write_bytes(source)
        else:
            self.bucket.add_file(f"blobs/{blob}", source)
        return blob, dest.stat().st_size

    def add_asset(
        self,
        identifier: str,
        path: str,
        source: Path | bytes | None = None,
        *,
        versions: list[str] | None = None,
        zarr: bool = False,
        blob: tuple[str, int] | None = None,
    ) -> dict:
        """An asset in the given versions (default: all of the dandiset's). ``source``: its
        bytes or file; ``blob``: share an existing blob; ``zarr``: a Zarr asset (no blob)."""
        ds = self.dandisets[identifier]
        if zarr:
            blob_id, size, zarr_id = None, 12345, str(uuid.uuid4())
        else:
            blob_id, size = blob if blob is not None else self.add_blob(source)  # type: ignore[arg-type]
            zarr_id = None
        asset = {
            "asset_id": str(uuid.uuid4()),
            "blob": blob_id,
            "zarr": zarr_id,
            "path": path,
            "size": size,
            "created": "2024-01-01T00:00:00Z",
            "modified": "2024-01-01T00:00:00Z",
        }
        self.assets_by_id[asset["asset_id"]] = asset
        for v in versions or list(ds.versions):
            ds.versions[v].append(asset)
            ds.versions[v].sort(key=lambda r: r["path"])
        return asset

    def set_index(self, identifier: str, asset: dict, index_file: Path) -> str:
        """Serve ``index_file`` as the asset's LINDI index; returns its path on the server."""
        rel = f"dandi/dandisets/{identifier}/assets/{asset['asset_id']}/nwb.lindi.json"
        self.indexes.add_file(rel, index_file)
        return rel

    def index_path(self, identifier: str, asset: dict) -> str:
        return f"dandi/dandisets/{identifier}/assets/{asset['asset_id']}/nwb.lindi.json"

    # -- what was asked ---------------------------------------------------------------------

    def _record(self, req: ApiRequest) -> None:
        with self._lock:
            self.log.append(req)

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.log if kind is None or r.kind == kind)

    def reset_logs(self) -> None:
        with self._lock:
            self.log = []
        self.bucket.reset_log()
        self.indexes.reset_log()

    def _version_doc(self, ds: FakeDandiset, version: str) -> dict:
        rows = ds.versions[version]
        return {
            "version": version,
            "name": f"dandiset {ds.identifier}",
            "asset_count": len(rows),
            "size": sum(r["size"] for r in rows),
            "status": "Published" if version != "draft" else "Valid",
            "created": "2024-01-01T00:00:00Z",
            "modified": "2024-01-01T00:00:00Z",
        }

    def _dandiset_doc(self, ds: FakeDandiset) -> dict:
        pub = ds.published[-1] if ds.published else None
        return {
            "identifier": ds.identifier,
            "created": "2024-01-01T00:00:00Z",
            "modified": "2024-01-01T00:00:00Z",
            "embargo_status": "EMBARGOED" if ds.embargoed else "OPEN",
            "most_recent_published_version": self._version_doc(ds, pub) if pub else None,
            "draft_version": self._version_doc(ds, "draft"),
        }
