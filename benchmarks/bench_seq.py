"""Issue 10 benchmark: one sequential reader, walks, small files, writes and per-request costs,
each beside its peers in the same run, and optionally beside a baseline checkout of lindifuse.

    .venv/bin/python benchmarks/bench_seq.py                       # every part, RESULTS.md
    .venv/bin/python benchmarks/bench_seq.py --only remote,walk    # some parts
    .venv/bin/python benchmarks/bench_seq.py --base /tmp/base      # also a baseline checkout
    .venv/bin/python benchmarks/bench_seq.py --quick --no-write    # smoke test
    .venv/bin/python benchmarks/bench_seq.py --requests --base /tmp/base   # + request counts

``--requests`` adds a table: per workload and lindifuse, the FUSE requests its daemon answered
while the workload ran, by kind, per MiB read and per file read, and the daemon's CPU seconds
(user + system from /proc) in all and per MiB. Each lever of issue 18 is judged on these.

``--base DIR`` names a directory holding another ``lindifuse/`` package (for example
``git archive <commit> lindifuse | tar -x -C DIR``); it runs with this venv's interpreter and
dependencies, and every lindifuse row is measured for both, interleaved run by run, in an order
rotated each repetition (with ratarmount and the local write reference among them; only
ratios within one run count on this shared machine).

Parts (``--only``):

remote    256 MiB float32 array in 1 MiB chunks, a ``.lindi.tar`` over loopback HTTP with
          ``--latency`` (20 ms) per request, cold (page cache dropped, empty persistent cache,
          fresh mount): zarr 2 ``DirectoryStore`` (one sequential reader, .venv-lindi),
          ``cat`` of the chunk files in chunk order, zarr 3 ``LocalStore``, against raw range
          GETs with 8 threads and zarr 3 + fsspec in-process.
local     the same array as a local ``.lindi.tar``, cold: zarr 2 (one reader), 4 threads
          reading the chunk files, against raw ``pread`` of the tar with 1 and 4 threads and
          ratarmount (4 threads; when its command is found, see --ratarmount).
walk      os.walk + os.stat of the 100,202-key ``.lindi.json`` tree: fresh mount (cold) and
          again (warm), the same tree as plain files on local disk (warm), mount -> ``ls``.
small     50,000 chunk files of 4 KiB over loopback HTTP: 4 reader threads on a remount with
          a warm persistent cache (page cache dropped), files/s.
write     zarr 2 writes 256 MiB in 1 MiB chunks into a writable mount plus ``lindifuse
          umount``, against the same into a local directory plus ``sync``.
requests  per-request cost, microseconds, on a warm tar: LOOKUP (stat of a file not yet
          looked up), GETATTR (statx with AT_STATX_FORCE_SYNC), one READDIRPLUS listing of a
          1,000-entry directory, READ of 4 KiB (POSIX_FADV_RANDOM, pages not yet read through
          the mount: one request each) and of a whole 1 MiB chunk file (one pread; the kernel
          asks for it in one request with the mount's 1 MiB read-ahead).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _gen  # noqa: E402

MiB = 2**20
PARTS = ("remote", "local", "walk", "small", "write", "requests")
WORK = B.WORK / "seq"

ZARR2_READ = """
import json, sys, time, numpy as np, zarr
sys.path.insert(0, {bench!r})
import _gen
t0, c0 = time.perf_counter(), time.process_time()
a = zarr.open_array(zarr.DirectoryStore({path!r}), mode="r")
d = a[:]
t, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({{"s": t, "cpu": cpu,
                  "ok": bool(np.array_equal(d, _gen.expected_values(0, d.size)))}}))
"""

ZARR3_READ = """
import json, sys, time, numpy as np, zarr
sys.path.insert(0, {bench!r})
import _gen
t0 = time.perf_counter()
store = zarr.storage.LocalStore({path!r}, read_only=True)
d = zarr.open_array(store, mode="r", zarr_format=2)[:]
t = time.perf_counter() - t0
print(json.dumps({{"s": t, "ok": bool(np.array_equal(d, _gen.expected_values(0, d.size)))}}))
"""

FSSPEC_READ = """
import json, sys, time, numpy as np, zarr, fsspec
sys.path.insert(0, {bench!r})
import _gen
refs = json.load(open({refs!r}))
t0 = time.perf_counter()
fs = fsspec.filesystem("reference", fo=refs, remote_protocol="http", asynchronous=True,
                       remote_options={{"asynchronous": True}}, skip_instance_cache=True)
