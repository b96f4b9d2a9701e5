"""Writable mounts and lindi 0.4.6, both ways (lindi runs in its own venv via lindi_gen.py):

- an archive written by lindi, mounted and extended with zarr-python 3, then read by lindi:
  old values unchanged, new values as written;
- an archive written through lindifuse, extended by lindi in ``r+`` mode, then remounted and
  read (and extended again) through lindifuse;
- an NWB file written by pynwb, converted by lindi, amended through the mount (lindi's
  conventions: ``_SCALAR``, ``neurodata_type``...), still read by pynwb through lindi.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from harness import run_cli
from writekit import ArchiveView, assert_valid_archive, blob_name_ok, files_under, json_from_output


def lindi_arrays(lindi_gen, source, tmp_path, tag: str) -> dict[str, np.ndarray]:
    """{dataset: values} of every dataset of ``source`` as lindi's h5py API reads it."""
    out = Path(tmp_path) / f"{tag}.npz"
    lindi_gen("read-arrays", source, out)
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def assert_same_arrays(got: dict, expected: dict, skip=()) -> None:
    for name, want in expected.items():
        if name in skip:
            continue
        assert name in got, f"lindi no longer reads {name}"
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("name", ["amended.lindi.tar", "amended.lindi.d"])
def test_lindi_archive_extended_through_the_mount(lindi_files, lindi_gen, mount, tmp_path, name):
    src = lindi_files.copy(name, tmp_path)
    before = lindi_files.arrays(name)
    m = mount(src)
    expected = lindi_files.expected(name)
    for key, data in expected.items():
        with open(m.path / key, "rb") as f:
            assert f.read() == data, key
    g = zarr.open_group(m.path, mode="r+", zarr_format=2)
    # new data next to lindi's
    new = g.create_group("processing/fuse")
    new.attrs["description"] = "written by zarr-python 3 through lindifuse"
    values = np.random.default_rng(30).standard_normal(1000)
    v = new.create_array("values", shape=(1000,), chunks=(250,), dtype="f8", compressors=None)
    v[:] = values
    small = np.arange(12, dtype="i2").reshape(3, 4)
    new.create_array("small", shape=(3, 4), dtype="i2")[:] = small
    # an attribute added to one of lindi's groups: the others must survive
    ts = g["acquisition/ts"]
    ts.attrs["note"] = "added"
    # rewrite chunks of lindi's own data: a blob of the container and a range of example.h5
    amended = before["processing/amended/values"].copy()
    amended[0:250] = -1.0
    g["processing/amended/values"][0:250] = -1.0
    stamps = before["acquisition/ts/timestamps"].copy()
    stamps[2600:2700] = 7.0
    g["acquisition/ts/timestamps"][2600:2700] = 7.0
    m.umount()

    view = assert_valid_archive(src)
    for i in range(4):
        key = f"processing/fuse/values/{i}"
        assert blob_name_ok(view.blob_member(key), key), view.refs[key]
    assert view.refs["processing/amended/values/0"][0] != "./blobs/processing/amended/values/0"
    after = lindi_arrays(lindi_gen, src, tmp_path, "after")
    changed = {"processing/amended/values", "acquisition/ts/timestamps"}
    assert_same_arrays(after, before, skip=changed)
    np.testing.assert_array_equal(after["processing/amended/values"], amended)
    np.testing.assert_array_equal(after["acquisition/ts/timestamps"], stamps)
    np.testing.assert_array_equal(after["processing/fuse/values"], values)
    np.testing.assert_array_equal(after["processing/fuse/small"], small)
    attrs = json_from_output(
        lindi_gen("read-json", src, "acquisition/ts", "processing/fuse", "processing/behavior")
    )
    assert attrs["acquisition/ts"]["attrs"]["note"] == "added"
    assert attrs["acquisition/ts"]["attrs"]["neurodata_type"] == "TimeSeries"
    assert attrs["processing/fuse"]["attrs"]["description"].startswith("written by zarr")
    # the object reference attribute of an untouched group is intact
    assert "ref" in attrs["processing/behavior"]["attrs"]


