"""Read-only mounts of local sources: lindi's own files (lindi_files) and files written with
plain Python (plain_lindi), each checked key by key against lindi's store bytes, read with
zarr-python 3 and with shell tools, read concurrently, and refused every write.

One mount per source (module-scoped, unmounted when the next source is needed); the
concurrency test runs first on each mount, before the kernel page cache holds anything.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import shutil
import stat
import tarfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from harness import LindiFiles, Mount, MountFactory, pid_alive, run
from plain_lindi import PLAIN_NAMES, Plain, make_plain, walk_files

LINDI_NAMES = LindiFiles.NAMES
ALL_NAMES = LINDI_NAMES + PLAIN_NAMES

# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory, lindi_python) -> Plain:
    """plain.lindi.{json,tar,d} plus lindi's view of them (store bytes, raw bytes, arrays)."""
    p = make_plain(tmp_path_factory.mktemp("plain"))
    ref = p.dir / "reference"
    ref.mkdir()
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import lindi_gen as g\n"
        "for src, out in zip(sys.argv[2::2], sys.argv[3::2]):\n"
        "    g.dump_store(src, out + '.store.json')\n"
        "    g.dump_store(src, out + '.raw.json', raw=True)\n"
        "    g.read_arrays(src, out + '.arrays.npz')\n"
    )
    args = [lindi_python, "-c", script, Path(__file__).parent]
    for name in PLAIN_NAMES:
        args += [p.sources[name], ref / name]
    res = run(args, timeout=300)
    assert res.rc == 0, res.describe()
    return p


def _load_b64(path: Path) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in json.loads(path.read_text()).items()}


@dataclass
class Src:
    name: str
    path: Path  # the source
    expected: dict[str, bytes]  # what the mount must serve
    arrays: dict[str, np.ndarray]  # lindi's reading of every dataset
    rfs: dict  # its lindi.json
    mount: Mount

    @property
    def mp(self) -> Path:
        return self.mount.path


@pytest.fixture(scope="module")
def _factory(tmp_path_factory):
    factory = MountFactory(tmp_path_factory)
    yield factory
    problems = factory.cleanup()
    assert not problems, problems


def _source_info(name: str, lindi_files: LindiFiles, plain: Plain):
    if name in PLAIN_NAMES:
        return plain.sources[name], plain.expected[name], plain.arrays, plain.refs[name]
    return (
        lindi_files.sources[name],
        lindi_files.expected(name),
        lindi_files.arrays(name),
        lindi_files.refs_json(name),
    )


@pytest.fixture(scope="module", params=ALL_NAMES)
def src(request, lindi_files, plain, _factory) -> Src:
    name = request.param
    path, expected, arrays, rfs = _source_info(name, lindi_files, plain)
    # plain .lindi.json files are always read-only; archives only with --read-only
    extra = () if name.endswith(".json") else ("--read-only",)
    m = _factory(path, None, *extra)
    yield Src(name, path, expected, arrays, rfs, m)
    m.umount()


# -- lindi's reference agrees with what plain_lindi says a mount must serve ----------------------


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_plain_expectations_match_lindi(plain, name):
    ref = plain.dir / "reference" / name
    store = _load_b64(Path(f"{ref}.store.json"))
    raw = _load_b64(Path(f"{ref}.raw.json"))
    exp = plain.expected[name]
    assert set(store) == set(exp)
    for key, data in exp.items():
        if key == "g/squares/0":  # zlib chunk: lindi pads it, a mount serves it as stored
            assert store[key] == data + b"\0" * (1200 - len(data))
            assert raw[key] == data
        else:
            assert store[key] == data, key
    with np.load(f"{ref}.arrays.npz") as z:
        assert set(z.files) == set(plain.arrays)
        for k in z.files:
            np.testing.assert_array_equal(z[k], plain.arrays[k], err_msg=k)


# -- reading -------------------------------------------------------------------------------------


