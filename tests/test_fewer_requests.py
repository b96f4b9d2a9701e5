"""Fewer FUSE requests per file and per byte (issue 18), checked by counting the daemon's requests
through real mounts, never by timing.

With the patched pyfuse3 (``make setup`` builds it; see patches/pyfuse3/README.md) a read-only
mount answers OPEN and OPENDIR with ENOSYS once: the kernel then sends neither them nor their
RELEASE, so a small file costs LOOKUP + READ, and keeps listings in its page cache, so a second
listing costs no request. With the stock pyfuse3 (or ``LINDIFUSE_PYFUSE3_FEATURES=0``) every
file is opened and released as before. Both are checked whichever build is installed: the
environment variable gives the stock behaviour on a patched build."""

from __future__ import annotations

import errno
import json
import os

import pytest
from remote_data import build_tar

from lindifuse.fs import features

STOCK = {**os.environ, features.ENV: "0"}
needs_patch = pytest.mark.skipif(
    not features.patched(),
    reason="pyfuse3 is the stock build (make setup could not build the patched one)",
)


def stats(m) -> dict:
    return json.loads(os.getxattr(m.path, "user.lindifuse.stats"))


def delta(m, before: dict) -> dict:
    after = stats(m)["requests"]
    out = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    out["getxattr"] -= 2  # the stats read itself (os.getxattr asks twice: size, then value)
    return {k: v for k, v in out.items() if v}


def read_all(m, data) -> None:
    for i in range(data.nchunks):
        assert (m.path / "x" / str(i)).read_bytes() == data.expected(i), i


@pytest.mark.parametrize("no_open", [pytest.param(True, marks=needs_patch), False])
def test_small_files_cost_lookup_and_read_only(mount, tmp_path, no_open):
    data = build_tar(tmp_path / "s.lindi.tar", 40, 4096)
    m = mount(data.path, None, "--read-only", "--no-cache", env=None if no_open else STOCK)
    assert stats(m)["no_open"] is no_open
    before = stats(m)["requests"]
    read_all(m, data)
    d = delta(m, before)
    assert d["lookup"] == data.nchunks and d["read"] == data.nchunks, d
    if no_open:
        assert d.get("open", 0) <= 1 and d.get("release", 0) == 0, d  # the first open: ENOSYS
        assert sum(d.values()) <= 2 * data.nchunks + 1, d
    else:
        assert d["open"] == data.nchunks and d["release"] == data.nchunks, d
    # read again: the page cache (keep_cache) and the dentries serve it; nothing new is asked
    before = stats(m)["requests"]
    read_all(m, data)
    assert delta(m, before).get("read", 0) == 0


@pytest.mark.parametrize("no_open", [pytest.param(True, marks=needs_patch), False])
def test_second_listing_comes_from_the_kernel(mount, tmp_path, no_open):
    refs = {".zgroup": {"zarr_format": 2}}
    for g in range(3):
        for j in range(300):  # more entries than one READDIRPLUS reply holds
            refs[f"g{g}/k{j:03d}"] = f"v{g}.{j}"
    src = tmp_path / "l.lindi.json"
    src.write_text(json.dumps({"version": 1, "refs": refs}))
    m = mount(src, None, "--read-only", "--no-cache", env=None if no_open else STOCK)
    want = sorted(f"k{j:03d}" for j in range(300))
    for g in range(3):
        assert sorted(os.listdir(m.path / f"g{g}")) == want
    before = stats(m)["requests"]
    for g in range(3):
        assert sorted(os.listdir(m.path / f"g{g}")) == want
        assert (m.path / f"g{g}" / "k007").read_text() == f"v{g}.7"
    d = delta(m, before)
    if no_open:
        assert "readdir" not in d and "opendir" not in d and "releasedir" not in d, d
    else:
        assert d["opendir"] == 3 and d["readdir"] >= 3, d
    assert sorted(os.listdir(m.path)) == [".zgroup", "g0", "g1", "g2"]


