"""Fixture generator and reference dumper, run with the *lindi* venv's python.

lindi 0.4.x needs zarr<3 while lindifuse uses zarr 3, so this script is never
imported by the main test environment: tests run it as a subprocess with the
interpreter of `.venv-lindi` (see conftest.py, fixture ``lindi_python``).

Subcommands (all paths may be relative):

  make-h5 OUT.h5 [--external-link]
      A small NWB-like HDF5 file (see ``make_h5`` for what is in it).
  to-lindi IN.h5 OUT [--url URL] [--max-chunk-size N] [--amend]
      Convert with lindi; OUT ends in .lindi.json, .lindi.tar or .lindi.d.
      Chunk references name URL (default: the absolute path of IN.h5).
      --amend then opens OUT with lindi in r+ mode and adds datasets, so a
      .lindi.tar / .lindi.d also holds internal blobs ("./blobs/...").
  dump-store SOURCE OUT.json [--raw]
      {key: base64(bytes lindi's store returns for key)} for every key in refs
      (lindi's chunk zero-padding applied, exactly as lindi serves it).
      --raw: the referenced bytes without lindi's padding.
  read-arrays SOURCE OUT.npz
      Every dataset's values as lindi's h5py-like API returns them.
  fixtures OUTDIR
      All of the above in one process (saves interpreter start-up):
      example.h5, example.lindi.{json,tar,d}, amended.lindi.{tar,d}, and
      OUTDIR/reference/<name>.{store.json,raw.json,arrays.npz} for each.
  read-json SOURCE NAME...
      Print {NAME: description} as JSON: for a dataset {"kind": "dataset", "shape",
      "dtype", "values" (nested lists), "attrs"}, for a group {"kind": "group",
      "keys", "attrs"}, for a missing name {"kind": "missing"}. An attribute lindi
      cannot convert (a JSON object) reads as {"error": "..."}.
  amend SOURCE GROUP [--start S] [--n N]
      Open SOURCE with lindi in r+ mode and add GROUP (attrs {"who": "lindi"}) holding
      dataset "v" = arange(N) + S as float64, chunks of 250 values, uncompressed
      (2000-byte chunks: lindi writes them as blobs of the container).
  make-nwb OUT.nwb
      A small NWB file written by pynwb: TimeSeries acquisition/ts (int16 (1000, 4),
      rate 10 Hz, unit mV).
  read-nwb SOURCE
      Open SOURCE with lindi and read it with pynwb.NWBHDF5IO(file=f, mode="r"); print
      JSON {"session_description", "identifier", "acquisition": {name: {"data",
      "unit", "description", "comments", "rate", "starting_time", "type"}}}.
  h5-oracle IN.h5 OUT.json [--split-size N] [--threshold N]
      lindi's own index of IN.h5 (LindiH5ZarrStore.to_reference_file_system), chunk
      references naming IN.h5's absolute path; --threshold 0 lists every chunk.
  h5-compare INDEX.lindi.json IN.h5
      Open INDEX with lindi (LindiH5pyFile) and compare every dataset's values and every
      attribute of every object with h5py's reading of IN.h5; print JSON
      {"checked": N, "problems": [...]}.
  make-nwb-full OUT.nwb
      An NWB file written by pynwb with a TimeSeries with timestamps, an ElectricalSeries with
      an electrodes table region, a units table with ragged spike times, strings, a link
      (a TimeSeries whose timestamps link to another's) and a processing module.
  make-nwb-many OUT.nwb [--series N]
      An NWB file written by pynwb with N TimeSeries (data gzip-chunked, timestamps) in
      acquisition: about 3N + 30 HDF5 objects (benchmarks).
  dump-nwb SOURCE [--lindi]
      Read SOURCE with pynwb (through lindi with --lindi, else the HDF5 file itself) and print
      its content as JSON, for comparing the two readings.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys

import h5py
import lindi
import numpy as np

# Small split size so the fixture stays small but lindi still splits the
# contiguous dataset and its last chunk is short (=> lindi zero-pads it).
DEFAULT_MAX_CHUNK_SIZE = 10_000


def make_h5(path: str, external_link: bool = False) -> None:
    """Write a small NWB-like HDF5 file.

    - root attrs (NWB-ish), nested groups acquisition/ts and processing/behavior
    - acquisition/ts/data: int16 (100, 37), chunks (16, 8), gzip+shuffle:
      partial edge chunks in both dimensions
    - acquisition/ts/timestamps: float64 (3000,) contiguous = 24000 bytes;
      with max chunk size 10000 lindi splits it into chunks of 1250 values,
      the last one holds 500 values (4000 of 10000 bytes) and is zero-padded
    - acquisition/ts/starting_time: scalar float64 with attrs
    - general/session_description (scalar str), general/keywords (vlen str array)
    - general/small_ints: int32 (10,) (inlined by lindi)
    - processing/behavior/table: compound dataset (x int32, y float64)
    - processing/behavior/link_to_data: soft link to /acquisition/ts/data
    - processing/behavior attribute 'ref': object reference to /acquisition/ts
    - empty group /analysis
    - with external_link: acquisition/many_chunks int32 (1100,), chunks (1,),
      more than lindi's 1000-chunk threshold => _EXTERNAL_ARRAY_LINK
    """
    rng = np.random.default_rng(1234)
    with h5py.File(path, "w") as f:
        f.attrs["neurodata_type"] = "NWBFile"
        f.attrs["namespace"] = "core"
        f.attrs["nwb_version"] = "2.7.0"
        f.attrs["object_id"] = "a0000000-0000-4000-8000-000000000001"
        acq = f.create_group("acquisition")
        ts = acq.create_group("ts")
        ts.attrs["neurodata_type"] = "TimeSeries"
        ts.attrs["description"] = "a test time series"
        ts.attrs["comments"] = "no comments"
        # small values: every compressed chunk is shorter than its 256 raw bytes,
        # so lindi 0.4 zero-pads them (which a mount must not do)
        data = rng.integers(-20, 20, size=(100, 37), dtype=np.int16)
        d = ts.create_dataset(
            "data", data=data, chunks=(16, 8), compression="gzip", compression_opts=4, shuffle=True
        )
        d.attrs["unit"] = "volts"
        d.attrs["conversion"] = 1.0
        ts.create_dataset("timestamps", data=np.arange(3000, dtype=np.float64) / 30.0)
        st = ts.create_dataset("starting_time", data=np.float64(0.5))
        st.attrs["rate"] = 30.0
        st.attrs["unit"] = "seconds"
        gen = f.create_group("general")
        gen.create_dataset("session_description", data="test session")
        gen.create_dataset(
            "keywords", data=["alpha", "beta", "gamma delta"], dtype=h5py.string_dtype()
        )
        gen.create_dataset("small_ints", data=np.arange(10, dtype=np.int32))
        beh = f.create_group("processing").create_group("behavior")
        beh.attrs["neurodata_type"] = "ProcessingModule"
        table = np.array([(i, i * 0.5) for i in range(5)], dtype=[("x", "<i4"), ("y", "<f8")])
        beh.create_dataset("table", data=table)
        beh["link_to_data"] = h5py.SoftLink("/acquisition/ts/data")
        beh.attrs["ref"] = f["acquisition/ts"].ref
        f.create_group("analysis")
        if external_link:
            acq.create_dataset("many_chunks", data=np.arange(1100, dtype=np.int32), chunks=(1,))


def to_lindi(h5_path: str, out: str, url: str | None, max_chunk_size: int, amend: bool) -> None:
    if not out.endswith((".lindi.json", ".lindi.tar", ".lindi.d")):
        raise SystemExit(f"to-lindi: OUT must end in .lindi.json, .lindi.tar or .lindi.d: {out}")
    opts = lindi.LindiH5ZarrStoreOpts(contiguous_dataset_max_chunk_size=max_chunk_size)
    ref_url = url or os.path.abspath(h5_path)
    with lindi.LindiH5pyFile.from_hdf5_file(h5_path, zarr_store_opts=opts, url=ref_url) as f:
        f.write_lindi_file(out)
    if amend:
        _amend(out)


def _amend(path: str) -> None:
    """Add data through lindi's writer (the amend workflow).

    Every chunk is >= 1000 bytes so lindi's tar store writes them all as blobs
    (and never hits its early-return on an inlined first chunk).
    """
    if path.endswith(".lindi.json"):
        raise SystemExit("--amend only makes sense for .lindi.tar / .lindi.d")
    with lindi.LindiH5pyFile.from_lindi_file(path, mode="r+") as f:
        g = f.create_group("processing/amended")
        g.attrs["description"] = "written by lindi in r+ mode"
        # uncompressed: 250 * 4 = 1000-byte chunks (the last one written whole by zarr)
        vals = np.arange(600, dtype=np.float32) * 0.25
        ds = g.create_dataset("values", data=vals, chunks=(250,), compression=None)
        ds.attrs["unit"] = "a.u."
        # gzip-compressed random int64: compressed chunks well over 1000 bytes
        rng = np.random.default_rng(99)
        mat = rng.integers(-(2**62), 2**62, size=(40, 30), dtype=np.int64)
        g.create_dataset("matrix", data=mat, chunks=(20, 30), compression="gzip")


def _open(source: str):
    return lindi.LindiH5pyFile.from_lindi_file(source)


def dump_store(source: str, out_json: str, raw: bool = False) -> None:
    f = _open(source)
    try:
        store = f._zarr_store  # LindiReferenceFileSystemStore or LindiTarStore around one
        base = getattr(store, "_base_store", store)
        out = {}
        for key in sorted(base.rfs["refs"]):
            # raw: the referenced bytes before lindi's zero-padding rule
            data = base._get_helper(key) if raw else store[key]
            out[key] = base64.b64encode(data).decode("ascii")
    finally:
        f.close()
    with open(out_json, "w") as fp:
        json.dump(out, fp, indent=0, sort_keys=True)


def _to_plain(value):
    """numpy value from lindi -> something np.savez can store without pickle."""
    arr = np.asarray(value)
    if arr.dtype.kind == "O":
        flat = [_obj_str(v) for v in arr.ravel()]
        return np.array(flat, dtype=str).reshape(arr.shape)
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8")
    return arr


def _read_dataset(ds) -> np.ndarray:
    compound = getattr(ds, "_compound_dtype", None)
    if compound is not None and compound.names:
        # lindi only allows field-wise selection on compound datasets
        cols = [_to_plain(ds[field][:]) for field in compound.names]
        return np.rec.fromarrays(cols, names=list(compound.names))
    return _to_plain(ds[()] if ds.ndim == 0 else ds[:])


def _obj_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


def read_arrays(source: str, out_npz: str) -> None:
    arrays: dict[str, np.ndarray] = {}
    f = _open(source)
    try:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) or obj.__class__.__name__ == "LindiH5pyDataset":
                link = f.get(name, getlink=True)
                if (
                    isinstance(link, h5py.SoftLink)
                    or link.__class__.__name__ == "LindiH5pySoftLink"
                ):
                    return
                arrays[name] = _read_dataset(obj)

        _visit_items(f, "", visit)
    finally:
        f.close()
    np.savez(out_npz, **arrays)


def _visit_items(group, prefix, fn):
    # lindi's visititems does not follow the h5py contract closely enough; walk by hand
    for k in group:
        name = f"{prefix}/{k}" if prefix else k
        link = group.get(k, getlink=True)
        if link.__class__.__name__ in ("SoftLink", "LindiH5pySoftLink"):
            continue
        obj = group[k]
        fn(name, obj)
        if hasattr(obj, "keys") and not hasattr(obj, "shape"):
            _visit_items(obj, name, fn)


def fixtures(outdir: str, max_chunk_size: int) -> None:
    os.makedirs(os.path.join(outdir, "reference"), exist_ok=True)
    h5 = os.path.join(outdir, "example.h5")
    make_h5(h5)
    names = []
    for ext in ("json", "tar", "d"):
        out = os.path.join(outdir, f"example.lindi.{ext}")
        to_lindi(h5, out, None, max_chunk_size, amend=False)
        names.append(out)
    for ext in ("tar", "d"):
        out = os.path.join(outdir, f"amended.lindi.{ext}")
        to_lindi(h5, out, None, max_chunk_size, amend=True)
        names.append(out)
    for src in names:
        base = os.path.join(outdir, "reference", os.path.basename(src))
        dump_store(src, base + ".store.json")
        dump_store(src, base + ".raw.json", raw=True)
        read_arrays(src, base + ".arrays.npz")


def _plain(v):
    """An attribute or value made JSON-serializable (numpy -> python, refs -> str)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _plain(v[()])
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()] if v.dtype.kind != "O" else [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def read_json(source: str, names: list[str]) -> None:
    out = {}
    f = _open(source)
    try:
        for name in names:
            obj = f.get(name)
            if obj is None:
                out[name] = {"kind": "missing"}
                continue
            attrs = {}
            for k in obj.attrs:
                try:
                    attrs[k] = _plain(obj.attrs[k])
                except Exception as e:  # lindi maps some zarr attributes to nothing (dicts)
                    attrs[k] = {"error": f"{type(e).__name__}: {e}"}
            if hasattr(obj, "shape"):
                arr = _read_dataset(obj)
                out[name] = {
                    "kind": "dataset",
                    "shape": list(arr.shape),
                    "dtype": str(arr.dtype),
                    "values": _plain(arr),
                    "attrs": attrs,
                }
            else:
                out[name] = {"kind": "group", "keys": sorted(obj.keys()), "attrs": attrs}
    finally:
        f.close()
    print(json.dumps(out), flush=True)


def amend(source: str, group: str, start: float, n: int) -> None:
    with lindi.LindiH5pyFile.from_lindi_file(source, mode="r+") as f:
        g = f.create_group(group)
        g.attrs["who"] = "lindi"
        data = np.arange(n, dtype=np.float64) + start
        g.create_dataset("v", data=data, chunks=(250,), compression=None)


def make_nwb(path: str) -> None:
    import datetime

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(
        session_description="lindifuse test session",
        identifier="lindifuse-test-1",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    )
    data = (np.arange(4000, dtype=np.int16) % 1000).reshape(1000, 4)
    ts = TimeSeries(
        name="ts",
        data=data,
        unit="mV",
        rate=10.0,
        starting_time=0.0,
        description="recorded",
        comments="original",
    )
    nwb.add_acquisition(ts)
    with NWBHDF5IO(path, "w") as io:
        io.write(nwb)


def read_nwb(source: str) -> None:
    import warnings

    import pynwb

    warnings.simplefilter("ignore")
    f = _open(source)
    try:
        with pynwb.NWBHDF5IO(file=f, mode="r") as io:
            nwb = io.read()
            acq = {}
            for name, obj in nwb.acquisition.items():
                acq[name] = {
                    "type": type(obj).__name__,
                    "data": _plain(np.asarray(obj.data[:])),
                    "unit": obj.unit,
                    "description": obj.description,
                    "comments": obj.comments,
                    "rate": obj.rate,
                    "starting_time": obj.starting_time,
                }
            out = {
                "session_description": nwb.session_description,
                "identifier": nwb.identifier,
                "acquisition": acq,
            }
    finally:
        f.close()
    print(json.dumps(out), flush=True)


def h5_oracle(h5: str, out: str, split_size: int, threshold: int) -> None:
    opts = lindi.LindiH5ZarrStoreOpts(
        num_dataset_chunks_threshold=threshold or None,
        contiguous_dataset_max_chunk_size=split_size or None,
    )
    path = os.path.abspath(h5)
    with lindi.LindiH5ZarrStore.from_file(path, opts=opts, url=path) as store:
        rfs = store.to_reference_file_system()
    with open(out, "w") as fp:
        json.dump(rfs, fp, indent=2, sort_keys=True)


def _same(a, b) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _ref_path(f, v):
    """An object reference (h5py's or lindi's) as the path of its target."""
    try:
        return f[v].name
    except Exception:
        return str(v)


def _norm_attr(f, v):
    if isinstance(v, h5py.Reference) or v.__class__.__name__ == "LindiH5pyReference":
        return ("ref", _ref_path(f, v))
    return v


def h5_compare(index: str, h5: str) -> None:
    problems: list[str] = []
    checked = 0
    lf = lindi.LindiH5pyFile.from_lindi_file(index)
    hf = h5py.File(h5, "r")

    def visit(name, hobj):
        nonlocal checked
        link = hobj.parent.get(name.rsplit("/", 1)[-1], getlink=True) if name else None
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            return
        lobj = lf.get(name) if name else lf
        if lobj is None:
            problems.append(f"{name}: missing in lindi's view")
            return
        for k in hobj.attrs:
            hv = hobj.attrs[k]
            try:
                lv = lobj.attrs[k]
            except Exception as e:
                problems.append(f"{name} attr {k}: lindi cannot read it: {e}")
                continue
            if not _same(_norm_attr(hf, hv), _norm_attr(lf, lv)):
                problems.append(f"{name} attr {k}: {_plain(hv)!r} != {_plain(lv)!r}")
            checked += 1
        if isinstance(hobj, h5py.Dataset):
            hv = hobj[()]
            try:
                if hobj.dtype.names:  # lindi reads compound datasets field by field only
                    lv = {n: np.asarray(lobj[n]).ravel() for n in hobj.dtype.names}
                else:
                    lv = lobj[()]
            except Exception as e:
                problems.append(f"{name}: lindi cannot read it: {e}")
                return
            if hobj.dtype.names:
                lv = {n: [_norm_attr(lf, x) for x in lv[n]] for n in hobj.dtype.names}
                hv = {
                    n: [_norm_attr(hf, x) for x in np.asarray(hv[n]).ravel()]
                    for n in hobj.dtype.names
                }
                ok = all(_same(hv[n], lv[n]) for n in hv)
            elif h5py.check_dtype(ref=hobj.dtype) is not None:
                ok = _same(
                    [_ref_path(hf, x) for x in np.asarray(hv).ravel()],
                    [_ref_path(lf, x) for x in np.asarray(lv).ravel()],
                )
            else:
                ok = _same(np.asarray(hv).tolist(), np.asarray(lv).tolist())
            if not ok:
                problems.append(f"{name}: values differ")
            checked += 1

    visit("", hf)
    hf.visititems(visit)
    hf.close()
    lf.close()
    print(json.dumps({"checked": checked, "problems": problems}), flush=True)


def make_nwb_full(path: str) -> None:
    import datetime

    from hdmf.common import DynamicTableRegion  # noqa: F401
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject

    nwb = NWBFile(
        session_description="lindifuse full test session",
        identifier="lindifuse-full-1",
        session_start_time=datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.UTC),
        experimenter=["Ada Lovelace", "Alan Turing"],
        keywords=["hdf5", "lindi", "fuse"],
        subject=Subject(subject_id="mouse-1", species="Mus musculus", age="P90D"),
    )
    rng = np.random.default_rng(5)
    ts = TimeSeries(
        name="position",
        data=rng.standard_normal((2500, 2)).astype("float32"),
        timestamps=np.arange(2500) / 50.0,
        unit="cm",
        description="with timestamps",
    )
    nwb.add_acquisition(ts)
    linked = TimeSeries(
        name="speed",
        data=rng.standard_normal(2500).astype("float32"),
        timestamps=ts,
        unit="cm/s",
    )
    nwb.add_acquisition(linked)
    device = nwb.create_device(name="probe")
    group = nwb.create_electrode_group("shank0", description="shank", location="CA1", device=device)
    for i in range(8):
        nwb.add_electrode(
            x=float(i), y=0.0, z=0.0, imp=1e6, location="CA1", filtering="none", group=group
        )
    region = nwb.create_electrode_table_region(list(range(8)), "all electrodes")
    es = ElectricalSeries(
        name="ephys",
        data=rng.integers(-500, 500, size=(30000, 8)).astype("int16"),
        electrodes=region,
        rate=30000.0,
        starting_time=0.0,
    )
    nwb.add_acquisition(es)
    nwb.add_unit_column("quality", "sorting quality")
    for u in range(5):
        nwb.add_unit(spike_times=np.sort(rng.uniform(0, 50, size=10 + 7 * u)), quality="good")
    mod = nwb.create_processing_module("behavior", "processed behavior")
    mod.add(TimeSeries(name="smoothed", data=rng.standard_normal(1000), rate=10.0, unit="cm"))
    with NWBHDF5IO(path, "w") as io:
        io.write(nwb)


