"""Request bursts (patched pyfuse3, ``set_request_burst``) against no bursts, on one build.

    .venv/bin/python benchmarks/bench_burst.py             # 6 alternations, RESULTS.md
    .venv/bin/python benchmarks/bench_burst.py --quick      # 1 rep, 5,000 files, 64 MiB, no write

small   where requests queue up: 50,000 chunk files of 4 KiB over loopback HTTP (20 ms per
        request), read by 4 threads, cold (empty persistent cache) and warm (remount, page cache
        dropped, persistent cache full), as ``bench_seq.py``'s "small" part: files/s and the
        daemon's CPU seconds (user + system, from /proc).
local   where they never do: one zarr 2 ``DirectoryStore`` reader of a local 256 MiB
        ``.lindi.tar`` in 1 MiB chunks, fresh mount with the page cache dropped (MB/s).
write   zarr 2 writes of 256 MiB in 1 MiB chunks into a new archive, until ``lindifuse
        umount`` returns (seconds).

Each rep runs both daemons one after the other, the order swapped every rep (this machine
favours neither slot then). The daemon is the same code both times:
``LINDIFUSE_REQUEST_BURST=0`` turns the bursts off.

Results go to benchmarks/RESULTS.md between ``<!-- bench_burst:start -->`` and
``<!-- bench_burst:end -->``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _gen  # noqa: E402
from bench_seq import ZARR2_READ, ZARR2_WRITE, cpu_seconds, read_files, snippet  # noqa: E402

WORK = B.WORK / "burst"
MODES = {"bursts of 16": "16", "no bursts": "0"}
PARTS = ("small", "local", "write")
MiB = 2**20
Got = dict[tuple[str, str], list[float]]


def _modes(rep: int) -> list[tuple[str, dict[str, str]]]:
    """Both modes with their daemon environment, in the order of this rep."""
    order = list(MODES) if rep % 2 == 0 else list(reversed(MODES))
    return [(m, {**os.environ, "LINDIFUSE_REQUEST_BURST": MODES[m]}) for m in order]


def _check_mode(m: B.Mount, mode: str) -> None:
    burst_on = m.stats()["request_burst"]
    assert burst_on is (MODES[mode] != "0"), (mode, burst_on)


def part_small(a: argparse.Namespace, got: Got) -> None:
    www = WORK / "www"
    www.mkdir(parents=True, exist_ok=True)
    tar = _gen.build_array_tar(www / "small.lindi.tar", a.files * 4096, 4096)
    with B.range_server(www, a.latency) as ask:
        url = f"http://127.0.0.1:{ask.port}/small.lindi.tar"  # type: ignore[attr-defined]
        for rep in range(a.reps):
            for mode, env in _modes(rep):
                cache = WORK / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                for phase in ("cold", "warm"):
                    if phase == "warm":
                        B.drop_caches()
                    with B.lindifuse_mount(
                        url,
                        WORK / "mnt",
                        log_file=WORK / "mount.log",
                        extra=["--cache-dir", str(cache)],
                        env=env,
                    ) as m:
                        files = [m.path / k for k, _, _ in tar.ranges()]
                        c0 = cpu_seconds(m.pid)
                        secs, n = read_files(files, 4)
                        cpu = cpu_seconds(m.pid) - c0
                        assert n == a.files * 4096, n
                        _check_mode(m, mode)
                    got.setdefault((mode, f"small, {phase}: files/s"), []).append(a.files / secs)
                    got.setdefault((mode, f"small, {phase}: daemon CPU-s"), []).append(cpu)
                    print(f"rep {rep + 1} {mode:13} small {phase}: {a.files / secs:,.0f} "
                          f"files/s, daemon {cpu:.2f} CPU-s", flush=True)  # fmt: skip
            shutil.rmtree(WORK / "cache", ignore_errors=True)


def part_local(a: argparse.Namespace, got: Got) -> None:
    lindi_py = B.lindi_python()
    if not lindi_py:
        print("local: no .venv-lindi (zarr 2): skipped", file=sys.stderr)
        return
    tar = _gen.build_array_tar(WORK / "local.lindi.tar", a.mib * MiB, MiB)
    for rep in range(a.reps):
        for mode, env in _modes(rep):
            B.drop_caches()
            with B.lindifuse_mount(
                tar.path, WORK / "mnt", log_file=WORK / "mount.log", extra=["--no-cache"], env=env
            ) as m:
                out = snippet(ZARR2_READ, lindi_py, path=str(m.path / "x"))
                assert out["ok"]
                _check_mode(m, mode)
            mbs = a.mib * MiB / 1e6 / out["s"]
            got.setdefault((mode, "local, zarr 2 reader, cold: MB/s"), []).append(mbs)
            print(f"rep {rep + 1} {mode:13} local zarr 2: {mbs:.0f} MB/s", flush=True)


def part_write(a: argparse.Namespace, got: Got) -> None:
    lindi_py = B.lindi_python()
    if not lindi_py:
        print("write: no .venv-lindi (zarr 2): skipped", file=sys.stderr)
        return
    arc = WORK / "write.lindi.tar"
    for rep in range(a.reps):
        for mode, env in _modes(rep):
            arc.unlink(missing_ok=True)
            subprocess.run([*B.lindifuse_cmd(), "create", str(arc)], check=True)
            os.sync()
            with B.lindifuse_mount(
                arc, WORK / "mnt", log_file=WORK / "mount.log", read_only=False, env=env
            ) as m:
                _check_mode(m, mode)
                t0 = time.perf_counter()
                snippet(ZARR2_WRITE, lindi_py, path=str(m.path / "x"), nbytes=str(a.mib * MiB))
                m.umount()
                secs = time.perf_counter() - t0
            got.setdefault((mode, "write, zarr 2 + umount: s"), []).append(secs)
            print(f"rep {rep + 1} {mode:13} write: {secs:.2f} s", flush=True)
    arc.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(PARTS), help="parts: " + ",".join(PARTS))
    p.add_argument("--reps", type=int, default=6, help="alternations (default 6)")
    p.add_argument("--files", type=int, default=50_000, help="4 KiB files (default 50,000)")
    p.add_argument("--mib", type=int, default=256, help="MiB read and written (default 256)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per HTTP request")
    p.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 rep, 5,000 files, no write")
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.files, a.mib, a.no_write = 1, 5_000, 64, True
    parts = B.parse_parts(p, a.only, PARTS)
    t0 = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = B.loadavg()
    got: Got = {}
    for name, fn in (("small", part_small), ("local", part_local), ("write", part_write)):
        if name in parts:
            fn(a, got)
    rep = B.Report()
    whats = list(dict.fromkeys(w for _, w in got))
    rows = []
    for what in whats:
        nd = 2 if what.endswith("s") and not what.endswith("/s") else 0
        rows.append([what, *(B.spread(got.get((m, what), []), nd, ",") for m in MODES)])
    rep.table(
        f"One build, bursts on and off, median (range) of {a.reps} alternations ({a.files:,} "
        f"files of 4 KiB over loopback HTTP at {a.latency * 1000:.0f} ms per request, 4 reader "
        f"threads; {a.mib} MiB in 1 MiB chunks local)",
        ["", *MODES],
        rows,
    )
    for what in whats:
        on = B.median(got.get(("bursts of 16", what), []))
        off = B.median(got.get(("no bursts", what), []))
        if "CPU" in what or on != on or off != off:
            continue
        better = on / off if "/s" in what else off / on  # > 1: bursts are faster
        rep.aim(f"{what.split(':')[0]}: bursts no slower", f"{better:.2f}x", better >= 0.95)
    rep.note("an aim holds when bursts are at most 5% slower (runs here move by 20-50%)")
    rep.note(f"load average before / after: {load_before} / {B.loadavg()} (a shared machine)")
    rep.publish(
        "bench_burst",
        "Request bursts: one build, bursts on and off (bench_burst)",
        B.command_line(__file__, argv),
        time.perf_counter() - t0,
        write=not a.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
