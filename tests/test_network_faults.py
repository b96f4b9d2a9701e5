"""Harder network faults from the loopback RangeServer (issue 9, item 2): connection reset after
the headers or in the middle of the body, a body shorter than its Content-Length, a server that
accepts and answers nothing (EIO within --timeout; the mount never hangs), 429/503 with
Retry-After (honoured, bounded), and an object replaced between two requests of one file (never
mixed). After every fault the same mount reads correctly again once the server is healthy.

Both receive paths are exercised: ranges under 256 KiB go through the pooled async client,
larger ones through blocking connections in worker threads (``sources._BulkPool``). Mounts use
``--no-cache --no-readahead`` so every read is one request the server log can account for.
"""

from __future__ import annotations

import email.utils
import errno
import json
import os
import shutil
import threading
import time

import pytest
from plain_lindi import write_json
from remote_data import build_tar

QUIET = ("--no-cache", "--no-readahead")
SIZES = {"async": 40_000, "bulk": 300_000}  # chunk sizes below / above sources.BULK_MIN
N = 6


def stats(m) -> dict:
    return json.loads(os.getxattr(m.path, "user.lindifuse.stats"))


def expect_eio(path) -> float:
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        path.read_bytes()
    assert e.value.errno == errno.EIO, e.value
    return time.monotonic() - t0


def statuses(srv, name="d.lindi.tar") -> list:
    return [r.status for r in srv.requests_for(name)]


@pytest.fixture(params=sorted(SIZES))
def remote(request, http_server):
    data = build_tar(http_server.root / "d.lindi.tar", N, SIZES[request.param])
    return data, http_server.url("d.lindi.tar")


@pytest.mark.parametrize("kind", ["headers-reset", "mid-reset", "truncate", "reset"])
def test_broken_responses_are_retried_never_served_short(mount, http_server, remote, kind):
    data, url = remote
    srv = http_server
    m = mount(url, None, *QUIET, "--timeout", "2")  # 2 s: 3 attempts per request at most
    srv.reset_log()
    # one broken response: retried, the right bytes
    srv.fail_next("d.lindi.tar", kind, 1)
    assert (m.path / "x/0").read_bytes() == data.expected(0)
    got = statuses(srv)
    assert len(got) == 2 and got[1] == 206, got
    # broken every time: EIO (never short or wrong bytes), a bounded number of attempts
    srv.reset_log()
    srv.fail_next("d.lindi.tar", kind, 100)
    expect_eio(m.path / "x/1")
    n = len(srv.requests_for("d.lindi.tar"))
    assert 1 <= n <= 5 * 3, n  # <= 5 attempts per FUSE read, a few reads by the kernel
    # healthy again: the same mount reads everything right
    srv.reset()
    for i in range(N):
        assert (m.path / f"x/{i}").read_bytes() == data.expected(i), i
    m.umount()