def make_nwb_many(path: str, series: int) -> None:
    import datetime

    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(
        session_description="many objects",
        identifier="lindifuse-many",
        session_start_time=datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.UTC),
    )
    rng = np.random.default_rng(11)
    for i in range(series):
        data = H5DataIO(
            rng.standard_normal((2000, 4)).astype("float32"), compression="gzip", chunks=(500, 4)
        )
        nwb.add_acquisition(
            TimeSeries(
                name=f"series_{i:04d}",
                data=data,
                timestamps=np.arange(2000) / 100.0,
                unit="V",
                description=f"series {i}",
            )
        )
    with NWBHDF5IO(path, "w") as io:
        io.write(nwb)


def _dump_ts(obj) -> dict:
    d = {"type": type(obj).__name__, "data": _plain(np.asarray(obj.data[:]))}
    for attr in ("unit", "description", "rate", "starting_time"):
        d[attr] = _plain(getattr(obj, attr, None))
    if getattr(obj, "timestamps", None) is not None:
        d["timestamps"] = _plain(np.asarray(obj.timestamps[:]))
    if hasattr(obj, "electrodes"):
        d["electrodes"] = _plain(list(obj.electrodes.data[:]))
        d["electrode_locations"] = _plain(list(obj.electrodes.table["location"][:]))
    return d


