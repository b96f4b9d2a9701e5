"""Tests of the shared test harness: lindi fixtures, lindi over the test HTTP
server, /proc/mounts parsing and the ``mount`` fixture's life cycle."""

from __future__ import annotations

import json
import os
import signal
import tarfile

import numpy as np
import pytest
from harness import (
    _unescape_mount_field,
    fuse_mounts_under,
    is_mounted,
    pid_alive,
)


def test_unescape_mount_field():
    assert _unescape_mount_field(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"
    assert _unescape_mount_field("/plain") == "/plain"
    assert _unescape_mount_field("/end\\04") == "/end\\04"


# -- lindi fixtures ---------------------------------------------------------------------


def test_lindi_files_exist(lindi_files):
    assert lindi_files.h5.is_file()
    for _name, path in lindi_files.sources.items():
        assert path.exists(), path
    assert (lindi_files.d / "lindi.json").is_file()
    assert (lindi_files.amended_d / "blobs" / "processing" / "amended" / "values" / "0").is_file()


def test_reference_has_padded_chunk(lindi_files):
    """lindi zero-pads the short final chunk of the split contiguous dataset."""
    for name in lindi_files.NAMES:
        ref = lindi_files.reference(name)
        rfs = lindi_files.refs_json(name)
        key = "acquisition/ts/timestamps/2"
        stored = rfs["refs"][key]
        assert isinstance(stored, list) and stored[2] == 4000
        assert len(ref[key]) == 10000
        assert ref[key][4000:] == b"\0" * 6000
        assert set(ref) == set(rfs["refs"])


def test_expected_pads_only_uncompressed(lindi_files):
    ref = lindi_files.reference("example.lindi.json")
    raw = lindi_files.raw("example.lindi.json")
    exp = lindi_files.expected("example.lindi.json")
    key = "acquisition/ts/timestamps/2"  # no compressor: padded
    assert len(raw[key]) == 4000 and exp[key] == ref[key] and len(exp[key]) == 10000
    key = "acquisition/ts/data/0.0"  # zlib + shuffle: lindi pads, a mount must not
    assert len(ref[key]) == 16 * 8 * 2 and len(raw[key]) < len(ref[key]) and exp[key] == raw[key]
    assert ref[key].startswith(raw[key])
    assert exp[".zattrs"] == raw[".zattrs"] == ref[".zattrs"]


def test_reference_bytes_match_arrays(lindi_files):
    ref = lindi_files.reference("example.lindi.json")
    ts = np.concatenate(
        [np.frombuffer(ref[f"acquisition/ts/timestamps/{i}"], "<f8") for i in range(3)]
    )[:3000]
    np.testing.assert_array_equal(
        ts, lindi_files.arrays("example.lindi.json")["acquisition/ts/timestamps"]
    )
    zarray = json.loads(ref["acquisition/ts/data/.zarray"])
    assert zarray["shape"] == [100, 37] and zarray["chunks"] == [16, 8]


def test_lindi_conventions_present(lindi_files):
    ref = lindi_files.reference("example.lindi.tar")
    assert json.loads(ref["acquisition/ts/starting_time/.zattrs"])["_SCALAR"] is True
    link = json.loads(ref["processing/behavior/link_to_data/.zattrs"])
    assert link["_SOFT_LINK"]["path"] == "/acquisition/ts/data"
    attrs = json.loads(ref["processing/behavior/.zattrs"])
    assert attrs["ref"]["_REFERENCE"]["path"] == "/acquisition/ts"
    assert "_COMPOUND_DTYPE" in json.loads(ref["processing/behavior/table/.zattrs"])


def test_arrays(lindi_files):
    arrays = lindi_files.arrays("amended.lindi.tar")
    assert arrays["acquisition/ts/data"].shape == (100, 37)
    assert arrays["acquisition/ts/data"].dtype == np.int16
    assert arrays["general/keywords"].tolist() == ["alpha", "beta", "gamma delta"]
    assert arrays["general/session_description"].item() == "test session"
    assert arrays["acquisition/ts/starting_time"].item() == 0.5
    assert arrays["processing/behavior/table"]["y"].tolist() == [0, 0.5, 1, 1.5, 2]
    np.testing.assert_array_equal(
        arrays["processing/amended/values"], np.arange(600, dtype=np.float32) * 0.25
    )
    assert "processing/behavior/link_to_data" not in arrays


def test_amended_tar_has_blobs_and_is_plain_tar(lindi_files):
    with tarfile.open(lindi_files.amended_tar) as tf:
        names = tf.getnames()
    assert names[:3] == [".tar_entry.json", ".tar_index.json", "lindi.json"]
    assert "blobs/processing/amended/values/0" in names
    assert "blobs/processing/amended/matrix/0.0" in names
    refs = lindi_files.refs_json("amended.lindi.tar")["refs"]
    assert refs["processing/amended/values/0"] == ["./blobs/processing/amended/values/0", 0, 1000]


def test_copy(lindi_files, tmp_path):
    p = lindi_files.copy("amended.lindi.d", tmp_path)
    assert (p / "lindi.json").is_file() and p.parent == tmp_path
    assert lindi_files.reference(p) is lindi_files.reference("amended.lindi.d")
    with pytest.raises(KeyError):
        lindi_files.reference("other.lindi.tar")


def test_make_h5_external_link(lindi_gen, tmp_path):
    h5 = tmp_path / "x.h5"
    lindi_gen("make-h5", h5, "--external-link")
    out = tmp_path / "x.lindi.json"
    lindi_gen("to-lindi", h5, out)
    refs = json.loads(out.read_text())["refs"]
    attrs = refs["acquisition/many_chunks/.zattrs"]
    assert attrs["_EXTERNAL_ARRAY_LINK"]["name"].strip("/") == "acquisition/many_chunks"
    assert not any(k.startswith("acquisition/many_chunks/0") for k in refs)


# -- lindi through the test HTTP server -------------------------------------------------


@pytest.mark.parametrize("name", ["example.remote.lindi.json", "amended.lindi.tar"])
def test_lindi_reads_over_http(http_lindi, lindi_gen, tmp_path, name):
    """lindi's own HTTP clients read our server's ranges: same bytes as local."""
    out = tmp_path / "dump.json"
    lindi_gen("dump-store", http_lindi.url(name), out)
    import base64

    got = {k: base64.b64decode(v) for k, v in json.loads(out.read_text()).items()}
    assert got == http_lindi.reference(name)
    assert http_lindi.server.count(name) >= 1
    if name == "example.remote.lindi.json":
        ranged = [r for r in http_lindi.server.requests_for("example.h5") if r.range]
        assert ranged and all(r.status == 206 for r in ranged)


# -- the mount fixture -------------------------------------------------------------------


def test_mount_fixture_basic(mount, lindi_files):
    m = mount(lindi_files.tar)
    assert is_mounted(m.path)
    assert m.pid and pid_alive(m.pid)
    assert m.xattr_pid() == m.pid
    assert sorted(os.listdir(m.path))[:2] == [".zattrs", ".zgroup"]
    assert str(m.path) in fuse_mounts_under(m.path.parent)
    assert m.log_text()  # the daemon logs to --log-file


def test_mount_fixture_explicit_umount(mount, lindi_files):
    m = mount(lindi_files.json, None, "--read-only")
    pid = m.pid
    m.umount()
    assert not is_mounted(m.path) and not pid_alive(pid)


def test_mount_fixture_bad_source(mount, tmp_path):
    bad = tmp_path / "broken.lindi.json"
    bad.write_text("{not json")
    m = mount(bad, check=False)
    assert m.result.rc != 0
    assert len(m.result.stderr.strip().splitlines()) == 1, m.result.stderr
    assert not m.is_mounted()


def test_mount_fixture_kill(mount, lindi_files):
    m = mount(lindi_files.tar)
    m.kill(signal.SIGKILL)
    assert not m.daemon_alive()
    # teardown copes with the dead mount (fusermount3 -u -z) without failing the test


def test_mount_fixture_foreground(mount, lindi_files):
    m = mount(lindi_files.json, None, "-f")
    assert m.proc is not None and m.proc.poll() is None
    assert m.pid == m.proc.pid or m.pid is not None
    assert os.listdir(m.path)
    m.umount()
    assert m.proc.returncode is not None


def test_mount_serves_lindi_bytes(mount, lindi_files):
    """Smoke test across formats: every key reads back as lindi serves it."""
    for name in lindi_files.NAMES:
        m = mount(lindi_files.sources[name], None, "--read-only")
        ref = lindi_files.expected(name)
        for key, data in ref.items():
            with open(m.path / key, "rb") as f:
                assert f.read() == data, f"{name}: {key}"
        m.umount()
