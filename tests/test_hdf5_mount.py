"""HDF5/NWB files mounted directly (local and over the loopback server), `create --from` an
HDF5 file and the amend workflow, `info` on HDF5 sources.

zarr-python 3 reads every numeric dataset through the mount and must equal h5py; lindi and
pynwb (in .venv-lindi) read an archive amended through a writable mount.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time

import h5py
import numpy as np
import pytest
import zarr

NUMERIC = [
    "chunked/gzip_shuffle",
    "chunked/gzip",
    "chunked/shuffle_only",
    "chunked/fletcher32",
    "chunked/gzip_fletcher32",
    "chunked/nofilter",
    "chunked/float32_3d",
    "chunked/uint8",
    "chunked/bool",
    "chunked/partial",
    "chunked/unallocated",
    "chunked/resizable",
    "chunked/nan_fill",
    "chunked/chunk_eq_shape",
    "contiguous/f8",
    "contiguous/i2_2d",
    "contiguous/u1",
    "contiguous/big_endian",
    "contiguous/split",
    "contiguous/zero_size",
    "contiguous/zero_size_2d",
    "contiguous/zero_size_chunked",
    "compact/i4",
    "scalars/f8",
    "scalars/i4",
    "scalars/u8",
    "scalars/bool",
    "scalars/nan",
    "scalars/inf",
    "attributes/with_attrs",
    "deep/er/est/leaf",
]


def _assert_numeric_equal(mp, h5path, names=NUMERIC):
    g = zarr.open_group(str(mp), mode="r", zarr_format=2)
    with h5py.File(h5path, "r") as f:
        for name in names:
            want = f[name][()]
            got = g[name][...]
            if f[name].shape == ():
                got = got[0]  # _SCALAR: stored as shape (1,)
            assert np.array_equal(np.asarray(got), np.asarray(want), equal_nan=True), name
            assert np.asarray(got).dtype == np.asarray(want).dtype or want.dtype.kind == "b", name


def _log_has(m, text: str) -> bool:
    return text in m.log_text()


def test_local_hdf5_mount_reads_like_h5py(h5_files, mount):
    m = mount(h5_files.features)
    names = sorted(os.listdir(m.path))
    assert names == sorted(
        [
            "attributes",
            "chunked",
            "compact",
            "compound",
            "contiguous",
            "deep",
            "links",
            "references",
            "scalars",
            "strings",
            ".zattrs",
            ".zgroup",
        ]
    )
    _assert_numeric_equal(m.path, h5_files.features)
    g = zarr.open_group(str(m.path), mode="r", zarr_format=2)
    attrs = dict(g["attributes"].attrs)
    assert (
        attrs["nan"] == "NaN"
        and attrs["str"] == "text ü"
        and attrs["int_2d"] == [[0, 1, 2], [3, 4, 5]]
    )
    # unallocated chunks are absent: the fill value shows
    assert sorted(os.listdir(m.path / "chunked/unallocated")) == [".zarray"]
    assert sorted(os.listdir(m.path / "chunked/partial")) == [".zarray", "0.0", "3.2"]
    # a chunk file is exactly its byte range of the HDF5 file
    ref = json.loads(os.getxattr(m.path / "chunked/gzip/0.0", "user.lindi.ref"))
    assert ref[0] == str(h5_files.features)
    with open(h5_files.features, "rb") as f:
        f.seek(ref[1])
        assert (m.path / "chunked/gzip/0.0").read_bytes() == f.read(ref[2])
    assert (
        m.path / "links/soft_group/.zattrs"
    ).read_text() == '{"_SOFT_LINK": {"path": "/chunked"}}'
    # read-only
    with pytest.raises(OSError) as e:
        (m.path / "new").write_text("x")
    assert e.value.errno == errno.EROFS
    assert _log_has(m, "indexed HDF5")
    m.umount()


def test_strings_compound_and_references_through_the_mount(h5_files, mount):
    m = mount(h5_files.features)
    g = zarr.open_group(str(m.path), mode="r", zarr_format=2)
    with h5py.File(h5_files.features, "r") as f:
        assert list(g["strings/fixed"][...]) == list(f["strings/fixed"][()])
        assert g["scalars/vlen_str"][0] == "hello wörld"
    z = json.loads((m.path / "compound/table/.zattrs").read_text())
    assert z["_COMPOUND_DTYPE"] == [["x", "int32"], ["y", "float64"], ["name", "|S8"]]
    zr = json.loads((m.path / "references/.zattrs").read_text())
    assert zr["to_group"]["_REFERENCE"]["path"] == "/compact"
    m.umount()


def test_userblock_file_mounts(h5_files, mount):
    m = mount(h5_files.userblock)
    _assert_numeric_equal(m.path, h5_files.userblock, ["x", "y"])
    m.umount()


def test_beyond_lindi_values_through_the_mount(h5_files, mount):
    m = mount(h5_files.beyond)
    _assert_numeric_equal(m.path, h5_files.beyond, ["compact_large", "contiguous_unwritten"])
    imagecodecs = pytest.importorskip("imagecodecs.numcodecs")
    imagecodecs.register_codecs()
    _assert_numeric_equal(m.path, h5_files.beyond, ["lzf", "lzf_shuffle"])
    assert "/scalar_ref" in m.log_text()  # the object left out is named in the log
    m.umount()


def test_plugin_filter_with_a_numcodecs_codec_reads(h5_files, mount):
    """Zstandard chunks (HDF5 plugin 32015) read through the mount with numcodecs' zstd, though
    this HDF5 build cannot read them itself; bitshuffle (no codec) is left out and logged."""
    m = mount(h5_files.plugins)
    g = zarr.open_group(str(m.path), mode="r", zarr_format=2)
    assert np.array_equal(g["zstd"][...], np.arange(1000, dtype="<i4"))
    assert "bitshuffle" not in os.listdir(m.path)
    assert "/bitshuffle: HDF5 filter 32008 (bitshuffle)" in m.log_text()
    m.umount()


def test_large_dataset_is_an_external_link_resolved_on_first_use(h5_files, mount):
    m = mount(h5_files.many_chunks)
    z = json.loads((m.path / "data/.zattrs").read_text())
    assert z["_EXTERNAL_ARRAY_LINK"]["name"] == "data"
    assert len(os.listdir(m.path / "data")) == 2000 + 2  # .zarray, .zattrs and every chunk
    _assert_numeric_equal(m.path, h5_files.many_chunks, ["data"])
    m.umount()


def test_second_mount_uses_the_cached_index_and_a_change_reindexes(h5_files, mount, tmp_path):
    src = tmp_path / "session.nwb"
    shutil.copy(h5_files.features, src)
    cache = tmp_path / "cache"
    m = mount(src, None, "--cache-dir", cache)
    assert _log_has(m, "indexed HDF5")
    m.umount()
    t0 = time.monotonic()
    m = mount(src, None, "--cache-dir", cache)
    os.listdir(m.path)
    elapsed = time.monotonic() - t0
    assert _log_has(m, "HDF5 index from the cache"), m.log_text()
    assert elapsed < 10  # (the figure, 0.5 s, is measured in benchmarks/bench_hdf5.py)
    m.umount()
    # change the file: same size, new content and mtime -> indexed again, new values served
    with h5py.File(src, "r+") as f:
        f["contiguous/f8"][0] = 123.5
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    m = mount(src, None, "--cache-dir", cache)
    assert _log_has(m, "indexed HDF5") and not _log_has(m, "from the cache")
    g = zarr.open_group(str(m.path), mode="r", zarr_format=2)
    assert g["contiguous/f8"][0] == 123.5
    m.umount()


def test_remote_hdf5_mount(h5_files, mount, http_server, tmp_path):
    http_server.add_file("features.h5", h5_files.features)
    url = http_server.url("features.h5")
    m = mount(url, None, "--cache-dir", tmp_path / "cache")
    first = http_server.count("features.h5")
    assert first <= 8, first  # head, probe, a few metadata blocks; not one per HDF5 read
    _assert_numeric_equal(m.path, h5_files.features)
    ref = json.loads(os.getxattr(m.path / "chunked/gzip/0.0", "user.lindi.ref"))
    assert ref[0] == url
    m.umount()
    # a second mount of the unchanged URL: the index comes from the cache
    http_server.reset_log()
    m = mount(url, None, "--cache-dir", tmp_path / "cache")
    assert _log_has(m, "from the cache")
    assert http_server.count("features.h5") <= 2  # the version probe, no metadata reads
    m.umount()


def test_remote_hdf5_failure_is_one_line(h5_files, mount, http_server):
    data = h5_files.features.read_bytes()
    (http_server.root / "cut.nwb").write_bytes(data[: len(data) // 3])
    m = mount(http_server.url("cut.nwb"), None, "--no-cache", check=False)
    rc, out, err = m.result
    assert rc != 0
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "cut.nwb" in lines[0] and "Traceback" not in err
    assert not m.is_mounted()


def test_info_on_hdf5(h5_files, run_cli):
    res = run_cli("info", h5_files.features, "--json")
    assert res.rc == 0, res.describe()
    got = json.loads(res.stdout)
    assert got["kind"] == "hdf5" and got["arrays"] > 40 and got["groups"] > 10
    assert got["external"][0]["target"] == str(h5_files.features)
    assert got["left_out"] == []
    res = run_cli("info", h5_files.region)
    assert res.rc == 0, res.describe()
    assert "warning: / attribute 'region': region references" in res.stdout, res.stdout


@pytest.mark.lindi
def test_create_from_nwb_amend_and_read_with_lindi_and_pynwb(
    h5_files, run_cli, mount, lindi_gen, tmp_path
):
    archive = tmp_path / "amended.lindi.tar"
    res = run_cli("create", archive, "--from", h5_files.nwb)
    assert res.rc == 0, res.describe()
    m = mount(archive)
    g = zarr.open_group(str(m.path), mode="r+", zarr_format=2)
    mod = g["processing"]
    derived = mod.create_group("derived")
    derived.attrs["description"] = "added through the mount"
    values = np.arange(5000, dtype="float64") / 7
    derived.create_array("values", shape=values.shape, chunks=(1000,), dtype="float64")
    derived["values"][:] = values
    m.umount()
    res = run_cli("check", archive)
    assert res.rc == 0, res.describe()
    # pynwb through lindi still reads the whole NWB file, and lindi reads the new array
    direct = lindi_gen("dump-nwb", h5_files.nwb).stdout
    via = lindi_gen("dump-nwb", archive, "--lindi").stdout
    a = json.loads([x for x in direct.splitlines() if x.startswith("{")][-1])
    b = json.loads([x for x in via.splitlines() if x.startswith("{")][-1])
    assert a == b
    out = lindi_gen("read-json", archive, "processing/derived/values", "processing/derived").stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert np.allclose(got["processing/derived/values"]["values"], values)
    assert got["processing/derived"]["attrs"]["description"] == "added through the mount"


def test_mount_shows_indexing_progress_on_a_terminal(h5_files, tmp_path):
    """`mount` (background) relays the daemon's indexing progress to its own terminal and still
    returns only once the mount answers."""
    from harness import cli_args, force_unmount, is_mounted, run_cli, terminate_pid
    from test_hdf5_index import _under_a_terminal

    mp = tmp_path / "mp"
    mp.mkdir()
    log, pid_file = tmp_path / "log", tmp_path / "pid"
    try:
        rc, tty = _under_a_terminal(
            cli_args(
                "mount",
                h5_files.many_chunks,
                mp,
                "--no-cache",
                "--log-file",
                log,
                "--pid-file",
                pid_file,
            )
        )
        assert rc == 0, tty
        assert "indexing many_chunks.h5:" in tty, tty
        assert is_mounted(mp) and len(os.listdir(mp / "data")) == 2002
    finally:
        if is_mounted(mp):
            res = run_cli("umount", mp)
            if res.rc != 0:
                force_unmount(mp)
        if pid_file.exists():
            terminate_pid(int(pid_file.read_text()))


def test_cache_info_and_clear_cover_hdf5_indexes(h5_files, mount, run_cli, tmp_path):
    cache = tmp_path / "cache"
    m = mount(h5_files.features, None, "--cache-dir", cache)
    m.umount()
    res = run_cli("cache", "info", "--cache-dir", cache, "--json")
    assert res.rc == 0 and json.loads(res.stdout)["hdf5_indexes"] == 1, res.describe()
    res = run_cli("cache", "clear", "--cache-dir", cache)
    assert res.rc == 0 and "removed 1 HDF5 indexes" in res.stdout, res.describe()
    m = mount(h5_files.features, None, "--cache-dir", cache)
    assert _log_has(m, "indexed HDF5")  # indexed again
    m.umount()


@pytest.mark.lindi
def test_create_from_remote_nwb_references_the_url(
    h5_files, run_cli, http_server, lindi_gen, tmp_path
):
    http_server.add_file("full.nwb", h5_files.nwb)
    url = http_server.url("full.nwb")
    archive = tmp_path / "remote.lindi.tar"
    res = run_cli("create", archive, "--from", url)
    assert res.rc == 0, res.describe()
    res = run_cli("info", archive, "--json")
    got = json.loads(res.stdout)
    assert [e["target"] for e in got["external"]] == [url]
    direct = lindi_gen("dump-nwb", h5_files.nwb).stdout
    via = lindi_gen("dump-nwb", archive, "--lindi").stdout  # lindi reads the chunks by URL
    a = json.loads([x for x in direct.splitlines() if x.startswith("{")][-1])
    b = json.loads([x for x in via.splitlines() if x.startswith("{")][-1])
    assert a == b


def test_remote_hdf5_mounts_again_offline(h5_files, mount, http_server, tmp_path):
    """A remote HDF5 file mounted once mounts again with --offline: its index and the metadata
    and chunks read before come from the cache, and the server sees no request."""
    http_server.add_file("features.h5", h5_files.features)
    url = http_server.url("features.h5")
    cache = tmp_path / "cache"
    m = mount(url, None, "--cache-dir", cache)
    _assert_numeric_equal(m.path, h5_files.features)
    m.umount()
    http_server.reset_log()
    m = mount(url, None, "--cache-dir", cache, "--offline")
    _assert_numeric_equal(m.path, h5_files.features)
    assert http_server.count() == 0
    m.umount()
