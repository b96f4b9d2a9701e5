"""One build, two values of one daemon setting, side by side: is a lever worth keeping?

    .venv/bin/python benchmarks/bench_ab.py                # LINDIFUSE_PYFUSE3_FEATURES=0,1
    .venv/bin/python benchmarks/bench_ab.py LINDIFUSE_REQUEST_BURST=0,16 --only small
    .venv/bin/python benchmarks/bench_ab.py LINDIFUSE_REQUEST_BURST=0,16 --quick
    .venv/bin/python benchmarks/bench_ab.py LINDIFUSE_FILE_RANGE=0,1 --only local

The setting is an environment variable of the daemon (the ones lindifuse reads are listed in
``SETTINGS``, with the ``lindifuse stats`` field that shows the value the daemon took). The
same code runs with both values; each rep runs both, the order swapped every rep (this machine
favours neither slot then). The first value is the reference ("A"), the second the change
("B").

small   where requests queue up: 50,000 chunk files of 4 KiB over loopback HTTP (20 ms per
        request), read by 4 threads, cold (empty persistent cache) and warm (remount, page cache
        dropped, persistent cache full), as ``bench_seq.py``'s "small" part: files/s and the
        daemon's CPU seconds (user + system, from /proc).
local   one zarr 2 ``DirectoryStore`` reader of a local 256 MiB ``.lindi.tar`` in 1 MiB chunks,
        fresh mount with the page cache dropped (MB/s), and 4 threads reading its chunk files.
remote  one zarr 2 reader of the same array over loopback HTTP (20 ms per request), cold (fresh
        mount, empty persistent cache, page cache dropped): seconds, beside raw range GETs with
        8 threads in the same rep (issue 18's aim: the reader >= 0.9x of those).
write   zarr 2 writes of 256 MiB in 1 MiB chunks into a new archive, until ``lindifuse
        umount`` returns (seconds).

Results go to benchmarks/RESULTS.md between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
(NAME: ``--name``, by default ``bench_ab_`` and the setting in lower case).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _gen  # noqa: E402
from bench_seq import (  # noqa: E402
    ZARR2_READ,
    ZARR2_WRITE,
    cpu_seconds,
    raw_gets,
    read_files,
    snippet,
)

WORK = B.WORK / "ab"
PARTS = ("small", "local", "remote", "write")
MiB = 2**20
# setting -> the field of the daemon's stats that shows what it took
SETTINGS = {
    "LINDIFUSE_REQUEST_BURST": "request_burst",
    "LINDIFUSE_PYFUSE3_FEATURES": "no_open",
    "LINDIFUSE_FILE_RANGE": "file_range",
    "LINDIFUSE_CACHE_MMAP": "disk_cache.read_mmap",
}
Got = dict[tuple[str, str], list[float]]
DEFAULT = "LINDIFUSE_PYFUSE3_FEATURES=0,1"  # stock pyfuse3 behaviour, then the patched build's


class AB:
    """The two modes (label -> daemon environment) and what each daemon reported."""

    def __init__(self, setting: str, values: list[str], labels: list[str] | None = None) -> None:
        self.setting = setting
        self.labels = labels or [f"{setting}={v}" for v in values]
        self.envs = {
            lab: {**os.environ, setting: v} for lab, v in zip(self.labels, values, strict=True)
        }
        self.seen: dict[str, set[str]] = {lab: set() for lab in self.labels}

    def modes(self, rep: int) -> list[tuple[str, dict[str, str]]]:
        """Both modes with their daemon environment, in the order of this rep."""
        order = self.labels if rep % 2 == 0 else self.labels[::-1]
        return [(m, self.envs[m]) for m in order]

    def note(self, m: B.Mount, mode: str) -> None:
        field = SETTINGS.get(self.setting)
        if field is not None:
            value: Any = m.stats()
            for part in field.split("."):  # "a.b": field b of the stats' dict a
                value = value.get(part) if isinstance(value, dict) else None
            self.seen[mode].add(str(value))

    def mount(self, source, mode: str, **kw):
        return B.lindifuse_mount(
            source, WORK / "mnt", log_file=WORK / "mount.log", env=self.envs[mode], **kw
        )


def part_small(a: argparse.Namespace, ab: AB, got: Got) -> None:
    www = WORK / "www"
    www.mkdir(parents=True, exist_ok=True)
    tar = _gen.build_array_tar(www / "small.lindi.tar", a.files * 4096, 4096)
    with B.range_server(www, a.latency) as ask:
        url = f"http://127.0.0.1:{ask.port}/small.lindi.tar"  # type: ignore[attr-defined]
        for rep in range(a.reps):
            for mode, _ in ab.modes(rep):
                cache = WORK / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                for phase in ("cold", "warm"):
                    if phase == "warm":
                        B.drop_caches()
                    with ab.mount(url, mode, extra=["--cache-dir", str(cache)]) as m:
                        files = [m.path / k for k, _, _ in tar.ranges()]
                        c0 = cpu_seconds(m.pid)
                        secs, n = read_files(files, 4)
                        cpu = cpu_seconds(m.pid) - c0
                        assert n == a.files * 4096, n
                        ab.note(m, mode)
                    got.setdefault((mode, f"small, {phase}: files/s"), []).append(a.files / secs)
                    got.setdefault((mode, f"small, {phase}: daemon CPU-s"), []).append(cpu)
                    print(f"rep {rep + 1} {mode} small {phase}: {a.files / secs:,.0f} files/s, "
                          f"daemon {cpu:.2f} CPU-s", flush=True)  # fmt: skip
            shutil.rmtree(WORK / "cache", ignore_errors=True)


def part_local(a: argparse.Namespace, ab: AB, got: Got) -> None:
    lindi_py = B.lindi_python()
    tar = _gen.build_array_tar(WORK / "local.lindi.tar", a.mib * MiB, MiB)
    for rep in range(a.reps):
        for mode, _ in ab.modes(rep):
            if lindi_py:
                with ab.mount(tar.path, mode, extra=["--no-cache"]) as m:
                    B.drop_caches()
                    out = snippet(ZARR2_READ, lindi_py, path=str(m.path / "x"))
                    assert out["ok"]
                    ab.note(m, mode)
                mbs = a.mib * MiB / 1e6 / out["s"]
                got.setdefault((mode, "local, zarr 2 reader, cold: MB/s"), []).append(mbs)
                print(f"rep {rep + 1} {mode} local zarr 2: {mbs:.0f} MB/s", flush=True)
            with ab.mount(tar.path, mode, extra=["--no-cache"]) as m:
                B.drop_caches()
                secs, n = read_files([m.path / k for k, _, _ in tar.ranges()], 4)
                assert n == a.mib * MiB
            mbs = a.mib * MiB / 1e6 / secs
            got.setdefault((mode, "local, 4 threads, cold: MB/s"), []).append(mbs)
            print(f"rep {rep + 1} {mode} local 4 threads: {mbs:.0f} MB/s", flush=True)


def _zarr2_python(part: str) -> str | None:
    """lindi's interpreter (zarr 2), or None and a line saying ``part`` is skipped."""
    lindi_py = B.lindi_python()
    if not lindi_py:
        print(f"{part}: no .venv-lindi (zarr 2): skipped", file=sys.stderr)
    return lindi_py


