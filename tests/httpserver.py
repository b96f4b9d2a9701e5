"""A real HTTP/1.1 range server for tests and benchmarks.

Serves the files under a directory on 127.0.0.1 with keep-alive, byte ranges
(``bytes=a-b``, ``a-``, ``-n``; 206 + Content-Range, 416 when unsatisfiable),
HEAD, ETag (from mtime and size) and Last-Modified, plus fault-injection knobs
that tests change at run time:

    with RangeServer(root) as srv:
        url = srv.url("x.lindi.tar")
        srv.latency = 0.05                      # seconds added to every request
        srv.fail_next("x.lindi.tar", 500, 2)     # two 500s, then normal service
        srv.fail_next("x.lindi.tar", "reset")    # close the connection, no response
        srv.fail_next("x.lindi.tar", "truncate") # send half the promised body, then close
        srv.fail_next("x.lindi.tar", "headers-reset")  # status and headers, then a TCP RST
        srv.fail_next("x.lindi.tar", "mid-reset")  # half the body, then a TCP RST
        srv.fail_next("x.lindi.tar", "stall")    # read the request, answer nothing, hold on
        srv.fail_next("x.lindi.tar", 503, 2, retry_after="1")  # with a Retry-After header
        srv.outage = 500                         # every request of every path (also "reset",
                                                 # "stall"), until set back to None
        srv.release_stalls()                     # stalled connections are closed now
        srv.ignore_range.add("x.lindi.tar")      # answer 200 with the whole body
        srv.add_redirect("old.tar", "x.lindi.tar?X-Sig=abc")  # 302 (pre-signed style)
        srv.forbid.add("secret.bin")             # 403
        srv.count("x.lindi.tar"), srv.log, srv.requests_for("x.lindi.tar")
        srv.reset()                              # knobs, counters and log

Paths in knobs are relative to the root, without a leading slash (one is
tolerated) and without the query string. Multiple ranges in one header are
answered 200 with the whole body (as several object stores do).

Command line (for benchmarks):  python tests/httpserver.py DIR --port N --latency 0.02
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import email.utils
import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["RangeServer", "LoggedRequest", "parse_range"]

_CHUNK = 1 << 20


@dataclass
class LoggedRequest:
    """One request; logged (and counted) when it arrives, before any answer."""

    method: str
    path: str  # relative to root, no leading slash, no query
    range: str | None  # the Range header as sent, or None
    status: int | None = None  # set just before the status line goes out; 0 for "reset"
    query: str = ""
    time: float = 0.0
    authorization: str | None = None  # the Authorization header as sent, or None


def parse_range(header: str | None, size: int):
    """Parse a Range header against a body of ``size`` bytes.

    Returns None to serve the whole body (no header, not ``bytes=``, bad
    syntax, several ranges), "unsatisfiable" for a 416, or (start, end)
    with ``end`` inclusive.
    """
    if header is None:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes="):
        return None
    spec = header[6:].strip()
    if "," in spec:
        return None
    if "-" not in spec:
        return None
    first, _, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    try:
        if first == "":
            if not last.isdigit():
                return None
            n = int(last)
            if n == 0 or size == 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1)
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if last and end < start:
        return None  # syntactically invalid: ignore the header
    if start >= size:
        return "unsatisfiable"
    return (start, min(end, size - 1))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RangeServer/1.0"
    sys_version = ""
    server: _Server

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK stall every response on a kept-alive connection ~40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._connection_opened()

    def log_message(self, format, *args):  # noqa: A002 - silence stderr logging
        pass

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    # -- helpers -----------------------------------------------------------

    def _simple(self, status: int, body: bytes = b"", headers: dict | None = None, head=False):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _serve(self, head: bool):
        owner: RangeServer = self.server.owner
        parsed = urllib.parse.urlsplit(self.path)
        rel = urllib.parse.unquote(parsed.path).lstrip("/")
        rng = self.headers.get("Range")
        self._entry = LoggedRequest(
            self.command,
            rel,
            rng,
            None,
            parsed.query,
            time.time(),
            self.headers.get("Authorization"),
        )
        owner._record(self._entry)
        if owner.latency > 0:
            time.sleep(owner.latency)
        self._respond(owner, rel, rng, head)

    def send_response(self, code, message=None):
        entry = getattr(self, "_entry", None)
        if entry is not None:
            entry.status = code
        super().send_response(code, message)

    def _rst(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), not an orderly FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _respond(self, owner: RangeServer, rel: str, rng: str | None, head: bool) -> int:
        failure = owner._take_failure(rel)
        retry_after = None
        if isinstance(failure, tuple):
            failure, retry_after = failure
        if failure == "stall":
            self._entry.status = 0
            owner._stall()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return 0
        if failure == "reset":
            self._entry.status = 0
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return 0
        path = owner._resolve(rel)
        if failure in ("truncate", "headers-reset", "mid-reset") and path is not None:
            return self._send_file(path, rng, head, truncate=failure)
        if isinstance(failure, int):
            extra = {"Retry-After": retry_after} if retry_after is not None else None
            self._simple(failure, f"injected failure {failure}\n".encode(), extra, head=head)
            return failure
        redirect = owner._redirect_for(rel)
        if redirect is not None:
            target, code = redirect
            self._simple(code, b"", {"Location": owner.url(target)}, head=head)
            return code
        if rel in owner.forbid:
            self._simple(403, b"forbidden\n", head=head)
            return 403
        if path is None:
            self._simple(404, b"not found\n", head=head)
            return 404
        if rel in owner.ignore_range:
            rng = None
        return self._send_file(path, rng, head)

    def _send_file(self, path: Path, rng: str | None, head: bool, truncate=False) -> int:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            self._simple(404, b"not found\n", head=head)
            return 404
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{st.st_mtime_ns:x}-{size:x}"'
            last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            inm = self.headers.get("If-None-Match")
            if inm is not None and etag in [t.strip() for t in inm.split(",")]:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", last_modified)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 304
            r = parse_range(rng, size)
            if r == "unsatisfiable":
                self._simple(
                    416, b"range not satisfiable\n", {"Content-Range": f"bytes */{size}"}, head=head
                )
                return 416
            if r is None:
                status, start, length = 200, 0, size
            else:
                status, start, length = 206, r[0], r[1] - r[0] + 1
            self.send_response(status)
            self.send_header("Content-Type", _content_type(path))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
            self.end_headers()
            if head:
                return status
            if truncate == "headers-reset":
                self._rst()
                return status
            remaining = length // 2 if truncate else length
            f.seek(start)
            while remaining > 0:
                buf = f.read(min(_CHUNK, remaining))
                if not buf:
                    break
                self.wfile.write(buf)
                remaining -= len(buf)
            if truncate == "mid-reset":
                self._rst()
            elif truncate:
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            return status


def _content_type(path: Path) -> str:
    if path.name.endswith(".json"):
        return "application/json"
    if path.name.endswith(".tar"):
        return "application/x-tar"
    return "application/octet-stream"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    owner: RangeServer

    def handle_error(self, request, client_address):
        # a client that goes away mid-response is normal in tests; stay quiet
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class RangeServer:
    """Threaded HTTP/1.1 file server with byte ranges and fault injection."""

    def __init__(
        self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0
    ):
        self.root = Path(root).resolve()
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.connections = 0
        self.reset()
        self.latency = latency

    # -- life cycle --------------------------------------------------------

    def _bind(self) -> _Server:
        httpd = _Server((self.host, self._requested_port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        return httpd

    def start(self) -> RangeServer:
        """Serve in a background thread."""
        if self._httpd is not None:
            return self
        httpd = self._bind()
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="RangeServer",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (connections to it are refused); ``start`` serves
        again on the same port."""
        if self._httpd is None:
            return
        self.release_stalls()
        self._requested_port = self.port
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()
        self._httpd = None
        self._thread = None

    def serve_forever(self, ready=None) -> None:
        """Serve in the calling thread until KeyboardInterrupt (command-line use)."""
        httpd = self._bind()
        if ready is not None:
            ready(self)
        try:
            httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            httpd.server_close()
            self._httpd = None

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "") -> str:
        """Absolute URL of a path relative to the root (query string kept)."""
        if path.startswith(("http://", "https://")):
            return path
        p, sep, q = path.lstrip("/").partition("?")
        return f"{self.base_url}/{urllib.parse.quote(p)}{sep}{q}"

    # -- knobs -------------------------------------------------------------

    def reset(self) -> None:
        """Clear knobs (latency included), counters and the request log."""
        with self._lock:
            self.latency = 0.0
            self.ignore_range: set[str] = _PathSet()
            self.forbid: set[str] = _PathSet()
            self.redirects: dict[str, tuple[str, int]] = {}
            self._failures: dict[str, collections.deque] = {}
            self.outage: int | str | None = None
            self.stalled = 0  # requests that were answered with nothing (stall)
            self.stall_max = 60.0  # a stalled request gives up after this many seconds
            old = getattr(self, "_unstall", None)
            self._unstall = threading.Event()
            self.counts: collections.Counter[str] = collections.Counter()
            self.log: list[LoggedRequest] = []
        if old is not None:
            old.set()

    def reset_log(self) -> None:
        """Clear only the counters and the request log."""
        with self._lock:
            self.counts = collections.Counter()
            self.log = []

    def fail_next(
        self, path: str, status: int | str = 500, count: int = 1, retry_after: str | None = None
    ) -> None:
        """The next ``count`` requests of ``path`` fail with ``status``.

        ``status`` is an HTTP status (with a ``Retry-After: retry_after`` header when given),
        "reset" (close without answering), "truncate" (announce the full length, send half,
        close: a body shorter than its Content-Length), "headers-reset" (status and headers,
        then a TCP RST), "mid-reset" (half the body, then a TCP RST) or "stall" (read the
        request and answer nothing until ``release_stalls``, ``reset`` or ``stall_max``
        seconds). Calls queue up.
        """
        if not (isinstance(status, int) or status in FAULTS):
            raise ValueError(f"bad failure kind: {status!r}")
        item = (status, retry_after) if retry_after is not None else status
        with self._lock:
            q = self._failures.setdefault(_norm(path), collections.deque())
            q.extend([item] * count)

    def release_stalls(self) -> None:
        """Close every stalled connection now (later stalls wait again)."""
        with self._lock:
            old, self._unstall = self._unstall, threading.Event()
        old.set()

    def _stall(self) -> None:
        with self._lock:
            self.stalled += 1
            ev = self._unstall
        ev.wait(self.stall_max)

    def add_redirect(self, path: str, target: str, status: int = 302) -> None:
        """``path`` answers ``status`` with Location: url(target) (target may hold a query)."""
        with self._lock:
            self.redirects[_norm(path)] = (target, status)

    def count(self, path: str | None = None) -> int:
        """Requests seen for ``path`` (all requests when None)."""
        with self._lock:
            if path is None:
                return sum(self.counts.values())
            return self.counts[_norm(path)]

    def requests_for(self, path: str) -> list[LoggedRequest]:
        p = _norm(path)
        with self._lock:
            return [r for r in self.log if r.path == p]

    def add_file(self, name: str, source: str | os.PathLike) -> Path:
        """Place ``source`` (file or directory) under the root as ``name``: hard link, else copy."""
        import shutil

        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = Path(source)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            if dest.exists():
                dest.unlink()
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy2(src, dest)
        return dest

    # -- used by the handler -----------------------------------------------

    def _connection_opened(self) -> None:
        with self._lock:
            self.connections += 1

    def _record(self, req: LoggedRequest) -> None:
        with self._lock:
            self.counts[req.path] += 1
            self.log.append(req)

    def _take_failure(self, rel: str):
        with self._lock:
            q = self._failures.get(rel)
            if q:
                return q.popleft()
            return self.outage

    def _redirect_for(self, rel: str):
        with self._lock:
            return self.redirects.get(rel)

    def _resolve(self, rel: str) -> Path | None:
        if not rel:
            return None
        try:
            p = (self.root / rel).resolve()
        except (OSError, RuntimeError):
            return None
        if p != self.root and self.root not in p.parents:
            return None
        if not p.is_file():
            return None
        return p


FAULTS = ("reset", "truncate", "headers-reset", "mid-reset", "stall")


def _norm(path: str) -> str:
    return path.partition("?")[0].lstrip("/")


class _PathSet(set):
    """A set of root-relative paths that normalises what is added or looked up."""

    def add(self, path):  # type: ignore[override]
        super().add(_norm(path))

    def discard(self, path):  # type: ignore[override]
        super().discard(_norm(path))

    def update(self, *iterables):  # type: ignore[override]
        for it in iterables:
            for p in it:
                self.add(p)

    def __contains__(self, path):
        return super().__contains__(_norm(path)) if isinstance(path, str) else False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="HTTP/1.1 range server over a directory")
    p.add_argument("root")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    p.add_argument("--ignore-range", action="append", default=[], metavar="PATH")
    args = p.parse_args(argv)
    srv = RangeServer(args.root, host=args.host, port=args.port, latency=args.latency)
    srv.ignore_range.update(args.ignore_range)

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    srv.serve_forever(ready=lambda s: print(f"serving {s.root} at {s.base_url}/", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