def _read_pieces(path: Path, piece: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        out, off = [], 0
        while True:
            b = os.pread(fd, piece, off)
            if not b:
                return b"".join(out)
            out.append(b)
            off += len(b)
    finally:
        os.close(fd)


def test_concurrent_readers(src: Src):
    """8 threads read every key in their own order and piece size, on a fresh mount."""
    keys = sorted(src.expected)
    barrier = threading.Barrier(8)

    def reader(i: int) -> list[str]:
        order = keys[:]
        random.Random(i).shuffle(order)
        barrier.wait()
        bad = []
        for key in order:
            data = _read_pieces(src.mp / key, [4096, 1000, 65536, 1][i % 4])
            if data != src.expected[key]:
                bad.append(key)
        return bad

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(reader, range(8)))
    assert results == [[]] * 8


def test_every_key_has_lindis_bytes(src: Src):
    mismatched = [k for k, v in src.expected.items() if (src.mp / k).read_bytes() != v]
    assert not mismatched
    assert set(src.expected) == set(src.rfs["refs"])


def test_tree_is_the_key_namespace(src: Src):
    files, dirs = set(), set()
    for dirpath, dirnames, filenames in os.walk(src.mp):
        rel = os.path.relpath(dirpath, src.mp)
        for n in filenames:
            files.add(os.path.normpath(os.path.join(rel, n)))
        for n in dirnames:
            dirs.add(os.path.normpath(os.path.join(rel, n)))
    assert files == set(src.expected)
    prefixes = {k.rsplit("/", i)[0] for k in src.expected for i in range(1, k.count("/") + 1)}
    assert dirs == prefixes


def _source_mtime(src: Src) -> float:
    p = src.path / "lindi.json" if src.path.is_dir() else src.path
    return p.stat().st_mtime


def test_stat_modes_sizes_times(src: Src):
    mtime = _source_mtime(src)
    for key, data in src.expected.items():
        st = os.stat(src.mp / key)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o444, key
        assert st.st_size == len(data), key
        assert st.st_blocks == (len(data) + 511) // 512
        assert st.st_nlink == 1
        assert st.st_uid == os.getuid()
        assert abs(st.st_mtime - mtime) < 1e-6, key
    for dirpath, _, _ in os.walk(src.mp):
        st = os.stat(dirpath)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o555, dirpath
        assert abs(st.st_mtime - mtime) < 1e-6
    assert not os.access(src.mp / ".zgroup", os.W_OK)


def _decode_object_array(mp: Path, path: str, meta: dict) -> np.ndarray:
    """zarr-python 3 cannot read lindi's JSON-encoded object arrays: decode their one chunk
    read through the mount with numcodecs, as zarr 2 would."""
    import numcodecs

    assert meta["chunks"] == meta["shape"]
    buf = (mp / path / "0").read_bytes()
    if meta["compressor"]:
        buf = numcodecs.get_codec(meta["compressor"]).decode(buf)
    for f in reversed(meta["filters"] or []):
        buf = numcodecs.get_codec(f).decode(buf)
    return np.asarray(buf, dtype=object).reshape(meta["shape"])


def test_zarr_reads_the_arrays(src: Src):
    import zarr

    warnings.filterwarnings("ignore", module="zarr")
    g = zarr.open_group(str(src.mp), mode="r", zarr_format=2)
    assert dict(g.attrs) == json.loads(src.expected[".zattrs"])
    numeric = 0
    for path, ref in src.arrays.items():
        meta = json.loads(src.expected[f"{path}/.zarray"])
        if meta["dtype"] == "|O":
            got = _decode_object_array(src.mp, path, meta)
            if ref.dtype.names:
                assert [tuple(x) for x in got.tolist()] == [tuple(r) for r in ref.tolist()]
            else:
                assert [str(x) for x in got.ravel()] == [str(x) for x in ref.ravel()], path
            continue
        arr = g[path]
        got = arr[...]
        if ref.ndim == 0:  # lindi's _SCALAR datasets are stored with shape (1,)
            assert json.loads(src.expected[f"{path}/.zattrs"]).get("_SCALAR") is True
            got = got.reshape(())
        np.testing.assert_array_equal(got, ref, err_msg=path)
        numeric += got.dtype.kind in "iuf"
    assert numeric >= 4