def dump_nwb(source: str, through_lindi: bool, zarr_dir: bool = False) -> None:
    """pynwb's view of an NWB file as JSON: read with h5py, through lindi from a LINDI file
    (``--lindi``), or through lindi on a zarr 2 DirectoryStore of a Zarr folder
    (``--zarr-dir``: e.g. a mounted dandiset asset's directory)."""
    import warnings

    import pynwb

    warnings.simplefilter("ignore")
    if zarr_dir:
        import zarr

        f = lindi.LindiH5pyFile.from_zarr_store(zarr.DirectoryStore(source))
    else:
        f = _open(source) if through_lindi else h5py.File(source, "r")
    try:
        with pynwb.NWBHDF5IO(file=f, mode="r") as io:
            nwb = io.read()
            units = nwb.units
            out = {
                "session_description": nwb.session_description,
                "identifier": nwb.identifier,
                "experimenter": _plain(list(nwb.experimenter)),
                "keywords": _plain(list(nwb.keywords[:])),
                "subject": nwb.subject.subject_id,
                "acquisition": {n: _dump_ts(o) for n, o in sorted(nwb.acquisition.items())},
                "units": {
                    "spike_times": [
                        _plain(np.asarray(units["spike_times"][i])) for i in range(len(units))
                    ],
                    "quality": _plain(list(units["quality"][:])),
                },
                "processing": {
                    m: {n: _dump_ts(o) for n, o in sorted(mod.data_interfaces.items())}
                    for m, mod in sorted(nwb.processing.items())
                },
                "speed_timestamps_from": getattr(nwb.acquisition["speed"].timestamps, "name", None),
            }
    finally:
        f.close()
    print(json.dumps(out), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("make-h5")
    a.add_argument("out")
    a.add_argument("--external-link", action="store_true")
    a = sub.add_parser("to-lindi")
    a.add_argument("h5")
    a.add_argument("out")
    a.add_argument("--url")
    a.add_argument("--max-chunk-size", type=int, default=DEFAULT_MAX_CHUNK_SIZE)
    a.add_argument("--amend", action="store_true")
    a = sub.add_parser("dump-store")
    a.add_argument("source")
    a.add_argument("out")
    a.add_argument("--raw", action="store_true")
    a = sub.add_parser("read-arrays")
    a.add_argument("source")
    a.add_argument("out")
    a = sub.add_parser("fixtures")
    a.add_argument("outdir")
    a.add_argument("--max-chunk-size", type=int, default=DEFAULT_MAX_CHUNK_SIZE)
    a = sub.add_parser("read-json")
    a.add_argument("source")
    a.add_argument("names", nargs="+")
    a = sub.add_parser("amend")
    a.add_argument("source")
    a.add_argument("group")
    a.add_argument("--start", type=float, default=0.0)
    a.add_argument("--n", type=int, default=1000)
    a = sub.add_parser("make-nwb")
    a.add_argument("out")
    a = sub.add_parser("read-nwb")
    a.add_argument("source")
    a = sub.add_parser("h5-oracle")
    a.add_argument("h5")
    a.add_argument("out")
    a.add_argument("--split-size", type=int, default=20_000_000)
    a.add_argument("--threshold", type=int, default=1000)
    a = sub.add_parser("h5-compare")
    a.add_argument("index")
    a.add_argument("h5")
    a = sub.add_parser("make-nwb-full")
    a.add_argument("out")
    a = sub.add_parser("make-nwb-many")
    a.add_argument("out")
    a.add_argument("--series", type=int, default=200)
    a = sub.add_parser("dump-nwb")
    a.add_argument("source")
    a.add_argument("--lindi", action="store_true")
    a.add_argument("--zarr-dir", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "make-h5":
        make_h5(args.out, args.external_link)
    elif args.cmd == "to-lindi":
        to_lindi(args.h5, args.out, args.url, args.max_chunk_size, args.amend)
    elif args.cmd == "dump-store":
        dump_store(args.source, args.out, args.raw)
    elif args.cmd == "read-arrays":
        read_arrays(args.source, args.out)
    elif args.cmd == "fixtures":
        fixtures(args.outdir, args.max_chunk_size)
    elif args.cmd == "read-json":
        read_json(args.source, args.names)
    elif args.cmd == "amend":
        amend(args.source, args.group, args.start, args.n)
    elif args.cmd == "make-nwb":
        make_nwb(args.out)
    elif args.cmd == "read-nwb":
        read_nwb(args.source)
    elif args.cmd == "h5-oracle":
        h5_oracle(args.h5, args.out, args.split_size, args.threshold)
    elif args.cmd == "h5-compare":
        h5_compare(args.index, args.h5)
    elif args.cmd == "make-nwb-full":
        make_nwb_full(args.out)
    elif args.cmd == "make-nwb-many":
        make_nwb_many(args.out, args.series)
    elif args.cmd == "dump-nwb":
        dump_nwb(args.source, args.lindi, args.zarr_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
