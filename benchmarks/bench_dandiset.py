"""Dandiset mount benchmark: listing a 2,000-asset dandiset, and the first read of one NWB
asset's array through the mount vs lindi opening the same asset's LINDI index URL.

    .venv/bin/python benchmarks/bench_dandiset.py             # 5 runs each, RESULTS.md
    .venv/bin/python benchmarks/bench_dandiset.py --runs 3 --no-write

A fake DANDI archive on 127.0.0.1 (tests/fake_dandi.py: API, bucket, LINDI index server), every
request delayed by ``--latency`` (20 ms). Dandiset 000100 (published 0.240101.0001) holds
2,000 assets in 20 folders: 1,999 small NWB files sharing one blob, and ``sub-000/target.nwb``
(pynwb's full test file; lindi's index of it on the index server, refs = its download URL).

Parts (each run with a fresh persistent cache unless said):

list cold     ``lindifuse mount dandi://000100`` until it answers, then list every folder and
              stat every asset (NWB directories not entered): the listing requests only;
list warm     the same with the persistent cache of the previous run: the published listing
              comes from the cache, no request;
read mount    after a fresh mount, zarr-python 3 (another process) opens the asset's
              ``acquisition/ephys/data`` and reads it whole: the index GET, metadata and chunks;
read lindi    lindi 0.4 (its venv) ``LindiH5pyFile.from_lindi_file(index URL)`` then the same
              dataset: the reference, in-process, same servers;
read hdf5     like read mount with ``--no-lindi-index``: the asset indexed from its HDF5 file;
memory        the daemon's RSS: a 1-asset dandiset; 10,000 NWB assets listed; after opening
              100 of them from LINDI indexes and 100 from their HDF5 files.

Results go to benchmarks/RESULTS.md between ``<!-- bench_dandiset:start -->`` and
``<!-- bench_dandiset:end -->``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _benchlib as B  # noqa: E402
from fake_dandi import FakeArchive  # noqa: E402

WORK = B.WORK / "dandiset"
PUB = "0.240101.0001"
TARGET = "sub-000/target.nwb"
ARRAY = "acquisition/ephys/data"
N_ASSETS = 2000

MOUNT_READ = """
import json, sys, time
import numpy as np, zarr
t0 = time.perf_counter()
a = zarr.open_array(sys.argv[1], mode="r", zarr_format=2)
d = a[:]
print(json.dumps({"s": time.perf_counter() - t0, "sum": int(d.astype("int64").sum()),
                  "shape": list(d.shape)}))
"""

LINDI_READ = """
import json, sys, time
import lindi
import numpy as np
t0 = time.perf_counter()
f = lindi.LindiH5pyFile.from_lindi_file(sys.argv[1])
d = f[sys.argv[2]][:]
t = time.perf_counter() - t0
f.close()
print(json.dumps({"s": t, "sum": int(np.asarray(d).astype("int64").sum()),
                  "shape": list(d.shape)}))
