"""Read-path benchmarks of lindifuse, side by side with raw reads, lindi and fsspec, in one run.

    .venv/bin/python benchmarks/bench_read.py            # full run (~3-5 min), updates RESULTS.md
    .venv/bin/python benchmarks/bench_read.py --quick    # 32 MiB / 10k keys smoke test

Parts (``--only`` picks some):

local   256 MiB float32 array in 1 MiB uncompressed chunks, ``./blobs/x/<i>`` members of a
        ``.lindi.tar``: every chunk file read whole through a fresh mount (4 and 1 reader
        threads) vs raw ``os.pread`` of the same byte ranges of the tar; page cache dropped
        before each cold run, and a warm run (tar in the page cache, fresh mount).
mountlat  time from starting ``lindifuse mount`` to ``ls`` answering, for a tiny tar and for a
        100,000-key ``.lindi.json``; ``find MNT | wc -l`` on a fresh mount.
remote  the same tar served by tests/httpserver.py (20 ms per request) over loopback: zarr-python
        3 through a fresh mount vs lindi's ``LindiH5pyFile`` vs zarr-python 3 + fsspec's reference
        file system in-process; seconds and HTTP requests counted by the server.
walk    walk + stat every file of the 100,000-key source: lindifuse vs fsspec's FUSE mount.
scale   a 1,000,000-key ``.lindi.json``: mount time, ``find | wc -l``, the daemon's peak RSS.

Data goes to benchmarks/_work/read/ (gitignored); the many-key sources are reused when present.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _gen  # noqa: E402
from _benchlib import Report, fmt, range_server  # noqa: E402

MiB = 2**20
PARTS = ("local", "mountlat", "remote", "walk", "scale")


# -- helpers -----------------------------------------------------------------------------------


def pread_all(fd: int, size: int, offset: int) -> int:
    got = 0
    while got < size:
        b = os.pread(fd, size - got, offset + got)
        if not b:
            raise OSError(f"short read at {offset + got}")
        got += len(b)
    return got


def run_threads(fn: Callable[[int], int], n_items: int, nthreads: int) -> int:
    if nthreads == 1:
        return sum(fn(i) for i in range(n_items))
    with concurrent.futures.ThreadPoolExecutor(nthreads) as ex:
        return sum(ex.map(fn, range(n_items)))


def read_raw(tar: Path, ranges: list[tuple[str, int, int]], nthreads: int) -> tuple[float, int]:
    fd = os.open(tar, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        n = run_threads(lambda i: pread_all(fd, ranges[i][2], ranges[i][1]), len(ranges), nthreads)
        return time.perf_counter() - t0, n
    finally:
        os.close(fd)


def read_mounted(files: list[Path], sizes: list[int], nthreads: int) -> tuple[float, int]:
    def one(i: int) -> int:
        fd = os.open(files[i], os.O_RDONLY)
        try:
            return pread_all(fd, sizes[i], 0)
        finally:
            os.close(fd)

    t0 = time.perf_counter()
    n = run_threads(one, len(files), nthreads)
    return time.perf_counter() - t0, n


def sh_time(cmd: str, timeout: float = 600) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()}")
    return time.perf_counter() - t0, r.stdout.strip()


def spread(xs: list[float], nd: int = 2) -> str:
    """Median and, with several runs, the range: ``0.88 (0.80-0.95)``."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    med = f"{B.median(xs):.{nd}f}"
    return med if len(xs) < 2 else f"{med} ({min(xs):.{nd}f}-{max(xs):.{nd}f})"


@contextlib.contextmanager
def fsspec_fuse_mount(refs: Path, mnt: Path, log: Path) -> Iterator[float]:
    """fsspec's FUSE mount of ``refs`` in a subprocess; yields the seconds until ``ls`` answers."""
    mnt.mkdir(parents=True, exist_ok=True)
    if B.is_mounted(mnt):
        raise RuntimeError(f"{mnt}: already mounted")
    with open(log, "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(B.BENCH_DIR / "_fsspec_fuse.py"), str(refs), str(mnt)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fsspec FUSE mount exited: {log.read_text()[-500:]}")
            if B.is_mounted(mnt):
                try:
                    if os.listdir(mnt):
                        break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("fsspec FUSE mount did not come up")
            time.sleep(0.01)
        yield time.perf_counter() - t0
    finally:
        B.force_unmount(mnt)
        B.end_pid(proc.pid)
        proc.wait(10)