@pytest.mark.parametrize("no_open", [pytest.param(True, marks=needs_patch), False])
def test_broken_reference_is_eio_at_open_or_first_read(mount, tmp_path, no_open):
    """Without OPEN the check a bad reference met at open happens at the first read; a file
    whose size cannot be known shows size 1 (not 0) so that the read reaches the daemon."""
    (tmp_path / "ok.bin").write_bytes(b"0123456789")
    refs = {
        ".zgroup": {"zarr_format": 2},
        "bad64": "base64:00000",
        "missing": [str(tmp_path / "nope.bin"), 0, 10],
        "ok": [str(tmp_path / "ok.bin"), 2, 5],
    }
    src = tmp_path / "b.lindi.json"
    src.write_text(json.dumps({"version": 1, "refs": refs}))
    m = mount(src, None, "--read-only", "--no-cache", env=None if no_open else STOCK)
    assert (m.path / "ok").read_bytes() == b"23456"
    assert os.stat(m.path / "missing").st_size == 10
    assert os.stat(m.path / "bad64").st_size == (1 if no_open else 0)
    for key in ("bad64", "missing"):
        with pytest.raises(OSError) as e:
            (m.path / key).read_bytes()
        assert e.value.errno == errno.EIO, key
        if no_open:  # opening works; the first read fails
            os.close(os.open(m.path / key, os.O_RDONLY))
        else:
            with pytest.raises(OSError) as e:
                os.open(m.path / key, os.O_RDONLY)
            assert e.value.errno == errno.EIO, key
    assert (m.path / "ok").read_bytes() == b"23456"  # the rest keeps working


def test_writable_mount_keeps_open_and_release(mount, tmp_path):
    """Writable mounts need their handles: OPEN and RELEASE are still sent and answered."""
    data = build_tar(tmp_path / "w.lindi.tar", 4, 4096)
    m = mount(data.path, None, "--no-cache")
    assert stats(m)["no_open"] is False
    before = stats(m)["requests"]
    read_all(m, data)
    (m.path / "x" / "0").write_bytes(b"new")
    assert (m.path / "x" / "0").read_bytes() == b"new"
    d = delta(m, before)
    assert d["open"] >= data.nchunks + 1 and d["release"] == d["open"], d


def test_an_override_calling_its_base_handler_counts_one_request(mount, tmp_path):
    """WritableOperations.getxattr hands most names to LindiOperations.getxattr: still one
    GETXATTR in the stats (it was counted twice, which made every write look dearer)."""
    data = build_tar(tmp_path / "c.lindi.tar", 2, 4096)
    m = mount(data.path, None, "--no-cache")
    f = m.path / "x" / "0"
    f.stat()
    before = stats(m)["requests"]
    for _ in range(5):
        with pytest.raises(OSError):
            os.getxattr(f, "user.nothing")
    assert delta(m, before) == {"getxattr": 5}


def test_reads_are_one_mib_pieces_for_any_reader(mount, tmp_path):
    """Files report a 1 MiB block size: ``cat`` (and stdio) read 1 MiB at a time, so a 1 MiB
    chunk file is one READ for them too, not one per 128 KiB."""
    data = build_tar(tmp_path / "c.lindi.tar", 8, 2**20)
    m = mount(data.path, None, "--read-only", "--no-cache")
    assert os.stat(m.path / "x" / "0").st_blksize == 2**20
    import subprocess

    before = stats(m)["requests"]
    out = subprocess.run(
        ["cat", *(str(m.path / "x" / str(i)) for i in range(data.nchunks))],
        capture_output=True,
        check=True,
    ).stdout
    assert out == b"".join(data.expected(i) for i in range(data.nchunks))
    d = delta(m, before)
    # the kernel's read-ahead (raised to 1 MiB shortly after the mount) may still split the
    # first file; the others are one READ each
    assert d["read"] <= data.nchunks + 2, d


# -- a merged span arrives already cut into its ranges (pure) -----------------------------------


def test_span_cuts_cover_the_span_with_gaps_and_refuse_overlaps():
    from lindifuse.fs.fetch import Span, plan_merges, span_cuts
    from lindifuse.sources.http import split_body

    (span,) = plan_merges([(100, 10), (110, 5), (120, 30)])
    cuts = span_cuts(span)
    assert cuts == [10, 5, 5, 30] and sum(cuts) == span.size
    body = bytes(range(span.size))
    parts = split_body(body, cuts)
    assert b"".join(parts) == body and [len(p) for p in parts] == cuts
    assert span_cuts(Span(0, 10, ((0, 10),))) is None  # one range: the body is the piece
    assert span_cuts(Span(0, 20, ((0, 15), (10, 10)))) is None  # overlapping: sliced


def _read_in_threads(paths, want, threads: int = 4) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> None:
        with open(paths[i], "rb") as f:
            assert f.read() == want(i), i

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(len(paths))))


