"""Remote sources over a real HTTP server on 127.0.0.1 (tests/httpserver.py): .lindi.json and
.lindi.tar URLs, request counts (checked in the server's log), range handling, retries,
redirects, timeouts, and the remote safety rule.

Mounts that count requests use ``--no-cache --no-readahead`` so that only the read path of
issue 2 is measured (no persistent cache from earlier tests, no prefetching of siblings).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tarfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from plain_lindi import walk_files, write_json, write_tar

QUIET = ("--no-cache", "--no-readahead")
TAR = "remote.amended.lindi.tar"
JSON = "example.remote.lindi.json"


@dataclass
class RemoteTar:
    name: str
    layout: dict  # member -> (o, d, s)
    rfs: dict


@pytest.fixture(scope="module")
def remote_tar(_http_lindi_session) -> RemoteTar:
    """amended.lindi.tar rebuilt (plain Python) with its external refs pointing at the URL of
    example.h5 on the server: blobs inside the tar, chunks in the HDF5 file, both remote."""
    h = _http_lindi_session
    with tarfile.open(h.files.amended_tar) as tf:
        rfs = json.loads(tf.extractfile("lindi.json").read())
        blobs = {
            m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.name.startswith("blobs/")
        }
    rfs["templates"] = {"u1": h.url("example.h5")}
    layout = write_tar(h.server.root / TAR, rfs, blobs)
    return RemoteTar(TAR, layout, rfs)


def _ranges(srv, path: str) -> list[tuple[int, int] | None]:
    """(first, last) byte of each request for ``path`` (None: no Range header)."""
    out = []
    for r in srv.requests_for(path):
        if r.range is None:
            out.append(None)
        else:
            a, _, b = r.range.removeprefix("bytes=").partition("-")
            out.append((int(a), int(b)))
    return out


def _overlapping(srv, path: str, off: int, size: int) -> list:
    return [r for r in _ranges(srv, path) if r is None or (r[0] < off + size and r[1] >= off)]


def _read_pieces(path, piece: int = 4096, reverse: bool = False) -> bytes:
    size = os.stat(path).st_size
    offs = list(range(0, size, piece))
    if reverse:
        offs.reverse()
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = {o: os.pread(fd, piece, o) for o in offs}
    finally:
        os.close(fd)
    return b"".join(parts[o] for o in sorted(parts))


def _zarr_matches(mp, arrays: dict) -> int:
    import zarr

    warnings.filterwarnings("ignore", module="zarr")
    g = zarr.open_group(str(mp), mode="r", zarr_format=2)
    n = 0
    for path, ref in arrays.items():
        if ref.dtype.kind not in "iuf":
            continue
        got = g[path][...]
        np.testing.assert_array_equal(got.reshape(ref.shape), ref, err_msg=path)
        n += 1
    return n


def _erofs(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == errno.EROFS, (fn, args, e.value)


def _assert_read_only(mp):
    for dirpath, _dirs, files in os.walk(mp):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o555
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode) == 0o444
    _erofs(os.open, mp / ".zattrs", os.O_WRONLY)
    _erofs(os.open, mp / "newfile", os.O_CREAT | os.O_WRONLY, 0o644)
    _erofs(os.mkdir, mp / "newdir")
    _erofs(os.unlink, mp / ".zattrs")
    _erofs(os.rename, mp / ".zattrs", mp / "x")
    _erofs(os.truncate, mp / ".zattrs", 0)
    _erofs(os.chmod, mp / ".zattrs", 0o644)
    _erofs(os.setxattr, mp / ".zattrs", "user.x", b"1")


# -- whole mounts ---------------------------------------------------------------------------------


def test_remote_json(mount, http_lindi):
    srv = http_lindi.server
    expected = http_lindi.files.expected("example.lindi.json")
    t0 = time.time()
    m = mount(http_lindi.url(JSON), None, *QUIET)  # no --read-only: remote is always read-only
    t1 = time.time()
    assert walk_files(m.path) == expected
    assert _zarr_matches(m.path, http_lindi.files.arrays("example.lindi.json")) >= 4
    st = os.stat(m.path / ".zgroup")
    assert t0 - 1 <= st.st_mtime <= t1 + 1  # a URL has no mtime: the mount time
    ts = json.loads(os.getxattr(m.path / "acquisition/ts/timestamps/0", "user.lindi.ref"))
    refs = json.loads((srv.root / JSON).read_text())["refs"]
    assert ts == [http_lindi.url("example.h5"), *refs["acquisition/ts/timestamps/0"][1:]]
    assert json.loads(os.getxattr(m.path / ".zattrs", "user.lindi.ref")) == "inline"
    assert int(os.getxattr(m.path, "user.lindifuse.pid")) == m.pid
    _assert_read_only(m.path)
    # the h5 file is only ever read in ranges, never whole
    assert None not in _ranges(srv, "example.h5")
    m.umount()


def test_remote_tar(mount, http_lindi, remote_tar):
    srv = http_lindi.server
    url = http_lindi.url(TAR)
    m = mount(url, None, *QUIET)
    # three requests before the first chunk: head + entry, index, lindi.json; all ranges
    assert len(_ranges(srv, TAR)) == 3, srv.log
    (o, d, s) = remote_tar.layout[".tar_index.json"]
    lj = remote_tar.layout["lindi.json"]
    assert _ranges(srv, TAR) == [(0, 1535), (d, d + s - 1), (lj[1], lj[1] + lj[2] - 1)]
    assert srv.count("example.h5") == 0
    expected = http_lindi.files.expected("amended.lindi.tar")
    assert walk_files(m.path) == expected
    assert _zarr_matches(m.path, http_lindi.files.arrays("amended.lindi.tar")) >= 6
    # never downloaded whole: every request is a range, and none covers the whole archive
    size = (srv.root / TAR).stat().st_size
    for r in _ranges(srv, TAR):
        assert r is not None and r[1] - r[0] + 1 < size / 2
    # a member's ref: the tar URL at the member's data offset
    _, bd, bs = remote_tar.layout["blobs/processing/amended/matrix/0.0"]
    got = json.loads(os.getxattr(m.path / "processing/amended/matrix/0.0", "user.lindi.ref"))
    assert got == [url, bd, bs]
    _assert_read_only(m.path)
    m.umount()


def test_chunk_costs_one_range_request_however_read(mount, http_lindi, remote_tar):
    srv = http_lindi.server
    m = mount(http_lindi.url(TAR), None, *QUIET)
    srv.reset_log()
    exp = http_lindi.files.expected("amended.lindi.tar")
    # a member of the tar (4823 bytes) read in 4 KiB pieces, backwards
    key = "processing/amended/matrix/1.0"
    _, d, s = remote_tar.layout["blobs/" + key]
    assert _read_pieces(m.path / key, 4096, reverse=True) == exp[key]
    assert _ranges(srv, TAR) == [(d, d + s - 1)]
    # a 10000-byte chunk of the HDF5 file: 4 KiB pieces, then 1-byte reads, then mmap
    key = "acquisition/ts/timestamps/1"
    off, size = remote_tar.rfs["refs"][key][1:]
    assert _read_pieces(m.path / key, 4096) == exp[key]
    assert _read_pieces(m.path / key, 1) == exp[key]
    import mmap

    with open(m.path / key, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:] == exp[key]
    assert _ranges(srv, "example.h5") == [(off, off + size - 1)]
    # the padded last chunk: stored 4000 bytes, one request, served as 10000
    key = "acquisition/ts/timestamps/2"
    off, size = remote_tar.rfs["refs"][key][1:]
    data = _read_pieces(m.path / key, 4096)
    assert len(data) == 10000 and data == exp[key] and data[4000:] == bytes(6000)
    assert _overlapping(srv, "example.h5", off, size) == [(off, off + size - 1)]
    assert len(srv.log) == 3
    m.umount()


def test_concurrent_readers_of_one_chunk_share_one_request(mount, http_server):
    srv = http_server
    blob = os.urandom(300_000)
    (srv.root / "data.bin").write_bytes(blob)
    url = srv.url("data.bin")
    refs = {".zgroup": {"zarr_format": 2}}
    # eight files with the same reference: the kernel sends eight reads, the daemon one request
    refs.update({f"same/{i}": [url, 1000, 200_000] for i in range(8)})
    refs["one/file"] = [url, 50_000, 100_000]
    (srv.root / "same.lindi.json").write_text(json.dumps({"refs": refs}))
    m = mount(srv.url("same.lindi.json"), None, *QUIET)
    srv.reset_log()
    srv.latency = 0.3
    barrier = threading.Barrier(8)

    def read(path):
        barrier.wait()
        return path.read_bytes()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(read, [m.path / "same" / str(i) for i in range(8)]))
    assert got == [blob[1000:201_000]] * 8
    assert _ranges(srv, "data.bin") == [(1000, 200_999)]
    # eight readers of one file, in 4 KiB pieces at once
    srv.reset_log()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: _read_pieces(m.path / "one/file"), range(8)))
    assert got == [blob[50_000:150_000]] * 8
    assert _ranges(srv, "data.bin") == [(50_000, 149_999)]
    srv.latency = 0
    m.umount()


def test_concurrent_readers_of_a_remote_mount(mount, http_lindi):
    http_lindi.server.latency = 0.005
    m = mount(http_lindi.url(JSON), None, *QUIET)
    expected = http_lindi.files.expected("example.lindi.json")
    keys = sorted(expected)

    def reader(i):
        order = keys[i:] + keys[:i]
        return [k for k in order if (m.path / k).read_bytes() != expected[k]]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(reader, range(8))) == [[]] * 8
    m.umount()


def test_defaults_with_persistent_cache_and_readahead(mount, http_lindi, remote_tar):
    """The default mount (disk cache and read-ahead on) serves the same bytes, twice."""
    expected = http_lindi.files.expected("amended.lindi.tar")
    for _ in range(2):
        m = mount(http_lindi.url(TAR))
        assert walk_files(m.path) == expected
        m.umount()


# -- HTTP behaviour ---------------------------------------------------------------------------------


def test_server_that_ignores_range(mount, http_lindi, remote_tar):
    srv = http_lindi.server
    srv.ignore_range.add("example.h5")
    srv.ignore_range.add(TAR)
    m = mount(http_lindi.url(TAR), None, *QUIET)
    assert walk_files(m.path) == http_lindi.files.expected("amended.lindi.tar")
    assert all(r.status == 200 for r in srv.requests_for("example.h5"))
    m.umount()
    m = mount(http_lindi.url(JSON), None, *QUIET)
    assert walk_files(m.path) == http_lindi.files.expected("example.lindi.json")
    m.umount()


def test_retries_then_success(mount, http_lindi):
    srv = http_lindi.server
    m = mount(http_lindi.url(JSON), None, *QUIET)
    exp = http_lindi.files.expected("example.lindi.json")
    srv.reset_log()
    srv.fail_next("example.h5", 500, 2)
    key = "acquisition/ts/timestamps/0"
    assert (m.path / key).read_bytes() == exp[key]
    assert [r.status for r in srv.requests_for("example.h5")] == [500, 500, 206]
    for kind in ("reset", "truncate", 503, 429):
        srv.reset_log()
        srv.fail_next("example.h5", kind, 1)
        key = {"reset": "0.0", "truncate": "1.1", 503: "2.2", 429: "3.3"}[kind]
        key = f"acquisition/ts/data/{key}"
        assert (m.path / key).read_bytes() == exp[key], kind
        assert len(srv.requests_for("example.h5")) == 2, (kind, srv.log)
    # a 4xx other than 429 is not retried: one request per (kernel) read, each one EIO; the
    # log says so once (a failing source is one line per minute, not one per read)
    srv.reset_log()
    srv.fail_next("example.h5", 404, 10)
    key = "acquisition/ts/data/4.4"
    retries = json.loads(os.getxattr(m.path, "user.lindifuse.stats"))["http"]["retries"]
    with pytest.raises(OSError) as e:
        (m.path / key).read_bytes()
    assert e.value.errno == errno.EIO
    failed = [ln for ln in m.log_text().splitlines() if key in ln and "404" in ln]
    assert len(failed) == 1
    assert srv.requests_for("example.h5") and all(
        r.status == 404 for r in srv.requests_for("example.h5")
    )
    assert json.loads(os.getxattr(m.path, "user.lindifuse.stats"))["http"]["retries"] == retries
    srv.reset()
    assert (m.path / key).read_bytes() == exp[key]  # the error was not cached
    m.umount()


def test_retries_while_loading_the_source(mount, http_lindi, remote_tar):
    srv = http_lindi.server
    srv.fail_next(TAR, 502, 1)
    srv.fail_next(TAR, "reset", 1)
    m = mount(http_lindi.url(TAR), None, *QUIET)
    assert [r.status for r in srv.requests_for(TAR)][:2] == [502, 0]
    assert (m.path / ".zgroup").read_bytes() == b'{"zarr_format": 2}'
    m.umount()


def test_redirects_followed(mount, http_lindi, http_server):
    srv = http_lindi.server
    srv.add_redirect("moved/" + JSON, JSON + "?X-Sig=abc", 302)
    m = mount(srv.url("moved/" + JSON), None, *QUIET)
    exp = http_lindi.files.expected("example.lindi.json")
    assert (m.path / "acquisition/ts/timestamps/1").read_bytes() == exp[
        "acquisition/ts/timestamps/1"
    ]
    assert {r.status for r in srv.requests_for("moved/" + JSON)} == {302}
    assert srv.requests_for(JSON)[0].query == "X-Sig=abc"
    m.umount()
    # a chunk URL that redirects (pre-signed style), 301 and 307 too
    s2 = http_server
    blob = os.urandom(5000)
    (s2.root / "data.bin").write_bytes(blob)
    s2.add_redirect("a.bin", "data.bin?sig=1", 302)
    s2.add_redirect("b.bin", "data.bin?sig=2", 301)
    s2.add_redirect("c.bin", "data.bin?sig=3", 307)
    refs = {
        "a": [s2.url("a.bin"), 0, 100],
        "b": [s2.url("b.bin"), 100, 100],
        "c": [s2.url("c.bin"), 200, 4800],
        "w": [s2.url("a.bin")],
    }
    (s2.root / "r.lindi.json").write_text(json.dumps({"refs": refs}))
    m = mount(s2.url("r.lindi.json"), None, *QUIET)
    assert (m.path / "a").read_bytes() == blob[:100]
    assert (m.path / "b").read_bytes() == blob[100:200]
    assert (m.path / "c").read_bytes() == blob[200:]
    assert (m.path / "w").read_bytes() == blob
    m.umount()


def test_whole_url_reference_size_takes_one_request(mount, http_server):
    srv = http_server
    blob = os.urandom(12345)
    (srv.root / "sub").mkdir()
    (srv.root / "sub" / "whole.bin").write_bytes(blob)
    (srv.root / "sub" / "part.bin").write_bytes(b"PART" * 10)
    refs = {
        ".zgroup": {"zarr_format": 2},
        "w": [srv.url("sub/whole.bin")],
        "dot": ["./part.bin", 4, 8],  # relative to the URL of the .lindi.json
        "tpl": ["{{base}}/part.bin", 0, 4],
    }
    doc = {"version": 1, "templates": {"base": srv.url("sub")}, "refs": refs}
    (srv.root / "sub" / "x.lindi.json").write_text(json.dumps(doc))
    m = mount(srv.url("sub/x.lindi.json"), None, *QUIET)  # lists the root: stats "w"
    assert os.stat(m.path / "w").st_size == len(blob)
    assert _ranges(srv, "sub/whole.bin") == [(0, 0)]
    assert (m.path / "w").read_bytes() == blob
    assert len(srv.requests_for("sub/whole.bin")) == 2
    assert json.loads(os.getxattr(m.path / "w", "user.lindi.ref")) == [
        srv.url("sub/whole.bin"),
        0,
        len(blob),
    ]
    assert (m.path / "dot").read_bytes() == b"PARTPART"
    assert (m.path / "tpl").read_bytes() == b"PART"
    ref = json.loads(os.getxattr(m.path / "dot", "user.lindi.ref"))
    assert ref == [srv.url("sub/part.bin"), 4, 8]
    m.umount()


def test_remote_source_may_not_read_local_files(mount, http_lindi, tmp_path):
    """lindi's own example.lindi.tar served over HTTP: its chunk refs name a local path, which
    a remote source may not read (EIO); the inline keys work."""
    m = mount(http_lindi.url("example.lindi.tar"), None, *QUIET)
    exp = http_lindi.files.expected("example.lindi.tar")
    assert (m.path / ".zattrs").read_bytes() == exp[".zattrs"]
    assert (m.path / "general/small_ints/0").read_bytes() == exp["general/small_ints/0"]
    with pytest.raises(OSError) as e:
        (m.path / "acquisition/ts/timestamps/0").read_bytes()
    assert e.value.errno == errno.EIO
    assert "may not read local files" in m.log_text()
    assert "acquisition/ts/timestamps/0" in m.log_text()
    m.umount()


def test_http_timeouts_are_bounded():
    """A server that answers too slowly: the client gives up after its timeout with a one-line
    error, and does not retry once the timeout's budget is spent (the daemon uses the same
    client; --timeout)."""
    import trio
    from httpserver import RangeServer

    from lindifuse.errors import RefError
    from lindifuse.sources.http import HttpClient

    async def main(url):
        client = HttpClient(timeout=0.3, retries=2, backoff=0.01)
        try:
            t0 = time.monotonic()
            with pytest.raises(RefError) as e:
                await client.get_range(url, 0, 10)
            return time.monotonic() - t0, str(e.value), client.stats
        finally:
            await client.aclose()

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "slow.bin"), "wb") as f:
            f.write(b"x" * 100)
        with RangeServer(d, latency=1.5) as srv:
            elapsed, msg, stats = trio.run(main, srv.url("slow.bin"))
            assert srv.count("slow.bin") == 1  # the budget (0.3 s) is spent: no retry
    assert 0.3 <= elapsed < 1.0, elapsed
    assert "Timeout" in msg and "slow.bin" in msg and "\n" not in msg
    assert stats.retries == 0 and stats.errors == 1


def test_remote_json_with_a_bad_reference_keeps_working(mount, http_server):
    srv = http_server
    (srv.root / "data.bin").write_bytes(b"0123456789" * 10)
    refs = {
        "good": [srv.url("data.bin"), 10, 10],
        "gone": [srv.url("gone.bin"), 0, 10],
        "local": ["/etc/hostname", 0, 1],
    }
    write_json(srv.root / "b.lindi.json", {"refs": refs})
    m = mount(srv.url("b.lindi.json"), None, *QUIET)
    for key in ("gone", "local"):
        with pytest.raises(OSError) as e:
            (m.path / key).read_bytes()
        assert e.value.errno == errno.EIO
        assert (m.path / "good").read_bytes() == b"0123456789"
    m.umount()


def test_remote_tar_with_missing_member_reference(mount, http_server):
    srv = http_server
    refs = {
        ".zgroup": {"zarr_format": 2},
        "ok": ["./blobs/a", 0, 2000],
        "missing": ["./blobs/none", 0, 1],
        "past": ["./blobs/a", 1500, 501],
    }
    write_tar(srv.root / "m.lindi.tar", {"refs": refs}, {"blobs/a": b"A" * 2000})
    m = mount(srv.url("m.lindi.tar"), None, *QUIET)
    assert (m.path / "ok").read_bytes() == b"A" * 2000
    for key in ("missing", "past"):
        with pytest.raises(OSError) as e:
            (m.path / key).read_bytes()
        assert e.value.errno == errno.EIO
    log = m.log_text()
    assert any("missing" in ln and "blobs/none" in ln for ln in log.splitlines())
    assert any("past" in ln and "past the end" in ln for ln in log.splitlines())
    m.umount()
