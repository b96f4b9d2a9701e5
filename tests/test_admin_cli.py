"""The offline commands: ``lindifuse create`` (``--from`` a local lindi.json or a remote
``.lindi.tar``), ``check`` (``--repair``) and ``compact``, judged by the format, GNU tar,
lindi 0.4.6 and mounts of their output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from harness import run_cli
from writekit import (
    ArchiveView,
    assert_check_clean,
    assert_valid_archive,
    files_under,
    json_from_output,
    tar_list,
)


def one_line_error(res, *needles: str) -> str:
    assert res.rc == 1, res.describe()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lindifuse: "), res.describe()
    for n in needles:
        assert n in lines[0], res.describe()
    return lines[0]


def zarr_write(root, name: str, values: np.ndarray, chunk: int = 250) -> None:
    g = zarr.open_group(root, mode="r+", zarr_format=2)
    a = g.create_array(
        name, shape=values.shape, chunks=(chunk,), dtype=values.dtype, compressors=None
    )
    a[:] = values
    a.attrs["by"] = "lindifuse"


# -- create ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar", "d"])
def test_create_empty(lindi_gen, mount, tmp_path, kind):
    target = tmp_path / f"new.lindi.{kind}"
    res = run_cli("create", target)
    assert res.rc == 0, res.describe()
    assert str(target) in res.stdout
    view = assert_valid_archive(target)
    assert view.refs == {".zgroup": {"zarr_format": 2}}  # lindi's empty file
    if kind == "tar":
        assert tar_list(target) == [".tar_entry.json", ".tar_index.json", "lindi.json"]
    else:
        assert sorted(os.listdir(target)) == ["lindi.json"]
    out = json_from_output(lindi_gen("read-json", target, "/"))
    assert out["/"] == {"kind": "group", "keys": [], "attrs": {}}
    m = mount(target, None, "--read-only")
    assert os.listdir(m.path) == [".zgroup"]
    assert list(zarr.open_group(m.path, mode="r", zarr_format=2).keys()) == []
    m.umount()
    # never over an existing file or folder
    before = files_under(target) if kind == "d" else target.read_bytes()
    one_line_error(run_cli("create", target), str(target), "exists")
    assert (files_under(target) if kind == "d" else target.read_bytes()) == before
    if kind == "tar":
        one_line_error(run_cli("create", tmp_path / "no" / "such" / "x.lindi.tar"))


def test_create_from_local_lindi_json(lindi_files, lindi_gen, mount, tmp_path):
    target = tmp_path / "from-json.lindi.tar"
    res = run_cli("create", target, "--from", lindi_files.json)
    assert res.rc == 0, res.describe()
    src_refs = lindi_files.refs_json("example.lindi.json")["refs"]
    view = assert_valid_archive(target)
    assert set(view.refs) == set(src_refs)
    for key, v in view.refs.items():
        if isinstance(v, list):  # chunk refs name example.h5 (absolute), nothing was copied
            assert v[0] == str(lindi_files.h5) and v[1:] == src_refs[key][1:], (key, v)
    assert not [n for n in tar_list(target) if n.startswith("blobs/")]  # nothing copied
    m = mount(target)
    for key, data in lindi_files.expected("example.lindi.json").items():
        with open(m.path / key, "rb") as f:
            assert f.read() == data, key
    new = np.arange(1000, dtype="f8") * 3
    zarr_write(m.path, "added/v", new)
    m.umount()
    assert_valid_archive(target)
    got = {}
    lindi_gen("read-arrays", target, tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as z:
        got = {k: z[k] for k in z.files}
    for name, want in lindi_files.arrays("example.lindi.json").items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    np.testing.assert_array_equal(got["added/v"], new)


def test_create_from_remote_tar(lindi_files, lindi_gen, mount, http_server, tmp_path):
    """A remote .lindi.tar whose own chunks are tar members and whose HDF5 chunks are URLs:
    the members become byte ranges of the tar's URL; the new archive stores only what is
    added through its mount; lindi reads old (remote) and new (local) data."""
    srv = http_server
    srv.add_file("example.h5", lindi_files.h5)
    remote = srv.root / "remote.lindi.tar"
    lindi_gen("to-lindi", lindi_files.h5, remote, "--url", srv.url("example.h5"), "--amend")
    remote_view = ArchiveView(remote)
    tar_url = srv.url("remote.lindi.tar")
    target = tmp_path / "local.lindi.tar"
    res = run_cli("create", target, "--from", tar_url)
    assert res.rc == 0, res.describe()
    view = assert_valid_archive(target)
    assert set(view.refs) == set(remote_view.refs)
    internal = 0
    for key, v in remote_view.refs.items():
        v, new = remote_view.expand(v), view.refs[key]
        if isinstance(v, list) and v[0].startswith("./"):
            internal += 1
            _o, d, _s = remote_view.index[v[0][2:]]
            assert new == [tar_url, d + v[1], v[2]], (key, new)
        elif isinstance(v, list):
            assert new == v, key  # URLs of example.h5 stay
        else:
            assert view.content(key) == remote_view.content(key), key
    assert internal >= 4  # lindi's amended datasets
    assert not [n for n in tar_list(target) if n.startswith("blobs/")]  # nothing copied
    # mount it, read remote data (served from the tar's URL), add an array
    srv.reset_log()
    m = mount(target)
    key = "processing/amended/matrix/0.0"
    with open(m.path / key, "rb") as f:
        assert f.read() == remote_view.content(key)
    assert srv.count("remote.lindi.tar") >= 1
    new = np.arange(750, dtype="f8") - 1
    zarr_write(m.path, "processing/added", new)
    m.umount()
    view = assert_valid_archive(target)
    assert view.blob_member("processing/added/0") == "blobs/processing/added/0"
    lindi_gen("read-arrays", target, tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz") as z:
        got = {k: z[k] for k in z.files}
    for name, want in lindi_files.arrays("amended.lindi.tar").items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    np.testing.assert_array_equal(got["processing/added"], new)


def test_create_from_remote_tar_with_local_refs_is_refused(lindi_files, http_server, tmp_path):
    """A remote archive may not make us read local files (its refs name example.h5's path)."""
    http_server.add_file("amended.lindi.tar", lindi_files.amended_tar)
    target = tmp_path / "x.lindi.tar"
    one_line_error(run_cli("create", target, "--from", http_server.url("amended.lindi.tar")))
    assert not target.exists()


# -- check ----------------------------------------------------------------------------------


@pytest.fixture
def used_tar(mount, tmp_path) -> Path:
    """A .lindi.tar after a mount session that wrote, rewrote and deleted chunks (so it holds
    trashed JSON members, spares and unreferenced blobs)."""
    arch = tmp_path / "used.lindi.tar"
    assert run_cli("create", arch).rc == 0
    m = mount(arch)
    zarr_write(m.path, "x", np.arange(2000, dtype="f8"), chunk=500)
    zarr_write(m.path, "gone", np.arange(1000, dtype="f8"), chunk=500)
    os.sync()
    with open(m.path / "x" / "0", "rb") as f:
        os.fsync(f.fileno())  # a commit in between: an older index and lindi.json remain
    g = zarr.open_group(m.path, mode="r+", zarr_format=2)
    g["x"][:] = np.arange(2000, dtype="f8") * 2
    del g["gone"]
    m.umount()
    return arch


def _check(path, *args):
    res = run_cli("check", *args, path)
    lines = res.stdout.strip().splitlines()
    return res, lines


def test_check_clean_archive(used_tar):
    res, lines = _check(used_tar)
    assert res.rc == 0 and lines == [f"{used_tar}: ok"], res.describe()
    names = tar_list(used_tar)
    assert any(n.startswith(".trash/") for n in names)


def test_check_corrupt_index_and_repair(used_tar, lindi_gen):
    raw = bytearray(used_tar.read_bytes())
    entry = json.loads(raw[512:1536])["index"]
    raw[entry["d"] : entry["d"] + 16] = b"#" * 16
    used_tar.write_bytes(bytes(raw))
    res, lines = _check(used_tar)
    assert res.rc == 1 and lines, res.describe()
    for line in lines:
        assert line.startswith(f"{used_tar}: ") and line.count(str(used_tar)) == 1, res.describe()
    assert any(".tar_index.json" in line for line in lines), res.describe()
    res = run_cli("check", "--repair", used_tar)
    assert res.rc == 0, res.describe()
    assert any(line.startswith("fixed: ") for line in res.stdout.splitlines()), res.describe()
    assert_valid_archive(used_tar)
    # an earlier commit is live again: lindi opens it
    out = json_from_output(lindi_gen("read-json", used_tar, "/"))
    assert out["/"]["kind"] == "group"


@pytest.mark.parametrize("cut", ["trailer", "uncommitted-tail", "half"])
def test_check_truncated_or_extended_tar(used_tar, lindi_gen, cut):
    raw = used_tar.read_bytes()
    if cut == "trailer":  # the end-of-archive zeros are gone
        used_tar.write_bytes(raw[:-1024])
    elif cut == "uncommitted-tail":  # a blob appended after the last commit (crash)
        used_tar.write_bytes(raw[:-1024] + raw[-1024 - 4608 : -1024] + raw[-1024:])
    else:  # cut through committed members
        used_tar.write_bytes(raw[: len(raw) // 2])
    res, lines = _check(used_tar)
    assert res.rc == 1 and lines, res.describe()
    assert all(line.startswith(f"{used_tar}: ") for line in lines), res.describe()
    res = run_cli("check", "--repair", used_tar)
    if cut == "half" and res.rc != 0:
        one_line_error(res, str(used_tar))  # committed data is gone: may be beyond repair
        return
    assert res.rc == 0, res.describe()
    if cut != "trailer":
        assert "fixed: " in res.stdout, res.describe()
    assert_valid_archive(used_tar)
    lindi_gen("read-json", used_tar, "/")


def test_check_missing_file(tmp_path):
    res, _ = _check(tmp_path / "nope.lindi.tar")
    assert res.rc == 1, res.describe()
    assert "nope.lindi.tar" in res.stdout + res.stderr


def test_check_dir_archive(mount, tmp_path):
    d = tmp_path / "w.lindi.d"
    assert run_cli("create", d).rc == 0
    m = mount(d)
    zarr_write(m.path, "x", np.arange(1000, dtype="f8"))
    m.umount()
    assert_check_clean(d)
    # a reference past the end of its file, and an unfinished temporary file
    blob = d / "blobs" / "x" / "0"
    good = blob.read_bytes()
    blob.write_bytes(good[:100])
    (d / ".lindifuse-tmp").mkdir(exist_ok=True)
    (d / ".lindifuse-tmp" / "junk").write_bytes(b"junk")
    res, lines = _check(d)
    assert res.rc == 1 and len(lines) == 2, res.describe()
    assert any("runs past" in line for line in lines) and any(
        "unfinished" in line for line in lines
    )
    blob.write_bytes(good)
    res = run_cli("check", "--repair", d)
    assert res.rc == 0, res.describe()
    assert not (d / ".lindifuse-tmp").exists() or not os.listdir(d / ".lindifuse-tmp")
    assert_check_clean(d)


def test_check_dir_with_overwritten_blobs_is_clean(mount, tmp_path):
    d = tmp_path / "w.lindi.d"
    assert run_cli("create", d).rc == 0
    m = mount(d)
    zarr_write(m.path, "x", np.arange(1000, dtype="f8"))
    zarr.open_array(m.path / "x", mode="r+")[:] = 1.0
    m.umount()
    res, _ = _check(d)
    assert res.rc == 0, res.describe()


# -- compact ----------------------------------------------------------------------------------


@pytest.mark.parametrize("out_kind", ["tar", "d"])
def test_compact(used_tar, lindi_gen, mount, tmp_path, out_kind):
    out = tmp_path / f"compact.lindi.{out_kind}"
    res = run_cli("compact", used_tar, out)
    assert res.rc == 0, res.describe()
    dropped = res.stdout.splitlines()
    assert any("gone" in line for line in dropped), res.describe()
    before, after = ArchiveView(used_tar), assert_valid_archive(out)
    assert after.refs.keys() == before.refs.keys()
    for key in before.refs:
        assert after.content(key) == before.content(key), key
    if out_kind == "tar":
        names = tar_list(out)
        assert not [n for n in names if n.startswith(".trash/") or "gone" in n], names
        blobs = {n for n in names if n.startswith("blobs/")}
        assert blobs == {after.blob_member(k) for k in after.refs if after.blob_member(k)}
        assert out.stat().st_size < used_tar.stat().st_size
    else:
        stored = sum(len(v) for v in files_under(out).values())
        assert stored < used_tar.stat().st_size
    # lindi and a mount read the same values from both
    for src in (used_tar, out):
        got = json_from_output(lindi_gen("read-json", src, "x", "gone"))
        assert got["x"]["values"] == (np.arange(2000) * 2.0).tolist()
        assert got["gone"] == {"kind": "missing"}
    m = mount(out, None, "--read-only")
    np.testing.assert_array_equal(
        zarr.open_array(m.path / "x", mode="r", zarr_format=2)[:], np.arange(2000) * 2.0
    )
    m.umount()
    # never over an existing target
    one_line_error(run_cli("compact", used_tar, out), "exists")


def test_compact_a_lindi_tar(lindi_files, lindi_gen, tmp_path):
    """lindi's own r+ archive (trashed lindi.json members) compacts to what lindi reads alike."""
    out = tmp_path / "c.lindi.tar"
    res = run_cli("compact", lindi_files.amended_tar, out)
    assert res.rc == 0, res.describe()
    assert_valid_archive(out)
    assert out.stat().st_size <= lindi_files.amended_tar.stat().st_size
    lindi_gen("read-arrays", out, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as z:
        for name, want in lindi_files.arrays("amended.lindi.tar").items():
            np.testing.assert_array_equal(z[name], want, err_msg=name)
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)