store = zarr.storage.FsspecStore(fs, read_only=True, path="")
d = zarr.open_array(store, path="x", mode="r", zarr_format=2)[:]
t = time.perf_counter() - t0
print(json.dumps({{"s": t, "ok": bool(np.array_equal(d, _gen.expected_values(0, d.size)))}}))
"""

ZARR2_WRITE = """
import json, sys, time, numpy as np, zarr
n = {nbytes} // 4
data = np.arange(n, dtype="float32")
t0 = time.perf_counter()
z = zarr.open_array(zarr.DirectoryStore({path!r}), mode="w", shape=(n,), chunks=(2**18,),
                    dtype="float32", compressor=None)
z[:] = data
print(json.dumps({{"s": time.perf_counter() - t0}}))
"""


def run_json(cmd: list[str], timeout: float = 900, env: dict | None = None) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def snippet(code: str, python: str | None = None, **kw: str) -> dict:
    return run_json([python or sys.executable, "-c", code.format(bench=str(B.BENCH_DIR), **kw)])


def med(xs: list[float]) -> float:
    return B.median([x for x in xs if x == x])


spread = B.spread


# -- raw peers -----------------------------------------------------------------------------------


def raw_gets(port: int, name: str, ranges: list[tuple[int, int]], nthreads: int) -> float:
    """Range GETs of ``ranges`` with ``nthreads`` threads (one keep-alive connection each)."""
    import threading

    local = threading.local()

    def get(rng: tuple[int, int]) -> int:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        off, size = rng
        c.request("GET", "/" + name, headers={"Range": f"bytes={off}-{off + size - 1}"})
        body = c.getresponse().read()
        assert len(body) == size
        return size

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(nthreads) as ex:
        total = sum(ex.map(get, ranges))
    assert total == sum(s for _, s in ranges)
    return time.perf_counter() - t0


def raw_pread(path: Path, ranges: list[tuple[int, int]], nthreads: int) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(nthreads) as ex:
            total = sum(ex.map(lambda r: len(os.pread(fd, r[1], r[0])), ranges))
        assert total == sum(s for _, s in ranges)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def read_files(files: list[Path], nthreads: int) -> tuple[float, int]:
    def one(p: Path) -> int:
        with open(p, "rb", buffering=0) as f:
            return len(f.read())

    t0 = time.perf_counter()
    if nthreads == 1:
        total = sum(one(p) for p in files)
    else:
        with cf.ThreadPoolExecutor(nthreads) as ex:
            total = sum(ex.map(one, files))
    return time.perf_counter() - t0, total


def cat_files(files: list[Path]) -> float:
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as out:
        subprocess.run(["cat", *map(str, files)], stdout=out, check=True)
    return time.perf_counter() - t0


# -- statx for GETATTR ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
AT_STATX_FORCE_SYNC = 0x2000
STATX_BASIC_STATS = 0x7FF


def statx_sync(path: bytes, buf: ctypes.Array) -> None:
    if _libc.statx(-100, path, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, buf) != 0:
        raise OSError(ctypes.get_errno(), "statx")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def statx_loop(path: bytes, buf: ctypes.Array, n: int) -> None:
    for _ in range(n):
        statx_sync(path, buf)


def list_dirs(dirs: list[Path]) -> None:
    for d in dirs:
        os.listdir(d)


class Impl:
    """One lindifuse to measure: this checkout ('new') or a baseline directory ('base')."""

    def __init__(self, name: str, base_dir: Path | None) -> None:
        self.name = name
        if base_dir is None:
            self.cmd = B.lindifuse_cmd()
            self.env = None
        else:
            shim = WORK / "baseshim"
            shim.mkdir(parents=True, exist_ok=True)
            # Runs after the venv's .pth files: drops the editable finder of this checkout so
            # that the baseline's lindifuse (on PYTHONPATH) is imported, in the daemon too.
            (shim / "sitecustomize.py").write_text(
                "import sys\n"
                "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
                "repr(f).lower()]\n"
                "for k in [k for k in sys.modules if k.split('.')[0] == 'lindifuse']:\n"
                "    del sys.modules[k]\n"
            )
            B.compile_package(base_dir / "lindifuse")
            self.cmd = [str(B.REPO / ".venv" / "bin" / "python"), "-m", "lindifuse"]
            # PYTHONSAFEPATH: `python -m` run from this checkout must not import its lindifuse
            self.env = {
                **os.environ,
                "PYTHONPATH": f"{shim}:{base_dir.resolve()}",
                "PYTHONSAFEPATH": "1",
            }
            probe = subprocess.run(
                [*self.cmd[:1], "-c", "import lindifuse.fs; print(lindifuse.fs.__file__)"],
                env=self.env,
                capture_output=True,
                text=True,
            ).stdout.strip()
            if not probe.startswith(str(base_dir.resolve())):
                raise SystemExit(f"--base {base_dir}: lindifuse still imported from {probe}")


class Counts:
    """--requests: FUSE requests by kind and daemon CPU seconds per workload and lindifuse.

    The counts are the daemon's own (``requests`` in its stats attribute: one per request its
    handlers answered), taken around the workload only; the two stats reads add GETXATTRs,
    which are not counted."""

    def __init__(self) -> None:
        # (workload, impl) -> list of (requests by kind, cpu seconds, bytes, files), one per run
        self.runs: dict[tuple[str, str], list[tuple[dict[str, int], float, int, int]]] = {}

    def add(
        self,
        impl: str,
        work: tuple[str, int, int],
        r0: dict[str, int],
        r1: dict[str, int],
        cpu: float,
    ) -> None:
        label, nbytes, nfiles = work
        kinds = {k: r1.get(k, 0) - r0.get(k, 0) for k in r1}
        # the second stats read: os.getxattr asks twice (128 bytes: ERANGE, then the value)
        kinds["getxattr"] = kinds.get("getxattr", 0) - 2
        kinds = {k: v for k, v in kinds.items() if v > 0}
        self.runs.setdefault((label, impl), []).append((kinds, cpu, nbytes, nfiles))

    def rows(self) -> list[list[str]]:
        out = []
        for (label, impl), runs in self.runs.items():
            mib = runs[0][2] / MiB
            nfiles = runs[0][3]
            kinds = sorted({k for r in runs for k in r[0]}, key=lambda k: -runs[0][0].get(k, 0))
            per = {k: med([r[0].get(k, 0) for r in runs]) for k in kinds}
            total = med([sum(r[0].values()) for r in runs])
            by_kind = ", ".join(f"{k} {v / nfiles:.3g}" for k, v in per.items() if v) or "-"
            cpu = [r[1] for r in runs]
            out.append(
                [
                    label,
                    impl,
                    f"{mib:,.0f} MiB, {nfiles:,} files",
                    f"{total:,.0f}",
                    f"{total / mib:,.1f}" if mib else "-",
                    f"{total / nfiles:.3g}",
                    by_kind,
                    spread(cpu, 2),
                    f"{med(cpu) / mib:.4f}" if mib else "-",
                ]
            )
        return out

    def publish(self, r: B.Report, reps: int) -> None:
        if not self.runs:
            return
        r.table(
            f"FUSE requests and daemon CPU per workload (--requests; median of {reps} runs)",
            [
                "workload",
                "lindifuse",
                "read",
                "requests",
                "per MiB",
                "per file",
                "per file, by kind",
                "daemon CPU-s, median (range)",
                "CPU-s per MiB",
            ],
            self.rows(),
        )


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.r = B.Report()
        self.work = WORK
        self.mnt = self.work / "mnt"
        self.logs = self.work / "logs"
        for d in (self.mnt, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.impls = [Impl("new", None)]
        if a.base:
            self.impls.insert(0, Impl("base", Path(a.base)))
        self.lindi_py = B.lindi_python()
        self._n = 0
        self.counts = Counts()

    @contextlib.contextmanager
    def mount(
        self,
        impl: Impl,
        source,
        *extra: str,
        read_only: bool = True,
        work: tuple[str, int, int] | None = None,
    ) -> Iterator[B.Mount]:
        """Mount ``source`` for ``impl``. With --requests and ``work`` = (workload, bytes read,
        files read), the FUSE requests by kind and the daemon CPU seconds spent inside the
        ``with`` body (not the mount itself) are recorded for the requests table."""
        self._n += 1
        cache = self.work / "cache" / f"m{self._n}"
        shutil.rmtree(cache, ignore_errors=True)
        log = self.logs / f"{impl.name}-{self._n}.log"
        if "--cache-dir" not in extra and "--no-cache" not in extra:
            extra = (*extra, "--cache-dir", str(cache))
        try:
            with (
                B.lindifuse_mount(
                    source,
                    self.mnt,
                    log_file=log,
                    extra=extra,
                    read_only=read_only,
                    cmd=impl.cmd,
                    env=impl.env,
                    umount_timeout=300,
                ) as m,
                self.count(impl, m, work),
            ):
                yield m
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    @contextlib.contextmanager
    def count(self, impl: Impl, m: B.Mount, work: tuple[str, int, int] | None) -> Iterator[None]:
        """With --requests: record the requests and daemon CPU of the ``with`` body as ``work``
        (workload, bytes read, files read)."""
        if not (self.a.requests and work):
            yield
            return
        r0, c0 = m.stats()["requests"], cpu_seconds(m.pid)
        yield
        c1, r1 = cpu_seconds(m.pid), m.stats()["requests"]
        self.counts.add(impl.name, work, r0, r1, c1 - c0)

    def tar(self, where: Path, name: str, nbytes: int, chunk: int) -> _gen.ArrayTar:
        where.mkdir(parents=True, exist_ok=True)
        return _gen.build_array_tar(where / name, nbytes, chunk)

    def in_turn(self, rep: int, extra: tuple = ()) -> list:
        """The lindifuse builds (and ``extra`` runners) in the order of repetition ``rep``: the
        list rotated by one each time, so no build always runs first (the first slot of a rep
        has measured faster on this machine, by up to 30% for writes)."""
        runners = [*self.impls, *extra]
        k = rep % len(runners)
        return runners[k:] + runners[:k]

    def rowset(self, res: dict[str, list[float]], unit: str) -> list[list[str]]:
        return [[k, spread(v), unit] for k, v in res.items()]

    def plain_copy(self, t: _gen.ArrayTar) -> Path:
        """The array's chunks as plain files on local disk (zarr 2's own floor)."""
        return _gen.plain_array_copy(t, self.work)

    # -- remote -----------------------------------------------------------------------------------

    def part_remote(self) -> None:
        www = self.work / "www"
        t = self.tar(www, "big.lindi.tar", self.a.mib * MiB, MiB)
        ranges = [(off, size) for _, off, size in t.ranges()]
        refs = self.work / "big.fsspec.json"
        big = (len(ranges) * MiB, len(ranges))  # bytes and chunk files read by each workload
        res: dict[str, list[float]] = {}
        with B.range_server(www, self.a.latency) as ask:
            port = ask.port  # type: ignore[attr-defined]
            url = f"http://127.0.0.1:{port}/big.lindi.tar"
            refs.write_text(json.dumps(t.url_refs(url)))
            for rep in range(self.a.reps):
                res.setdefault("raw range GETs, 8 threads", []).append(
                    raw_gets(port, "big.lindi.tar", ranges, 8)
                )
                out = snippet(FSSPEC_READ, refs=str(refs))
                assert out["ok"]
                res.setdefault("zarr 3 + fsspec in-process", []).append(out["s"])
                if self.lindi_py:
                    B.drop_caches()
                    out = snippet(ZARR2_READ, self.lindi_py, path=str(self.plain_copy(t) / "x"))
                    res.setdefault("zarr 2 DirectoryStore, same chunks as local files", []).append(
                        out["s"]
                    )
                for impl in self.in_turn(rep):
                    if self.lindi_py:
                        B.drop_caches()
                        with self.mount(impl, url, work=("remote: zarr 2", *big)) as m:
                            out = snippet(ZARR2_READ, self.lindi_py, path=str(m.path / "x"))
                            assert out["ok"]
                            res.setdefault(f"{impl.name}: zarr 2 DirectoryStore", []).append(
                                out["s"]
                            )
                    B.drop_caches()
                    with self.mount(impl, url, work=("remote: cat", *big)) as m:
                        files = [m.path / k for k, _, _ in t.ranges()]
                        res.setdefault(f"{impl.name}: cat of the chunk files", []).append(
                            cat_files(files)
                        )
                    B.drop_caches()
                    with self.mount(impl, url, work=("remote: zarr 3", *big)) as m:
                        out = snippet(ZARR3_READ, path=str(m.path / "x"))
                        assert out["ok"]
                        res.setdefault(f"{impl.name}: zarr 3 LocalStore", []).append(out["s"])
                    B.drop_caches()
                    with self.mount(impl, url, work=("remote: 4 threads", *big)) as m:
                        secs, n = read_files([m.path / k for k, _, _ in t.ranges()], 4)
                        assert n == len(ranges) * MiB
                        res.setdefault(f"{impl.name}: 4 threads, chunk files", []).append(secs)
        self.r.table(
            f"Remote, {self.a.mib} MiB in 1 MiB chunks, loopback HTTP + {self.a.latency * 1000:.0f}"
            f" ms per request, cold (seconds, median (range) of {self.a.reps})",
            ["reader", "seconds", ""],
            self.rowset(res, "s"),
        )
        raw8 = med(res["raw range GETs, 8 threads"])
        fss = med(res["zarr 3 + fsspec in-process"])
        for impl in self.impls:
            for what in ("zarr 2 DirectoryStore", "cat of the chunk files"):
                k = f"{impl.name}: {what}"
                if k in res:
                    x = raw8 / med(res[k])
                    self.r.aim(
                        f"[{impl.name}] remote one reader ({what}) >= 0.9x raw 8-thread GETs",
                        f"{x:.2f}x",
                        x >= 0.9,
                    )
            x = fss / med(res[f"{impl.name}: zarr 3 LocalStore"])
            self.r.aim(
                f"[{impl.name}] remote zarr 3 on the mount >= zarr 3 + fsspec",
                f"{x:.2f}x",
                x >= 1.0,
            )

    # -- local ----------------------------------------------------------------------------------

    def ratarmount_read(self, rat: str, t: _gen.ArrayTar) -> float:
        """Seconds for 4 threads to read the array's members through a fresh ratarmount mount
        of ``t`` (page cache dropped), which is then unmounted."""
        rmnt = self.work / "rmnt"
        rmnt.mkdir(exist_ok=True)
        subprocess.run([rat, str(t.path), str(rmnt)], check=True, capture_output=True)
        try:
            B.drop_caches()
            files = [rmnt / "blobs" / "x" / str(i) for i in range(t.nchunks)]
            secs, n = read_files(files, 4)
            assert n == t.nchunks * t.chunk_bytes
            return secs
        finally:
            subprocess.run(["fusermount3", "-u", str(rmnt)], check=False)

    def part_local(self) -> None:
        t = self.tar(self.work / "local", "local.lindi.tar", self.a.mib * MiB, MiB)
        ranges = [(off, size) for _, off, size in t.ranges()]
        total = len(ranges) * MiB
        res: dict[str, list[float]] = {}

        def mbs(secs: float) -> float:
            return total / 1e6 / secs

        rat = self.a.ratarmount or shutil.which("ratarmount")
        plain = self.plain_copy(t)
        for rep in range(self.a.reps):
            if self.lindi_py:
                B.drop_caches()
                out = snippet(ZARR2_READ, self.lindi_py, path=str(plain / "x"))
                assert out["ok"]
                res.setdefault(
                    "zarr 2 DirectoryStore on the same chunks as local files", []
                ).append(mbs(out["s"]))
            for n in (1, 4):
                B.drop_caches()
                res.setdefault(f"raw pread of the tar, {n} thread(s)", []).append(
                    mbs(raw_pread(t.path, ranges, n))
                )
            for impl in self.in_turn(rep):
                if self.lindi_py:
                    with self.mount(impl, t.path, work=("local: zarr 2", total, t.nchunks)) as m:
                        B.drop_caches()
                        out = snippet(ZARR2_READ, self.lindi_py, path=str(m.path / "x"))
                        assert out["ok"]
                        res.setdefault(f"{impl.name}: zarr 2 DirectoryStore", []).append(
                            mbs(out["s"])
                        )
                with self.mount(impl, t.path, work=("local: 1 thread", total, t.nchunks)) as m:
                    B.drop_caches()
                    secs, n = read_files([m.path / k for k, _, _ in t.ranges()], 1)
                    assert n == total
                    res.setdefault(f"{impl.name}: 1 thread, chunk files in order", []).append(
                        mbs(secs)
                    )
            # 4 threads: ratarmount takes its turn among the builds
            for impl in self.in_turn(rep, ("ratarmount",) if rat else ()):
                if impl == "ratarmount":
                    res.setdefault("ratarmount, 4 threads, members", []).append(
                        mbs(self.ratarmount_read(rat, t))
                    )
                    continue
                with self.mount(impl, t.path, work=("local: 4 threads", total, t.nchunks)) as m:
                    B.drop_caches()
                    secs, n = read_files([m.path / k for k, _, _ in t.ranges()], 4)
                    assert n == total
                    res.setdefault(f"{impl.name}: 4 threads, chunk files", []).append(mbs(secs))
        self.r.table(
            f"Local .lindi.tar, {self.a.mib} MiB in 1 MiB chunks, cold (MB/s, median (range) of "
            f"{self.a.reps})",
            ["reader", "MB/s", ""],
            self.rowset(res, "MB/s"),
        )
        if not rat:
            self.r.note("ratarmount not found (pass --ratarmount PATH): its row is missing")
        raw1 = med(res["raw pread of the tar, 1 thread(s)"])
        raw4 = med(res["raw pread of the tar, 4 thread(s)"])
        ratm = med(res.get("ratarmount, 4 threads, members", []))
        for impl in self.impls:
            k = f"{impl.name}: zarr 2 DirectoryStore"
            if k not in res:
                k = f"{impl.name}: 1 thread, chunk files in order"
            x = med(res[k]) / raw1
            self.r.aim(
                f"[{impl.name}] local one reader >= 0.8x raw 1-thread pread", f"{x:.2f}x", x >= 0.8
            )
            m4 = med(res[f"{impl.name}: 4 threads, chunk files"])
            self.r.aim(
                f"[{impl.name}] local 4 threads >= 0.6x raw 4-thread pread",
                f"{m4 / raw4:.2f}x",
                m4 / raw4 >= 0.6,
            )
            if ratm == ratm:
                self.r.aim(
                    f"[{impl.name}] local 4 threads ahead of ratarmount",
                    f"{m4 / ratm:.2f}x",
                    m4 > ratm,
                )

    # -- walk -----------------------------------------------------------------------------------

    def part_walk(self) -> None:
        src = self.work / "keys-100000.lindi.json"
        if not src.exists():
            _gen.build_keys_json(src, 100_000)
        plain = self.work / "keys-100000.tree"
        _gen.materialize_tree(src, plain)
        walker = [sys.executable, str(B.BENCH_DIR / "_walk.py")]
        nkeys = sum(len(fs) for _, _, fs in os.walk(plain))  # files of the tree
        res: dict[str, list[float]] = {}
        files = ""
        for rep in range(self.a.reps):
            w = run_json([*walker, str(plain)])
            res.setdefault("local disk, warm", []).append(w["seconds"])
            for impl in self.in_turn(rep):
                with self.mount(impl, src, "--no-cache") as m:  # page cache warm
                    res.setdefault(f"{impl.name}: mount -> ls", []).append(m.mount_seconds)
                B.drop_caches()
                with self.mount(impl, src, "--no-cache") as m:
                    with self.count(impl, m, ("walk, cold", 0, nkeys)):
                        w = run_json([*walker, str(m.path)])
                    files = f"{w['files']:,} files, {w['dirs']:,} dirs"
                    res.setdefault(f"{impl.name}: walk, fresh mount (cold)", []).append(
                        w["seconds"]
                    )
                    with self.count(impl, m, ("walk, warm", 0, nkeys)):
                        w = run_json([*walker, str(m.path)])
                    res.setdefault(f"{impl.name}: walk again (warm)", []).append(w["seconds"])
        self.r.table(
            f"Walk + stat ({files}), os.walk + os.stat in a subprocess, and mount -> ls "
            f"(seconds, median (range) of {self.a.reps})",
            ["what", "seconds", ""],
            self.rowset(res, "s"),
        )
        local = med(res["local disk, warm"])
        for impl in self.impls:
            warm = med(res[f"{impl.name}: walk again (warm)"])
            cold = med(res[f"{impl.name}: walk, fresh mount (cold)"])
            ml = med(res[f"{impl.name}: mount -> ls"])
            self.r.aim(
                f"[{impl.name}] walk warm within 2x of local disk",
                f"{warm / local:.2f}x",
                warm <= 2 * local,
            )
            self.r.aim(f"[{impl.name}] walk cold < 1.5 s", f"{cold:.2f} s", cold < 1.5)
            self.r.aim(f"[{impl.name}] mount -> ls < 0.35 s", f"{ml:.2f} s", ml < 0.35)

    # -- small files -----------------------------------------------------------------------------

    def part_small(self) -> None:
        www = self.work / "www"
        n = self.a.small
        t = self.tar(www, "small.lindi.tar", n * 4096, 4096)
        res: dict[str, list[float]] = {}
        with B.range_server(www, self.a.latency) as ask:
            url = f"http://127.0.0.1:{ask.port}/small.lindi.tar"  # type: ignore[attr-defined]
            for rep in range(self.a.reps):
                for impl in self.in_turn(rep):
                    cache = self.work / "cache" / f"small-{impl.name}"
                    shutil.rmtree(cache, ignore_errors=True)
                    with self.mount(
                        impl, url, "--cache-dir", str(cache), work=("small: cold", n * 4096, n)
                    ) as m:
                        files = [m.path / k for k, _, _ in t.ranges()]
                        secs, got = read_files(files, 4)
                        assert got == n * 4096
                        res.setdefault(f"{impl.name}: cold", []).append(n / secs)
                    B.drop_caches()
                    with self.mount(
                        impl, url, "--cache-dir", str(cache), work=("small: warm", n * 4096, n)
                    ) as m:
                        files = [m.path / k for k, _, _ in t.ranges()]
                        secs, got = read_files(files, 4)
                        assert got == n * 4096
                        res.setdefault(f"{impl.name}: warm (remount, persistent cache)", []).append(
                            n / secs
                        )
                    shutil.rmtree(cache, ignore_errors=True)
        self.r.table(
            f"{n:,} chunk files of 4 KiB over loopback HTTP, 4 reader threads (files/s, median "
            f"(range) of {self.a.reps})",
            ["mount", "files/s", ""],
            [[k, spread(v, 0), "files/s"] for k, v in res.items()],
        )
        for impl in self.impls:
            x = med(res[f"{impl.name}: warm (remount, persistent cache)"])
            self.r.aim(f"[{impl.name}] 4 KiB files warm >= 15,000 files/s", f"{x:,.0f}", x >= 15000)

    # -- write ----------------------------------------------------------------------------------

    def part_write(self) -> None:
        if not self.lindi_py:
            self.r.note("write: no .venv-lindi (zarr 2): skipped")
            return
        nbytes = self.a.mib * MiB
        res: dict[str, list[float]] = {}
        wdir = self.work / "write"
        for rep in range(self.a.reps):
            for impl in self.in_turn(rep, ("local",)):
                if impl == "local":
                    local = wdir / "local.zarr"
                    shutil.rmtree(local, ignore_errors=True)
                    wdir.mkdir(parents=True, exist_ok=True)
                    os.sync()
                    t0 = time.perf_counter()
                    snippet(ZARR2_WRITE, self.lindi_py, path=str(local), nbytes=str(nbytes))
                    os.sync()
                    res.setdefault("local directory + sync", []).append(time.perf_counter() - t0)
                    shutil.rmtree(local, ignore_errors=True)
                    continue
                arc = wdir / f"{impl.name}.lindi.tar"
                arc.unlink(missing_ok=True)
                wdir.mkdir(parents=True, exist_ok=True)
                subprocess.run([*impl.cmd, "create", str(arc)], check=True, env=impl.env)
                os.sync()
                with self.mount(impl, arc, read_only=False) as m:
                    t0 = time.perf_counter()
                    with self.count(impl, m, ("write: zarr 2", nbytes, nbytes // MiB)):
                        snippet(
                            ZARR2_WRITE, self.lindi_py, path=str(m.path / "x"), nbytes=str(nbytes)
                        )
                    m.umount()
                    res.setdefault(f"{impl.name}: mount + lindifuse umount", []).append(
                        time.perf_counter() - t0
                    )
                arc.unlink(missing_ok=True)
        self.r.table(
            f"zarr 2 writes {nbytes // MiB} MiB float32 in 1 MiB chunks (seconds, median (range) "
            f"of {self.a.reps})",
            ["target", "seconds", ""],
            self.rowset(res, "s"),
        )
        local = med(res["local directory + sync"])
        for impl in self.impls:
            x = local / med(res[f"{impl.name}: mount + lindifuse umount"])
            self.r.aim(f"[{impl.name}] write >= 0.6x local + sync", f"{x:.2f}x", x >= 0.6)

    # -- per-request costs ------------------------------------------------------------------------

    def part_requests(self) -> None:
        t = self.tar(self.work / "local", "local.lindi.tar", self.a.mib * MiB, MiB)
        src = self.work / "keys-100000.lindi.json"
        if not src.exists():
            _gen.build_keys_json(src, 100_000)
        raw_pread(t.path, [(0, t.path.stat().st_size)], 1)  # the tar in the page cache
        res: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        buf = ctypes.create_string_buffer(256)
        for rep in range(self.a.reps):
            for impl in self.in_turn(rep):
                with self.mount(impl, src, "--no-cache") as m:
                    g = m.path / "g1" / "a"
                    names = [str(j) for j in range(1000)]

                    # LOOKUP: names never listed nor looked up in this mount
                    paths = [g / nm for nm in names]
                    p = str(g / "1").encode()
                    dirs = [m.path / f"g{k}" / "a" for k in range(2, 42)]
                    key = impl.name + ": "
                    for label, fn, n in (
                        ("LOOKUP (stat of a new name)", partial(list, map(os.stat, paths)), 0),
                        ("GETATTR (statx FORCE_SYNC)", partial(statx_loop, p, buf, 2000), 2000),
                        (
                            "listing of 1,000 entries (OPENDIR, READDIRPLUS, RELEASEDIR), cold",
                            partial(list_dirs, dirs),
                            len(dirs),
                        ),
                        (
                            "the same listings again (sizes known)",
                            partial(list_dirs, dirs),
                            len(dirs),
                        ),
                    ):
                        n = n or len(paths)
                        c0, t0 = cpu_seconds(m.pid), time.perf_counter()
                        fn()
                        wall = (time.perf_counter() - t0) / n * 1e6
                        res.setdefault(key + label, []).append(wall)
                        cpus.setdefault(key + label, []).append((cpu_seconds(m.pid) - c0) / n * 1e6)
                with self.mount(impl, t.path, "--no-cache") as m:
                    for size, label in ((4096, "4 KiB"), (MiB, "1 MiB")):
                        # 1 MiB: one read per file; 4 KiB: 25 reads 32 KiB apart per file.
                        nfiles = min(t.nchunks, 100) if size == MiB else 8
                        step, per = (MiB, 1) if size == MiB else (32768, 25)
                        fds = []
                        try:
                            for i in range(nfiles):
                                fd = os.open(m.path / "x" / str(i), os.O_RDONLY)
                                fds.append(fd)
                                if size < MiB:  # no kernel read-ahead: one page, one request
                                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                            ops = [(fd, k * step) for fd in fds for k in range(per)]
                            c0, t0 = cpu_seconds(m.pid), time.perf_counter()
                            for fd, o in ops:
                                os.pread(fd, size, o)
                            wall = (time.perf_counter() - t0) / len(ops) * 1e6
                            cpu = (cpu_seconds(m.pid) - c0) / len(ops) * 1e6
                            res.setdefault(f"{impl.name}: READ {label}", []).append(wall)
                            cpus.setdefault(f"{impl.name}: READ {label}", []).append(cpu)
                        finally:
                            for fd in fds:
                                os.close(fd)
        self.r.table(
            f"Per-request cost through the mount, warm source (microseconds per operation, "
            f"median (range) of {self.a.reps}; includes the kernel round trip)",
            ["request", "wall µs per operation", "daemon CPU µs per operation"],
            [[k, spread(v, 0), spread(cpus[k], 0)] for k, v in res.items()],
        )
        self.r.note(
            "requests: daemon CPU is user + system time of the daemon process from /proc (10 ms "
            "ticks, summed over 40-2,000 operations); the wall time includes the kernel round "
            "trip and the caller"
        )

    def run(self) -> None:
        for part in self.a.only:
            print(f"== {part}", flush=True)
            getattr(self, f"part_{part}")()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {','.join(PARTS)}")
    p.add_argument("--reps", type=int, default=3, help="runs of every row (default 3)")
    p.add_argument("--mib", type=int, default=256, help="array size in MiB (default 256)")
    p.add_argument("--small", type=int, default=50_000, help="4 KiB files (default 50,000)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per HTTP request")
    p.add_argument("--base", help="a directory holding a baseline lindifuse/ package")
    p.add_argument("--ratarmount", help="the ratarmount command (default: from PATH)")
    p.add_argument(
        "--requests",
        action="store_true",
        help="also count, per workload, the FUSE requests by kind (per MiB and per file) and the\n"
        "daemon's CPU seconds per MiB, for every lindifuse measured (the daemon's own\n"
        "counters, around the workload only)",
    )
    p.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    p.add_argument(
        "--quick", action="store_true", help="smoke test: 1 run, 64 MiB, 5,000 small files"
    )
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.mib, a.small = 1, 64, 5_000
    a.only = B.parse_parts(p, a.only, PARTS)
    t0 = time.perf_counter()
    load0 = B.loadavg()
    bench = Bench(a)
    bench.run()
    bench.counts.publish(bench.r, a.reps)
    bench.r.note(f"load average (1, 5, 15 min) at start {load0}, at end {B.loadavg()}")
    bench.r.publish(
        "bench_seq",
        "Issue 10: one sequential reader, walks, small files, writes, per-request costs "
        "(`benchmarks/bench_seq.py`)",
        B.command_line(__file__, argv),
        time.perf_counter() - t0,
        write=not a.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