def _tool(*args) -> str:
    res = run(args, timeout=60)
    assert res.rc == 0, res.describe()
    return res.stdout


def test_find_ls_du_stat(src: Src):
    mp = str(src.mp)
    found = _tool("find", mp, "-type", "f").split("\n")
    assert {os.path.relpath(p, mp) for p in found if p} == set(src.expected)
    # ls -laR: every file with its size
    seen, cur = {}, None
    for line in _tool("ls", "-laR", mp).splitlines():
        if line.endswith(":") and line.startswith("/"):
            cur = os.path.relpath(line[:-1], mp)
        elif line.startswith("-"):
            parts = line.split(None, 8)
            assert parts[0] == "-r--r--r--", line
            seen[os.path.normpath(os.path.join(cur, parts[8]))] = int(parts[4])
    assert seen == {k: len(v) for k, v in src.expected.items()}
    total = int(_tool("du", "-sb", mp).split()[0])
    assert total == sum(len(v) for v in src.expected.values())
    key = max(src.expected, key=lambda k: len(src.expected[k]))
    out = _tool("stat", "-c", "%s %a %h %F", f"{mp}/{key}").split()
    assert out[:3] == [str(len(src.expected[key])), "444", "1"]
    assert _tool("stat", "-c", "%a %F", mp).strip() == "555 directory"


def test_cp_r_copies_the_dump(src: Src, tmp_path):
    dest = tmp_path / "copy"
    _tool("cp", "-r", str(src.mp), str(dest))
    sub = sorted(k.split("/")[0] for k in src.expected if "/" in k)[0]
    shutil.copytree(src.mp / sub, tmp_path / "sub")
    try:
        assert walk_files(dest) == src.expected
        want = {k[len(sub) + 1 :]: v for k, v in src.expected.items() if k.startswith(sub + "/")}
        assert walk_files(tmp_path / "sub") == want
    finally:
        for dirpath, _, _ in os.walk(tmp_path):
            os.chmod(dirpath, 0o755)  # the copies kept 0555: let tmp cleanup remove them


def _resolved(src: Src, key: str):
    """The user.lindi.ref a mount must show for ``key``."""
    value = src.rfs["refs"][key]
    if not isinstance(value, list):
        return "inline"
    target, off, size = value
    for name, t in src.rfs.get("templates", {}).items():
        target = target.replace("{{" + name + "}}", t)
    if target.startswith("./"):
        member = target[2:]
        if src.path.is_dir():
            return [str(src.path / member), off, size]
        with tarfile.open(src.path) as tf:
            return [str(src.path), tf.getmember(member).offset_data + off, size]
    return [target, off, size]


def test_xattrs(src: Src):
    for key in src.expected:
        got = json.loads(os.getxattr(src.mp / key, "user.lindi.ref"))
        assert got == _resolved(src, key), key
        assert "user.lindi.ref" in os.listxattr(src.mp / key)
    pid = int(os.getxattr(src.mp, "user.lindifuse.pid"))
    assert pid == src.mount.pid and pid_alive(pid)
    assert "user.lindifuse.pid" in os.listxattr(src.mp)
    with pytest.raises(OSError) as e:
        os.getxattr(src.mp / ".zgroup", "user.nothing")
    assert e.value.errno == errno.ENODATA


def test_statfs(src: Src):
    v = os.statvfs(src.mp)
    assert v.f_files >= len(src.expected)
    assert v.f_namemax >= 255
    assert v.f_bsize > 0
    assert v.f_flag & os.ST_RDONLY
    _tool("stat", "-f", str(src.mp))
    _tool("df", str(src.mp))