@pytest.mark.skipif(
    not hasattr(features.pyfuse3, "set_request_burst"),
    reason="pyfuse3 is not the patched build with request bursts (make setup builds it)",
)
@pytest.mark.parametrize("writable", [False, True])
def test_request_bursts_serve_concurrent_readers_and_writers(mount, tmp_path, writable):
    """With request bursts (patched pyfuse3: a worker reads queued requests straight from the
    non-blocking FUSE fd) four threads read 300 small files right, twice, and a writable
    mount takes writes and renames in between; the daemon unmounts cleanly (teardown)."""
    data = build_tar(tmp_path / "b.lindi.tar", 300, 4096)
    extra = ("--no-cache",) if writable else ("--read-only", "--no-cache")
    m = mount(data.path, None, *extra)
    assert stats(m)["request_burst"] is True
    paths = [m.path / "x" / str(i) for i in range(data.nchunks)]
    _read_in_threads(paths, data.expected)
    if writable:
        for i in range(0, 40, 2):
            (m.path / "x" / str(i)).write_bytes(b"w%d" % i)
        (m.path / "x" / "1").rename(m.path / "x" / "moved")
        paths[1] = m.path / "x" / "moved"

        def want(i: int) -> bytes:
            return b"w%d" % i if i < 40 and i % 2 == 0 else data.expected(i)

        _read_in_threads(paths, want)
    else:
        _read_in_threads(paths, data.expected)


def test_request_bursts_are_off_when_asked_or_stock(mount, tmp_path):
    """LINDIFUSE_REQUEST_BURST=0, or the stock behaviour (LINDIFUSE_PYFUSE3_FEATURES=0), waits
    for the fd before every request as stock pyfuse3 does; reads still work."""
    data = build_tar(tmp_path / "o.lindi.tar", 20, 4096)
    for env in ({**os.environ, features.BURST_ENV: "0"}, STOCK):
        m = mount(data.path, None, "--read-only", "--no-cache", env=env)
        assert stats(m)["request_burst"] is False
        read_all(m, data)
        m.umount()


needs_file_range = pytest.mark.skipif(
    not hasattr(features.pyfuse3, "FileRange"),
    reason="pyfuse3 is not the patched build with FileRange (make setup builds it)",
)


def _evict(path) -> None:
    """Drop ``path``'s pages from the page cache (the next read of it is cold)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages (a file just written) are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _check_ranges(m, data) -> None:
    """Whole files, then ranges at offsets that are not page-aligned, one running past the
    end of its file (a short read)."""
    read_all(m, data)
    for i in range(data.nchunks):
        want = data.expected(i)
        fd = os.open(m.path / "x" / str(i), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the FUSE file's own pages
            assert os.pread(fd, 100_000, 4_097) == want[4_097:104_097], i
            assert os.pread(fd, 300_000, len(want) - 50_001) == want[-50_001:], i
        finally:
            os.close(fd)


@needs_file_range
@pytest.mark.parametrize("writable", [False, True])
def test_local_ranges_are_replied_from_the_descriptor(mount, run_cli, tmp_path, writable):
    """Reads of a local tar's members reach the kernel as FileRange replies (libfuse reads or
    splices them; no Python bytes): cold (the tar evicted: replied from a worker thread) and
    warm (from the event loop), whole and at odd offsets; on a writable mount the files
    written are read from the writer, the others still as ranges."""
    data = build_tar(tmp_path / "r.lindi.tar", 6, 300_000)
    extra = () if writable else ("--read-only",)
    for _ in range(2):  # each round reads first with the tar evicted, then with its pages cached
        m = mount(data.path, None, *extra, "--no-cache")
        s = stats(m)
        assert s["file_range"] is True
        _evict(data.path)  # after the mount, which read the tar's index
        _check_ranges(m, data)
        s = stats(m)
        assert s["file_range_replies"] >= 3 * data.nchunks
        # the evicted tar's first reads wait in a worker thread; the cached ones do not
        assert 1 <= s["file_range_thread_replies"] < s["file_range_replies"]
        res = run_cli("stats", m.path)
        assert f"{s['file_range_replies']} replied from the source's descriptor" in res.stdout
        if writable:
            (m.path / "x" / "1").write_bytes(b"w" * 70_000)
            assert (m.path / "x" / "1").read_bytes() == b"w" * 70_000
            assert (m.path / "x" / "2").read_bytes() == data.expected(2)
            (m.path / "x" / "1").write_bytes(data.expected(1))  # as it was, for the next round
        m.umount()


def test_file_ranges_are_off_when_asked_or_stock(mount, tmp_path):
    """LINDIFUSE_FILE_RANGE=0, or the stock behaviour, replies with bytes: same data."""
    data = build_tar(tmp_path / "o.lindi.tar", 3, 300_000)
    for env in ({**os.environ, features.RANGE_ENV: "0"}, STOCK):
        m = mount(data.path, None, "--read-only", "--no-cache", env=env)
        _check_ranges(m, data)
        s = stats(m)
        assert s["file_range"] is False and s["file_range_replies"] == 0
        m.umount()
