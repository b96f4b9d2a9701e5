"""Soak (issue 9, item 6): 16 concurrent readers and one writer on a writable mount, and 16
readers on a remote mount while the server injects faults. Checked: no wrong bytes, no errors
but the injected ones (which the retries absorb), no leaked file descriptors or threads in the
daemon, peak RSS within the memory cache plus a documented overhead (SOAK_RSS_OVERHEAD).

CI runs each phase for ``LINDIFUSE_SOAK_SECONDS`` (default 8); the full length is::

    LINDIFUSE_SOAK_SECONDS=60 .venv/bin/python -m pytest -q -s tests/test_soak.py

The figures (reads, bytes checked, writes, faults injected, peak RSS) are printed with ``-s``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time

import pytest
from plain_lindi import write_tar
from remote_data import build_tar
from writekit import assert_valid_archive

SECONDS = float(os.environ.get("LINDIFUSE_SOAK_SECONDS", "8"))
READERS = 16
MEMORY_CACHE = 32 * 2**20
SOAK_RSS_OVERHEAD = 160 * 2**20
"""Peak RSS allowed beyond --memory-cache: the interpreter, pyfuse3, trio, httpx, numpy (for
the padding rule), the tree, staged writes (up to 8 MiB per file in memory) and the write-behind
queue of the disk cache. Documented in docs/semantics.md."""


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def kib(v: str) -> int:
    return int(v.split()[0]) * 1024


def daemon_resources(pid: int) -> tuple[int, int]:
    """(open file descriptors, threads) of the daemon."""
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


FD_SLACK = 4
POOL_FDS = 32 + 16
"""Connections a remote mount may keep alive: httpx's keep-alive pool (32) and the idle
connections of the worker-thread pool (at most 16 per host, the per-host request bound). A leak
of one descriptor per failed request would exceed it in any run (hundreds of faults)."""
THREAD_SLACK = 2


def settle_resources(
    pid: int, before: tuple[int, int], fd_slack: int = FD_SLACK
) -> tuple[int, int]:
    """Wait (bounded: trio's idle worker threads exit after 10 s) for fds and threads to come
    back to ``before`` plus the slack."""
    end = time.monotonic() + 20
    now = daemon_resources(pid)
    while time.monotonic() < end:
        now = daemon_resources(pid)
        if now[0] <= before[0] + fd_slack and now[1] <= before[1] + THREAD_SLACK:
            break
        time.sleep(0.2)
    return now


def versioned(key: str, version: int, size: int) -> bytes:
    """Self-checking content: a header naming (key, version), then bytes derived from both."""
    head = f"{key}|{version}|{size}|".encode()
    seed = hashlib.sha256(head).digest()
    body = (seed * (size // len(seed) + 1))[: max(0, size - len(head))]
    return head + body


def verify_versioned(key: str, data: bytes) -> bool:
    try:
        k, v, size, _ = data.split(b"|", 3)
        return k.decode() == key and data == versioned(key, int(v), int(size))
    except ValueError:
        return False


def drop_pages(path) -> None:
    """Drop this file's pages from the kernel page cache (per file: no global effect), so the
    next read goes to the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reads = 0
        self.bytes = 0
        self.errors: list[str] = []

    def ok(self, n: int) -> None:
        with self.lock:
            self.reads += 1
            self.bytes += n

    def bad(self, msg: str) -> None:
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(msg)


def test_soak_writable_mount(mount, tmp_path):
    static = {f"r/{i}": os.urandom(random.Random(i).randrange(1000, 300_000)) for i in range(32)}
    refs = {".zgroup": {"zarr_format": 2}}
    blobs = {}
    for key, blob in static.items():
        refs[key] = [f"./blobs/{key}", 0, len(blob)]
        blobs[f"blobs/{key}"] = blob
    arch = tmp_path / "soak.lindi.tar"
    write_tar(arch, {"refs": refs}, blobs)
    m = mount(arch, None, "--memory-cache", str(MEMORY_CACHE))
    os.makedirs(m.path / "w", exist_ok=True)
    before = daemon_resources(m.pid)
    stop = threading.Event()
    stats = Stats()
    latest: dict[str, int] = {}  # key -> last version whose rename returned
    sizes: dict[str, int] = {}
    wlock = threading.Lock()
    writes = {"files": 0, "bytes": 0, "fsyncs": 0}

    def writer() -> None:
        rng = random.Random(1)
        j = 0
        while not stop.is_set():
            key = f"w/{rng.randrange(64)}"
            with wlock:
                version = latest.get(key, 0) + 1
            size = rng.choice([100, 5_000, 60_000, 400_000, 2_000_000])
            data = versioned(key, version, size)
            tmp = m.path / f"{key}.{j}.partial"  # zarr's pattern: write, then rename over
            with open(tmp, "wb") as f:
                f.write(data)
                if j % 10 == 0:
                    f.flush()
                    os.fsync(f.fileno())
                    writes["fsyncs"] += 1
            os.rename(tmp, m.path / key)
            with wlock:
                latest[key] = version
                sizes[key] = size
            writes["files"] += 1
            writes["bytes"] += size
            j += 1

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            if rng.random() < 0.5:
                key = rng.choice(sorted(static))
            else:
                with wlock:
                    if not latest:
                        continue
                    key = rng.choice(sorted(latest))
            path = m.path / key
            try:
                data = path.read_bytes()
            except OSError as e:
                stats.bad(f"{key}: {e}")
                continue
            good = data == static[key] if key.startswith("r/") else verify_versioned(key, data)
            if good:
                stats.ok(len(data))
            else:
                stats.bad(f"{key}: wrong bytes ({len(data)} bytes)")

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(s,)) for s in range(READERS)
    ]
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    after = settle_resources(m.pid, before)
    peak = kib(proc_status(m.pid)["VmHWM"])
    m.umount()
    view = assert_valid_archive(arch)
    for key, version in latest.items():
        assert view.content(key) == versioned(key, version, sizes[key]), key
    for key, blob in static.items():
        assert view.content(key) == blob
    figures = {
        "seconds": SECONDS,
        "reads": stats.reads,
        "bytes_checked": stats.bytes,
        "writes": writes,
        "fds_before_after": [before[0], after[0]],
        "threads_before_after": [before[1], after[1]],
        "peak_rss_mib": round(peak / 2**20, 1),
    }
    print("\nsoak writable:", json.dumps(figures))
    assert not stats.errors, stats.errors[:10]
    assert stats.reads > 0 and writes["files"] > 0
    assert after[0] <= before[0] + FD_SLACK, (before, after)
    assert after[1] <= before[1] + THREAD_SLACK, (before, after)
    assert peak <= MEMORY_CACHE + SOAK_RSS_OVERHEAD, figures


