"""Request bursts (patched pyfuse3, ``set_request_burst``) against no bursts, on one build.

    .venv/bin/python benchmarks/bench_burst.py             # 6 alternations, RESULTS.md
    .venv/bin/python benchmarks/bench_burst.py --quick      # 1 rep of 5,000 files, no write

The workload where requests queue up: 50,000 chunk files of 4 KiB over loopback HTTP (20 ms
per request), read by 4 threads, cold (empty persistent cache) and warm (remount, page cache
dropped, persistent cache full), as ``bench_seq.py``'s "small" part. Each rep runs both daemons
one after the other, the order swapped every rep (this machine favours neither slot then), and
gives files/s and the daemon's CPU seconds (user + system, from /proc). The daemon is the same
code both times: ``LINDIFUSE_REQUEST_BURST=0`` turns the bursts off.

Results go to benchmarks/RESULTS.md between ``<!-- bench_burst:start -->`` and
``<!-- bench_burst:end -->``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _gen  # noqa: E402
from bench_seq import cpu_seconds, read_files  # noqa: E402

WORK = B.WORK / "burst"
MODES = {"bursts of 16": "16", "no bursts": "0"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=6, help="alternations (default 6)")
    p.add_argument("--files", type=int, default=50_000, help="4 KiB files (default 50,000)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per HTTP request")
    p.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 rep, 5,000 files, no write")
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.files, a.no_write = 1, 5_000, True
    t0 = time.perf_counter()
    www = WORK / "www"
    www.mkdir(parents=True, exist_ok=True)
    tar = _gen.build_array_tar(www / "small.lindi.tar", a.files * 4096, 4096)
    load_before = B.loadavg()
    got: dict[tuple[str, str], list[float]] = {}
    with B.range_server(www, a.latency) as ask:
        url = f"http://127.0.0.1:{ask.port}/small.lindi.tar"  # type: ignore[attr-defined]
        for rep in range(a.reps):
            order = list(MODES) if rep % 2 == 0 else list(reversed(MODES))
            for mode in order:
                env = {**os.environ, "LINDIFUSE_REQUEST_BURST": MODES[mode]}
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
                        burst_on = m.stats()["request_burst"]
                        assert burst_on is (MODES[mode] != "0"), (mode, burst_on)
                    got.setdefault((mode, f"{phase} files/s"), []).append(a.files / secs)
                    got.setdefault((mode, f"{phase} daemon CPU-s"), []).append(cpu)
                    print(f"rep {rep + 1} {mode:13} {phase}: {a.files / secs:,.0f} files/s, "
                          f"daemon {cpu:.2f} CPU-s", flush=True)  # fmt: skip
            shutil.rmtree(WORK / "cache", ignore_errors=True)
    rep = B.Report()
    rows = []
    for what in ("cold files/s", "warm files/s", "cold daemon CPU-s", "warm daemon CPU-s"):
        nd = 2 if "CPU" in what else 0
        rows.append([what, *(B.spread(got[(m, what)], nd, ",") for m in MODES)])
    rep.table(
        f"{a.files:,} files of 4 KiB over loopback HTTP ({a.latency * 1000:.0f} ms per request), "
        f"4 reader threads, median (range) of {a.reps} alternations",
        ["", *MODES],
        rows,
    )
    for phase in ("cold", "warm"):
        on = B.median(got[("bursts of 16", f"{phase} files/s")])
        off = B.median(got[("no bursts", f"{phase} files/s")])
        rep.aim(f"{phase}: bursts no slower than no bursts", f"{on / off:.2f}x", on >= off)
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
