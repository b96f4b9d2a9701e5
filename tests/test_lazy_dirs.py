"""Read-only mounts make the files of a large directory on its first use (``Tree.from_keys_lazy``):
whatever order a reader comes in (a path looked up without listing, a listing, ``statvfs``
first, zarr), it sees the same files, sizes, bytes, ``nlink`` and conflicts as before."""

from __future__ import annotations

import json
import os

import numpy as np
import zarr

from lindifuse.fs.tree import LAZY_FILES

CHUNKS = LAZY_FILES + 44  # more than LAZY_FILES: the array's directory is left for first use


def _source(tmp_path):
    """Two arrays of CHUNKS chunks of 4 int32 each, from one blob; a small group beside them;
    in ``g/b`` a chunk key ``sub`` that is also a directory (``g/b/sub/x``)."""
    data = np.arange(CHUNKS * 4, dtype="<i4")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(data.tobytes())
    zarray = {
        "chunks": [4],
        "compressor": None,
        "dtype": "<i4",
        "fill_value": 0,
        "filters": None,
        "order": "C",
        "shape": [CHUNKS * 4],
        "zarr_format": 2,
    }
    refs: dict = {".zgroup": {"zarr_format": 2}, "g/.zgroup": {"zarr_format": 2}}
    for name in ("a", "b"):
        refs[f"g/{name}/.zarray"] = zarray
        refs[f"g/{name}/.zattrs"] = {}
        for i in range(CHUNKS):
            refs[f"g/{name}/{i}"] = [str(blob), i * 16, 16]
    refs["g/b/sub"] = "base64:AAAAAA=="  # loses to the directory below
    refs["g/b/sub/x"] = "hello"
    refs["small/.zgroup"] = {"zarr_format": 2}
    src = tmp_path / "lazy.lindi.json"
    src.write_text(json.dumps({"version": 1, "refs": refs}))
    return src, data, len(refs)


def test_large_directories_are_made_on_first_use(mount, tmp_path):
    src, data, nkeys = _source(tmp_path)
    m = mount(src, None, "--read-only", "--no-cache")
    log = m.log_text()
    assert "filled on first use" in log, log
    assert "'g/b/sub' is also a directory prefix" in log  # reported at mount, not at first use
    # statvfs counts the files not made yet: every key but the conflict, and the 6 directories
    assert os.statvfs(m.path).f_files == (nkeys - 1) + 6
    # a path looked up without listing its directory first
    st = os.stat(m.path / "g/a/123")
    assert st.st_size == 16
    assert (m.path / "g/a/123").read_bytes() == data[123 * 4 : 124 * 4].tobytes()
    assert not (m.path / "g/a/nope").exists()
    # a listing made on first use has every file; the directory key wins over the file
    names = os.listdir(m.path / "g/b")
    assert len(names) == CHUNKS + 3 and {".zarray", ".zattrs", "sub", "0"} <= set(names)
    assert (m.path / "g/b/sub").is_dir() and (m.path / "g/b/sub/x").read_text() == "hello"
    assert os.stat(m.path / "g/b").st_nlink == 3  # '.', its entry in g, and sub's '..'
    assert sorted(os.listdir(m.path / "g")) == [".zgroup", "a", "b"]
    # inodes are given once: the same before and after the listing of g/a
    ino = os.stat(m.path / "g/a/5").st_ino
    assert len(os.listdir(m.path / "g/a")) == CHUNKS + 2
    assert os.stat(m.path / "g/a/5").st_ino == ino
    # zarr reads both arrays whole
    for name in ("a", "b"):
        arr = zarr.open_array(str(m.path / "g" / name), mode="r", zarr_format=2)
        np.testing.assert_array_equal(arr[:], data)
    walked = sum(len(files) for _d, _s, files in os.walk(m.path))
    assert walked == nkeys - 1
    m.umount()


def test_writable_mounts_keep_the_whole_tree(mount, tmp_path):
    """A writable .lindi.d is never left for first use: renames and removals walk the tree."""
    src, data, nkeys = _source(tmp_path)
    d = tmp_path / "w.lindi.d"
    d.mkdir()
    (d / "lindi.json").write_text(src.read_text())
    m = mount(d, None, "--no-cache")
    assert "filled on first use" not in m.log_text()
    os.rename(m.path / "g/a", m.path / "g/c")
    np.testing.assert_array_equal(
        zarr.open_array(str(m.path / "g/c"), mode="r", zarr_format=2)[:], data
    )
    m.umount()