def part_remote(a: argparse.Namespace, ab: AB, got: Got) -> None:
    lindi_py = _zarr2_python("remote")
    if not lindi_py:
        return
    www = WORK / "www"
    www.mkdir(parents=True, exist_ok=True)
    tar = _gen.build_array_tar(www / "big.lindi.tar", a.mib * MiB, MiB)
    ranges = [(off, size) for _, off, size in tar.ranges()]
    cache = WORK / "cache"
    with B.range_server(www, a.latency) as ask:
        port = ask.port  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port}/big.lindi.tar"
        for rep in range(a.reps):
            got.setdefault(("raw", "remote, raw range GETs, 8 threads: s"), []).append(
                raw_gets(port, "big.lindi.tar", ranges, 8)
            )
            for mode, _ in ab.modes(rep):
                shutil.rmtree(cache, ignore_errors=True)
                with ab.mount(url, mode, extra=["--cache-dir", str(cache)]) as m:
                    B.drop_caches()
                    c0 = cpu_seconds(m.pid)
                    out = snippet(ZARR2_READ, lindi_py, path=str(m.path / "x"))
                    cpu = cpu_seconds(m.pid) - c0
                    assert out["ok"]
                    ab.note(m, mode)
                got.setdefault((mode, "remote, zarr 2 reader, cold: s"), []).append(out["s"])
                got.setdefault((mode, "remote, zarr 2 reader, cold: daemon CPU-s"), []).append(cpu)
                print(f"rep {rep + 1} {mode} remote zarr 2: {out['s']:.2f} s, daemon {cpu:.2f} "
                      "CPU-s", flush=True)  # fmt: skip
        shutil.rmtree(cache, ignore_errors=True)


