"""Remote read benchmark: lindifuse's caches, request merging and read-ahead over slow HTTP.

    .venv/bin/python benchmarks/bench_remote.py            # full run (a few minutes), RESULTS.md
    .venv/bin/python benchmarks/bench_remote.py --quick    # 64 MiB / 10,000 small chunks

One loopback HTTP server (tests/httpserver.py in its own process, ``--latency`` added to every
request, 20 ms by default) serves two ``.lindi.tar`` files whose chunks are uncompressed tar
members (``./blobs/x/<i>``):

big     a 256 MiB float32 array in 1 MiB chunks;
small   50,000 chunks of 4 KiB (one float32 array).

Readers, each reading the whole array and checking every value:

mount cold   zarr-python 3 over a fresh lindifuse mount with an empty persistent cache;
lindi        lindi's ``LindiH5pyFile`` (its own venv), the same URL;
fsspec       zarr-python 3 + fsspec's ReferenceFileSystem in-process (references rewritten to
             byte ranges of the tar's URL, since fsspec does not know lindi's tar layout);
fsspec-fuse  zarr-python 3 over fsspec's own FUSE mount (fusepy) of those references (big only);
mount warm   a new lindifuse mount on the now warm persistent cache (kernel page cache dropped);
local        the tar extracted to a ``.lindi.d`` on local disk, mounted with lindifuse and read
             the same way (page cache dropped); and a plain copy of the Zarr tree read by zarr
             directly, for reference.

Requests are counted by the server. Results go to benchmarks/RESULTS.md between
``<!-- bench_remote:start -->`` and ``<!-- bench_remote:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _gen  # noqa: E402

MiB = 2**20
WORK = B.WORK / "remote"

READ_SNIPPET = """
import json, sys, time
import numpy as np, zarr
sys.path.insert(0, {bench!r})
import _gen
t0 = time.perf_counter()
a = zarr.open_array({path!r}, mode="r", zarr_format=2)
d = a[:]
t = time.perf_counter() - t0
ok = bool(np.array_equal(d, _gen.expected_values(0, d.size)))
print(json.dumps({{"read_s": t, "ok": ok}}))
"""


def zarr_read_subprocess(path: Path, timeout: float) -> dict:
    """Read the array at ``path`` with zarr-python 3 in a child process (bounded by timeout)."""
    code = READ_SNIPPET.format(bench=str(B.BENCH_DIR), path=str(path))
    try:
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"read_s": None, "ok": False, "timeout": timeout}
    if r.returncode != 0:
        raise RuntimeError(f"zarr read of {path} failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def fsspec_fuse_mount(refs: Path, mnt: Path, log: Path) -> Iterator[None]:
    """fsspec's FUSE mount (benchmarks/_fsspec_fuse.py) in a subprocess, ended by its PID."""
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(B.BENCH_DIR / "_fsspec_fuse.py"),
                str(refs),
                str(mnt),
                "--remote-protocol",
                "http",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not (B.is_mounted(mnt) and _listable(mnt)):
            if proc.poll() is not None:
                raise RuntimeError(f"fsspec FUSE mount exited: {log.read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("fsspec FUSE mount did not come up")
            time.sleep(0.02)
        yield
    finally:
        B.force_unmount(mnt)
        B.end_pid(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def _listable(p: Path) -> bool:
    try:
        return bool(os.listdir(p))
    except OSError:
        return False


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.quick = args.quick
        self.work = WORK / ("quick" if args.quick else "full")
        self.www = self.work / "www"
        self.logs = self.work / "logs"
        self.mnt = self.work / "mnt"
        for d in (self.www, self.logs, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.aims: list[tuple[str, str, bool]] = []
        self.notes: list[str] = []
        self.load0 = os.getloadavg()[0]

    # -- data --------------------------------------------------------------------------------

    def data(self) -> tuple[_gen.ArrayTar, _gen.ArrayTar]:
        big_bytes = (64 if self.quick else 256) * MiB
        small_n = 10_000 if self.quick else 50_000
        big = self._tar("big.lindi.tar", big_bytes, MiB)
        small = self._tar("small.lindi.tar", small_n * 4096, 4096)
        return big, small

    def _tar(self, name: str, nbytes: int, chunk: int) -> _gen.ArrayTar:
        path = self.www / name
        print(f"building {name} ({nbytes // MiB} MiB in {nbytes // chunk:,} chunks)", flush=True)
        return _gen.build_array_tar(path, nbytes, chunk)

    # -- readers -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def mount(self, source: str | Path, tag: str, *extra: str) -> Iterator[B.Mount]:
        with B.lindifuse_mount(
            source, self.mnt, log_file=self.logs / f"{tag}.log", extra=extra
        ) as m:
            yield m

    def read_mount(self, source: str, tag: str, cache: Path, ask, name: str, timeout: float):
        B.drop_caches()
        ask("reset")
        with self.mount(source, tag, "--cache-dir", str(cache)) as m:
            mount_requests = int(ask(f"count {name}"))
            ask("reset")
            out = zarr_read_subprocess(m.path / "x", timeout)
            st = m.stats()
        assert out["ok"], f"{tag}: wrong values"
        return out["read_s"], int(ask(f"count {name}")), mount_requests, st

    def run(self) -> None:
        import numpy as np  # noqa: F401 - fail early when missing
        import zarr  # noqa: F401

        big, small = self.data()
        lindi_py = B.lindi_python()
        timeout = 900.0
        cache_root = self.work / "cache"
        shutil.rmtree(cache_root, ignore_errors=True)
        with B.range_server(self.www, self.a.latency) as ask:
            base = f"http://127.0.0.1:{ask.port}/"  # type: ignore[attr-defined]
            results: dict[str, dict[str, dict]] = {}
            for label, t in (("big", big), ("small", small)):
                name = t.path.name
                url = base + name
                res = results.setdefault(label, {})
                cache = cache_root / label
                print(f"[{label}] lindifuse cold", flush=True)
                secs, reqs, mreqs, st = self.read_mount(
                    url, f"{label}-cold", cache, ask, name, timeout
                )
                res["mount cold"] = {"s": secs, "req": reqs, "mount_req": mreqs, "stats": st}
                print(f"[{label}] lindifuse warm (remount on the persistent cache)", flush=True)
                secs, reqs, mreqs, st = self.read_mount(
                    url, f"{label}-warm", cache, ask, name, timeout
                )
                res["mount warm"] = {"s": secs, "req": reqs, "mount_req": mreqs, "stats": st}

                print(f"[{label}] zarr + fsspec reference fs, in-process", flush=True)
                res["fsspec"] = self.read_fsspec(t, url, ask, name)

                if label == "big" and lindi_py:
                    print(f"[{label}] lindi", flush=True)
                    ask("reset")
                    r = subprocess.run(
                        [lindi_py, str(B.BENCH_DIR / "_lindi_read.py"), url, "x"],
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                    )
                    if r.returncode != 0:
                        raise RuntimeError(f"lindi read failed: {r.stderr.strip()[-800:]}")
                    out = json.loads(r.stdout.strip().splitlines()[-1])
                    assert out["ok"], "lindi: wrong values"
                    res["lindi"] = {"s": out["read_s"], "req": int(ask(f"count {name}"))}
                elif label == "big":
                    self.notes.append("lindi: no lindi environment (set LINDI_PYTHON)")

                if label == "big" and not self.a.no_fsspec_fuse:
                    print(f"[{label}] fsspec FUSE mount", flush=True)
                    refs = self.work / f"{label}.refs.json"
                    refs.write_text(json.dumps(t.url_refs(url)))
                    fmnt = self.work / "fmnt"
                    try:
                        with fsspec_fuse_mount(refs, fmnt, self.logs / "fsspec-fuse.log"):
                            B.drop_caches()
                            ask("reset")
                            out = zarr_read_subprocess(fmnt / "x", self.a.fuse_timeout)
                        res["fsspec-fuse"] = {"s": out["read_s"], "req": int(ask(f"count {name}"))}
                        if out["read_s"] is None:
                            res["fsspec-fuse"]["timeout"] = self.a.fuse_timeout
                    except RuntimeError as e:
                        self.notes.append(f"fsspec FUSE mount failed: {e}")

                if label == "big":
                    print(f"[{label}] local copy", flush=True)
                    res.update(self.read_local(t))
        self.report(results, big, small)

    def read_fsspec(self, t: _gen.ArrayTar, url: str, ask, name: str) -> dict:
        import fsspec
        import numpy as np
        import zarr

        ask("reset")
        t0 = time.perf_counter()
        fs = fsspec.filesystem(
            "reference",
            fo=t.url_refs(url),
            remote_protocol="http",
            asynchronous=True,
            remote_options={"asynchronous": True},
            skip_instance_cache=True,
        )
        store = zarr.storage.FsspecStore(fs, read_only=True, path="")
        data = zarr.open_array(store, path="x", mode="r", zarr_format=2)[:]
        secs = time.perf_counter() - t0
        assert np.array_equal(data, _gen.expected_values(0, data.size)), "fsspec: wrong values"
        return {"s": secs, "req": int(ask(f"count {name}"))}

    def read_local(self, t: _gen.ArrayTar) -> dict:
        d = self.work / "local.lindi.d"
        plain = self.work / "local.zarr"
        if not (d / "lindi.json").exists():
            shutil.rmtree(d, ignore_errors=True)
            with tarfile.open(t.path) as tf:
                tf.extractall(d, filter="data")
        out = {}
        B.drop_caches()
        with self.mount(d, "local", "--no-cache") as m:
            r = zarr_read_subprocess(m.path / "x", 600)
            assert r["ok"], "local mount: wrong values"
            out["local (.lindi.d, mount)"] = {"s": r["read_s"], "req": 0}
            if not (plain / "x" / ".zarray").exists():
                shutil.rmtree(plain, ignore_errors=True)
                shutil.copytree(m.path, plain)
        B.drop_caches()
        r = zarr_read_subprocess(plain / "x", 600)
        assert r["ok"], "plain zarr: wrong values"
        out["local (plain Zarr dir)"] = {"s": r["read_s"], "req": 0}
        return out

    # -- report --------------------------------------------------------------------------------

    def report(self, results: dict, big: _gen.ArrayTar, small: _gen.ArrayTar) -> None:
        lines = []
        cmd = "benchmarks/bench_remote.py" + (" --quick" if self.quick else "")
        lines.append("## Remote reads: persistent cache, merging, read-ahead (bench_remote.py)\n")
        lines.append(f"- date: {B.now()}; commit {B.git_commit()}")
        lines.append(f"- command: `.venv/bin/python {cmd}`")
        lines.append(f"- machine: {B.machine()}")
        lines.append(
            f"- server: tests/httpserver.py on 127.0.0.1, {self.a.latency * 1000:.0f} ms added "
            f"per request; big = {big.nbytes // MiB} MiB float32 in {big.nchunks} chunks of "
            f"1 MiB; small = {small.nchunks:,} chunks of 4 KiB; uncompressed blobs in a "
            ".lindi.tar; every reader reads the whole array with zarr-python 3 (lindi: its "
            "h5py-like API) and checks every value; one run each"
        )
        lines.append("")
        lines.append("| data | reader | seconds | MiB/s | HTTP requests | notes |")
        lines.append("|---|---|---:|---:|---:|---|")
        for label, t in (("big", big), ("small", small)):
            for reader, r in results.get(label, {}).items():
                s = r["s"]
                mbs = f"{t.nbytes / MiB / s:.0f}" if s else "-"
                secs = f"{s:.2f}" if s else f"> {r.get('timeout', 0):.0f} (stopped)"
                note = ""
                st = r.get("stats")
                if st:
                    f = st["fetch"]
                    note = (
                        f"mount: {r['mount_req']} req; {f['merged_requests']} merged req for "
                        f"{f['merged_ranges']} ranges; read-ahead {f['readahead_windows']} "
                        f"windows / {f['readahead_chunks']} chunks net, "
                        f"{f['readahead_disk_chunks']} from disk; disk hits "
                        f"{st['disk_cache']['hits']}"
                    )
                lines.append(f"| {label} | {reader} | {secs} | {mbs} | {r['req']} | {note} |")
        lines.append("")

        def get(label: str, reader: str) -> float | None:
            return results.get(label, {}).get(reader, {}).get("s")

        cold, lindi, fss = get("big", "mount cold"), get("big", "lindi"), get("big", "fsspec")
        warm, local = get("big", "mount warm"), get("big", "local (.lindi.d, mount)")
        plain = get("big", "local (plain Zarr dir)")
        scold, sfs = get("small", "mount cold"), get("small", "fsspec")
        if cold and lindi:
            self.aim("big cold: >= 3x faster than lindi", lindi / cold, 3.0)
        if cold and fss:
            self.aim("big cold: >= fsspec in-process", fss / cold, 1.0)
        if warm and local:
            self.aim("big warm remount: >= 70% of the local .lindi.d mount", local / warm, 0.7)
        if warm and plain:
            self.notes.append(
                f"warm remount vs plain local Zarr directory read directly: {plain / warm:.0%}"
            )
        if cold and warm and plain:
            self.notes.append(
                f"where the big cold read's time goes: {warm - plain:.2f} s is the FUSE hop "
                f"(warm remount, no network, minus plain local read), {cold - warm:.2f} s is "
                "network time not hidden by read-ahead"
            )
        self.notes.append(
            f"load average (1 min) at start {self.load0:.2f}, at end {os.getloadavg()[0]:.2f} "
            "(other jobs on this machine add noise)"
        )
        if scold and sfs:
            self.aim("small cold: >= 5x faster than fsspec in-process", sfs / scold, 5.0)
        lines.append("Aims (ratio = other's seconds / lindifuse's seconds):\n")
        for text, ratio, ok in self.aims:
            lines.append(f"- {'met' if ok else 'NOT met'}: {text} ({ratio})")
        for n in self.notes:
            lines.append(f"- note: {n}")
        body = "\n".join(lines)
        print("\n" + body)
        if not self.a.no_results:
            B.update_results("bench_remote", body)
            print(f"\nwrote {B.RESULTS}")

    def aim(self, text: str, ratio: float, need: float) -> None:
        self.aims.append((text, f"{ratio:.2f}x", ratio >= need))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 MiB and 10,000 small chunks")
    p.add_argument("--latency", type=float, default=0.02, help="seconds added per request")
    p.add_argument("--no-fsspec-fuse", action="store_true", help="skip fsspec's FUSE mount")
    p.add_argument(
        "--fuse-timeout", type=float, default=300.0, help="stop the fsspec FUSE read after this"
    )
    p.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = p.parse_args()
    print("$ " + shlex.join([sys.executable, *sys.argv]), flush=True)
    Bench(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