"""


def _json_line(out: str) -> dict:
    return json.loads([x for x in out.splitlines() if x.startswith("{")][-1])


def build(fa: FakeArchive, lindi_py: str) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    gen = str(B.REPO / "tests" / "lindi_gen.py")
    full, small = WORK / "target.nwb", WORK / "small.nwb"
    if not full.exists():
        subprocess.run([lindi_py, gen, "make-nwb-full", str(full)], check=True)
    if not small.exists():
        subprocess.run([lindi_py, gen, "make-nwb", str(small)], check=True)
    fa.add_dandiset("000100", published=[PUB])
    blob = fa.add_blob(small)
    target = fa.add_asset("000100", TARGET, full)
    for i in range(N_ASSETS - 1):
        fa.add_asset("000100", f"sub-{i // 100:03d}/sub-{i // 100:03d}_ses-{i:04d}.nwb", blob=blob)
    idx = WORK / "target.lindi.json"
    subprocess.run(
        [lindi_py, gen, "to-lindi", str(full), str(idx), "--url", fa.download_url(target)],
        check=True,
    )
    fa.set_index("000100", target, idx)
    import h5py

    with h5py.File(full, "r") as f:
        want = int(f[ARRAY][()].astype("int64").sum())
    index_url = fa.indexes.url(fa.index_path("000100", target))
    return {"target": target, "want": want, "index_url": index_url}


def walk_folders(mp: Path) -> int:
    n = 0
    for folder in os.listdir(mp):
        with os.scandir(mp / folder) as it:
            for e in it:
                e.stat()
                n += 1
    return n


N_MANY = 10_000


def memory(fa: FakeArchive, tmp: Path, margs) -> dict[str, tuple[int, int, int]]:
    """RSS of a 1-asset dandiset mount, then of a 10,000-asset one after listing every folder
    and after opening 100 NWB assets from LINDI indexes and 100 more from their HDF5 files."""
    small = WORK / "small.nwb"
    fa.add_dandiset("000102", published=[PUB])
    fa.add_asset("000102", "sub-000/one.bin", b"one asset")
    fa.add_dandiset("000101", published=[PUB])
    blob = fa.add_blob(small)
    idx = WORK / "small.lindi.json"
    assets = []
    for i in range(N_MANY):
        d = f"sub-{i // 100:03d}"
        assets.append(fa.add_asset("000101", f"{d}/{d}_ses-{i % 100:02d}.nwb", blob=blob))
    subprocess.run(
        [
            *B.lindifuse_cmd(),
            "index",
            str(small),
            "-o",
            str(idx),
            "-q",
            "--no-cache",
            "--url",
            fa.download_url(assets[0]),
        ],
        check=True,
    )
    for a in assets[::100]:
        fa.set_index("000101", a, idx)
    out: dict[str, tuple[int, int, int]] = {}

    def state(m: B.Mount) -> tuple[int, int, int]:
        st = m.stats()
        return (
            B.proc_status(m.pid).get("VmRSS", 0),
            st["memory_cache"]["bytes"],
            st["dandiset"]["keys"],
        )

    with B.lindifuse_mount(
        "dandi://000102", tmp / "mnt", log_file=tmp / "m.log", extra=margs(tmp / "mc0")
    ) as m:
        out["1-asset dandiset, mounted"] = state(m)
    with B.lindifuse_mount(
        "dandi://000101", tmp / "mnt", log_file=tmp / "m.log", extra=margs(tmp / "mc1")
    ) as m:
        assert walk_folders(m.path) == N_MANY
        out[f"{N_MANY:,}-asset dandiset, every folder listed"] = state(m)
        for ses, label in (("00", "LINDI index"), ("01", "HDF5 file")):
            names = [f"sub-{i:03d}/sub-{i:03d}_ses-{ses}.nwb" for i in range(100)]
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda n: os.listdir(m.path / n / "acquisition"), names))
            out[f"+ 100 assets opened ({label})"] = state(m)
        st = m.stats()["dandiset"]
        assert (st["from_index"], st["from_hdf5"]) == (100, 100), st
    return out


def run(args: argparse.Namespace) -> None:
    lindi_py = B.lindi_python()
    if lindi_py is None:
        raise SystemExit("no lindi environment: run `make setup`")
    t_start = time.perf_counter()
    rep = B.Report()
    tmp = Path(tempfile.mkdtemp(prefix="bench_dandiset_"))
    with FakeArchive(tmp / "srv") as fa:
        info = build(fa, lindi_py)
        fa.latency = fa.bucket.latency = fa.indexes.latency = args.latency

        def margs(cache: Path, *more: str) -> list[str]:
            return [
                "--dandi-api",
                fa.api_url,
                "--lindi-url-template",
                fa.template,
                "--cache-dir",
                str(cache),
                *more,
            ]

        src = "dandi://000100"
        rows: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "mount", "lindi", "hdf5")}
        reqs: dict[str, int] = {}
        split = (0, 0, 0)
        rss: list[int] = []
        for r in range(args.runs):
            cache = tmp / f"cache{r}"
            for kind in ("cold", "warm"):
                fa.reset_logs()
                t0 = time.perf_counter()
                with B.lindifuse_mount(
                    src, tmp / "mnt", log_file=tmp / "l.log", extra=margs(cache)
                ) as m:
                    n = walk_folders(m.path)
                    rows[kind].append(time.perf_counter() - t0)
                    rss.append(B.proc_status(m.pid).get("VmRSS", 0))
                assert n == N_ASSETS, n
                reqs[kind] = fa.count()
            for kind, more in (("mount", ()), ("hdf5", ("--no-lindi-index",))):
                cache = tmp / f"cache-{kind}{r}"
                with B.lindifuse_mount(
                    src, tmp / "mnt", log_file=tmp / "l.log", extra=margs(cache, *more)
                ) as m:
                    fa.reset_logs()
                    res = subprocess.run(
                        [sys.executable, "-c", MOUNT_READ, str(m.path / TARGET / ARRAY)],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    got = _json_line(res.stdout)
                    assert got["sum"] == info["want"], (kind, got)
                    rows[kind].append(got["s"])
                    reqs[kind] = fa.count() + len(fa.bucket.log) + len(fa.indexes.log)
            fa.reset_logs()
            res = subprocess.run(
                [lindi_py, "-c", LINDI_READ, info["index_url"], ARRAY],
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ, LINDIFUSE_DANDI_API_HOSTS=fa.host),
            )
            got = _json_line(res.stdout)
            assert got["sum"] == info["want"], got
            rows["lindi"].append(got["s"])
            reqs["lindi"] = fa.count() + len(fa.bucket.log) + len(fa.indexes.log)
            split = (fa.count(), len(fa.bucket.log), len(fa.indexes.log))
            print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in rows.items()))
        fa.latency = fa.bucket.latency = fa.indexes.latency = 0.0
        mem = memory(fa, tmp, margs)
    shutil.rmtree(tmp, ignore_errors=True)

    def cell(k: str) -> str:
        v = rows[k]
        return f"{B.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"

    rep.table(
        f"Mount and list {N_ASSETS:,} assets ({args.latency * 1000:.0f} ms per request)",
        ["case", "seconds, median (range)", "requests (last run)"],
        [
            ["mount + list every folder, fresh cache", cell("cold"), str(reqs["cold"])],
            ["the same, published listing cached", cell("warm"), str(reqs["warm"])],
        ],
    )
    rep.table(
        f"First read of `{ARRAY}` (30000x8 int16) of one asset ({args.latency * 1000:.0f} ms "
        "per request)",
        ["reader", "seconds, median (range)", "requests (last run)"],
        [
            ["zarr 3 on the mount (LINDI index)", cell("mount"), str(reqs["mount"])],
            ["lindi from_lindi_file(index URL), in-process", cell("lindi"), str(reqs["lindi"])],
            ["zarr 3 on the mount, --no-lindi-index (HDF5)", cell("hdf5"), str(reqs["hdf5"])],
        ],
    )
    rep.table(
        f"Daemon memory (VmRSS) with {N_MANY:,} assets (no latency)",
        ["state", "RSS MiB", "memory cache MiB", "keys in the tree"],
        [[k, f"{v[0] / 1024:.1f}", f"{v[1] / 2**20:.1f}", str(v[2])] for k, v in mem.items()],
    )
    rep.note(
        "each opened NWB asset holds its index's keys, and an NWB file's index carries the NWB "
        "schema the file embeds (specifications/..., about 300 KB inline for pynwb's files); "
        "the 100 LINDI-index assets share one index document (refs naming one asset)"
    )
    rep.note(
        f"lindi's requests (last run): {split[0]} to the API (its download redirects), "
        f"{split[1]} to the bucket, {split[2]} to the index server; lindifuse resolves an asset's "
        "redirect once and merges neighbouring chunk ranges"
    )
    rep.note(f"daemon RSS after listing {N_ASSETS:,} assets: median {B.median(rss) / 1024:.1f} MiB")
    rep.note(
        "mount times include starting the daemon's interpreter; the read times do not include "
        "the reader's interpreter start (measured inside it); the mount read starts right after "
        "the mount, so it includes loading the asset's index"
    )
    rep.aim(
        "first read through the mount vs lindi on the index URL",
        f"{B.median(rows['mount']) / B.median(rows['lindi']):.2f}x lindi's time",
        B.median(rows["mount"]) <= B.median(rows["lindi"]) * 1.5,
    )
    rep.publish(
        "bench_dandiset",
        "bench_dandiset: a dandiset mount (listing, first read) vs lindi",
        B.command_line(__file__, args.argv),
        time.perf_counter() - t_start,
        extra=[f"- load average at the end: {B.loadavg()}"],
        write=not args.no_write,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs of each part (median; default 5)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds added per request")
    p.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = p.parse_args(argv)
    args.argv = argv
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