def _erofs(fn, *args, **kw):
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno == errno.EROFS, (fn, args, e.value)


def test_every_write_is_erofs(src: Src):
    mp = src.mp
    f = mp / ".zattrs"
    sub = next(p for p in sorted(mp.iterdir()) if p.is_dir())
    before = walk_files(mp)
    _erofs(os.open, mp / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    _erofs(os.open, f, os.O_WRONLY)
    _erofs(os.open, f, os.O_RDWR)
    _erofs(os.open, f, os.O_WRONLY | os.O_APPEND)
    _erofs(os.unlink, f)
    _erofs(os.mkdir, mp / "newdir")
    _erofs(os.rmdir, sub)
    _erofs(os.rename, f, mp / "renamed")
    _erofs(os.rename, sub, mp / "moved")
    _erofs(os.truncate, f, 0)
    _erofs(os.chmod, f, 0o644)
    _erofs(os.utime, f, (0, 0))
    _erofs(os.setxattr, f, "user.x", b"1")
    _erofs(os.removexattr, f, "user.lindi.ref")
    _erofs(os.symlink, ".zattrs", mp / "link")
    _erofs(os.link, f, mp / "hard")
    assert walk_files(mp) == before == src.expected


# -- every reference form in one plain .lindi.json -------------------------------------------------


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """A kerchunk v1 file using every form lindifuse accepts (beyond what lindi reads)."""
    d = tmp_path_factory.mktemp("forms")
    blob = bytes(range(256)) * 4
    (d / "data.bin").write_bytes(blob)
    (d / "sub").mkdir()
    (d / "sub" / "other.bin").write_bytes(b"OTHER-FILE-CONTENT")
    obj = {"a": [1, 2.5, None, True], "s": "\u00b5", "n": {"k": {}}}
    refs = {
        ".zgroup": {"zarr_format": 2},
        "text/plain": "just text",
        "text/utf8": "\u00b5 \u2713 \U0001f600",
        "text/empty": "",
        "b64/data": "base64:" + base64.b64encode(b"\0\1\2binary\xff").decode(),
        "json/obj": obj,
        "json/list_attr": {"x": [[1, 2], [3]]},
        "range/abs": [str(d / "data.bin"), 10, 20],
        "range/rel": ["data.bin", 5, 7],
        "range/dot": ["./sub/other.bin", 6, 4],
        "range/file_url": [f"file://{d}/data.bin", 3, 3],
        "range/tpl": ["{{d}}", 100, 50],
        "range/tpl_spaces": ["{{ d }}", 1, 2],
        "range/zero": [str(d / "data.bin"), 0, 0],
        "whole/abs": [str(d / "sub" / "other.bin")],
        "whole/tpl": ["{{d}}"],
        "/leading/slash": "served without the slash",
        "conflict": "a key that is also a directory",
        "conflict/inner": "inner",
        "bad/../escape": "refused",
        "bad//empty": "refused",
        "./dot": "refused",
        "arr/.zarray": {
            "chunks": [4],
            "compressor": None,
            "dtype": "<u2",
            "fill_value": 0,
            "filters": None,
            "order": "C",
            "shape": [10],
            "zarr_format": 2,
        },
        "arr/2": [str(d / "data.bin"), 0, 3],  # short: padded to 8
        "arr/not.a.chunk": [str(d / "data.bin"), 0, 3],  # not a chunk name: as stored
        "arr/0.x": "abc",  # not a chunk name either
    }
    doc = {
        "version": 1,
        "templates": {"d": str(d / "data.bin")},
        "gen": [
            {
                "key": "gen/r/{{i}}",
                "url": "{{d}}",
                "offset": "{{i * 16}}",
                "length": "{{8 + i}}",
                "dimensions": {"i": {"start": 0, "stop": 6, "step": 2}},
            },
            {
                "key": "gen/w/{{name}}.{{j}}",
                "url": str(d / "sub" / "{{name}}.bin"),
                "dimensions": {"name": ["other"], "j": {"stop": 2}},
            },
        ],
        "refs": refs,
    }
    src = d / "forms.lindi.json"
    src.write_text(json.dumps(doc))
    expected = {
        ".zgroup": b'{"zarr_format": 2}',
        "text/plain": b"just text",
        "text/utf8": "\u00b5 \u2713 \U0001f600".encode(),
        "text/empty": b"",
        "b64/data": b"\0\1\2binary\xff",
        "json/obj": json.dumps(obj).encode(),
        "json/list_attr": json.dumps({"x": [[1, 2], [3]]}).encode(),
        "range/abs": blob[10:30],
        "range/rel": blob[5:12],
        "range/dot": b"OTHER-FILE-CONTENT"[6:10],
        "range/file_url": blob[3:6],
        "range/tpl": blob[100:150],
        "range/tpl_spaces": blob[1:3],
        "range/zero": b"",
        "whole/abs": b"OTHER-FILE-CONTENT",
        "whole/tpl": blob,
        "leading/slash": b"served without the slash",
        "conflict/inner": b"inner",
        "arr/.zarray": json.dumps(refs["arr/.zarray"]).encode(),
        "arr/2": blob[0:3] + b"\0" * 5,
        "arr/not.a.chunk": blob[0:3],
        "arr/0.x": b"abc",
        "gen/r/0": blob[0:8],
        "gen/r/2": blob[32:42],
        "gen/r/4": blob[64:76],
        "gen/w/other.0": b"OTHER-FILE-CONTENT",
        "gen/w/other.1": b"OTHER-FILE-CONTENT",
    }
    return d, src, expected


def test_every_reference_form(forms, mount):
    d, source, expected = forms
    m = mount(source)
    assert walk_files(m.path) == expected
    for key, data in expected.items():
        assert os.stat(m.path / key).st_size == len(data), key
    assert not (m.path / "bad").exists() and not (m.path / "dot").exists()
    assert os.path.isdir(m.path / "conflict")

    def ref(key):
        return json.loads(os.getxattr(m.path / key, "user.lindi.ref"))

    data = str(d / "data.bin")
    other = str(d / "sub" / "other.bin")
    assert ref("text/plain") == "inline"
    assert ref("json/obj") == "inline"
    assert ref("range/rel") == [data, 5, 7]
    assert ref("range/dot") == [other, 6, 4]
    assert ref("range/file_url") == [data, 3, 3]
    assert ref("range/tpl") == [data, 100, 50]
    assert ref("whole/abs") == [other, 0, 18]
    assert ref("whole/tpl") == [data, 0, 1024]
    assert ref("gen/r/4") == [data, 64, 12]
    assert ref("arr/2") == [data, 0, 3]  # stored size; the file shows the padded size
    log = m.log_text()
    for bad in ("bad/../escape", "bad//empty", "./dot"):
        assert bad in log, bad  # rejected keys are logged at mount time
    assert "'conflict'" in log
    # mode and read-only-ness of a plain .lindi.json mounted without --read-only
    assert stat.S_IMODE(os.stat(m.path / "text/plain").st_mode) == 0o444
    _erofs(os.open, m.path / "text/plain", os.O_WRONLY)
    _erofs(os.mkdir, m.path / "x")
    m.umount()


def test_read_at_offsets(forms, mount):
    """pread at arbitrary offsets and sizes, past the end, and mmap, on padded files too."""
    import mmap

    _, source, expected = forms
    m = mount(source)
    for key in ("range/tpl", "whole/tpl", "arr/2", "text/utf8"):
        data = expected[key]
        fd = os.open(m.path / key, os.O_RDONLY)
        try:
            for off in (0, 1, 2, 5, len(data) - 1, len(data), len(data) + 10):
                for size in (1, 3, 7, 4096):
                    assert os.pread(fd, size, off) == data[off : off + size], (key, off, size)
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
                assert mm[:] == data
        finally:
            os.close(fd)
    m.umount()