def test_server_that_never_answers(mount, http_server):
    srv = http_server
    slow, fast = os.urandom(300_000), os.urandom(300_000)
    (srv.root / "slow.bin").write_bytes(slow)
    (srv.root / "fast.bin").write_bytes(fast)
    refs = {".zgroup": {"zarr_format": 2}}
    for name, blob in (("slow", slow), ("fast", fast)):
        refs[f"{name}/big"] = [srv.url(f"{name}.bin"), 0, len(blob)]  # worker-thread path
        refs[f"{name}/small"] = [srv.url(f"{name}.bin"), 1000, 20_000]  # async client path
    write_json(srv.root / "r.lindi.json", {"refs": refs})
    url = srv.url("r.lindi.json")
    # mounting against it fails within the timeout, with one line, nothing mounted
    srv.outage = "stall"
    t0 = time.monotonic()
    bad = mount(url, None, *QUIET, "--timeout", "1", check=False)
    assert time.monotonic() - t0 < 10
    assert bad.result.rc != 0 and not bad.is_mounted()
    err = bad.result.stderr.strip().splitlines()
    assert len(err) == 1 and "r.lindi.json" in err[0] and "Timeout" in err[0], err
    srv.outage = None
    srv.release_stalls()
    m = mount(url, None, *QUIET, "--timeout", "1")
    for key in ("big", "small"):
        # reads of slow.bin stall; meanwhile the rest of the mount answers at once
        srv.stalled = 0
        srv.fail_next("slow.bin", "stall", 100)
        result = {}

        def stalled_read(key=key, result=result):
            try:
                result["elapsed"] = expect_eio(m.path / "slow" / key)
            except BaseException as e:  # reported below
                result["error"] = e

        t = threading.Thread(target=stalled_read)
        t.start()
        assert _wait(lambda: srv.stalled >= 1, 5)
        t1 = time.monotonic()
        assert (m.path / "fast/big").read_bytes() == fast
        assert (m.path / "fast/small").read_bytes() == fast[1000:21_000]
        assert sorted(os.listdir(m.path)) == [".zgroup", "fast", "slow"]
        fast_time = time.monotonic() - t1
        t.join(20)
        assert not t.is_alive() and "error" not in result, result
        # each FUSE read fails within twice --timeout (the kernel may retry a failed page)
        assert 0.9 <= result["elapsed"] < 3 * 2 * 1 + 0.5, result
        assert fast_time < 0.9, fast_time  # not held up by the stalled requests
        srv.release_stalls()
        srv.reset()
        blob = slow if key == "big" else slow[1000:21_000]
        assert (m.path / "slow" / key).read_bytes() == blob  # healthy again
    assert "Timeout" in m.log_text()
    m.umount()


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_and_bounded(mount, http_server, status):
    data = build_tar(http_server.root / "d.lindi.tar", N, SIZES["async"])
    srv = http_server
    m = mount(srv.url("d.lindi.tar"), None, *QUIET)
    # delta-seconds form: the retry waits as asked
    srv.reset_log()
    srv.fail_next("d.lindi.tar", status, 1, retry_after="2")
    t0 = time.monotonic()
    assert (m.path / "x/0").read_bytes() == data.expected(0)
    elapsed = time.monotonic() - t0
    log = srv.requests_for("d.lindi.tar")
    assert [r.status for r in log] == [status, 206]
    assert log[1].time - log[0].time >= 1.9 and elapsed < 5, (elapsed, log)
    # HTTP-date form
    srv.reset_log()
    srv.fail_next("d.lindi.tar", status, 1, retry_after=email.utils.formatdate(time.time() + 3))
    assert (m.path / "x/1").read_bytes() == data.expected(1)
    log = srv.requests_for("d.lindi.tar")
    assert [r.status for r in log] == [status, 206]
    assert log[1].time - log[0].time >= 1.0, log
    assert stats(m)["http"]["retry_after_waits"] == 2
    # a Retry-After beyond the bound (30 s): fail at once, say why
    srv.reset_log()
    srv.fail_next("d.lindi.tar", status, 10, retry_after="120")
    assert expect_eio(m.path / "x/2") < 2.0
    assert "Retry-After 120 s is beyond the bound" in m.log_text()
    srv.reset()
    assert (m.path / "x/2").read_bytes() == data.expected(2)
    m.umount()


def test_object_replaced_between_two_requests_of_one_file(mount, http_server, tmp_path):
    """A 3 MB chunk is bigger than a quarter of the memory cache (256K), so every FUSE read of
    it is a request of the whole chunk. The object is replaced between two reads of one open
    file: the second read fails with EIO; no read ever returns bytes of the new version to
    this mount. Putting the old object back makes the same mount read again; a new mount
    reads the new version whole."""
    srv = http_server
    chunk = 3_000_000
    old = build_tar(srv.root / "d.lindi.tar", 3, chunk)
    keep = tmp_path / "old.tar"
    shutil.copy2(old.path, keep)
    old_ns = os.stat(old.path).st_mtime_ns
    url = srv.url("d.lindi.tar")
    m = mount(url, None, *QUIET, "--memory-cache", "256K")
    fd = os.open(m.path / "x/0", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == old.expected(0)[:4096]
        new = build_tar(srv.root / "d.lindi.tar", 3, chunk, seed=9)
        assert new.expected(0) != old.expected(0)
        srv.reset_log()
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, chunk - 4096)
        assert e.value.errno == errno.EIO
        assert srv.requests_for("d.lindi.tar"), "the second read made no request"
    finally:
        os.close(fd)
    expect_eio(m.path / "x/1")  # any other file of the replaced object: refused too
    s = stats(m)
    assert s["http"]["version_changes"] >= 2
    assert "changed on the server" in m.log_text()
    # a second mount sees the new version, whole
    m2 = mount(url, None, *QUIET, "--memory-cache", "256K")
    for i in range(3):
        assert (m2.path / f"x/{i}").read_bytes() == new.expected(i), i
    m2.umount()
    # the old object back (same bytes, same mtime: same ETag): the first mount reads again
    shutil.copyfile(keep, srv.root / "d.lindi.tar")
    os.utime(srv.root / "d.lindi.tar", ns=(old_ns, old_ns))
    for i in range(3):
        assert (m.path / f"x/{i}").read_bytes() == old.expected(i), i
    m.umount()
