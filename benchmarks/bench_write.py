"""Write-path benchmarks of lindifuse: zarr-python 3 writing into a writable mount of a
``.lindi.tar``, side by side with the same writes into a local directory, in one run.

    .venv/bin/python benchmarks/bench_write.py            # full run (~3 min), updates RESULTS.md
    .venv/bin/python benchmarks/bench_write.py --quick    # 2,000 files / 64 MiB smoke test

Parts (``--only`` picks some):

small   20,000 chunk files of 2 KiB (a float64 zarr array, 256 values per chunk, no
        compressor: every chunk a ``blobs/`` member) written in 10 slices of 2,000 chunks,
        ``--reps`` times on fresh archives; seconds per slice (the aim: the last slice no
        slower than 1.5x the first, medians over the runs, i.e. a commit does not get slower
        as lindi.json grows), the daemon's commit and flush counts, and the archive's
        make-up; the same array into a local directory for scale.
big     a 1 GiB float32 array in 1 MiB uncompressed chunks, written by zarr into the mount
        and into a local directory on the same file system (alternating, ``--reps`` times,
        fresh archive and directory each time); seconds until zarr returns and until the data
        is durable (mount: ``lindifuse umount`` returned; local: every file fsynced). The aim:
        the mount at least half the local speed. Then the archive's size against the data
        (the aim: at most data + 5% + the padded JSON members).

Every written array is read back (a sample of chunks through a read-only remount) and
checked. Data goes to benchmarks/_work/write/ (gitignored), deleted after each part.
The machine is shared: the load average before and after each part is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import numpy as np  # noqa: E402
from _benchlib import Report, fmt, loadavg  # noqa: E402

MiB = 2**20
PARTS = ("small", "big")


# -- helpers -----------------------------------------------------------------------------------


def create_archive(path: Path) -> None:
    if path.exists():
        path.unlink()
    r = subprocess.run(
        [*B.lindifuse_cmd(), "create", str(path)], capture_output=True, text=True, timeout=60
    )
    if r.returncode != 0:
        raise RuntimeError(f"lindifuse create {path}: {r.stderr.strip()}")


def archive_makeup(path: Path) -> dict[str, int]:
    """Bytes of the archive by kind: blob data, blob headers + padding, JSON members (live
    lindi.json and index, spares and trash, with their headers and padding), the rest."""
    out = {"file": path.stat().st_size, "blob_data": 0, "blob_overhead": 0, "json": 0}
    out["blobs"] = 0
    with tarfile.open(path) as tf:
        for ti in tf:
            span = ti.offset_data - ti.offset + (ti.size + 511) // 512 * 512
            if ti.name.startswith("blobs/"):
                out["blobs"] += 1
                out["blob_data"] += ti.size
                out["blob_overhead"] += span - ti.size
            elif ti.name != ".tar_entry.json":
                out["json"] += span
    out["other"] = out["file"] - out["blob_data"] - out["blob_overhead"] - out["json"]
    return out


def fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def small_values(start_chunk: int, nchunks: int, per_chunk: int) -> np.ndarray:
    return np.arange(start_chunk * per_chunk, (start_chunk + nchunks) * per_chunk, dtype="<f8")


def big_values(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.uint32) & 0xFFFFFF).astype(np.float32)


# -- the benchmark -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.work = B.WORK / "write"
        if self.work.exists():
            for mp in (self.work / "mnt", self.work / "rmnt"):
                B.force_unmount(mp)
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.r = Report()
        self._n = 0
        self.nslices = 10

    def log_file(self, tag: str) -> Path:
        self._n += 1
        return self.logs / f"{self._n:02d}-{tag}.log"

    def mount(self, archive: Path, name: str):
        """A writable mount of ``archive``, always unmounted and its daemon ended by PID."""
        return B.lindifuse_mount(
            archive,
            self.work / "mnt",
            log_file=self.log_file(name),
            read_only=False,
            umount_timeout=120,
        )

    def verify(self, archive: Path, array: str, expect, chunk_ids: list[int]) -> None:
        """Read some chunks back through a read-only remount and compare."""
        import zarr

        with B.lindifuse_mount(archive, self.work / "rmnt", log_file=self.log_file("verify")):
            a = zarr.open_array(self.work / "rmnt" / array, mode="r", zarr_format=2)
            c = a.chunks[0]
            for i in chunk_ids:
                got = a[i * c : (i + 1) * c]
                if not np.array_equal(got, expect(i, c)):
                    raise AssertionError(f"{array}: chunk {i} read back wrong")

    # small -----------------------------------------------------------------------------------

    def small_run(self, rep: int) -> dict:
        """One run of the small part on a fresh archive: per-slice seconds and writer stats."""
        import zarr

        n, nslices, per = self.a.files, self.nslices, 256
        step = n // nslices
        archive = self.work / "small.lindi.tar"
        create_archive(archive)
        times, commits, flushes = [], [], []
        with self.mount(archive, f"small{rep}") as m:
            g = zarr.open_group(m.path, mode="a", zarr_format=2)
            arr = g.create_array(
                "s", shape=(n * per,), chunks=(per,), dtype="<f8", compressors=None, fill_value=0
            )
            prev = m.writer_stats()
            for k in range(nslices):
                t0 = time.perf_counter()
                arr[k * step * per : (k + 1) * step * per] = small_values(k * step, step, per)
                times.append(time.perf_counter() - t0)
                st = m.writer_stats()
                commits.append(st["commits"] - prev["commits"])
                flushes.append(st["flushes"] - prev["flushes"])
                prev = st
            print(f"  run {rep}: " + " ".join(f"{t:.2f}" for t in times) + " s", flush=True)
            final = m.writer_stats()
            umount_s = m.umount()
        make = archive_makeup(archive)
        self.verify(
            archive,
            "s",
            lambda i, c: small_values(i, 1, c),
            sorted({0, 1, n // 2, n - 2, n - 1}),
        )
        archive.unlink()
        return {
            "times": times,
            "commits": commits,
            "flushes": flushes,
            "final": final,
            "umount": umount_s,
            "make": make,
        }

    def part_small(self) -> None:
        import zarr

        n, nslices, per = self.a.files, self.nslices, 256
        step = n // nslices
        load0 = loadavg()
        runs = [self.small_run(rep) for rep in range(self.a.reps)]
        # the same writes into a local directory, for scale
        local = self.work / "small-local.zarr"
        g = zarr.open_group(local, mode="w", zarr_format=2)
        arr = g.create_array(
            "s", shape=(n * per,), chunks=(per,), dtype="<f8", compressors=None, fill_value=0
        )
        local_times = []
        for k in (0, nslices - 1):
            t0 = time.perf_counter()
            arr[k * step * per : (k + 1) * step * per] = small_values(k * step, step, per)
            local_times.append(time.perf_counter() - t0)
        shutil.rmtree(local)
        load1 = loadavg()

        rows = []
        for k in range(nslices):
            ts = [r["times"][k] for r in runs]
            rows.append(
                [
                    f"{k * step:,}-{(k + 1) * step - 1:,}",
                    ", ".join(fmt(t) for t in ts),
                    f"{step / B.median(ts):,.0f}",
                    ", ".join(str(r["commits"][k]) for r in runs),
                    ", ".join(str(r["flushes"][k]) for r in runs),
                ]
            )
        self.r.table(
            f"{n:,} chunk files of {per * 8} bytes through the mount in {nslices} slices "
            f"(zarr-python 3, `a[slice] = values`, {len(runs)} runs on fresh archives)",
            ["chunks", "seconds (each run)", "chunks/s (median)", "commits", "flushes"],
            rows,
        )
        first = B.median([r["times"][0] for r in runs])
        last = B.median([r["times"][-1] for r in runs])
        ratio = last / first
        r0 = runs[0]
        make = r0["make"]
        self.r.table(
            f"{n:,} small chunk files: summary (medians over the runs; archive of run 1)",
            ["figure", "value"],
            [
                [f"first {step:,} chunks (s)", fmt(first)],
                [f"last {step:,} chunks (s)", fmt(last)],
                [
                    "last / first (each run)",
                    ", ".join(fmt(r["times"][-1] / r["times"][0]) for r in runs),
                ],
                ["total write (s)", fmt(B.median([sum(r["times"]) for r in runs]))],
                ["`lindifuse umount` (s, final flush)", fmt(B.median([r["umount"] for r in runs]))],
                [
                    "commits / flushes before umount (each run)",
                    ", ".join(f"{r['final']['commits']:,} / {r['final']['flushes']}" for r in runs),
                ],
                [
                    f"local directory: first / last {step:,} chunks (s)",
                    f"{fmt(local_times[0])} / {fmt(local_times[1])}",
                ],
                ["archive size (MiB)", fmt(make["file"] / MiB)],
                [
                    "blob members / data (MiB)",
                    f"{make['blobs']:,} / {fmt(make['blob_data'] / MiB)}",
                ],
                ["tar headers + padding of blobs (MiB)", fmt(make["blob_overhead"] / MiB)],
                ["JSON members: lindi.json, index, spares, trash (MiB)", fmt(make["json"] / MiB)],
                ["load average before / after", f"{load0} / {load1}"],
            ],
        )
        self.r.aim(
            f"last {step:,} chunk writes <= 1.5x the first {step:,}",
            f"{fmt(last)} s vs {fmt(first)} s ({fmt(ratio)}x, medians of {len(runs)} runs)",
            ratio <= 1.5,
        )

    # big -------------------------------------------------------------------------------------

    def part_big(self) -> None:
        import zarr

        size = self.a.size_mib * MiB
        chunk = self.a.chunk_kib * 1024
        n = size // 4
        per = chunk // 4
        data = big_values(n)
        load0 = loadavg()
        archive = self.work / "big.lindi.tar"
        local = self.work / "big-local.zarr"
        res: dict[str, list[tuple[float, float]]] = {"local": [], "mount": []}
        stats = None
        for rep in range(self.a.reps):
            # local directory on the same file system
            if local.exists():
                shutil.rmtree(local)
            os.sync()
            g = zarr.open_group(local, mode="w", zarr_format=2)
            arr = g.create_array(
                "big", shape=(n,), chunks=(per,), dtype="<f4", compressors=None, fill_value=0
            )
            t0 = time.perf_counter()
            arr[:] = data
            t_write = time.perf_counter() - t0
            fsync_tree(local)
            t_durable = time.perf_counter() - t0
            res["local"].append((t_write, t_durable))
            print(f"  rep {rep} local: {t_write:.2f}s ({t_durable:.2f}s durable)", flush=True)
            shutil.rmtree(local)
            os.sync()
            # the mount
            create_archive(archive)
            with self.mount(archive, "big") as m:
                g = zarr.open_group(m.path, mode="a", zarr_format=2)
                arr = g.create_array(
                    "big", shape=(n,), chunks=(per,), dtype="<f4", compressors=None, fill_value=0
                )
                t0 = time.perf_counter()
                arr[:] = data
                t_write = time.perf_counter() - t0
                stats = m.writer_stats()
                m.umount()
                t_durable = time.perf_counter() - t0
            res["mount"].append((t_write, t_durable))
            print(f"  rep {rep} mount: {t_write:.2f}s ({t_durable:.2f}s durable)", flush=True)
            if rep < self.a.reps - 1:
                archive.unlink()
        nchunks = n // per
        self.verify(
            archive,
            "big",
            lambda i, c: data[i * c : (i + 1) * c],
            sorted({0, 1, nchunks // 3, nchunks // 2, nchunks - 1}),
        )
        make = archive_makeup(archive)
        load1 = loadavg()

        def mibs(t: float) -> float:
            return size / MiB / t

        rows = []
        for kind in ("local", "mount"):
            w = [t for t, _ in res[kind]]
            d = [t for _, t in res[kind]]
            rows.append(
                [
                    "local directory" if kind == "local" else "lindifuse mount",
                    ", ".join(fmt(t) for t in w),
                    fmt(mibs(B.median(w)), 0),
                    ", ".join(fmt(t) for t in d),
                    fmt(mibs(B.median(d)), 0),
                ]
            )
        self.r.table(
            f"{self.a.size_mib} MiB float32 array, {self.a.chunk_kib} KiB uncompressed chunks, "
            f"zarr-python 3 `a[:] = data` ({self.a.reps} runs, alternating)",
            ["into", "write s (each run)", "MiB/s (median)", "until durable s", "MiB/s (median)"],
            rows,
        )
        lw = B.median([t for t, _ in res["local"]])
        mw = B.median([t for t, _ in res["mount"]])
        ld = B.median([t for _, t in res["local"]])
        md = B.median([t for _, t in res["mount"]])
        ratio = lw / mw
        self.r.aim(
            "mount write >= 0.5x local directory speed",
            f"{fmt(mibs(mw), 0)} vs {fmt(mibs(lw), 0)} MiB/s ({fmt(ratio)}x; until durable "
            f"{fmt(ld / md)}x)",
            ratio >= 0.5,
        )
        data_bytes = size
        bound = data_bytes * 1.05 + make["json"]
        extra = make["file"] - data_bytes
        self.r.table(
            f"archive after writing {self.a.size_mib} MiB",
            ["figure", "value"],
            [
                ["data written (bytes)", f"{data_bytes:,}"],
                ["archive file (bytes)", f"{make['file']:,}"],
                ["over the data", f"{extra:,} ({100 * extra / data_bytes:.2f}%)"],
                ["blob members / their data", f"{make['blobs']:,} / {make['blob_data']:,}"],
                ["blob headers + padding", f"{make['blob_overhead']:,}"],
                ["JSON members (lindi.json, index, spares, trash)", f"{make['json']:,}"],
                ["entry + trailer + other", f"{make['other']:,}"],
                ["writer stats at the end", json.dumps(stats)],
                ["load average before / after", f"{load0} / {load1}"],
            ],
        )
        self.r.aim(
            "archive <= data + 5% + padded JSON members",
            f"{make['file'] / MiB:.1f} MiB vs bound {bound / MiB:.1f} MiB",
            make["file"] <= bound,
        )
        archive.unlink()

    # run -------------------------------------------------------------------------------------

    def run(self) -> None:
        t0 = time.perf_counter()
        self.r.note(
            f"{os.cpu_count()} CPUs shared with other jobs (load average {loadavg()} at the "
            "start; see the tables): figures of single runs vary by up to 2x, so every part is "
            "repeated and judged on medians; the local directory runs alongside for scale."
        )
        for part in self.a.only:
            print(f"\n== {part} ==", flush=True)
            tp = time.perf_counter()
            getattr(self, f"part_{part}")()
            print(f"({part}: {time.perf_counter() - tp:.0f}s)", flush=True)
        self.elapsed = time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2,000 files, 64 MiB, 1 repetition")
    p.add_argument("--files", type=int, default=None, help="small chunk files (20000)")
    p.add_argument("--size-mib", type=int, default=None, help="big array size (default 1024)")
    p.add_argument("--chunk-kib", type=int, default=1024, help="big array chunk (default 1024)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of each part (default 3)")
    p.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts: {','.join(PARTS)}"
    )
    p.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = p.parse_args(argv)
    q = args.quick
    args.files = args.files or (2_000 if q else 20_000)
    args.size_mib = args.size_mib or (64 if q else 1024)
    args.reps = args.reps or (1 if q else 3)
    args.only = B.parse_parts(p, args.only, PARTS)

    bench = Bench(args)
    bench.run()
    r = bench.r
    cmd = B.command_line(__file__, argv)
    r.publish(
        "bench_write",
        "Write path (`benchmarks/bench_write.py`)",
        cmd,
        bench.elapsed,
        extra=(),
        write=not args.no_results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
