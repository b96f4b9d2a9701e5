"""Tests of the test HTTP server itself (tests/httpserver.py)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests
from httpserver import RangeServer, parse_range

BODY = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def srv(tmp_path):
    (tmp_path / "data.bin").write_bytes(BODY)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.json").write_bytes(b'{"a": 1}')
    (tmp_path / "empty").write_bytes(b"")
    with RangeServer(tmp_path) as s:
        yield s


def get(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize(
    "header,size,expected",
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=8-100", 10, (8, 9)),
        ("bytes=10-", 10, "unsatisfiable"),
        ("bytes=10-20", 10, "unsatisfiable"),
        ("bytes=-0", 10, "unsatisfiable"),
        ("bytes=0-", 0, "unsatisfiable"),
        ("bytes=5-2", 10, None),
        ("bytes=a-b", 10, None),
        ("items=0-1", 10, None),
        ("bytes=0-1,3-4", 10, None),
    ],
)
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


def test_whole_file_and_headers(srv):
    status, headers, body = get(srv.url("data.bin"))
    assert status == 200
    assert body == BODY
    assert headers["Content-Length"] == str(len(BODY))
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"')
    assert headers["Last-Modified"].endswith("GMT")


@pytest.mark.parametrize(
    "rng,start,end",
    [
        ("bytes=0-99", 0, 99),
        ("bytes=10000-", 10000, 10239),
        ("bytes=-5", 10235, 10239),
        ("bytes=10230-99999", 10230, 10239),
    ],
)
def test_ranges(srv, rng, start, end):
    status, headers, body = get(srv.url("data.bin"), {"Range": rng})
    assert status == 206
    assert body == BODY[start : end + 1]
    assert headers["Content-Range"] == f"bytes {start}-{end}/{len(BODY)}"
    assert headers["Content-Length"] == str(end - start + 1)


def test_unsatisfiable(srv):
    status, headers, _ = get(srv.url("data.bin"), {"Range": "bytes=20000-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(BODY)}"
    status, _, _ = get(srv.url("empty"), {"Range": "bytes=0-"})
    assert status == 416
    status, _, body = get(srv.url("empty"))
    assert status == 200 and body == b""


def test_head(srv):
    status, headers, body = get(srv.url("data.bin"), method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Length"] == str(len(BODY))
    status, headers, _ = get(srv.url("data.bin"), {"Range": "bytes=0-9"}, method="HEAD")
    assert status == 206 and headers["Content-Length"] == "10"
    assert srv.log[-1].method == "HEAD"


def test_not_found_and_traversal(srv, tmp_path):
    assert get(srv.url("nope"))[0] == 404
    assert get(srv.url("sub"))[0] == 404  # directories are not listed
    assert get(srv.url("sub/x.json"))[2] == b'{"a": 1}'
    outside = tmp_path.parent / "outside.txt"
    outside.write_text("secret")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/../outside.txt")
    assert conn.getresponse().status == 404
    conn.close()


def test_etag_changes_when_file_replaced(srv, tmp_path):
    _, h1, _ = get(srv.url("data.bin"))
    _, h1b, _ = get(srv.url("data.bin"))
    assert h1["ETag"] == h1b["ETag"]
    tmp = tmp_path / "data.bin.new"
    tmp.write_bytes(b"new content")
    st = os.stat(tmp_path / "data.bin")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    os.replace(tmp, tmp_path / "data.bin")
    _, h2, body = get(srv.url("data.bin"))
    assert body == b"new content"
    assert h2["ETag"] != h1["ETag"]
    status, _, _ = get(srv.url("data.bin"), {"If-None-Match": h2["ETag"]})
    assert status == 304


def test_keep_alive_one_connection(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    for i in range(5):
        conn.request("GET", "/data.bin", headers={"Range": f"bytes={i * 10}-{i * 10 + 9}"})
        r = conn.getresponse()
        assert r.status == 206
        assert r.read() == BODY[i * 10 : i * 10 + 10]
    conn.request("GET", "/nope")
    r = conn.getresponse()
    assert r.status == 404
    r.read()
    conn.request("GET", "/data.bin")
    assert conn.getresponse().read() == BODY
    conn.close()
    assert srv.connections == 1
    assert srv.count("data.bin") == 6


def test_requests_session_reuses_connection(srv):
    with requests.Session() as s:
        for _ in range(3):
            r = s.get(srv.url("data.bin"), headers={"Range": "bytes=0-0"})
            assert r.status_code == 206 and r.content == b"\x00"
    assert srv.connections == 1


def test_fail_next_then_ok(srv):
    srv.fail_next("data.bin", 500, 2)
    srv.fail_next("/data.bin", 503)
    assert get(srv.url("data.bin"))[0] == 500
    assert get(srv.url("data.bin"))[0] == 500
    assert get(srv.url("data.bin"))[0] == 503
    assert get(srv.url("data.bin"))[0] == 200
    assert [r.status for r in srv.requests_for("data.bin")] == [500, 500, 503, 200]
    assert get(srv.url("sub/x.json"))[0] == 200  # other paths unaffected


def test_fail_reset_and_truncate(srv):
    srv.fail_next("data.bin", "reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(srv.url("data.bin"), timeout=10)
    assert requests.get(srv.url("data.bin"), timeout=10).content == BODY
    srv.fail_next("data.bin", "truncate")
    with pytest.raises(requests.exceptions.RequestException):
        r = requests.get(srv.url("data.bin"), timeout=10)
        r.raise_for_status()
        assert len(r.content) == len(BODY)  # not reached: requests notices the short body
    with pytest.raises(ValueError):
        srv.fail_next("data.bin", "bogus")


def test_ignore_range(srv):
    srv.ignore_range.add("data.bin")
    status, headers, body = get(srv.url("data.bin"), {"Range": "bytes=0-9"})
    assert status == 200 and body == BODY and "Content-Range" not in headers
    assert "/data.bin" in srv.ignore_range


def test_redirect_with_query(srv):
    srv.add_redirect("alias.bin", "data.bin?X-Amz-Signature=abc&X-Amz-Expires=60")
    r = requests.get(srv.url("alias.bin"), headers={"Range": "bytes=5-9"}, timeout=10)
    assert r.status_code == 206 and r.content == BODY[5:10]
    assert [h.status_code for h in r.history] == [302]
    assert r.url.endswith("/data.bin?X-Amz-Signature=abc&X-Amz-Expires=60")
    first, second = srv.log
    assert (first.path, first.status) == ("alias.bin", 302)
    assert (second.path, second.status, second.range) == ("data.bin", 206, "bytes=5-9")
    assert second.query == "X-Amz-Signature=abc&X-Amz-Expires=60"
    srv.add_redirect("perm.bin", "data.bin", status=307)
    status, headers, _ = get(srv.url("perm.bin"), method="HEAD")
    assert status == 200  # urllib follows


def test_forbid(srv):
    srv.forbid.add("data.bin")
    assert get(srv.url("data.bin"))[0] == 403
    srv.forbid.discard("data.bin")
    assert get(srv.url("data.bin"))[0] == 200


def test_latency(srv):
    srv.latency = 0.2
    t0 = time.monotonic()
    get(srv.url("data.bin"))
    assert time.monotonic() - t0 >= 0.2


def test_concurrent_requests_are_parallel(srv):
    import concurrent.futures

    srv.latency = 0.3
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda _: get(srv.url("data.bin"))[0], range(8)))
    assert results == [200] * 8
    assert time.monotonic() - t0 < 0.3 * 4  # threaded, not serial (2.4 s)


def test_counters_log_and_reset(srv):
    get(srv.url("data.bin"), {"Range": "bytes=1-2"})
    get(srv.url("nope"))
    assert srv.count() == 2 and srv.count("data.bin") == 1 and srv.count("nope") == 1
    assert srv.log[0].range == "bytes=1-2" and srv.log[0].method == "GET"
    srv.latency = 1
    srv.forbid.add("x")
    srv.reset_log()
    assert srv.count() == 0 and srv.log == [] and srv.latency == 1
    srv.reset()
    assert srv.latency == 0 and "x" not in srv.forbid


def test_add_file(srv, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    (other / "f.txt").write_text("hello")
    (other / "d").mkdir()
    (other / "d" / "g.txt").write_text("world")
    srv.add_file("copied/f.txt", other / "f.txt")
    srv.add_file("tree.d", other / "d")
    assert get(srv.url("copied/f.txt"))[2] == b"hello"
    assert get(srv.url("tree.d/g.txt"))[2] == b"world"


def test_url_quoting(srv, tmp_path):
    (tmp_path / "a b.bin").write_bytes(b"xy")
    assert srv.url("a b.bin").endswith("/a%20b.bin")
    assert get(srv.url("a b.bin"))[2] == b"xy"
    assert srv.count("a b.bin") == 1


def test_command_line(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"0123456789")
    script = Path(__file__).with_name("httpserver.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), "--port", "0", "--latency", "0.01"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving ")
        base = line.split(" at ")[1].strip()
        status, headers, body = get(base + "f.bin", {"Range": "bytes=2-4"})
        assert (status, body) == (206, b"234")
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
