"""Issue 18's floor: lindifuse beside a pyfuse3 file system with no logic (``_floorfs.py``).

    .venv/bin/python benchmarks/bench_floor.py            # 5 reps, RESULTS.md
    .venv/bin/python benchmarks/bench_floor.py --quick    # 1 rep, 5,000 files, 64 MiB

The floor file system runs on the same pyfuse3 build, with the same kernel settings (entry and
attribute timeouts, no OPEN/OPENDIR, request bursts, read-ahead), and does nothing per request
but a dict lookup and a ``pread`` (or a slice of bytes in memory). What it reaches is what
pyfuse3 + trio + the kernel allow on this machine; what lindifuse loses against it is
lindifuse's own code. An aim above the floor cannot be met by any change inside lindifuse.

small   50,000 chunk files of 4 KiB, read by 4 threads (open + read + close, as
        ``bench_seq.py``'s small part) after the page cache is dropped: the floor serving them
        from memory and from the local tar; lindifuse on the local tar, and lindifuse on the same
        tar over loopback HTTP (20 ms per request) with a warm persistent cache (bench_seq's
        "warm": remount, page cache dropped). Files/s and the daemon's CPU-s (user + system).
local   a 256 MiB array in 1 MiB chunks as a local ``.lindi.tar``, cold (page cache dropped,
        fresh mount): one zarr 2 ``DirectoryStore`` reader (.venv-lindi), 1 thread reading the
        chunk files in order, 4 threads; raw ``pread`` of the tar with 1 and 4 threads and zarr 2
        on the same chunks as plain local files beside them. MB/s and daemon CPU-s.
remote  the same array over loopback HTTP (20 ms per request), one sequential reader (zarr 2,
        ``cat``): lindifuse cold (fresh mount, empty cache, page cache dropped) against raw
        range GETs with 8 threads, and the floor serving the same chunks from memory (a source
        that costs nothing: no network at all). Seconds and daemon CPU-s.
write   one zarr 2 writer of the same array (256 MiB in 1 MiB chunks): into a local directory
        + ``sync``, into the floor (``--writable``: files kept in memory) + ``fusermount3 -u``,
        and into a new ``.lindi.tar`` through lindifuse + ``lindifuse umount`` (which commits).
        Seconds from the writer's start until the unmount (or sync) returns, as bench_seq.py's
        write part.

Each rep runs every mount once, the order rotated every rep. Results go to RESULTS.md between
``<!-- bench_floor:start -->`` and ``<!-- bench_floor:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _gen  # noqa: E402
import pyfuse3  # noqa: E402
from bench_seq import (  # noqa: E402
    ZARR2_READ,
    ZARR2_WRITE,
    cat_files,
    cpu_seconds,
    raw_gets,
    raw_pread,
    read_files,
    snippet,
)

WORK = B.WORK / "floor"
MiB = 2**20
PARTS = ("small", "local", "remote", "write")
Got = dict[str, list[float]]


def spec_of(t: _gen.ArrayTar, where: Path) -> Path:
    """The floor's SPEC.json for the array tar ``t``."""
    files, inline = {}, {}
    for key, v in t.refs.items():
        if isinstance(v, list):  # ["./blobs/...", offset in the member, size]
            d, _ = t.members[v[0][2:]]
            files[key] = [d + v[1], v[2]]
        else:  # metadata, served as lindifuse serves it: JSON text
            inline[key] = json.dumps(v)
    where.write_text(json.dumps({"tar": str(t.path), "files": files, "inline": inline}))
    return where