def walk(root: Path, timeout: float) -> dict:
    try:
        r = subprocess.run(
            [sys.executable, str(B.BENCH_DIR / "_walk.py"), str(root)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"seconds": None, "timeout": timeout}
    if r.returncode != 0:
        raise RuntimeError(f"walk {root}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)


# -- the benchmark -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.work = B.WORK / "read"
        self.work.mkdir(parents=True, exist_ok=True)
        self.r = Report()
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.mnt = self.work / "mnt"
        self._tar: _gen.ArrayTar | None = None
        self._nmount = 0

    # data ----------------------------------------------------------------------------------

    def tar(self) -> _gen.ArrayTar:
        if self._tar is None:
            a = self.a
            path = self.work / f"array-{a.size_mib}M-{a.chunk_kib}K.lindi.tar"
            t0 = time.perf_counter()
            self._tar = _gen.build_array_tar(path, a.size_mib * MiB, a.chunk_kib * 1024)
            print(
                f"built {path.name} ({path.stat().st_size / MiB:.0f} MiB, "
                f"{self._tar.nchunks} chunks) in {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
        return self._tar

    def keys_json(self, nkeys: int) -> tuple[Path, int]:
        path = self.work / f"keys-{nkeys}.lindi.json"
        if not path.exists():
            t0 = time.perf_counter()
            _gen.build_keys_json(path, nkeys)
            print(
                f"built {path.name} ({path.stat().st_size / MiB:.1f} MiB) in "
                f"{time.perf_counter() - t0:.1f}s",
                flush=True,
            )
        return path, path.stat().st_size

    @contextlib.contextmanager
    def mount(self, source: Path | str, tag: str, cache_dir: Path | None = None):
        """A fresh lindifuse mount; its persistent cache is a new, empty folder (removed after)
        unless ``cache_dir`` is given (then kept, for a warm remount)."""
        self._nmount += 1
        own = cache_dir is None
        cdir = cache_dir or self.work / "cache" / f"{tag}-{self._nmount}"
        if own:
            shutil.rmtree(cdir, ignore_errors=True)
        cdir.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{tag}.log"
        log.unlink(missing_ok=True)  # one mount per log, for Mount.load_seconds
        try:
            with B.lindifuse_mount(
                source, self.mnt, log_file=log, extra=("--cache-dir", cdir)
            ) as m:
                yield m
        finally:
            if own:
                shutil.rmtree(cdir, ignore_errors=True)

    # 1. local throughput -------------------------------------------------------------------

    def part_local(self) -> None:
        t = self.tar()
        ranges = t.ranges()
        total = len(ranges) * t.chunk_bytes
        results: dict[tuple, list[float]] = {}
        dropped = True
        ra_failed = ""
        # (page cache, reader threads, read_ahead_kb of the mount's bdi: None = as mounted)
        configs = [(c, n, None) for c in ("cold", "warm") for n in (4, 1)]
        configs += [(c, 4, 1024) for c in ("cold", "warm")]
        for _rep in range(self.a.reps):
            for cache, nthreads, ra in configs:
                if ra is None:  # raw pread of the tar
                    if cache == "cold":
                        dropped &= B.drop_caches()
                    else:
                        read_raw(t.path, ranges, 4)  # make sure the tar is in the page cache
                    secs, n = read_raw(t.path, ranges, nthreads)
                    assert n == total
                    results.setdefault(("raw", cache, nthreads), []).append(total / MiB / secs)
                with self.mount(t.path, "local") as m:  # a fresh mount: empty FUSE page cache
                    if ra is not None:
                        try:
                            dev = os.stat(m.path).st_dev
                            bdi = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
                            Path(bdi).write_text(f"{ra}\n")
                        except OSError as e:
                            ra_failed = str(e)
                            continue
                    files = [m.path / k for k, _, _ in ranges]
                    sizes = [s for _, _, s in ranges]
                    if cache == "cold":
                        dropped &= B.drop_caches()
                    else:
                        read_raw(t.path, ranges, 4)
                    secs, n = read_mounted(files, sizes, nthreads)
                    assert n == total
                    results.setdefault(("mount", cache, nthreads, ra), []).append(
                        total / MiB / secs
                    )
                    self._check_local_content(t, m.path)
        rows = []
        for cache, nthreads, ra in sorted(configs, key=lambda c: (c[0], c[2] or 0, -c[1])):
            if ("mount", cache, nthreads, ra) not in results:
                continue
            raw = B.median(results[("raw", cache, nthreads)])
            mnt = B.median(results[("mount", cache, nthreads, ra)])
            variant = "as mounted" if ra is None else f"read_ahead_kb={ra} (experiment)"
            rows.append(
                [
                    cache,
                    str(nthreads),
                    variant,
                    spread(results[("raw", cache, nthreads)], 0),
                    spread(results[("mount", cache, nthreads, ra)], 0),
                    f"{mnt / raw:.2f}x",
                ]
            )
        self.r.table(
            f"Local read: {total // MiB} MiB in {len(ranges)} chunk files of "
            f"{t.chunk_bytes // 1024} KiB (.lindi.tar members), MiB/s, median (range) of "
            f"{self.a.reps}",
            [
                "page cache",
                "threads",
                "FUSE readahead",
                "raw pread of the tar",
                "through lindifuse",
                "mount/raw",
            ],
            rows,
        )
        if not dropped:
            self.r.note("drop_caches failed: the 'cold' rows were read from the page cache")
        if ra_failed:
            self.r.note(f"read_ahead_kb experiment skipped: {ra_failed}")
        self.r.note(
            "local: 'cold' drops the page cache (tar and FUSE files) before reading; 'warm' has "
            "the tar in the page cache but a fresh mount (so every byte still goes through the "
            "daemon). The read_ahead_kb rows raise the kernel readahead window of the mount's "
            "bdi (/sys/class/bdi/MAJ:MIN/read_ahead_kb, 128 by default) so that the kernel asks "
            "the daemon for 1 MiB instead of 128 KiB per request; the daemon is unchanged."
        )
        cold4 = results[("mount", "cold", 4, None)]
        warm4 = results[("mount", "warm", 4, None)]
        cold4r = B.median(cold4) / B.median(results[("raw", "cold", 4)])
        warm4r = B.median(warm4) / B.median(results[("raw", "warm", 4)])
        self.r.aim(
            "local read, 4 threads: mount >= 0.5x raw",
            f"cold {cold4r:.2f}x, warm {warm4r:.2f}x",
            cold4r >= 0.5,
        )

    def _check_local_content(self, t: _gen.ArrayTar, mnt: Path) -> None:
        fd = os.open(t.path, os.O_RDONLY)
        try:
            for key, off, size in random.Random(1).sample(t.ranges(), min(3, t.nchunks)):
                if (mnt / key).read_bytes() != os.pread(fd, size, off):
                    raise AssertionError(f"{key}: mount and tar bytes differ")
        finally:
            os.close(fd)

    # 2. mount latency ------------------------------------------------------------------------

    def part_mountlat(self) -> None:
        src, jsize = self.keys_json(self.a.keys)
        rows = []
        tiny = self.tar().path
        for label, source in (
            (f"tiny .lindi.tar ({self.tar().nchunks + 4} keys)", tiny),
            (f"{self.a.keys:,}-key .lindi.json ({jsize / MiB:.1f} MiB)", src),
        ):
            mounts, loads, finds = [], [], []
            count = ""
            for _ in range(self.a.reps):
                with self.mount(source, "mountlat") as m:
                    mounts.append(m.mount_seconds)
                    load = m.load_seconds()
                    if load is not None:
                        loads.append(load)
                    secs, count = sh_time(f"find {shlex.quote(str(m.path))} | wc -l")
                    finds.append(secs)
            rows.append(
                [
                    label,
                    fmt(B.median(mounts)),
                    fmt(min(mounts)),
                    fmt(B.median(loads)),
                    fmt(B.median(finds)),
                    count,
                ]
            )
        self.r.table(
            f"Mount latency: `lindifuse mount` start to `ls` answering; then `find | wc -l` "
            f"on the fresh mount (seconds, median of {self.a.reps})",
            [
                "source",
                "mount s (median)",
                "mount s (best)",
                "of which daemon loading s (log)",
                "find s",
                "find lines",
            ],
            rows,
        )
        self.r.note(
            "mount latency: 'daemon loading' is the time between the daemon's first log line and "
            "its 'mounted' line (reading + parsing the source, building the tree); the rest of "
            "the mount time is two interpreter starts (CLI, then the daemon it spawns), imports "
            "and the readiness handshake."
        )
        big = float(rows[1][1])
        self.r.aim(f"{self.a.keys:,}-key mount: ls within 0.5 s", f"{big:.2f} s", big <= 0.5)

    # 3. remote cold read -----------------------------------------------------------------------

    def part_remote(self) -> None:
        import numpy as np
        import zarr

        t = self.tar()
        name = t.path.name
        expected = _gen.expected_values(0, t.shape[0])
        lindi_py = B.lindi_python()
        # Warm zarr up in this process (codec pipeline, first-use imports) so that whichever
        # in-process reader goes first does not pay for it.
        warm = zarr.create_array(store={}, shape=(8,), chunks=(4,), dtype="f4", zarr_format=2)
        warm[:] = 1
        assert float(warm[:].sum()) == 8.0
        res: dict[str, dict[str, list[float]]] = {}

        def add(kind: str, **vals: float) -> None:
            d = res.setdefault(kind, {})
            for k, v in vals.items():
                d.setdefault(k, []).append(v)

        with range_server(self.work, self.a.latency) as ask:
            url = f"http://127.0.0.1:{ask.port}/{name}"  # type: ignore[attr-defined]
            url_refs = t.url_refs(url)
            for _rep in range(self.a.reps):
                # lindifuse mount + zarr-python 3: cold (empty persistent cache), then a
                # remount on the now warm persistent cache
                cdir = self.work / "cache" / "remote"
                shutil.rmtree(cdir, ignore_errors=True)
                for kind in ("mount", "mount-warm"):
                    ask("reset")
                    with self.mount(url, "remote", cache_dir=cdir) as m:
                        t0 = time.perf_counter()
                        arr = zarr.open_array(str(m.path / "x"), mode="r", zarr_format=2)
                        t1 = time.perf_counter()
                        data = arr[:]
                        t2 = time.perf_counter()
                        st = m.stats()
                        assert np.array_equal(data, expected), f"{kind}: wrong values"
                        del data, arr
                        add(
                            kind,
                            setup=m.mount_seconds,
                            open=t1 - t0,
                            read=t2 - t1,
                            requests=int(ask(f"count {name}")),
                            daemon_requests=st["http"]["requests"],
                            mbytes=int(ask(f"bytes {name}")) / MiB,
                        )
                shutil.rmtree(cdir, ignore_errors=True)
                # zarr-python 3 + fsspec reference file system, in-process
                import fsspec

                ask("reset")
                t0 = time.perf_counter()
                fs = fsspec.filesystem(
                    "reference",
                    fo=url_refs,
                    remote_protocol="http",
                    asynchronous=True,
                    remote_options={"asynchronous": True},
                    skip_instance_cache=True,
                )
                store = zarr.storage.FsspecStore(fs, read_only=True, path="")
                ta = time.perf_counter()
                arr = zarr.open_array(store, path="x", mode="r", zarr_format=2)
                t1 = time.perf_counter()
                data = arr[:]
                t2 = time.perf_counter()
                assert np.array_equal(data, expected), "fsspec: wrong values"
                del data, arr, store, fs
                add(
                    "fsspec",
                    setup=ta - t0,
                    open=t1 - ta,
                    read=t2 - t1,
                    requests=int(ask(f"count {name}")),
                    mbytes=int(ask(f"bytes {name}")) / MiB,
                )
                # lindi's own reader (separate venv)
                if lindi_py:
                    ask("reset")
                    r = subprocess.run(
                        [lindi_py, str(B.BENCH_DIR / "_lindi_read.py"), url, "x"],
                        capture_output=True,
                        text=True,
                        timeout=900,
                    )
                    if r.returncode != 0:
                        raise RuntimeError(f"lindi read failed: {r.stderr.strip()[-800:]}")
                    out = json.loads(r.stdout.strip().splitlines()[-1])
                    assert out["ok"], "lindi: wrong values"
                    add(
                        "lindi",
                        setup=out["open_s"],
                        open=out["dataset_s"],
                        read=out["read_s"],
                        requests=int(ask(f"count {name}")),
                        mbytes=int(ask(f"bytes {name}")) / MiB,
                    )
        if not lindi_py:
            self.r.note("no lindi interpreter found (LINDI_PYTHON): lindi row skipped")
        total_mib = t.nbytes / MiB
        labels = {
            "mount": "zarr-python 3 through a fresh lindifuse mount (empty cache)",
            "mount-warm": "same, remounted on the warm persistent cache",
            "fsspec": "zarr-python 3 + fsspec ReferenceFileSystem (in-process)",
            "lindi": "lindi 0.4 LindiH5pyFile `f['x'][:]`",
        }
        rows = []
        for kind in ("mount", "fsspec", "lindi", "mount-warm"):
            if kind not in res:
                continue
            d = res[kind]
            read = B.median(d["read"])
            setup = B.median(d["setup"])
            opened = B.median(d["open"])
            rows.append(
                [
                    labels[kind],
                    fmt(setup),
                    fmt(opened),
                    spread(d["read"]),
                    fmt(setup + opened + read),
                    f"{total_mib / read:.0f}",
                    f"{B.median(d['requests']):.0f}",
                    f"{B.median(d['mbytes']):.0f}",
                ]
            )
        self.r.table(
            f"Remote cold read of the whole {total_mib:.0f} MiB array over loopback HTTP, "
            f"{self.a.latency * 1000:.0f} ms per request (median (range) of {self.a.reps}; "
            "fresh mount / fresh file system per run)",
            [
                "reader",
                "source s (mount / load refs)",
                "open array s",
                "read s",
                "total s",
                "read MiB/s",
                "HTTP requests",
                "MiB requested",
            ],
            rows,
        )
        m_read = B.median(res["mount"]["read"])
        f_read = B.median(res["fsspec"]["read"])
        self.r.aim(
            "remote read: mount no slower than fsspec in-process",
            f"mount {m_read:.2f} s vs fsspec {f_read:.2f} s ({f_read / m_read:.2f}x)",
            m_read <= f_read * 1.05,
        )
        if "lindi" in res:
            l_total = B.median(res["lindi"]["read"]) + B.median(res["lindi"]["setup"])
            m_total = m_read + B.median(res["mount"]["setup"])
            self.r.aim(
                "remote read: ~9x faster than lindi",
                f"read {B.median(res['lindi']['read']) / m_read:.1f}x, "
                f"including mount/open {l_total / m_total:.1f}x",
                B.median(res["lindi"]["read"]) / m_read >= 8.0,
            )
        self.r.note(
            "remote: request counts are the server's; the mount's include its loading requests "
            "(entry, index, lindi.json; the daemon itself counted "
            f"{B.median(res['mount']['daemon_requests']):.0f}). fsspec is given the references "
            "already rewritten to URL ranges (no loading requests). 'MiB requested' adds up the "
            "ranges asked for (a GET without Range counts the whole object: lindi's first request "
            "is one, it reads the head and drops the connection)."
        )

    # 4. walk + stat --------------------------------------------------------------------------

    def part_walk(self) -> None:
        src, _ = self.keys_json(self.a.keys)
        plain = self.work / f"keys-{self.a.keys}.tree"
        t0 = time.perf_counter()
        _gen.materialize_tree(src, plain)
        if time.perf_counter() - t0 > 1:
            print(f"wrote {plain.name} in {time.perf_counter() - t0:.1f}s", flush=True)
        fmnt = self.work / "fmnt"
        lf, lf2, ff, pf = [], [], [], []
        lmount, fmount = [], []
        files = ""
        for _ in range(self.a.reps):
            with self.mount(src, "walk") as m:
                lmount.append(m.mount_seconds)
                w = walk(m.path, self.a.walk_timeout)
                lf.append(w["seconds"])
                files = f"{w['files']:,} files, {w['dirs']:,} dirs"
                lf2.append(walk(m.path, self.a.walk_timeout)["seconds"])
            try:
                with fsspec_fuse_mount(src, fmnt, self.logs / "fsspec-fuse.log") as secs:
                    fmount.append(secs)
                    w = walk(fmnt, self.a.walk_timeout)
                    ff.append(w["seconds"])
            except (RuntimeError, OSError) as e:
                self.r.note(f"fsspec FUSE mount failed ({e}); is libfuse2 installed?")
                break
            B.drop_caches()
            pf.append(walk(plain, self.a.walk_timeout)["seconds"])
        rows = [
            ["lindifuse, fresh mount", fmt(B.median(lmount)), spread(lf), files],
            ["lindifuse, same mount again (kernel caches warm)", "", spread(lf2), ""],
        ]
        if ff:
            timed_out = any(x is None for x in ff)
            fw = None if timed_out else B.median(ff)
            rows.append(
                [
                    "fsspec.fuse (fusepy) over ReferenceFileSystem, fresh mount",
                    fmt(B.median(fmount)),
                    f">{self.a.walk_timeout:.0f} (timeout)" if timed_out else spread(ff),
                    "",
                ]
            )
        rows.append(["the same tree as plain files on local disk (cold)", "", spread(pf), ""])
        self.r.table(
            f"Walk + stat every file of the {self.a.keys:,}-key .lindi.json "
            f"(os.walk + os.stat in a subprocess, seconds, median (range) of {self.a.reps})",
            ["file system", "mount s", "walk+stat s", "tree"],
            rows,
        )
        if ff:
            lw = B.median(lf)
            fw = self.a.walk_timeout if any(x is None for x in ff) else B.median(ff)
            self.r.aim(
                "walk: lindifuse >= 5x faster than fsspec.fuse",
                f"{fw / lw:.1f}x ({lw:.2f} s vs {fw:.2f} s)",
                fw / lw >= 5,
            )

    # 5. scale ----------------------------------------------------------------------------------

    def part_scale(self) -> None:
        src, jsize = self.keys_json(self.a.scale_keys)
        with self.mount(src, "scale") as m:
            after_mount = B.proc_status(m.pid)
            secs, count = sh_time(f"find {shlex.quote(str(m.path))} | wc -l", timeout=1200)
            secs2, _ = sh_time(f"find {shlex.quote(str(m.path))} | wc -l", timeout=1200)
            after_find = B.proc_status(m.pid)
            mount_s = m.mount_seconds
            load_s = m.load_seconds()
        log = (self.logs / "scale.log").read_text().splitlines()
        tree_line = next((ln.split(": ", 1)[1] for ln in reversed(log) if "tree:" in ln), "")
        self.r.table(
            f"Scale: {self.a.scale_keys:,}-key .lindi.json",
            ["figure", "value"],
            [
                ["lindi.json size", f"{jsize / MiB:.1f} MiB"],
                ["mount (start to `ls` answering)", f"{mount_s:.2f} s"],
                ["of which daemon loading (parse + tree, from its log)", f"{fmt(load_s)} s"],
                ["daemon's tree build (from its log)", tree_line or "n/a"],
                ["`find MNT | wc -l` (fresh mount)", f"{secs:.2f} s ({count} lines)"],
                ["`find MNT | wc -l` again (kernel caches warm)", f"{secs2:.2f} s"],
                ["daemon RSS after mount", f"{after_mount.get('VmRSS', 0) / 1024:.0f} MiB"],
                [
                    "daemon peak RSS (VmHWM) after find",
                    f"{after_find.get('VmHWM', 0) / 1024:.0f} MiB",
                ],
            ],
        )
        self.r.aim(
            f"{self.a.scale_keys:,} keys mount in seconds",
            f"{mount_s:.1f} s",
            mount_s <= 10,
        )

    # run ---------------------------------------------------------------------------------------

    def run(self) -> None:
        t0 = time.perf_counter()
        for part in self.a.only:
            print(f"\n== {part} ==", flush=True)
            tp = time.perf_counter()
            getattr(self, f"part_{part}")()
            print(f"({part}: {time.perf_counter() - tp:.0f}s)", flush=True)
        self.elapsed = time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32 MiB, 10k/100k keys, 1 repetition")
    p.add_argument("--size-mib", type=int, default=None, help="array size (default 256)")
    p.add_argument("--chunk-kib", type=int, default=1024, help="chunk size (default 1024)")
    p.add_argument("--keys", type=int, default=None, help="keys of the walk source (100000)")
    p.add_argument("--scale-keys", type=int, default=None, help="keys of the scale source (1e6)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per HTTP request")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    p.add_argument("--walk-timeout", type=float, default=300.0, help="seconds (default 300)")
    p.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts: {','.join(PARTS)}"
    )
    p.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = p.parse_args(argv)
    q = args.quick
    args.size_mib = args.size_mib or (32 if q else 256)
    args.keys = args.keys or (10_000 if q else 100_000)
    args.scale_keys = args.scale_keys or (100_000 if q else 1_000_000)
    args.reps = args.reps or (1 if q else 5)
    args.only = B.parse_parts(p, args.only, PARTS)

    load0 = os.getloadavg()
    bench = Bench(args)
    bench.run()
    load1 = os.getloadavg()
    r = bench.r
    cmd = B.command_line(__file__, argv)
    r.publish(
        "bench_read",
        "Read path (`benchmarks/bench_read.py`)",
        cmd,
        bench.elapsed,
        extra=[
            f"- load average (1 min) before / after: {load0[0]:.2f} / {load1[0]:.2f} (other work on the machine disturbs the figures)"
        ],
        write=not args.no_results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
