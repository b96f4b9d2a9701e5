"""--xarray: NWB files written by pynwb, mounted with the xarray view, opened with xarray.

Files come from tests/nwb_gen.py (run with the lindi venv: pynwb writes, lindi converts).
Reference values come from h5py on the .nwb file itself, in this process.

SOURCES lists how a generated NWB file is mounted: every test that mounts runs once per entry
(lindi's .lindi.tar and .lindi.json, and the .nwb itself as an HDF5 source).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from harness import run

xr = pytest.importorskip("xarray")

NWB_GEN = str(Path(__file__).resolve().parent / "nwb_gen.py")

SOURCES: dict[str, Callable[[Path, str], Path]] = {
    "lindi.tar": lambda d, stem: d / f"{stem}.lindi.tar",
    "lindi.json": lambda d, stem: d / f"{stem}.lindi.json",
    "nwb": lambda d, stem: d / f"{stem}.nwb",
}

# chunks=None: xarray's own lazy arrays, the same whether or not dask is installed
# (the dask extra is; with it, open_zarr would hand back dask arrays).
OPEN = {"zarr_format": 2, "consolidated": False, "chunks": None}


@pytest.fixture(scope="module")
def nwb_dir(lindi_python, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("nwb_xarray")
    res = run([lindi_python, NWB_GEN, d], timeout=300)
    assert res.rc == 0, res.describe()
    return d


@pytest.fixture(params=sorted(SOURCES))
def source_kind(request) -> str:
    return request.param


def _source(nwb_dir: Path, kind: str, stem: str) -> Path:
    path = SOURCES[kind](nwb_dir, stem)
    if not path.exists():
        pytest.skip(f"{path.name} not generated")
    return path


def _dims(mp: Path, array: str) -> list[str]:
    return json.loads((mp / array / ".zattrs").read_text())["_ARRAY_DIMENSIONS"]


def _h5_datasets(path: Path) -> dict[str, h5py.Dataset]:
    out: dict[str, h5py.Dataset] = {}
    f = h5py.File(path, "r")

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj

    f.visititems(visit)
    return out


def _expected(ds: h5py.Dataset) -> np.ndarray | list:
    """What the xarray view must show for an HDF5 dataset (see docs/semantics.md)."""
    f = ds.file
    dt = ds.dtype
    if dt.names and all(dt.fields[n][0].kind in "biuf" for n in dt.names):
        return np.atleast_1d(ds[()])  # numeric compound: a structured array
    if dt.names:  # compound with references or strings: JSON text per row
        rows = []
        for row in np.atleast_1d(ds[()]):
            rec = {}
            for name in dt.names:
                v = row[name]
                if isinstance(v, h5py.Reference):
                    v = f[v].name
                elif isinstance(v, bytes):
                    v = v.decode()
                elif isinstance(v, np.generic):
                    v = v.item()
                rec[name] = v
            rows.append(rec)
        return rows
    ref = h5py.check_dtype(ref=dt)
    values = np.atleast_1d(ds[()])
    if ref is not None:
        return [f[r].name for r in values.ravel()]
    if h5py.check_string_dtype(dt) is not None or dt.kind in "OSU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()]
    return values


def _assert_equal(name: str, got: np.ndarray, want: np.ndarray | list) -> None:
    if isinstance(want, list):
        if want and isinstance(want[0], dict):
            got_rows = [json.loads(str(s)) for s in np.asarray(got).ravel()]
            assert got_rows == want, name
        else:
            assert [str(s) for s in np.asarray(got).ravel()] == want, name
        return
    assert got.dtype == want.dtype, f"{name}: {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: {got.shape} != {want.shape}"
    assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), name


def _open_tree(mp: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's "unstable specification" warnings for strings
        return xr.open_datatree(mp, engine="zarr", **OPEN)


# -- dimension names -------------------------------------------------------------------------


def test_dimension_names_come_from_the_schema(mount, nwb_dir, source_kind):
    m = mount(_source(nwb_dir, source_kind, "full"), None, "--xarray")
    mp = m.path
    assert _dims(mp, "acquisition/ts/data") == ["num_times", "num_DIM2"]
    assert _dims(mp, "acquisition/ts/timestamps") == ["num_times"]
    assert _dims(mp, "acquisition/es/data") == ["num_times", "num_channels"]
    assert _dims(mp, "acquisition/es/electrodes") == ["num_rows"]
    assert _dims(mp, "acquisition/img/data") == ["frame", "x", "y"]
    assert _dims(mp, "processing/behavior/speed/data") == ["num_times"]
    # a ragged compound column: VectorData in the schema, no dims of its own
    assert _dims(mp, "processing/ophys/ImageSegmentation/cells/pixel_mask") == ["dim0"]
    assert _dims(mp, "processing/ophys/ImageSegmentation/cells/pixel_mask_index") == ["num_rows"]
    # units: ragged columns; the indexes and the ids share the row count, the two VectorData
    # columns are both 'dim0' in the schema but differ in length: the second in name order
    # (tags, 3 values; spike_times has 6) gets a suffix
    assert _dims(mp, "units/spike_times") == ["dim0"]
    assert _dims(mp, "units/tags") == ["dim0_1"]
    assert _dims(mp, "units/spike_times_index") == ["num_rows"]
    assert _dims(mp, "units/tags_index") == ["num_rows"]
    assert _dims(mp, "units/id") == ["num_rows"]
    # an untyped group uses its parent's spec: NWBFile -> general -> keywords
    assert _dims(mp, "general/keywords") == ["num_keywords"]
    assert _dims(mp, "file_create_date") == ["num_modifications"]
    # a scalar dataset (lindi's shape [1]) falls back to <array>_dim_0
    assert _dims(mp, "acquisition/es/starting_time") == ["starting_time_dim_0"]
    assert "xarray view:" in m.log_text()


def test_names_unique_per_length_within_a_group(mount, nwb_dir, source_kind):
    """Every array of the file: one name per axis, no name twice in an array, and within a
    group each name has one length (equal lengths share it: trials' columns share 'dim0')."""
    mp = mount(_source(nwb_dir, source_kind, "full"), None, "--xarray").path
    seen: dict[str, dict[str, int]] = {}
    for zarray in mp.rglob(".zarray"):
        arr = zarray.parent
        shape = json.loads(zarray.read_text())["shape"]
        dims = _dims(mp, arr.relative_to(mp))
        assert len(dims) == len(shape), arr
        assert len(set(dims)) == len(dims), arr
        group = seen.setdefault(str(arr.parent), {})
        for d, n in zip(dims, shape, strict=True):
            assert group.setdefault(d, n) == n, f"{arr}: {d} has two lengths in one group"
    trials = seen[str(mp / "intervals/trials")]
    assert trials == {"dim0": 2, "num_rows": 2}


# -- xarray opens it, values equal h5py's ---------------------------------------------------


def test_open_datatree_sees_every_dataset_with_h5py_values(mount, nwb_dir, source_kind):
    mp = mount(_source(nwb_dir, source_kind, "full"), None, "--xarray").path
    tree = _open_tree(mp)
    datasets = _h5_datasets(nwb_dir / "full.nwb")
    assert len(datasets) > 40
    checked = 0
    for name, ds in datasets.items():
        group, _, var = name.rpartition("/")
        node = tree[group] if group else tree
        assert var in node.data_vars, f"{name} missing from open_datatree"
        got = node[var].values
        want = _expected(ds)
        if ds.shape == () and not isinstance(want, list):
            got = got.reshape(())
            want = want.reshape(())
        _assert_equal(name, got, want)
        checked += 1
    assert checked == len(datasets)


def test_open_zarr_on_every_neurodata_group(mount, nwb_dir, source_kind):
    mp = mount(_source(nwb_dir, source_kind, "full"), None, "--xarray").path
    groups = []
    for zattrs in mp.rglob(".zattrs"):
        g = zattrs.parent
        if (g / ".zgroup").exists() and "neurodata_type" in json.loads(zattrs.read_text()):
            groups.append(g)
    assert len(groups) >= 10
    for g in groups:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(g, **OPEN)
            ds.load()
    ts = xr.open_zarr(mp / "acquisition/ts", **OPEN)
    assert ts.data.dims == ("num_times", "num_DIM2")
    assert ts.sizes["num_times"] == 25
    # data and timestamps line up: select by time, average over it
    ts = ts.set_coords("timestamps")
    sel = ts.data.where(ts.timestamps < 1.0, drop=True)
    assert sel.sizes["num_times"] == 10
    assert np.allclose(sel.mean("num_times").values, np.arange(50.0).reshape(25, 2)[:10].mean(0))
    es = xr.open_zarr(mp / "acquisition/es", **OPEN)
    assert es.data.dtype == np.int16  # zero fill values are not turned into NaN masks
    assert int((es.data == 0).sum()) > 0


# -- nothing else changes -------------------------------------------------------------------


def _files(mp: Path) -> dict[str, Path]:
    return {str(p.relative_to(mp)): p for p in mp.rglob("*") if p.is_file()}


def test_without_option_nothing_changes_and_with_it_only_metadata(mount, nwb_dir, source_kind):
    src = _source(nwb_dir, source_kind, "full")
    plain = mount(src, None, "-r").path
    xmp = mount(src, None, "--xarray").path
    a, b = _files(plain), _files(xmp)
    zattrs_plain = [k for k in a if k.endswith(".zattrs")]
    for k in zattrs_plain:
        assert "_ARRAY_DIMENSIONS" not in json.loads(a[k].read_bytes())
    converted: set[str] = set()
    for k, p in b.items():
        if k.endswith("/.zarray") or k == ".zarray":
            meta = json.loads(p.read_bytes())
            old = json.loads(a[k].read_bytes())
            if old.get("dtype") == "|O" and (old.get("filters") or [{}])[0].get("id") == "json2":
                converted.add(k.rpartition("/")[0])
            changed = {f for f in set(meta) | set(old) if meta.get(f) != old.get(f)}
            assert changed <= {"fill_value", "filters", "compressor", "dtype"}, k
    assert converted, "the file has JSON-encoded string arrays"
    for k, p in b.items():
        data = p.read_bytes()
        assert os.stat(p).st_size == len(data), k  # stat follows the served content
        if k.endswith(".zattrs") and k.rpartition("/")[0] + "/.zarray" in b:
            attrs = json.loads(data)
            dims = attrs.pop("_ARRAY_DIMENSIONS")
            assert isinstance(dims, list)
            old = json.loads(a[k].read_bytes()) if k in a else {}
            assert attrs == old, k
            if k in a:  # same text with the one key added
                assert data == json.dumps({**old, "_ARRAY_DIMENSIONS": dims}).encode()
        elif k.endswith(".zarray") or k.rpartition("/")[0] in converted:
            continue
        else:
            assert data == a[k].read_bytes(), f"{k} differs"
    assert set(b) - set(a) <= {k for k in b if k.endswith(".zattrs")}
    assert set(a) <= set(b)


# -- missing or broken schema -----------------------------------------------------------------


@pytest.mark.parametrize("stem", ["noschema", "badschema"])
def test_missing_or_broken_schema_falls_back(mount, nwb_dir, stem):
    m = mount(_source(nwb_dir, "lindi.tar", stem), None, "--xarray")
    mp = m.path
    if stem == "noschema":
        assert not (mp / "specifications").exists()
        assert "no embedded schema" in m.log_text()
        assert _dims(mp, "acquisition/ts/data") == ["data_dim_0", "data_dim_1"]
        assert _dims(mp, "units/id") == ["id_dim_0"]
    else:
        log = m.log_text()
        assert re.search(r"xarray view: specifications/core/[^/]+/nwb\.base: not", log), log
        # core is gone: TimeSeries' dims are unknown; hdmf-common still names table columns
        assert _dims(mp, "acquisition/ts/data") == ["data_dim_0", "data_dim_1"]
        assert _dims(mp, "units/id") == ["num_elements"]
    # timestamps and data now have different names: each gets its own
    assert _dims(mp, "acquisition/ts/timestamps") == ["timestamps_dim_0"]
    tree = _open_tree(mp)
    for name, ds in _h5_datasets(nwb_dir / f"{stem}.nwb").items():
        group, _, var = name.rpartition("/")
        node = tree[group] if group else tree
        if ds.shape != ():
            _assert_equal(name, node[var].values, _expected(ds))


# -- lindi's own fixture: compound, references, strings, no NWB schema -------------------------


def test_lindi_fixture_compound_and_strings(mount, lindi_files):
    """example.lindi.tar: a numeric compound table (served as a structured array), vlen
    strings, an inlined int array, a scalar; no specifications group."""
    m = mount(lindi_files.tar, None, "--xarray")
    # lindi wrote no .zattrs for these arrays: the view adds one
    assert "general/small_ints/.zattrs" not in lindi_files.reference("example.lindi.tar")
    assert _dims(m.path, "general/small_ints") == ["small_ints_dim_0"]
    assert ".zattrs" in os.listdir(m.path / "general/small_ints")
    tree = _open_tree(m.path)
    with h5py.File(lindi_files.h5, "r") as f:
        table = tree["processing/behavior"]["table"].values
        assert table.dtype.names == ("x", "y")
        assert np.array_equal(table, f["processing/behavior/table"][()])
        kw = tree["general"]["keywords"].values
        assert [str(s) for s in kw] == [s.decode() for s in f["general/keywords"][()]]
        data = tree["acquisition/ts"]["data"].values
        assert np.array_equal(data, f["acquisition/ts/data"][()])
        assert np.array_equal(
            tree["acquisition/ts"]["timestamps"].values, f["acquisition/ts/timestamps"][()]
        )
    assert "served as compound (structured)" in m.log_text()


# -- remote source, read-only ------------------------------------------------------------------


def test_remote_lindi_json_over_http(mount, nwb_dir, http_server):
    """The same view from a remote .lindi.json whose chunk refs are URLs of the .nwb: the schema
    and metadata come with the JSON, chunks by range requests."""
    refs = json.loads((nwb_dir / "full.lindi.json").read_text())
    assert refs.get("templates"), "lindi references the .nwb through a template"
    http_server.add_file("full.nwb", nwb_dir / "full.nwb")
    refs["templates"] = {k: http_server.url("full.nwb") for k in refs["templates"]}
    (http_server.root / "remote.lindi.json").write_text(json.dumps(refs))
    m = mount(http_server.url("remote.lindi.json"), None, "--xarray", "--no-cache")
    assert _dims(m.path, "acquisition/es/data") == ["num_times", "num_channels"]
    tree = _open_tree(m.path)
    with h5py.File(nwb_dir / "full.nwb", "r") as f:
        for name in ("acquisition/es/data", "acquisition/img/data", "units/spike_times"):
            group, _, var = name.rpartition("/")
            _assert_equal(name, tree[group][var].values, f[name][()])
    assert http_server.count("full.nwb") > 0


def test_o_xarray_is_the_same_as_the_long_option(mount, nwb_dir):
    src = _source(nwb_dir, "lindi.tar", "full")
    m = mount(src, None, "-o", "xarray")
    assert "_ARRAY_DIMENSIONS" in (m.path / "acquisition/ts/data/.zattrs").read_text()
    m.umount()


def test_xarray_mount_is_read_only(mount, nwb_dir, tmp_path):
    """A local .lindi.tar normally mounts read-write; with --xarray it is read-only."""
    src = tmp_path / "copy.lindi.tar"
    src.write_bytes((nwb_dir / "full.lindi.tar").read_bytes())
    m = mount(src, None, "--xarray")
    with pytest.raises(OSError) as e:
        (m.path / "new_file").write_bytes(b"x")
    assert e.value.errno == 30  # EROFS
    assert (m.path / "acquisition/ts/data/.zattrs").stat().st_mode & 0o222 == 0


# -- arrays zarr cannot read; existing names; other fill values ---------------------------------


def _b64(data: bytes) -> str:
    import base64

    return "base64:" + base64.b64encode(data).decode()


def test_unreadable_arrays_left_out_with_a_log_line_each(mount, tmp_path):
    import numcodecs

    def zarray(dtype, shape, fill, filters=None):
        return {
            "chunks": list(shape),
            "compressor": None,
            "dtype": dtype,
            "fill_value": fill,
            "filters": filters,
            "order": "C",
            "shape": list(shape),
            "zarr_format": 2,
        }

    strs = np.array(["a", "bb", ""], dtype=object)
    named_attrs = {"_ARRAY_DIMENSIONS": ["t"], "k": 1}
    refs = {
        ".zgroup": {"zarr_format": 2},
        "good/.zarray": zarray("<i2", (4,), -1),
        "good/0": _b64(np.array([0, 1, -1, 3], dtype="<i2").tobytes()),
        "pickled/.zarray": zarray("|O", (1,), None, [{"id": "pickle"}]),
        "pickled/0": _b64(b"\x80\x04N."),
        "badmeta/.zarray": "not json {",
        "badmeta/0": _b64(b"\0\0"),
        "strs/.zarray": zarray("|O", (3,), None, [{"id": "vlen-utf8"}]),
        "strs/0": _b64(bytes(numcodecs.VLenUTF8().encode(strs))),
        "named/.zarray": zarray("<f8", (2,), 0.0),
        "named/.zattrs": named_attrs,
        "named/0": _b64(np.array([0.0, 2.5]).tobytes()),
    }
    src = tmp_path / "edge.lindi.json"
    src.write_text(json.dumps({"version": 1, "refs": refs}))
    m = mount(src, None, "--xarray")
    names = sorted(os.listdir(m.path))
    assert names == [".zgroup", "good", "named", "strs"]
    log = m.log_text()
    assert log.count("xarray view: pickled left out: object array with codec 'pickle'") == 1
    assert log.count("xarray view: badmeta left out: unreadable metadata") == 1
    assert "no embedded schema" in log
    # an existing _ARRAY_DIMENSIONS: .zattrs untouched (only the zero fill value changes)
    assert (m.path / "named/.zattrs").read_bytes() == json.dumps(named_attrs).encode()
    assert json.loads((m.path / "named/.zarray").read_text())["fill_value"] is None
    # a non-zero fill value is kept, and xarray masks it (documented)
    assert json.loads((m.path / "good/.zarray").read_text())["fill_value"] == -1
    ds = xr.open_zarr(m.path, **OPEN)
    assert ds.good.dims == ("good_dim_0",)
    assert np.isnan(ds.good.values[2]) and ds.good.values[3] == 3
    assert ds.named.dims == ("t",) and ds.named.values.tolist() == [0.0, 2.5]
    assert [str(s) for s in ds.strs.values] == ["a", "bb", ""]