@contextlib.contextmanager
def floor_mount(
    spec: Path, mnt: Path, memory: bool, writable: bool = False, now: bool = False
) -> Iterator[B.Mount]:
    """Start ``_floorfs.py`` on ``mnt``; always unmount and end it by its PID."""
    mnt.mkdir(parents=True, exist_ok=True)
    if B.is_mounted(mnt):
        raise RuntimeError(f"{mnt}: already mounted")
    pid_file = WORK / "floor.pid"
    pid_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(B.BENCH_DIR / "_floorfs.py"), str(spec), str(mnt)]
    cmd += ["--pid-file", str(pid_file), *(["--memory"] if memory else [])]
    cmd += ["--writable"] if writable else []
    cmd += ["--now"] if now else []
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.perf_counter()
        deadline = time.monotonic() + 60
        while not (B.is_mounted(mnt) and pid_file.exists()):
            if proc.poll() is not None:
                raise RuntimeError(f"floorfs failed: {proc.stderr.read()[-800:]}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("floorfs did not mount in 60 s")
            time.sleep(0.01)
        os.listdir(mnt)
        yield B.Mount(mnt, proc.pid, time.perf_counter() - t0, None)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        B.force_unmount(mnt)
        B.end_pid(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


#: The pyfuse3 build calls Operations.lookup_now / read_now (patch item 6).
ANSWER_NOW = bool(getattr(pyfuse3, "ANSWER_NOW", False))

Mounter = Callable[[], contextlib.AbstractContextManager[B.Mount]]


def timed(got: Got, label: str, m: B.Mount, run: Callable[[Path], float], unit: str) -> None:
    """Run ``run(mount path)`` -> figure; record it and the daemon's CPU-s under ``label``."""
    c0 = cpu_seconds(m.pid)
    fig = run(m.path)
    cpu = cpu_seconds(m.pid) - c0
    got.setdefault(f"{label}|{unit}", []).append(fig)
    got.setdefault(f"{label}|daemon CPU-s", []).append(cpu)
    print(f"  {label}: {fig:,.{_digits(unit)}f} {unit}, daemon {cpu:.2f} CPU-s", flush=True)


def _digits(unit: str) -> int:
    return 2 if unit == "s" or "CPU" in unit else 0


def part_small(a: argparse.Namespace, rep: B.Report) -> None:
    www = WORK / "www"
    www.mkdir(parents=True, exist_ok=True)
    t = _gen.build_array_tar(www / "small.lindi.tar", a.files * 4096, 4096)
    spec = spec_of(t, WORK / "small.json")
    keys = [k for k, _, _ in t.ranges()]
    mnt, logf, cache = WORK / "mnt", WORK / "mount.log", WORK / "cache"
    got: Got = {}

    def files_per_s(path: Path) -> float:
        secs, n = read_files([path / k for k in keys], 4)
        assert n == a.files * 4096, n
        return a.files / secs

    with B.range_server(www, a.latency) as ask:
        url = f"http://127.0.0.1:{ask.port}/small.lindi.tar"  # type: ignore[attr-defined]
        shutil.rmtree(cache, ignore_errors=True)
        with B.lindifuse_mount(url, mnt, log_file=logf, extra=["--cache-dir", str(cache)]) as m:
            files_per_s(m.path)  # fills the persistent cache: the remote rows are warm
        mounts: list[tuple[str, Mounter]] = [
            ("floor, from memory", lambda: floor_mount(spec, mnt, True)),
            ("floor, pread of the local tar", lambda: floor_mount(spec, mnt, False)),
            ("lindifuse, local tar", lambda: B.lindifuse_mount(t.path, mnt, log_file=logf)),
            (
                "lindifuse, HTTP, warm persistent cache",
                lambda: B.lindifuse_mount(
                    url, mnt, log_file=logf, extra=["--cache-dir", str(cache)]
                ),
            ),
        ]
        if ANSWER_NOW:  # a build with patches/pyfuse3/measured/3.5.0-answer-now.patch
            now = (
                "floor, from memory, answered now",
                lambda: floor_mount(spec, mnt, True, now=True),
            )
            mounts.insert(2, now)
        for r in range(a.reps):
            print(f"small, rep {r + 1}", flush=True)
            for label, mount in mounts[r % len(mounts) :] + mounts[: r % len(mounts)]:
                B.drop_caches()
                with mount() as m:
                    timed(got, label, m, files_per_s, "files/s")
    shutil.rmtree(cache, ignore_errors=True)
    _publish(rep, got, f"{a.files:,} files of 4 KiB, 4 reader threads, page cache dropped", a.reps)
    floor = B.median(got["floor, from memory|files/s"])
    warm = B.median(got["lindifuse, HTTP, warm persistent cache|files/s"])
    rep.aim(
        "4 KiB files warm >= 15,000 files/s",
        f"lindifuse {warm:,.0f}; the floor (no logic, from memory) {floor:,.0f}",
        warm >= 15000,
    )


def part_local(a: argparse.Namespace, rep: B.Report) -> None:
    t = _gen.build_array_tar(WORK / "local.lindi.tar", a.mib * MiB, MiB)
    spec = spec_of(t, WORK / "local.json")
    ranges = [(off, size) for _, off, size in t.ranges()]
    keys = [k for k, _, _ in t.ranges()]
    total = len(ranges) * MiB
    mnt, logf = WORK / "mnt", WORK / "mount.log"
    lindi_py = B.lindi_python()
    plain = _gen.plain_array_copy(t, WORK)
    got: Got = {}

    def mbs(secs: float) -> float:
        return total / 1e6 / secs

    def zarr2(path: Path) -> float:
        out = snippet(ZARR2_READ, lindi_py, path=str(path / "x"))
        assert out["ok"]
        return mbs(out["s"])

    def threads(n: int) -> Callable[[Path], float]:
        def run(path: Path) -> float:
            secs, got_bytes = read_files([path / k for k in keys], n)
            assert got_bytes == total
            return mbs(secs)

        return run

    works = [("1 thread, files in order", threads(1)), ("4 threads", threads(4))]
    if lindi_py:
        works.insert(0, ("zarr 2 DirectoryStore", zarr2))
    mounts: list[tuple[str, Mounter]] = [
        ("floor", lambda: floor_mount(spec, mnt, False)),
        ("lindifuse", lambda: B.lindifuse_mount(t.path, mnt, log_file=logf, extra=["--no-cache"])),
    ]
    for r in range(a.reps):
        print(f"local, rep {r + 1}", flush=True)
        for n in (1, 4):
            B.drop_caches()
            got.setdefault(f"raw pread of the tar, {n} thread(s)|MB/s", []).append(
                mbs(raw_pread(t.path, ranges, n))
            )
        if lindi_py:
            B.drop_caches()
            got.setdefault("zarr 2 on the same chunks as plain local files|MB/s", []).append(
                zarr2(plain)
            )
        for work, run in works:
            for label, mount in mounts if r % 2 == 0 else mounts[::-1]:
                with mount() as m:
                    B.drop_caches()
                    timed(got, f"{label}: {work}", m, run, "MB/s")
    _publish(rep, got, f"{a.mib} MiB in 1 MiB chunks, local .lindi.tar, cold", a.reps)
    for work, _ in works:
        fl = B.median(got[f"floor: {work}|MB/s"])
        li = B.median(got[f"lindifuse: {work}|MB/s"])
        rep.note(
            f"local, {work}: lindifuse at {li / fl:.2f}x of the floor ({li:,.0f} / {fl:,.0f} MB/s)"
        )
    raw4 = B.median(got["raw pread of the tar, 4 thread(s)|MB/s"])
    _aims_against(rep, got, raw4, "4 threads", "local 4 threads >= 0.6x raw 4-thread pread", 0.6)
    if lindi_py:
        z = B.median(got["zarr 2 on the same chunks as plain local files|MB/s"])
        what = "local zarr 2 reader >= 0.8x zarr 2 on plain files"
        _aims_against(rep, got, z, "zarr 2 DirectoryStore", what, 0.8)


def part_write(a: argparse.Namespace, rep: B.Report) -> None:
    lindi_py = B.lindi_python()
    if not lindi_py:
        rep.note("write: no .venv-lindi (zarr 2): skipped")
        return
    nbytes = a.mib * MiB
    spec = WORK / "empty.json"
    spec.write_text(json.dumps({"tar": None, "files": {}, "inline": {}}))
    mnt, logf, arc, local = WORK / "mnt", WORK / "mount.log", WORK / "w.lindi.tar", WORK / "w.zarr"
    got: Got = {}

    def write(path: Path) -> None:
        snippet(ZARR2_WRITE, lindi_py, path=str(path / "x"), nbytes=str(nbytes))

    for r in range(a.reps):
        print(f"write, rep {r + 1}", flush=True)
        order = ["local", "floor", "lindifuse"]
        for who in order[r % 3 :] + order[: r % 3]:
            os.sync()
            if who == "local":
                shutil.rmtree(local, ignore_errors=True)
                local.mkdir()
                t0 = time.perf_counter()
                write(local)
                os.sync()
                secs = time.perf_counter() - t0
                shutil.rmtree(local, ignore_errors=True)
                got.setdefault("local directory + sync|s", []).append(secs)
            elif who == "floor":
                with floor_mount(spec, mnt, False, writable=True) as m:
                    t0 = time.perf_counter()
                    c0 = cpu_seconds(m.pid)
                    write(m.path)
                    cpu = cpu_seconds(m.pid) - c0
                    subprocess.run(["fusermount3", "-u", str(m.path)], check=True)
                    secs = time.perf_counter() - t0
                got.setdefault("floor (in memory) + fusermount3 -u|s", []).append(secs)
                got.setdefault("floor (in memory) + fusermount3 -u|daemon CPU-s", []).append(cpu)
            else:
                arc.unlink(missing_ok=True)
                subprocess.run([*B.lindifuse_cmd(), "create", str(arc)], check=True,
                               capture_output=True)  # fmt: skip
                os.sync()
                with B.lindifuse_mount(arc, mnt, log_file=logf, read_only=False) as m:
                    t0 = time.perf_counter()
                    c0 = cpu_seconds(m.pid)
                    write(m.path)
                    cpu = cpu_seconds(m.pid) - c0
                    m.umount()
                    secs = time.perf_counter() - t0
                arc.unlink(missing_ok=True)
                got.setdefault("lindifuse .lindi.tar + lindifuse umount|s", []).append(secs)
                got.setdefault("lindifuse .lindi.tar + lindifuse umount|daemon CPU-s", []).append(
                    cpu
                )
            print(f"  {who}: {secs:.2f} s", flush=True)
    _publish(rep, got, f"zarr 2 writes {a.mib} MiB in 1 MiB chunks", a.reps)
    ref = B.median(got["local directory + sync|s"])
    for who, key in (("lindifuse", "lindifuse .lindi.tar + lindifuse umount"),
                     ("floor", "floor (in memory) + fusermount3 -u")):  # fmt: skip
        x = ref / B.median(got[f"{key}|s"])
        rep.aim(f"[{who}] write >= 0.6x local + sync", f"{x:.2f}x", x >= 0.6)


def _aims_against(rep: B.Report, got: Got, ref: float, work: str, what: str, at_least: float):
    """The aim ``what`` (MB/s of ``work`` >= ``at_least`` x ``ref``) for lindifuse and the floor."""
    for who in ("lindifuse", "floor"):
        x = B.median(got[f"{who}: {work}|MB/s"]) / ref
        rep.aim(f"[{who}] {what}", f"{x:.2f}x", x >= at_least)


def part_remote(a: argparse.Namespace, rep: B.Report) -> None:
    www = WORK / "www"
    www.mkdir(parents=True, exist_ok=True)
    t = _gen.build_array_tar(www / "big.lindi.tar", a.mib * MiB, MiB)
    spec = spec_of(t, WORK / "big.json")
    ranges = [(off, size) for _, off, size in t.ranges()]
    keys = [k for k, _, _ in t.ranges()]
    mnt, logf, cache = WORK / "mnt", WORK / "mount.log", WORK / "cache"
    lindi_py = B.lindi_python()
    got: Got = {}

    def zarr2(path: Path) -> tuple[float, float]:
        out = snippet(ZARR2_READ, lindi_py, path=str(path / "x"))
        assert out["ok"]
        return out["s"], out["cpu"]

    def cat(path: Path) -> tuple[float, float]:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        secs = cat_files([path / k for k in keys])
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return secs, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime

    works = [("cat of the chunk files", cat)]
    if lindi_py:
        works.insert(0, ("zarr 2 DirectoryStore", zarr2))
    with B.range_server(www, a.latency) as ask:
        port = ask.port  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port}/big.lindi.tar"

        @contextlib.contextmanager
        def cold_lindifuse() -> Iterator[B.Mount]:
            shutil.rmtree(cache, ignore_errors=True)
            with B.lindifuse_mount(url, mnt, log_file=logf, extra=["--cache-dir", str(cache)]) as m:
                yield m
            shutil.rmtree(cache, ignore_errors=True)

        mounts: list[tuple[str, Mounter]] = [
            ("floor, from memory", lambda: floor_mount(spec, mnt, True)),
            ("lindifuse, HTTP, cold", cold_lindifuse),
        ]
        for r in range(a.reps):
            print(f"remote, rep {r + 1}", flush=True)
            got.setdefault("raw range GETs, 8 threads|s", []).append(
                raw_gets(port, "big.lindi.tar", ranges, 8)
            )
            for work, run in works:
                for label, mount in mounts if r % 2 == 0 else mounts[::-1]:
                    with mount() as m:
                        B.drop_caches()
                        c0, s0 = cpu_seconds(m.pid), cpu_seconds(ask.pid)  # type: ignore[attr-defined]
                        secs, reader = run(m.path)
                        daemon = cpu_seconds(m.pid) - c0
                        server = cpu_seconds(ask.pid) - s0  # type: ignore[attr-defined]
                    row = f"{label}: {work}"
                    for unit, x in (
                        ("s", secs),
                        ("daemon CPU-s", daemon),
                        ("reader CPU-s", reader),
                        ("server CPU-s", server),
                        ("all CPU-s / 2 cores", (daemon + reader + server) / 2),
                    ):
                        got.setdefault(f"{row}|{unit}", []).append(x)
                    print(f"  {row}: {secs:.2f} s; CPU-s daemon {daemon:.2f}, reader "
                          f"{reader:.2f}, server {server:.2f}", flush=True)  # fmt: skip
    _publish(
        rep, got, f"{a.mib} MiB in 1 MiB chunks, loopback HTTP, {a.latency * 1000:.0f} ms", a.reps
    )
    raw8 = B.median(got["raw range GETs, 8 threads|s"])
    for work, _ in works:
        li = B.median(got[f"lindifuse, HTTP, cold: {work}|s"])
        fl = B.median(got[f"floor, from memory: {work}|s"])
        rep.aim(
            f"remote one reader ({work}) >= 0.9x raw 8-thread GETs",
            f"lindifuse {raw8 / li:.2f}x; the floor (from memory) {raw8 / fl:.2f}x",
            raw8 / li >= 0.9,
        )


def _publish(rep: B.Report, got: Got, title: str, reps: int) -> None:
    rows: dict[str, dict[str, str]] = {}
    for key, xs in got.items():
        label, unit = key.split("|")
        rows.setdefault(label, {})[unit] = B.spread(xs, _digits(unit))
    units = list(dict.fromkeys(u for r in rows.values() for u in r))
    rep.table(
        f"{title} (median (range) of {reps})",
        ["what", *units],
        [[k, *(r.get(u, "") for u in units)] for k, r in rows.items()],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(PARTS), help="parts: " + ",".join(PARTS))
    p.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    p.add_argument("--files", type=int, default=50_000, help="4 KiB files (default 50,000)")
    p.add_argument("--mib", type=int, default=256, help="MiB for the local part (default 256)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per HTTP request")
    p.add_argument("--quick", action="store_true", help="1 rep, 5,000 files, 64 MiB")
    p.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.files, a.mib = 1, 5_000, 64
    parts = B.parse_parts(p, a.only, PARTS)
    WORK.mkdir(parents=True, exist_ok=True)
    rep = B.Report()
    load0 = B.loadavg()
    t0 = time.perf_counter()
    if "small" in parts:
        part_small(a, rep)
    if "local" in parts:
        part_local(a, rep)
    if "remote" in parts:
        part_remote(a, rep)
    if "write" in parts:
        part_write(a, rep)
    rep.note(f"load average before / after: {load0} / {B.loadavg()} (a shared machine)")
    rep.publish(
        "bench_floor",
        "Issue 18: lindifuse beside a pyfuse3 file system with no logic (bench_floor)",
        B.command_line("bench_floor.py", argv),
        time.perf_counter() - t0,
        write=not a.no_write and not a.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