FAULTS = [500, 503, 429, "reset", "truncate", "headers-reset", "mid-reset"]


@pytest.mark.parametrize("cache", ["disk-cache", "no-cache"])
def test_soak_remote_mount_with_faults(mount, http_server, tmp_path, cache):
    srv = http_server
    data = build_tar(srv.root / "d.lindi.tar", 400, 40_000)  # 16 MB of chunks
    extra = ["--cache-dir", str(tmp_path / "cache")] if cache == "disk-cache" else ["--no-cache"]
    m = mount(srv.url("d.lindi.tar"), None, "--memory-cache", "1M", "--timeout", "10", *extra)
    before = daemon_resources(m.pid)
    stop = threading.Event()
    stats = Stats()
    injected: dict[str, int] = {}

    def injector() -> None:
        """One fault at a time; the next only once the last one was consumed and 5 answers
        arrived after it (a truncated answer also logs 206, so counting starts after the
        consumption). A request and its 4 retries are then practically never all hit: every
        fault is absorbed by a retry and the readers must see no error at all."""
        rng = random.Random(3)
        mark = None
        while not stop.is_set():
            time.sleep(0.05)
            if srv._failures.get("d.lindi.tar"):
                continue  # not consumed yet
            if mark is None:
                mark = len(srv.log)
            if sum(1 for r in srv.log[mark:] if r.status in (200, 206)) < 5:
                continue
            kind = rng.choice(FAULTS)
            srv.fail_next("d.lindi.tar", kind, 1)
            injected[str(kind)] = injected.get(str(kind), 0) + 1
            mark = None

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            i = rng.randrange(data.nchunks)
            path = m.path / "x" / str(i)
            try:
                drop_pages(path)
                got = path.read_bytes()
            except OSError as e:
                stats.bad(f"x/{i}: {e}")
                continue
            if got == data.expected(i):
                stats.ok(len(got))
            else:
                stats.bad(f"x/{i}: wrong bytes")

    threads = [threading.Thread(target=injector)] + [
        threading.Thread(target=reader, args=(s,)) for s in range(READERS)
    ]
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    faulted = sum(1 for r in srv.log if r.status in (0, 500, 503, 429) or r.status is None)
    srv.reset()
    for i in range(data.nchunks):  # healthy again: every chunk right
        drop_pages(m.path / "x" / str(i))
        assert (m.path / "x" / str(i)).read_bytes() == data.expected(i), i
    after = settle_resources(m.pid, before, POOL_FDS)
    peak = kib(proc_status(m.pid)["VmHWM"])
    s = json.loads(os.getxattr(m.path, "user.lindifuse.stats"))
    m.umount()
    figures = {
        "seconds": SECONDS,
        "cache": cache,
        "reads": stats.reads,
        "bytes_checked": stats.bytes,
        "faults_injected": injected,
        "failed_responses_seen": faulted,
        "retries": s["http"]["retries"],
        "requests": s["http"]["requests"],
        "fds_before_after": [before[0], after[0]],
        "threads_before_after": [before[1], after[1]],
        "peak_rss_mib": round(peak / 2**20, 1),
    }
    print(f"\nsoak remote ({cache}):", json.dumps(figures))
    assert not stats.errors, stats.errors[:10]
    assert stats.reads > 0 and sum(injected.values()) > 0
    assert after[0] <= before[0] + POOL_FDS, (before, after)
    assert after[1] <= before[1] + THREAD_SLACK, (before, after)
    assert peak <= 2**20 + SOAK_RSS_OVERHEAD, figures
