"""What ``--xarray`` costs: mount time of a many-key source with and without it, and opening a
pynwb-written file with xarray through the view vs reading it with h5py.

    .venv/bin/python benchmarks/bench_xarray.py            # 1,000,000 keys, 3 runs each
    .venv/bin/python benchmarks/bench_xarray.py --quick    # 100,000 keys

Parts (``--only`` picks some):

scale   a ``.lindi.json`` with N chunk keys in N/100 arrays (benchmarks/_gen.build_keys_json,
        100 chunks per array): seconds from ``lindifuse mount`` to ``ls`` answering, without
        and with ``--xarray`` (fresh mounts, alternating, medians of 5), and the view's build time from the
        daemon log. Without the option the view code never runs: the two "without" figures are
        the reference.
nwb     tests/nwb_gen.py's full.lindi.tar (needs the lindi venv): ``xr.open_datatree`` + load of
        every variable through a ``--xarray`` mount vs h5py reading every dataset of the .nwb.

Data goes to benchmarks/_work/xarray/ (gitignored); the many-key source is reused when present.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchlib as B  # noqa: E402
import _gen  # noqa: E402
from _benchlib import Report, fmt  # noqa: E402

PARTS = ("scale", "nwb")
RUNS = 5


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.work = B.REPO / "benchmarks" / "_work" / "xarray"
        self.work.mkdir(parents=True, exist_ok=True)
        self.r = Report()
        self.n = 0

    def _mount(self, source: Path, extra: tuple[str, ...]):
        self.n += 1
        log = self.work / f"mount-{self.n}.log"
        log.unlink(missing_ok=True)
        return B.lindifuse_mount(
            source, self.work / "mnt", log_file=log, extra=(*extra, "--no-cache")
        ), log

    def part_scale(self) -> None:
        nkeys = self.a.keys
        src = self.work / f"keys{nkeys}.lindi.json"
        if not src.exists():
            print(f"generating {src.name}", flush=True)
            _gen.build_keys_json(src, nkeys, per_group=100)
        rows = []
        results: dict[str, list[float]] = {"without": [], "with": []}
        loads: dict[str, list[float]] = {"without": [], "with": []}
        built: list[float] = []
        for _ in range(RUNS):
            for tag, extra in (("without", ()), ("with", ("--xarray",))):
                cm, log = self._mount(src, extra)
                with cm as m:
                    results[tag].append(m.mount_seconds)
                    loads[tag].append(m.load_seconds() or float("nan"))
                    if tag == "with":
                        d = json_dims(m.path / "g0" / "a" / ".zattrs")
                        assert d == ["a_dim_0"], d
                text = log.read_text()
                hit = re.search(r"xarray view built in ([0-9.]+)s", text)
                if tag == "with":
                    assert hit, "no build line in the log"
                    built.append(float(hit.group(1)))
                else:
                    assert hit is None
        for tag in ("without", "with"):
            xs = results[tag]
            rows.append([f"mount, {tag} --xarray", f"{fmt(B.median(xs))} s", fmt_l(xs)])
        for tag in ("without", "with"):
            xs = loads[tag]
            rows.append(
                [
                    f"daemon, first log line (source parsed, tree built) to 'mounted', {tag}",
                    f"{fmt(B.median(xs))} s",
                    fmt_l(xs),
                ]
            )
        rows.append(
            ["of which the view's build (daemon log)", f"{fmt(B.median(built))} s", fmt_l(built)]
        )
        self.r.table(
            f"Mount time, {nkeys:,}-key .lindi.json, {nkeys // 100:,} arrays",
            ["figure", "median", "runs"],
            rows,
        )
        imports = [import_seconds() for _ in range(RUNS)]
        self.r.note(
            f"importing lindifuse.xview (numcodecs) in a daemon that has imported the rest: "
            f"{fmt(B.median(imports))} s (median of {fmt_l(imports)}); it is imported only with "
            "--xarray, after the source is loaded and before the view's build is timed"
        )
        ratio = B.median(results["with"]) / B.median(results["without"])
        self.r.aim(
            "--xarray adds at most 50% to the mount time of a 1M-key file",
            f"{ratio:.2f}x",
            ratio <= 1.5 if nkeys >= 1_000_000 else None,
        )

    def part_nwb(self) -> None:
        lp = B.lindi_python()
        if lp is None:
            self.r.note("nwb part skipped: no lindi venv")
            return
        d = self.work / "nwb"
        if not (d / "full.lindi.tar").exists():
            subprocess.run([lp, str(B.REPO / "tests" / "nwb_gen.py"), str(d)], check=True)
        import h5py
        import xarray as xr

        t_x, t_h = [], []
        for _ in range(RUNS):
            cm, _log = self._mount(d / "full.lindi.tar", ("--xarray",))
            with cm as m, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                tree = xr.open_datatree(m.path, engine="zarr", zarr_format=2, consolidated=False)
                nvars = 0
                for node in tree.subtree:
                    for v in node.data_vars.values():
                        v.load()
                        nvars += 1
                t_x.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            nds = 0
            with h5py.File(d / "full.nwb", "r") as f:

                def visit(name, obj):
                    nonlocal nds
                    if isinstance(obj, h5py.Dataset):
                        obj[()]
                        nds += 1

                f.visititems(visit)
            t_h.append(time.perf_counter() - t0)
        self.r.table(
            "pynwb file (tests/nwb_gen.py full): open and read everything",
            ["reader", "median", "runs", "variables / datasets"],
            [
                [
                    "xr.open_datatree + load, --xarray mount",
                    f"{fmt(B.median(t_x))} s",
                    fmt_l(t_x),
                    str(nvars),
                ],
                ["h5py on the .nwb (reference)", f"{fmt(B.median(t_h))} s", fmt_l(t_h), str(nds)],
            ],
        )

    def run(self) -> None:
        for part in self.a.only:
            print(f"\n== {part} ==", flush=True)
            getattr(self, f"part_{part}")()


def import_seconds() -> float:
    code = (
        "import time, lindifuse.service.daemon; t = time.perf_counter(); import lindifuse.fs.xview; "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def json_dims(path: Path) -> list[str]:
    import json

    return json.loads(path.read_text())["_ARRAY_DIMENSIONS"]


def fmt_l(xs: list[float]) -> str:
    return ", ".join(fmt(x) for x in xs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100,000 keys (and no RESULTS.md update)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {PARTS}")
    a = p.parse_args(argv)
    a.only = B.parse_parts(p, a.only, PARTS)
    a.keys = 100_000 if a.quick else 1_000_000
    t0 = time.perf_counter()
    load0 = B.loadavg()
    b = Bench(a)
    b.run()
    b.r.note(f"load average (1, 5, 15 min) at start {load0}, at end {B.loadavg()}")
    b.r.publish(
        "bench_xarray",
        "The xarray view (`benchmarks/bench_xarray.py`)",
        B.command_line(__file__, argv),
        time.perf_counter() - t0,
        write=not a.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