@pytest.mark.parametrize("kind", ["tar", "d"])
def test_lindifuse_archive_extended_by_lindi(lindi_gen, mount, tmp_path, kind):
    arch = tmp_path / f"w.lindi.{kind}"
    res = run_cli("create", arch)
    assert res.rc == 0, res.describe()
    m = mount(arch)
    g = zarr.open_group(m.path, mode="r+", zarr_format=2)
    g.attrs["made_by"] = "lindifuse"
    a_vals = np.random.default_rng(31).integers(0, 10**6, (30, 40), dtype=np.int64)
    g.create_group("fuse").create_array("a", shape=(30, 40), chunks=(10, 40), dtype="i8")[:] = (
        a_vals
    )
    m.umount()
    # lindi r+ adds a group with blob-backed chunks
    lindi_gen("amend", arch, "lindi_grp", "--start", "5", "--n", "600")
    assert_valid_archive(arch)
    m2 = mount(arch)
    g2 = zarr.open_group(m2.path, mode="r+", zarr_format=2)
    np.testing.assert_array_equal(g2["fuse/a"][:], a_vals)
    np.testing.assert_array_equal(g2["lindi_grp/v"][:], np.arange(600) + 5.0)
    assert g2["lindi_grp"].attrs["who"] == "lindi"
    assert g2.attrs["made_by"] == "lindifuse"
    # and once more through the mount, on top of lindi's changes
    b_vals = np.linspace(0, 1, 2000)
    g2.create_array("fuse/b", shape=(2000,), chunks=(500,), dtype="f8", compressors=None)[:] = (
        b_vals
    )
    g2["lindi_grp/v"][0:250] = 0.0
    m2.umount()
    assert_valid_archive(arch)
    out = json_from_output(lindi_gen("read-json", arch, "fuse/a", "fuse/b", "lindi_grp/v", "/"))
    assert out["fuse/a"]["values"] == a_vals.tolist()
    np.testing.assert_array_equal(np.array(out["fuse/b"]["values"]), b_vals)
    v = np.arange(600) + 5.0
    v[0:250] = 0.0
    assert out["lindi_grp/v"]["values"] == v.tolist()
    assert out["/"]["attrs"] == {"made_by": "lindifuse"}
    # lindi can keep extending it
    lindi_gen("amend", arch, "lindi_grp2", "--n", "300")
    assert_valid_archive(arch)
    m3 = mount(arch, None, "--read-only")
    assert sorted(os.listdir(m3.path)) == [".zattrs", ".zgroup", "fuse", "lindi_grp", "lindi_grp2"]
    np.testing.assert_array_equal(
        zarr.open_array(m3.path / "lindi_grp2" / "v", mode="r")[:], np.arange(300.0)
    )
    m3.umount()


def test_nwb_amended_through_the_mount(lindi_gen, mount, tmp_path):
    nwb = tmp_path / "session.nwb"
    lindi_gen("make-nwb", nwb)
    arch = tmp_path / "session.lindi.tar"
    lindi_gen("to-lindi", nwb, arch)
    before = json_from_output(lindi_gen("read-nwb", arch))
    assert before["acquisition"]["ts"]["comments"] == "original"
    m = mount(arch)
    g = zarr.open_group(m.path, mode="r+", zarr_format=2)
    # change an attribute of the existing TimeSeries
    g["acquisition/ts"].attrs["comments"] = "amended through lindifuse"
    # add a second TimeSeries, spelled the way lindi stores HDF5 in Zarr
    ts2 = g["acquisition"].create_group("ts2")
    ts2.attrs.update(
        {
            "neurodata_type": "TimeSeries",
            "namespace": "core",
            "object_id": str(uuid.uuid4()),
            "description": "added through the mount",
            "comments": "no comments",
        }
    )
    data = (np.arange(1500, dtype="f4") * 0.25).astype("f4")
    d = ts2.create_array("data", shape=(1500,), chunks=(500,), dtype="f4", compressors=None)
    d[:] = data
    d.attrs.update({"unit": "V", "conversion": 1.0, "offset": 0.0, "resolution": -1.0})
    st = ts2.create_array("starting_time", shape=(1,), chunks=(1,), dtype="f8")
    st[:] = 2.5
    st.attrs.update({"_SCALAR": True, "rate": 20.0, "unit": "seconds"})
    m.umount()
    view = assert_valid_archive(arch)
    assert blob_name_ok(view.blob_member("acquisition/ts2/data/0"), "acquisition/ts2/data/0")
    after = json_from_output(lindi_gen("read-nwb", arch))
    assert after["session_description"] == before["session_description"]
    assert after["identifier"] == before["identifier"]
    ts = after["acquisition"]["ts"]
    assert ts["data"] == before["acquisition"]["ts"]["data"]
    assert ts["comments"] == "amended through lindifuse"
    assert ts["rate"] == before["acquisition"]["ts"]["rate"] == 10.0
    new = after["acquisition"]["ts2"]
    assert new["type"] == "TimeSeries"
    np.testing.assert_array_equal(np.array(new["data"], "f4"), data)
    assert (new["unit"], new["rate"], new["starting_time"]) == ("V", 20.0, 2.5)
    assert new["description"] == "added through the mount"
    # the same file still mounts and shows lindi's and our keys side by side
    m2 = mount(arch, None, "--read-only")
    keys = files_under(m2.path / "acquisition")
    assert "ts/data/.zarray" in keys and "ts2/data/2" in keys
    m2.umount()
    assert ArchiveView(arch).refs["acquisition/ts2/starting_time/.zattrs"]
