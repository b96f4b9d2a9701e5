"""``lindifuse index --hashes``: a sha256 per chunk in an index member lindi ignores, checked
by mounts on fetch (local and remote): a chunk whose bytes changed is EIO, every other chunk is
served, nothing unverified is cached (read-ahead included)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess

import h5py
import numpy as np
import pytest
import zarr

from lindifuse.formats.hashes import MEMBER


def _make_h5(path) -> np.ndarray:
    data = np.arange(4000, dtype="<f8")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(400,))
    return data


def _chunk_range(h5path, index: int) -> tuple[int, int]:
    with h5py.File(h5path, "r") as f:
        info = f["x"].id.get_chunk_info(index)
        return info.byte_offset, info.size


def _index(run_cli, source, out, *extra) -> dict:
    r = run_cli("index", str(source), "-o", str(out), "--hashes", "-q", *extra)
    assert r.rc == 0, r.stderr
    return json.loads(out.read_text())


def test_index_hashes_are_the_chunks_sha256_and_lindi_ignores_them(run_cli, tmp_path, lindi_python):
    h5 = tmp_path / "f.h5"
    data = _make_h5(h5)
    rfs = _index(run_cli, h5, tmp_path / "f.lindi.json")
    hashes = rfs[MEMBER]
    assert hashes["algorithm"] == "sha256"
    raw = h5.read_bytes()
    chunks = {k: v for k, v in rfs["refs"].items() if k.startswith("x/") and k != "x/.zarray"}
    chunks = {k: v for k, v in chunks.items() if isinstance(v, list)}
    assert len(chunks) == 10 and set(hashes["chunks"]) == set(chunks)
    for key, (_, off, size) in chunks.items():
        assert hashes["chunks"][key] == hashlib.sha256(raw[off : off + size]).hexdigest()
    code = (
        "import lindi, sys; f = lindi.LindiH5pyFile.from_lindi_file(sys.argv[1]); "
        "print(float(f['x'][:].sum()))"
    )
    out = subprocess.run(
        [lindi_python, "-c", code, str(tmp_path / "f.lindi.json")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert float(out.stdout.strip()) == float(data.sum())


def test_local_mount_checks_each_chunk(run_cli, mount, tmp_path):
    h5 = tmp_path / "f.h5"
    data = _make_h5(h5)
    index = tmp_path / "f.lindi.json"
    _index(run_cli, h5, index)
    m = mount(index, None, "--cache-dir", tmp_path / "c")
    g = zarr.open_group(str(m.path), mode="r", zarr_format=2)
    assert np.array_equal(g["x"][:], data)
    assert json.loads(os.getxattr(m.path, "user.lindifuse.stats"))["fetch"]["chunks_verified"] == 10
    m.umount()
    off, size = _chunk_range(h5, 5)
    with open(h5, "r+b") as f:
        f.seek(off + size // 2)
        b = f.read(1)
        f.seek(off + size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    m2 = mount(index, None, "--cache-dir", tmp_path / "c")
    for i in range(10):
        p = m2.path / "x" / str(i)
        if i == 5:
            with pytest.raises(OSError) as e:
                p.read_bytes()
            assert e.value.errno == errno.EIO
        else:
            got = np.frombuffer(p.read_bytes(), dtype="<f8")
            assert np.array_equal(got, data[i * 400 : (i + 1) * 400])
    s = json.loads(os.getxattr(m2.path, "user.lindifuse.stats"))["fetch"]
    assert s["chunk_mismatches"] >= 1
    lines = [ln for ln in m2.log_text().splitlines() if "does not match its recorded sha256" in ln]
    assert len(lines) == 1 and "x/5" in lines[0]


def test_remote_mount_never_caches_a_bad_chunk(run_cli, mount, tmp_path, http_server):
    h5 = http_server.root / "f.h5"
    data = _make_h5(h5)
    url = http_server.url("f.h5")
    index = tmp_path / "f.lindi.json"
    _index(run_cli, url, index, "--no-cache")
    off, size = _chunk_range(h5, 3)
    raw = bytearray(h5.read_bytes())
    raw[off + 10] ^= 0xFF
    h5.write_bytes(bytes(raw))
    cache = tmp_path / "c"
    m = mount(index, None, "--cache-dir", cache)
    for i in range(10):  # sequential: read-ahead fetches the next chunks too
        p = m.path / "x" / str(i)
        if i == 3:
            with pytest.raises(OSError) as e:
                p.read_bytes()
            assert e.value.errno == errno.EIO
        else:
            assert np.array_equal(
                np.frombuffer(p.read_bytes(), "<f8"), data[i * 400 : (i + 1) * 400]
            )
    m.umount()
    m2 = mount(index, None, "--cache-dir", cache, "--offline")
    for i in range(10):
        p = m2.path / "x" / str(i)
        if i == 3:
            with pytest.raises(OSError):
                p.read_bytes()
        else:
            p.read_bytes()
    assert "does not match" not in m2.log_text()  # offline: simply not cached


@pytest.mark.parametrize("suffix", [".lindi.tar", ".lindi.d"])
def test_written_chunks_record_their_hash_and_check_finds_corruption(
    run_cli, mount, tmp_path, suffix
):
    """``create --hashes``; chunks written through a writable mount record their sha256;
    ``lindifuse check`` finds a member corrupted behind the archive's back by its content, and
    a mount serves every other chunk but fails that one with EIO."""
    arch = tmp_path / f"a{suffix}"
    r = run_cli("create", str(arch), "--hashes")
    assert r.rc == 0, r.stderr
    m = mount(arch, None, "--cache-dir", tmp_path / "c")
    data = np.arange(4000, dtype="<f8")
    g = zarr.open_group(str(m.path), mode="r+", zarr_format=2)
    g.create_array("x", shape=(4000,), chunks=(500,), dtype="<f8", compressors=None)
    g["x"][:] = data
    m.umount()
    r = run_cli("check", str(arch))
    assert r.rc == 0, r.stdout + r.stderr
    if suffix == ".lindi.tar":
        import tarfile

        with tarfile.open(arch) as t:
            rfs = json.load(t.extractfile("lindi.json"))
    else:
        rfs = json.loads((arch / "lindi.json").read_text())
    chunks = rfs[MEMBER]["chunks"]
    assert sorted(chunks) == sorted(f"x/{i}" for i in range(8))
    for i in range(8):
        want = hashlib.sha256(data[i * 500 : (i + 1) * 500].tobytes()).hexdigest()
        assert chunks[f"x/{i}"] == want
    # corrupt x/2's bytes where they are stored
    target, off, size = rfs["refs"]["x/2"]
    assert target.startswith("./")
    if suffix == ".lindi.tar":
        raw = bytearray(arch.read_bytes())
        needle = data[1000:1500].tobytes()
        at = raw.find(needle)
        assert at > 0
        raw[at + 100] ^= 0xFF
        arch.write_bytes(bytes(raw))
    else:
        p = arch / target[2:]
        raw = bytearray(p.read_bytes())
        raw[off + 100] ^= 0xFF
        p.write_bytes(bytes(raw))
    r = run_cli("check", str(arch))
    assert r.rc != 0
    assert "x/2: member" in (r.stdout + r.stderr) and "does not match its recorded sha256" in (
        r.stdout + r.stderr
    )
    m2 = mount(arch, None, "--read-only", "--cache-dir", tmp_path / "c2")
    for i in range(8):
        p = m2.path / "x" / str(i)
        if i == 2:
            with pytest.raises(OSError) as e:
                p.read_bytes()
            assert e.value.errno == errno.EIO
        else:
            assert np.array_equal(
                np.frombuffer(p.read_bytes(), "<f8"), data[i * 500 : (i + 1) * 500]
            )


def test_create_from_an_index_with_hashes(run_cli, tmp_path):
    h5 = tmp_path / "f.h5"
    _make_h5(h5)
    r = run_cli("index", str(h5), "-o", str(tmp_path / "f.lindi.json"), "-q")
    assert r.rc == 0, r.stderr
    arch = tmp_path / "b.lindi.tar"
    r = run_cli("create", str(arch), "--from", str(tmp_path / "f.lindi.json"), "--hashes")
    assert r.rc == 0, r.stderr
    import tarfile

    with tarfile.open(arch) as t:
        rfs = json.load(t.extractfile("lindi.json"))
    raw = h5.read_bytes()
    chunks = rfs[MEMBER]["chunks"]
    assert len(chunks) == 10
    for key, digest in chunks.items():
        _, off, size = rfs["refs"][key]
        assert hashlib.sha256(raw[off : off + size]).hexdigest() == digest
