"""Arrays that lindi stores as ``_EXTERNAL_ARRAY_LINK`` (chunks not in refs) read correctly
through the mount, locally and over HTTP; a broken link is EIO, never silent fill values."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr
from harness import run

MAKE = r"""
import sys, h5py, numpy as np, lindi
h5, out, url = sys.argv[1:4]
with h5py.File(h5, "w") as f:
    f.create_dataset("many", data=np.arange(3000, dtype="int32"), chunks=(2,))
    f.create_dataset("grid", data=np.arange(120 * 50, dtype="float64").reshape(120, 50),
                     chunks=(3, 5), compression="gzip")
    f.create_dataset("few", data=np.arange(30, dtype="int16"), chunks=(10,))
f = lindi.LindiH5pyFile.from_hdf5_file(h5, url=url)
f.write_lindi_file(out)
"""


@pytest.fixture(scope="module")
def ext_files(lindi_python, tmp_path_factory):
    d = tmp_path_factory.mktemp("extlink")
    script = d / "make.py"
    script.write_text(MAKE)
    h5 = d / "ext.h5"
    out = d / "ext.lindi.json"
    res = run([lindi_python, str(script), str(h5), str(out), str(h5)], timeout=120)
    assert res.ok, res.describe()
    return d, h5, out


def _expected():
    return {
        "many": np.arange(3000, dtype="int32"),
        "grid": np.arange(120 * 50, dtype="float64").reshape(120, 50),
        "few": np.arange(30, dtype="int16"),
    }


def _check_arrays(path):
    g = zarr.open_group(str(path), mode="r", zarr_format=2)
    for name, want in _expected().items():
        np.testing.assert_array_equal(g[name][:], want)


def test_lindi_wrote_external_links(ext_files):
    _, _, out = ext_files
    refs = json.loads(out.read_text())["refs"]
    assert "_EXTERNAL_ARRAY_LINK" in json.dumps(refs["many/.zattrs"])
    assert not any(k.startswith("many/") and k[5:].isdigit() for k in refs)


def test_local_external_link(ext_files, mount):
    _, _, out = ext_files
    m = mount(out)
    assert len([n for n in os.listdir(m.path / "many") if not n.startswith(".")]) == 1500
    assert len([n for n in os.listdir(m.path / "grid") if not n.startswith(".")]) == 40 * 10
    _check_arrays(m.path)
    ref = json.loads(os.getxattr(m.path / "many" / "7", "user.lindi.ref"))
    assert ref[0] == str(ext_files[1]) and ref[2] == 8


def test_remote_external_link(ext_files, http_server, mount):
    d, h5, out = ext_files
    shutil.copy(h5, http_server.root / "ext.h5")
    doc = json.loads(out.read_text())
    url = http_server.url("ext.h5")
    text = json.dumps(doc).replace(json.dumps(str(h5)), json.dumps(url))
    (http_server.root / "ext.lindi.json").write_text(text)
    m = mount(http_server.url("ext.lindi.json"))
    _check_arrays(m.path)


def test_broken_link_is_eio(ext_files, tmp_path, mount):
    _, h5, out = ext_files
    gone = tmp_path / "gone.h5"
    text = out.read_text().replace(json.dumps(str(h5)), json.dumps(str(gone)))
    src = tmp_path / "broken.lindi.json"
    src.write_text(text)
    m = mount(src)
    with pytest.raises(OSError) as e:
        os.listdir(m.path / "many")
    assert e.value.errno == 5
    assert "external array link" in m.log_text()
    # the rest of the mount keeps working
    assert os.path.getsize(m.path / "few" / ".zarray") > 0


def test_link_spelled_with_escapes_is_still_found(ext_files, tmp_path, mount):
    """A file without the attribute's name written out skips the scan for links at mount
    (refs.may_hold_links); one that spells it with \\u escapes is still scanned."""
    _, _, out = ext_files
    text = out.read_text()
    src = tmp_path / "escaped.lindi.json"
    src.write_text(text.replace("_EXTERNAL_ARRAY_LINK", "\\u005fEXTERNAL_ARRAY_LINK"))
    m = mount(src)
    assert len([n for n in os.listdir(m.path / "many") if not n.startswith(".")]) == 1500
    _check_arrays(m.path)
    assert "arrays are external HDF5 dataset links" in m.log_text()


def test_may_hold_links():
    from lindifuse.refs import may_hold_links

    assert may_hold_links(b'{"refs": {"a/.zattrs": {"_EXTERNAL_ARRAY_LINK": {}}}}')
    assert may_hold_links(b'{"refs": {"a/.zattrs": {"\\u005fEXTERNAL_ARRAY_LINK": {}}}}')
    assert not may_hold_links(b'{"refs": {"a/.zattrs": {"units": "s"}}}')
    # lindi's binary inline chunks are full of escapes: only escaped letters of the name count
    assert not may_hold_links(b'{"refs": {"a/0": "\\u0002\\u0001\\u0000 \\u00e9"}}')
    name = "_EXTERNAL_ARRAY_LINK"
    for ch in set(name):
        for form in ("\\u%04x", "\\u%04X"):
            assert may_hold_links(name.replace(ch, form % ord(ch), 1).encode()), (ch, form)
