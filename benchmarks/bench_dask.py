"""Dask cluster benchmark: one lindifuse mount per node vs what each worker opens itself.

    .venv/bin/python benchmarks/bench_dask.py            # 512 MiB in 1 MiB chunks, RESULTS.md
    .venv/bin/python benchmarks/bench_dask.py --quick    # 64 MiB

The source is an HDF5 file (``data.h5``: a float32 (rows, 64) dataset in uncompressed chunks of
4096 x 64 = 1 MiB) on a loopback HTTP server (tests/httpserver.py in its own process) that adds
``--latency`` (20 ms) to every request, plus a reference file (``data.lindi.json``, the Zarr
metadata and one ``[url, offset, size]`` reference per chunk of data.h5) for the Zarr readers.

For 1, 2 and 4 worker processes (``distributed.LocalCluster``, one thread each, one node), each
reader runs two passes, each a reduction over every chunk on the workers (``sum``, then
``max``: two computations, as an analysis revisits its data), and is checked against the known
values:

lindifuse lindi   the LindifuseMount plugin mounts data.lindi.json once for the node (cold
                  persistent cache); xarray opens the mount on a worker;
lindifuse hdf5    the same plugin mounting data.h5 itself (indexed at mount), ``--xarray``;
fsspec            xarray + fsspec's ReferenceFileSystem over data.lindi.json in each worker
                  (``reference://``, zarr-python 3): the peer a Dask user picks today;
h5py+remfile      dask.array over h5py + remfile, the file opened once in each worker.

Origin bytes are the bytes of data.h5 the server sent (206 answers), counted per reader.
"open" is the time to a dask array: for lindifuse the plugin's registration (mounting; the
HDF5 file is indexed then) and xarray opening the mount on a worker; for fsspec xarray opening
the references on the client; nothing for h5py+remfile, which opens the file in each worker's
first task. Before the clock starts every worker imports the libraries of all four readers
(``_dask_readers.warm_imports``: a worker of an analysis session has them already, and each
reader gets a fresh cluster, which would otherwise charge it its imports); ``--cold-imports``
leaves them out. The total (open + both passes) is what the wall-time aim compares. Results go to benchmarks/RESULTS.md between ``<!-- bench_dask:start -->`` and
``<!-- bench_dask:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _dask_readers as R  # noqa: E402

MiB = 2**20
ROWS, COLS = 4096, 64  # one chunk: 4096 x 64 float32 = 1 MiB
WORK = B.WORK / "dask"
READERS = ("lindifuse lindi", "lindifuse hdf5", "fsspec", "h5py+remfile")


def chunk_values(i: int):
    import numpy as np

    base = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) % 997
    return base * 0.5 + np.float32(i % 1000)


def make_data(path: Path, nchunks: int) -> dict:
    """data.h5 and what the reductions must give (cached beside it)."""
    import h5py
    import numpy as np

    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        m = json.loads(meta.read_text())
        if m.get("nchunks") == nchunks:
            return m
    total, peak = 0.0, -np.inf
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("data", (ROWS * nchunks, COLS), "<f4", chunks=(ROWS, COLS))
        for i in range(nchunks):
            v = chunk_values(i)
            ds[i * ROWS : (i + 1) * ROWS] = v
            total += float(v.astype(np.float64).sum())
            peak = max(peak, float(v.max()))
        chunks = []
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            chunks.append([info.chunk_offset[0] // ROWS, info.byte_offset, info.size])
    tmp.replace(path)
    m = {"nchunks": nchunks, "sum": total, "max": peak, "chunks": chunks}
    meta.write_text(json.dumps(m))
    return m


def write_refs(path: Path, url: str, m: dict) -> None:
    """A LINDI/kerchunk reference file: Zarr v2 metadata + one reference per chunk of url."""
    n = m["nchunks"]
    zarray = {
        "chunks": [ROWS, COLS],
        "compressor": None,
        "dtype": "<f4",
        "fill_value": None,  # xarray would mask zeros as missing otherwise
        "filters": None,
        "order": "C",
        "shape": [ROWS * n, COLS],
        "zarr_format": 2,
    }
    refs = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        ".zattrs": json.dumps({}),
        "data/.zarray": json.dumps(zarray),
        "data/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["time", "channel"]}),
    }
    for i, off, size in m["chunks"]:
        refs[f"data/{i}.0"] = [url, off, size]
    path.write_text(json.dumps({"version": 1, "refs": refs}))


class Bench(B.Report):
    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__()
        self.a = a
        self.nchunks = 64 if a.quick else a.chunks
        self.workers = [int(w) for w in a.workers.split(",")]
        self.readers = [r for r in READERS if r in a.only] if a.only else list(READERS)
        self.rows: list[list[str]] = []
        self.results: dict[tuple[str, int], dict] = {}

    def run(self) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        www = WORK / "www"
        www.mkdir(exist_ok=True)
        print(f"making data.h5: {self.nchunks} chunks of 1 MiB", flush=True)
        self.m = make_data(www / "data.h5", self.nchunks)
        if not self.a.cold_imports:
            R.warm_imports()  # the client's too: the first reader run would pay them
        with B.range_server(www, self.a.latency) as ask:
            base = f"http://127.0.0.1:{ask.port}"
            self.h5_url, self.refs_url = f"{base}/data.h5", f"{base}/data.lindi.json"
            write_refs(www / "data.lindi.json", self.h5_url, self.m)
            for w in self.workers:
                for reader in self.readers:
                    print(f"[{w} workers] {reader}", flush=True)
                    self.results[(reader, w)] = self.one(reader, w, ask)

    def one(self, reader: str, nworkers: int, ask) -> dict:
        import distributed

        run_dir = WORK / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        load = B.loadavg()
        with (
            distributed.LocalCluster(
                n_workers=nworkers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            client.wait_for_workers(nworkers)
            if not self.a.cold_imports:
                client.run(R.warm_imports)
            ask("reset")
            t0 = time.perf_counter()
            with self.opened(reader, client, run_dir) as data:
                t_open = time.perf_counter()
                s = float(data.astype("f8").sum().compute())
                t1 = time.perf_counter()
                b1 = int(ask("bytes data.h5"))
                mx = float(data.max().compute())
                t2 = time.perf_counter()
                b2 = int(ask("bytes data.h5"))
        ok = abs(s - self.m["sum"]) <= 1e-9 * abs(self.m["sum"]) and mx == self.m["max"]
        if not ok:
            raise RuntimeError(f"{reader}: wrong result sum {s} max {mx} (want {self.m})")
        r = {
            "open": t_open - t0,
            "pass1": t1 - t_open,
            "pass2": t2 - t1,
            "bytes1": b1,
            "bytes2": b2 - b1,
            "load": load,
        }
        print(f"  {r}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        return r

    @contextlib.contextmanager
    def opened(self, reader: str, client, run_dir: Path):
        """The dask array ``data`` as ``reader`` sees it (mounts cleaned up on exit)."""
        import dask.array as da
        import numpy as np
        import xarray as xr

        if reader.startswith("lindifuse"):
            from lindifuse.dask import LindifuseMount

            hdf5 = reader.endswith("hdf5")
            mp = run_dir / "mnt"
            plugin = LindifuseMount(
                self.h5_url if hdf5 else self.refs_url,
                str(mp),
                cache_dir=str(run_dir / "cache"),
                state_dir=str(run_dir / "state"),
                xarray=hdf5,
                name="bench",
            )
            client.register_plugin(plugin)
            try:
                ds = client.submit(R.open_zarr, str(mp), pure=False).result()
                yield ds["data"].data
            finally:
                client.unregister_worker_plugin("bench")  # the last worker unmounts
                if B.is_mounted(mp):
                    B.force_unmount(mp)
        elif reader == "fsspec":
            ds = xr.open_zarr(
                "reference://",
                storage_options={
                    "fo": self.refs_url,
                    "remote_protocol": "http",
                    "asynchronous": True,
                    "remote_options": {"asynchronous": True},
                },
                zarr_format=2,
                consolidated=False,
            )
            yield ds["data"].data
        else:
            n = self.nchunks
            src = R.RemoteH5(self.h5_url, "data", (ROWS * n, COLS), "<f4")
            # meta given: dask does not read a slab here (the client opens no file)
            meta = np.empty((0, 0), dtype="<f4")
            try:
                yield da.from_array(src, chunks=(ROWS, COLS), asarray=True, lock=False, meta=meta)
            finally:
                R.close_all()

    def report(self, elapsed: float, cmd: str) -> None:
        size = self.nchunks * MiB
        rows = []
        for (reader, w), r in self.results.items():
            rows.append(
                [
                    str(w),
                    reader,
                    B.fmt(r["open"]),
                    B.fmt(r["pass1"]),
                    B.fmt(r["pass2"]),
                    B.fmt(r["open"] + r["pass1"] + r["pass2"]),
                    f"{r['bytes1'] / size:.2f}",
                    f"{r['bytes2'] / size:.2f}",
                    r["load"],
                ]
            )
        self.table(
            f"{self.nchunks} MiB in 1 MiB chunks, {self.a.latency * 1000:.0f} ms per request",
            [
                "workers",
                "reader",
                "open s",
                "pass 1 s",
                "pass 2 s",
                "total s",
                "origin bytes pass 1 (x dataset)",
                "pass 2 (x dataset)",
                "load before",
            ],
            rows,
        )
        top = max(self.workers)
        lf = [self.results.get((r, top)) for r in READERS if r.startswith("lindifuse")]
        peers = [self.results.get((r, top)) for r in ("fsspec", "h5py+remfile")]
        lf, peers = [x for x in lf if x], [x for x in peers if x]
        for reader in READERS:
            got = [r for (name, _), r in self.results.items() if name == reader]
            if not got:
                continue
            worst = max((r["bytes1"] + r["bytes2"]) / size for r in got)
            if reader.startswith("lindifuse"):
                self.aim(
                    f"{reader}: origin bytes = dataset x 1 node", f"{worst:.2f}x", worst < 1.05
                )
        if lf and peers:
            best_peer = min(p["open"] + p["pass1"] + p["pass2"] for p in peers)
            best_lf = min(x["open"] + x["pass1"] + x["pass2"] for x in lf)
            self.aim(
                f"wall time at {top} workers <= the best peer's",
                f"{best_lf:.2f} s vs {best_peer:.2f} s",
                best_lf <= best_peer,
            )
        self.note(
            "one node; the machine (2 cores) was shared with other jobs: see the load column "
            f"and the load average after the run ({B.loadavg()})"
        )
        self.publish(
            "bench_dask",
            "bench_dask: a Dask cluster reading through one lindifuse mount per node",
            cmd,
            elapsed,
            write=not self.a.no_write,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="64 MiB instead of --chunks")
    p.add_argument("--chunks", type=int, default=512, help="1 MiB chunks (default 512)")
    p.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per request (0.02)")
    p.add_argument("--only", type=lambda s: s.split(","), help=f"readers among {READERS}")
    p.add_argument(
        "--cold-imports",
        action="store_true",
        help="do not import the readers' libraries in the workers before the clock starts",
    )
    p.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    b = Bench(a)
    b.run()
    b.report(time.perf_counter() - t0, B.command_line(__file__, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