def part_write(a: argparse.Namespace, ab: AB, got: Got) -> None:
    lindi_py = _zarr2_python("write")
    if not lindi_py:
        return
    arc = WORK / "write.lindi.tar"
    for rep in range(a.reps):
        for mode, env in ab.modes(rep):
            arc.unlink(missing_ok=True)
            subprocess.run([*B.lindifuse_cmd(), "create", str(arc)], check=True, env=env)
            os.sync()
            with ab.mount(arc, mode, read_only=False) as m:
                ab.note(m, mode)
                t0 = time.perf_counter()
                snippet(ZARR2_WRITE, lindi_py, path=str(m.path / "x"), nbytes=str(a.mib * MiB))
                m.umount()
                secs = time.perf_counter() - t0
            got.setdefault((mode, "write, zarr 2 + umount: s"), []).append(secs)
            print(f"rep {rep + 1} {mode} write: {secs:.2f} s", flush=True)
    arc.unlink(missing_ok=True)


def run(argv: list[str] | None = None, *, setting: str | None = None, name: str | None = None,
        title: str | None = None, labels: list[str] | None = None) -> int:  # fmt: skip
    """The command line; ``setting``, ``name``, ``title`` and ``labels``: a fixed comparison's
    own (bench_burst.py)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "setting",
        nargs="?",
        default=setting or DEFAULT,
        help=f"NAME=A,B: a daemon environment variable and its two values (default {DEFAULT})",
    )
    p.add_argument("--only", default=",".join(PARTS), help="parts: " + ",".join(PARTS))
    p.add_argument("--reps", type=int, default=6, help="alternations (default 6)")
    p.add_argument("--files", type=int, default=50_000, help="4 KiB files (default 50,000)")
    p.add_argument("--mib", type=int, default=256, help="MiB read and written (default 256)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per HTTP request")
    p.add_argument("--name", default=name, help="RESULTS.md section (default bench_ab_<setting>)")
    p.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 rep, 5,000 files, no write")
    a = p.parse_args(argv)
    setting, _, values = a.setting.partition("=")
    vals = [v.strip() for v in values.split(",")]
    if not setting or len(vals) != 2 or not all(vals):
        p.error(f"setting: want NAME=A,B, got {a.setting!r}")
    if a.quick:
        a.reps, a.files, a.mib, a.no_write = 1, 5_000, 64, True
    parts = B.parse_parts(p, a.only, PARTS)
    ab = AB(setting, vals, labels)
    t0 = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = B.loadavg()
    got: Got = {}
    for part, fn in (
        ("small", part_small),
        ("local", part_local),
        ("remote", part_remote),
        ("write", part_write),
    ):
        if part in parts:
            fn(a, ab, got)
    rep = B.Report()
    whats = list(dict.fromkeys(w for _, w in got))
    rows = []
    for what in whats:
        nd = 2 if what.endswith("s") and not what.endswith("/s") else 0
        rows.append([what, *(B.spread(got.get((m, what), got.get(("raw", what), [])), nd, ",")
                             for m in ab.labels)])  # fmt: skip
    field = SETTINGS.get(setting)
    if field:
        rows.append(
            [f"the daemon's stats: {field}", *(", ".join(sorted(ab.seen[m])) for m in ab.labels)]
        )
    rep.table(
        f"One build, {setting} = {vals[0]} (A) and {vals[1]} (B), median (range) of {a.reps} "
        f"alternations ({a.files:,} files of 4 KiB over loopback HTTP at "
        f"{a.latency * 1000:.0f} ms per request, 4 reader threads; {a.mib} MiB in 1 MiB chunks)",
        ["", *ab.labels],
        rows,
    )
    a_lab, b_lab = ab.labels
    for what in whats:
        va = B.median(got.get((a_lab, what), []))
        vb = B.median(got.get((b_lab, what), []))
        if "CPU" in what or va != va or vb != vb:
            continue
        better = vb / va if "/s" in what else va / vb  # > 1: B is faster
        rep.aim(f"{what.split(':')[0]}: {b_lab} no slower", f"{better:.2f}x", better >= 0.95)
    rep.note("an aim holds when B is at most 5% slower than A (runs here move by 20-50%)")
    rep.note(f"load average before / after: {load_before} / {B.loadavg()} (a shared machine)")
    section = a.name or "bench_ab_" + setting.lower().removeprefix("lindifuse_")
    rep.publish(
        section,
        title or f"{setting}: one build, {vals[0]} and {vals[1]} ({section})",
        B.command_line(sys.argv[0], argv),
        time.perf_counter() - t0,
        write=not a.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run())
