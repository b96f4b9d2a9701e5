"""Unit tests of lindifuse.archive: local .lindi.tar / .lindi.d storage, no FUSE.

Interoperability with lindi 0.4.6 is tested by running small scripts with the lindi venv's
python (fixture ``lindi_python``, see conftest.py / harness.find_lindi_python). Crash safety is
tested twice: by SIGKILLing a committing child process at every one of its writes/fsyncs, and
by replaying a recorded commit under a power-loss model (everything up to the last fsync plus any
subset of the later writes reaches the disk).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lindifuse.archive import base as archive_base
from lindifuse.archive import check as archive_check
from lindifuse.archive import compact as archive_compact
from lindifuse.archive import create as archive_create
from lindifuse.archive import open as archive_open
from lindifuse.archive.directory import DirArchive
from lindifuse.archive.tar import TarArchive
from lindifuse.errors import FormatError, SourceError
from lindifuse.formats import tarfmt
from lindifuse.refs import Inline, decode_value

REPO = Path(__file__).resolve().parent.parent
HAVE_TAR = shutil.which("tar") is not None

# One script for everything lindi does in these tests (run with the lindi venv's python).
LINDI_SCRIPT = r"""
import base64, json, sys
import numpy as np
import lindi

def dump(path):
    f = lindi.LindiH5pyFile.from_lindi_file(path)
    store = f._zarr_store
    base = getattr(store, "_base_store", store)
    out = {k: base64.b64encode(base._get_helper(k)).decode() for k in sorted(base.rfs["refs"])}
    f.close()
    return out

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "dump":  # {path: {key: base64 of the raw referenced bytes}} for every path
    print(json.dumps({p: dump(p) for p in args}))
elif cmd == "write":  # r+ (creating the file when missing): a group with a blob-backed dataset
    path, group, start, n = args[0], args[1], int(args[2]), int(args[3])
    with lindi.LindiH5pyFile.from_lindi_file(path, mode="a") as f:
        g = f.create_group(group)
        g.attrs["who"] = "lindi"
        data = np.arange(n, dtype=np.float64) + start
        g.create_dataset("v", data=data, chunks=(250,), compression=None)
elif cmd == "crash-write":  # like write, but die inside lindi's index update (after lindi.json)
    from lindi.tar.lindi_tar import LindiTarFile
    import os
    LindiTarFile._update_index_in_file = lambda self: os._exit(3)
    path, group, start, n = args[0], args[1], int(args[2]), int(args[3])
    f = lindi.LindiH5pyFile.from_lindi_file(path, mode="r+")
    g = f.create_group(group)
    data = np.arange(n, dtype=np.float64) + start
    g.create_dataset("v", data=data, chunks=(250,), compression=None)
    if len(args) > 4:
        g.attrs["big"] = "x" * int(args[4])
    f.close()
elif cmd == "read":  # the values of one dataset
    with lindi.LindiH5pyFile.from_lindi_file(args[0]) as f:
        print(json.dumps(np.asarray(f[args[1]][()]).tolist()))
elif cmd == "create":  # lindi's own LindiTarFile.create
    from lindi.tar.lindi_tar import LindiTarFile
    LindiTarFile.create(args[0], rfs=json.loads(args[1]), dir_representation=args[0].endswith(".d"))
"""


@pytest.fixture
def lindi(lindi_python, tmp_path):
    """``lindi(cmd, *args) -> stdout``: run LINDI_SCRIPT with the lindi venv."""
    script = tmp_path / "lindi_script.py"
    script.write_text(LINDI_SCRIPT)

    def run(cmd: str, *args, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [lindi_python, str(script), cmd, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check:
            assert res.returncode == 0, f"lindi {cmd} failed:\n{res.stderr}"
        return res

    return run


def lindi_dump(lindi, *paths) -> dict[str, dict[str, bytes]]:
    out = json.loads(lindi("dump", *paths).stdout)
    return {p: {k: base64.b64decode(v) for k, v in d.items()} for p, d in out.items()}


def content(key: str, size: int) -> bytes:
    """Deterministic blob content for ``key``."""
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def our_view(a) -> dict[str, bytes]:
    """Every key's bytes as read through the archive (inline values decoded, ./ refs sliced)."""
    out = {}
    for key, value in a.rfs["refs"].items():
        ref = decode_value(key, value)
        if isinstance(ref, Inline):
            out[key] = ref.data
        else:
            assert ref.target.startswith("./")
            data = a.read_member(ref.target[2:])
            out[key] = data[ref.offset : ref.offset + ref.size]
    return out


def add_blobs(a, spec: dict[str, int]) -> None:
    for key, size in spec.items():
        m = a.append_blob("blobs/" + key, content(key, size))
        a.rfs["refs"][key] = ["./" + m.name, 0, m.s]


def tar_names(path) -> list[str]:
    out = subprocess.run(["tar", "tf", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def new_tar(tmp_path, name="a.lindi.tar", rfs=None) -> Path:
    p = tmp_path / name
    archive_create.create(str(p), rfs)
    return p


# -- create ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rfs",
    [None, {"refs": {".zgroup": {"zarr_format": 2}, "a": "x" * 5000}, "version": 1}],
)
def test_create_is_byte_identical_to_lindi(tmp_path, lindi, rfs):
    ours = new_tar(tmp_path, "ours.lindi.tar", rfs)
    theirs = tmp_path / "theirs.lindi.tar"
    lindi("create", theirs, json.dumps(rfs or archive_base.EMPTY_RFS))
    assert ours.read_bytes() == theirs.read_bytes()
    ours_d, theirs_d = tmp_path / "ours.lindi.d", tmp_path / "theirs.lindi.d"
    archive_create.create(str(ours_d), rfs)
    lindi("create", theirs_d, json.dumps(rfs or archive_base.EMPTY_RFS))
    assert (ours_d / "lindi.json").read_bytes() == (theirs_d / "lindi.json").read_bytes()


def test_create_and_open(tmp_path):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p)) as a:
        assert a.rfs == {"refs": {".zgroup": {"zarr_format": 2}}}
        assert sorted(a.members) == [".tar_entry.json", ".tar_index.json", "lindi.json"]
        assert a.end == p.stat().st_size - 1024
        assert a.recovered == []
    assert archive_check.check(str(p)) == []
    with pytest.raises(FileExistsError):
        archive_create.create(str(p))
    if HAVE_TAR:
        assert tar_names(p) == [".tar_entry.json", ".tar_index.json", "lindi.json"]


# -- append / commit / reopen ----------------------------------------------------------


def test_append_commit_reopen(tmp_path):
    p = new_tar(tmp_path)
    before = p.read_bytes()
    with TarArchive.open(str(p), writable=True) as a:
        assert a.recovered == []
        assert p.read_bytes() == before  # a clean writable open writes nothing
        add_blobs(a, {"x/0": 3000, "x/1": 512, "x/2": 0})
        m = a.append_blob("blobs/x/0", b"again" * 300)
        assert m.name == "blobs/x/0.v2"
        assert a.append_blob("blobs/x/0", b"3" * 2000).name == "blobs/x/0.v3"
        a.rfs["refs"]["x/0"] = ["./" + m.name, 5, 100]
        a.rfs["refs"]["x/.zattrs"] = {"a": 1}
        expected = our_view(a)
        a.commit(a.rfs)
        assert our_view(a) == expected
    with TarArchive.open(str(p), writable=True) as a:
        assert a.recovered == []
        assert our_view(a) == expected
        assert a.read_member("blobs/x/1") == content("x/1", 512)
    assert archive_check.check(str(p)) == []


def test_blob_from_file_and_long_names(tmp_path):
    p = new_tar(tmp_path)
    src = tmp_path / "staged"
    src.write_bytes(content("staged", 3 * 2**20 + 7))
    long_key = "acq/" + "y" * 150 + "/0.0"  # needs a PAX header
    split_key = "/".join(["abcdefghij" * 3] * 6) + "/0"  # needs the ustar prefix
    with TarArchive.open(str(p), writable=True) as a:
        m = a.append_blob("blobs/big/0", str(src))
        assert a.read_member(m.name) == src.read_bytes()
        a.rfs["refs"]["big/0"] = ["./" + m.name, 0, m.s]
        add_blobs(a, {long_key: 1500, split_key: 1500})
        assert a.members["blobs/" + long_key].d == a.members["blobs/" + long_key].o + 1536
        a.commit(a.rfs)
        expected = our_view(a)
    with TarArchive.open(str(p)) as a:
        assert our_view(a) == expected
    assert archive_check.check(str(p)) == []
    if HAVE_TAR:
        x = tmp_path / "x"
        x.mkdir()
        subprocess.run(["tar", "xf", str(p), "-C", str(x)], check=True)
        assert (x / "blobs" / long_key).read_bytes() == content(long_key, 1500)
        assert (x / "blobs" / split_key).read_bytes() == content(split_key, 1500)


def test_reserved_and_bad_names(tmp_path):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        for bad in ("lindi.json", ".tar_index.json", ".trash/x", "a//b", "../x", "", "a/./b"):
            with pytest.raises(ValueError):
                a.append_blob(bad, b"x")
    with TarArchive.open(str(p)) as a, pytest.raises(PermissionError):
        a.append_blob("blobs/x", b"x")


def test_commits_reuse_spares_and_do_not_grow_the_file(tmp_path):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        for i in range(3):
            a.rfs["refs"][f"k{i}"] = f"v{i}"
            a.commit(a.rfs)
        size = p.stat().st_size
        for i in range(100):
            a.rfs["refs"][f"k{i}"] = f"v{i}"
            a.commit(a.rfs, durable=False)
        assert p.stat().st_size == size
        assert len(a.spares) == 2
    assert archive_check.check(str(p)) == []
    with TarArchive.open(str(p)) as a:
        assert a.rfs["refs"]["k99"] == "v99"


def test_commit_cost_does_not_depend_on_archive_size(tmp_path, monkeypatch):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        add_blobs(a, {f"big/{i}": 4 * 2**20 for i in range(5)})
        a.commit(a.rfs)
        written = []
        real = os.pwrite

        def counting(fd, data, off):
            written.append(len(data))
            return real(fd, data, off)

        monkeypatch.setattr(os, "pwrite", counting)
        a.rfs["refs"]["small"] = "x"
        a.commit(a.rfs)
        lj, ix = a.members["lindi.json"], a.members[".tar_index.json"]
        assert sum(written) <= lj.s + ix.s + 5 * 512
        assert sum(written) < 64 * 1024


def test_growing_lindi_json_appends_a_new_padded_member(tmp_path, lindi):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        a.commit(a.rfs)
        a.rfs["refs"]["big/.zattrs"] = {"text": "é" * 6000}  # escaped: 36 KB of JSON
        a.commit(a.rfs)
        lj = a.members["lindi.json"]
        assert lj.s == tarfmt.grown_size(len(tarfmt.dump_lindi_json(a.rfs)))
        assert lj.s >= 4 * len(tarfmt.dump_lindi_json(a.rfs))
        # many blobs: the index outgrows 8 KiB as well
        add_blobs(a, {f"c/{i}": 1000 for i in range(150)})
        a.commit(a.rfs)
        assert a.members[".tar_index.json"].s > 8192
        expected = our_view(a)
    assert archive_check.check(str(p)) == []
    assert lindi_dump(lindi, p)[str(p)] == expected


def test_lock_and_read_only(tmp_path):
    p = new_tar(tmp_path)
    a = TarArchive.open(str(p), writable=True)
    try:
        with pytest.raises(SourceError, match="already open for writing"):
            TarArchive.open(str(p), writable=True)
        with TarArchive.open(str(p)) as r:  # readers are fine
            assert r.rfs == a.rfs
    finally:
        a.close()
    TarArchive.open(str(p), writable=True).close()


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:700], "truncated"),
        (lambda b: b'{"refs": {}}' + b" " * 2000, "not a tar"),
        (lambda b: b[:512] + b"-" * 1024 + b[1536:], "not valid JSON"),
        (lambda b: b[: len(b) // 2], "past the end"),
    ],
)
def test_open_errors_are_one_line(tmp_path, mutate, match):
    p = new_tar(tmp_path)
    p.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(FormatError, match=match) as e:
        TarArchive.open(str(p))
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(SourceError):
        TarArchive.open(str(tmp_path / "nope.lindi.tar"))


# -- lindi interoperability --------------------------------------------------------------


def test_lindi_written_archive_round_trip(tmp_path, lindi):
    p = tmp_path / "w.lindi.tar"
    lindi("write", p, "g1", 0, 1000)  # lindi creates the file and writes 4 blobs
    theirs = lindi_dump(lindi, p)[str(p)]
    with TarArchive.open(str(p), writable=True) as a:
        assert a.recovered == []
        assert our_view(a) == theirs
        add_blobs(a, {"ours/" + "q" * 120 + "/0": 1200})
        m = a.append_blob("blobs/g1/v/0", content("v2", 2000))  # taken by lindi's blob
        a.rfs["refs"]["ours/v2"] = ["./" + m.name, 0, m.s]
        a.rfs["refs"]["ours/.zattrs"] = {"by": "lindifuse"}
        a.rfs["refs"]["ours/small"] = "base64:AAEC"
        a.commit(a.rfs)
        mine = our_view(a)
        assert a.members["blobs/g1/v/0.v2"].s == 2000
    assert lindi_dump(lindi, p)[str(p)] == mine
    # lindi extends what we wrote (r+), and we read and extend it again
    lindi("write", p, "g2", 5, 600)
    assert archive_check.check(str(p)) == []
    after_lindi = lindi_dump(lindi, p)[str(p)]
    with TarArchive.open(str(p), writable=True) as a:
        assert a.recovered == []
        assert our_view(a) == after_lindi
        a.rfs["refs"]["last"] = "x"
        a.commit(a.rfs)
    assert archive_check.check(str(p)) == []
    assert json.loads(lindi("read", p, "g2/v").stdout) == [5.0 + i for i in range(600)]
    assert json.loads(lindi("read", p, "g1/v").stdout)[:3] == [0.0, 1.0, 2.0]
    if HAVE_TAR:  # tar xf gives a .lindi.d that lindi and we read the same way
        d = tmp_path / "x.lindi.d"
        d.mkdir()
        subprocess.run(["tar", "xf", str(p), "-C", str(d)], check=True)
        with DirArchive.open(str(d)) as da, TarArchive.open(str(p)) as ta:
            assert our_view(da) == our_view(ta)
            expected = our_view(ta)
        assert lindi_dump(lindi, d)[str(d)] == expected


def test_dir_archive_with_lindi(tmp_path, lindi):
    d = tmp_path / "w.lindi.d"
    lindi("write", d, "g1", 0, 1000)
    with DirArchive.open(str(d), writable=True) as a:
        assert our_view(a) == lindi_dump(lindi, d)[str(d)]
        src = tmp_path / "staged"
        src.write_bytes(content("s", 5000))
        m = a.append_blob("blobs/g1/v/0", str(src))
        assert m.name == "blobs/g1/v/0.v2" and m.s == 5000
        a.rfs["refs"]["s/0"] = ["./" + m.name, 0, m.s]
        add_blobs(a, {"new/deep/0": 3000})
        a.commit(a.rfs)
        expected = our_view(a)
    assert not (d / archive_base.TMP_DIR).exists() or not os.listdir(d / archive_base.TMP_DIR)
    assert archive_check.check(str(d)) == []
    assert lindi_dump(lindi, d)[str(d)] == expected
    lindi("write", d, "g2", 1, 500)
    with DirArchive.open(str(d), writable=True) as a:
        assert "g2/v/0" in a.rfs["refs"] and our_view(a)["s/0"] == content("s", 5000)


def test_dir_check_and_repair(tmp_path):
    d = tmp_path / "a.lindi.d"
    archive_create.create(str(d))
    with DirArchive.open(str(d), writable=True) as a:
        add_blobs(a, {"x/0": 2000})
        a.commit(a.rfs)
        a.append_blob("blobs/x/1", b"uncommitted")
        with pytest.raises(SourceError):
            DirArchive.open(str(d), writable=True)
    (d / archive_base.TMP_DIR).mkdir(exist_ok=True)
    (d / archive_base.TMP_DIR / "partial").write_bytes(b"x")
    problems = archive_check.check(str(d))
    # the uncommitted blob is not a problem (like a tar's unreferenced members), the temp file is
    assert len(problems) == 1 and "unfinished" in problems[0], problems
    fixes = archive_check.repair(str(d))
    assert len(fixes) == 2
    assert archive_check.check(str(d)) == []
    with DirArchive.open(str(d)) as a:
        assert our_view(a)["x/0"] == content("x/0", 2000)
        a.rfs["refs"]["x/0"][2] = 5000
        assert a.member("x/0") is None
    lj = json.loads((d / "lindi.json").read_text())
    lj["refs"]["x/0"][2] = 5000
    (d / "lindi.json").write_text(json.dumps(lj))
    assert any("runs past" in p for p in archive_check.check(str(d)))


# -- recovery -------------------------------------------------------------------------


def test_uncommitted_tail_is_discarded(tmp_path):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        add_blobs(a, {"a/0": 3000})
        a.commit(a.rfs)
        committed = p.read_bytes()
        state = our_view(a)
        add_blobs(a, {"a/1": 3000, "a/2": 5000})  # never committed
    with open(p, "ab") as f:  # plus a torn header after the trailer
        f.write(tarfmt.encode_header("torn", 99999)[:300])
    dirty = p.read_bytes()
    with TarArchive.open(str(p)) as r:  # read-only: reads the committed state, changes nothing
        assert our_view(r) == state
        assert r.recovered
    assert p.read_bytes() == dirty
    assert archive_check.check(str(p)) != []
    with TarArchive.open(str(p), writable=True) as a:
        assert any("discarded 2 uncommitted" in line for line in a.recovered)
        assert our_view(a) == state
    assert p.read_bytes() == committed
    assert archive_check.check(str(p)) == []


@pytest.mark.skipif(not HAVE_TAR, reason="GNU tar not installed")
def test_tar_appended_member_is_discarded(tmp_path):
    p = new_tar(tmp_path)
    (tmp_path / "extra").write_bytes(b"hello")
    subprocess.run(["tar", "rf", str(p), "-C", str(tmp_path), "extra"], check=True)
    assert any("unindexed member 'extra'" in x for x in archive_check.check(str(p)))
    fixes = archive_check.repair(str(p))
    assert fixes and archive_check.check(str(p)) == []
    assert "extra" not in tar_names(p)


@pytest.mark.parametrize("big_attr", [0, 40000], ids=["json-in-place", "json-moved"])
def test_recovers_from_lindi_crash_before_its_index_update(tmp_path, lindi, big_attr):
    p = tmp_path / "c.lindi.tar"
    lindi("write", p, "g1", 0, 500)
    res = lindi("crash-write", p, "g2", 7, 1000, big_attr, check=False)
    assert res.returncode == 3, res.stderr
    with TarArchive.open(str(p), writable=True) as a:
        assert any("adopted" in line for line in a.recovered)
        assert "g2/v/3" in a.rfs["refs"]
    assert archive_check.check(str(p)) == []
    assert json.loads(lindi("read", p, "g2/v").stdout) == [7.0 + i for i in range(1000)]
    assert json.loads(lindi("read", p, "g1/v").stdout)[-1] == 499.0


def test_header_names_fixed_on_open_and_by_repair(tmp_path):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        add_blobs(a, {"x/0": 1000})
        a.commit(a.rfs)
        lj, blob = a.members["lindi.json"], a.members["blobs/x/0"]
    with open(p, "r+b") as f:  # as if the commit died before renaming headers
        for m, name in ((lj, ".trash/lindi.json.aaaaaaaaaa"), (blob, "blobs/wrong")):
            f.seek(m.o)
            h = f.read(512)
            f.seek(m.o)
            f.write(tarfmt.rename_header(h, name))
    problems = archive_check.check(str(p))
    assert len(problems) == 2 and all("but the index says" in x for x in problems)
    fixes = archive_check.repair(str(p))
    assert len(fixes) == 2
    assert archive_check.check(str(p)) == []


def test_repair_rolls_back_to_previous_state_when_lindi_json_is_lost(tmp_path):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        a.rfs["refs"]["k"] = "first"
        a.commit(a.rfs)
        a.rfs["refs"]["k"] = "second"
        a.commit(a.rfs)
        lj = a.members["lindi.json"]
    with open(p, "r+b") as f:
        f.seek(lj.d)
        f.write(b"-" * lj.s)
    assert archive_check.check(str(p))
    with pytest.raises(FormatError):
        TarArchive.open(str(p), writable=True)
    fixes = archive_check.repair(str(p))
    assert any("re-pointed" in x for x in fixes)
    assert archive_check.check(str(p)) == []
    with TarArchive.open(str(p)) as a:
        assert a.rfs["refs"]["k"] == "first"


def test_repair_rescues_a_destroyed_entry(tmp_path):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        add_blobs(a, {"x/0": 1500})
        a.commit(a.rfs)
        state = our_view(a)
    with open(p, "r+b") as f:
        f.seek(512)
        f.write(b"\0" * 1024)
    fixes = archive_check.repair(str(p))
    assert fixes and archive_check.check(str(p)) == []
    with TarArchive.open(str(p)) as a:
        assert our_view(a) == state


def test_check_reports_out_of_bounds_and_missing_members(tmp_path):
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        add_blobs(a, {"x/0": 1000})
        a.rfs["refs"]["x/1"] = ["./blobs/x/0", 500, 501]
        a.rfs["refs"]["x/2"] = ["./blobs/nope", 0, 1]
        a.commit(a.rfs)
    problems = archive_check.check(str(p))
    assert len(problems) == 2
    assert any("runs past" in x for x in problems) and any("nope" in x for x in problems)


# -- compact --------------------------------------------------------------------------


def _busy_archive(tmp_path) -> Path:
    p = new_tar(tmp_path)
    with TarArchive.open(str(p), writable=True) as a:
        for i in range(5):
            add_blobs(a, {"x/0": 3000 + i, f"y/{i}": 1000})
            a.rfs["refs"]["pad/.zattrs"] = {"p": "z" * (3000 * i)}
            a.commit(a.rfs)
        add_blobs(a, {"uncommitted": 5000})
    return p


@pytest.mark.parametrize("dst_name", ["c.lindi.tar", "c.lindi.d"])
def test_compact(tmp_path, lindi, dst_name):
    p = _busy_archive(tmp_path)
    with TarArchive.open(str(p)) as a:
        state = our_view(a)
        rfs = a.rfs
    dst = tmp_path / dst_name
    dropped = archive_compact.compact(str(p), str(dst))
    assert "blobs/x/0" in dropped and "blobs/x/0.v5" not in dropped
    assert archive_check.check(str(dst)) == []
    with archive_open.open_archive(str(dst)) as c:
        assert c.rfs == rfs and our_view(c) == state
    if dst_name.endswith(".tar"):
        assert dst.stat().st_size < p.stat().st_size
        if HAVE_TAR:
            assert not [n for n in tar_names(dst) if n.startswith(".trash/")]
        back = tmp_path / "back.lindi.d"
    else:
        back = tmp_path / "back.lindi.tar"
    archive_compact.compact(str(dst), str(back))  # and back to the other kind
    with archive_open.open_archive(str(back)) as c:
        assert our_view(c) == state
    assert lindi_dump(lindi, dst, back) == {str(dst): state, str(back): state}


# -- crash safety ---------------------------------------------------------------------

CHILD = r"""
import hashlib, json, os, signal, sys
from lindifuse.archive import base as archive_base
from lindifuse.archive import check as archive_check
from lindifuse.archive import compact as archive_compact
from lindifuse.archive import create as archive_create
from lindifuse.archive import open as archive_open

path, kill_at, spec = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])

def content(key, size):
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]

a = archive_open.open_archive(path, writable=True)
calls = 0

def wrap(f):
    def g(*args, **kw):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return f(*args, **kw)
    return g

for name in ("pwrite", "write", "fsync", "ftruncate", "copy_file_range", "rename", "replace"):
    setattr(os, name, wrap(getattr(os, name)))
for key, size in spec["blobs"].items():
    m = a.append_blob("blobs/" + key, content(key, size))
    a.rfs["refs"][key] = ["./" + m.name, 0, m.s]
a.rfs["refs"].update(spec["inline"])
a.commit(a.rfs)
print(calls)
"""

SCENARIOS = {
    # first commit on a fresh (lindi-layout) archive: no spares, lindi.json and index appended
    "fresh": (0, {"blobs": {"a/0": 3000, "a/1": 1000}, "inline": {"a/.zattrs": {"n": 1}}}),
    # spares exist and the new JSON fits them
    "spares": (3, {"blobs": {"b/0": 2000}, "inline": {"b/.zattrs": {"n": 2}}}),
    # spares exist but lindi.json outgrows them
    "growth": (3, {"blobs": {"c/0": 1500}, "inline": {"c/.zattrs": {"big": "w" * 40000}}}),
}


def _base(tmp_path, commits: int) -> Path:
    p = new_tar(tmp_path, "base.lindi.tar")
    with TarArchive.open(str(p), writable=True) as a:
        for i in range(commits):
            add_blobs(a, {f"old/{i}": 1200})
            a.commit(a.rfs)
    return p


def _expected_new(old: dict[str, bytes], spec) -> dict[str, bytes]:
    new = dict(old)
    for key, size in spec["blobs"].items():
        new[key] = content(key, size)
    for key, value in spec["inline"].items():
        new[key] = decode_value(key, value).data
    return new


def _verify_crashed(path: Path, old: dict[str, bytes], new: dict[str, bytes]) -> str:
    """The crashed archive reads as old or new (read-only, then after a writable open)."""
    with TarArchive.open(str(path)) as r:
        seen = our_view(r)
    assert seen in (old, new)
    with TarArchive.open(str(path), writable=True) as a:
        assert our_view(a) == seen
    assert archive_check.check(str(path)) == [], path
    if HAVE_TAR:
        tar_names(path)
    return "new" if seen == new else "old"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sigkill_at_every_write(tmp_path, lindi, scenario):
    commits, spec = SCENARIOS[scenario]
    base = _base(tmp_path, commits)
    with TarArchive.open(str(base)) as a:
        old = our_view(a)
    new = _expected_new(old, spec)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outcomes: dict[int, str] = {}
    crashed: list[Path] = []
    for n in itertools.count(1):
        p = tmp_path / f"crash{n}.lindi.tar"
        shutil.copyfile(base, p)
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(p), str(n), json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode == 0:
            total = int(res.stdout)
            assert n == total + 1
            assert _verify_crashed(p, old, new) == "new"
            break
        assert res.returncode == -signal.SIGKILL, res.stderr
        outcomes[n] = _verify_crashed(p, old, new)
        crashed.append(p)
        assert n < 200
    assert set(outcomes.values()) == {"old", "new"}  # the switch happened at one point
    switch = min(k for k, v in outcomes.items() if v == "new")
    assert all(v == ("new" if k >= switch else "old") for k, v in outcomes.items())
    # lindi reads every crashed-and-reopened archive
    sample = crashed[:: max(1, len(crashed) // 6)] + [crashed[switch - 1]]
    dumps = lindi_dump(lindi, *sample)
    for p in sample:
        assert dumps[str(p)] in (old, new)
    # and lindi can extend one of them
    lindi("write", crashed[-1], "after", 0, 300)
    assert archive_check.check(str(crashed[-1])) == []


def test_sigkill_dir_archive(tmp_path):
    base = tmp_path / "base.lindi.d"
    archive_create.create(str(base))
    with DirArchive.open(str(base), writable=True) as a:
        add_blobs(a, {"old/0": 1500})
        a.commit(a.rfs)
        old = our_view(a)
    spec = {"blobs": {"n/0": 2000, "n/1": 3000}, "inline": {"n/.zattrs": {"a": 1}}}
    new = _expected_new(old, spec)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outcomes = []
    for n in itertools.count(1):
        p = tmp_path / f"crash{n}.lindi.d"
        shutil.copytree(base, p)
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(p), str(n), json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        with DirArchive.open(str(p)) as r:
            seen = our_view(r)
        assert seen in (old, new)
        outcomes.append("new" if seen == new else "old")
        archive_check.repair(str(p))
        assert archive_check.check(str(p)) == []
        if res.returncode == 0:
            break
        assert res.returncode == -signal.SIGKILL, res.stderr
        assert n < 100
    assert outcomes[-1] == "new" and outcomes[0] == "old"
    assert outcomes == sorted(outcomes, key=lambda x: x == "new")


class _Recorder:
    """Record the file-changing syscalls of one commit (and let them happen)."""

    def __init__(self, monkeypatch):
        self.ops: list[tuple] = []
        real_pwrite, real_fsync, real_trunc = os.pwrite, os.fsync, os.ftruncate

        def pwrite(fd, data, off):
            self.ops.append(("w", off, bytes(data)))
            return real_pwrite(fd, data, off)

        def fsync(fd):
            self.ops.append(("s",))
            return real_fsync(fd)

        def ftruncate(fd, n):
            self.ops.append(("t", n))
            return real_trunc(fd, n)

        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "ftruncate", ftruncate)

    @staticmethod
    def apply(image: bytearray, op: tuple) -> None:
        if op[0] == "w":
            _, off, data = op
            if len(image) < off + len(data):
                image.extend(b"\0" * (off + len(data) - len(image)))
            image[off : off + len(data)] = data
        elif op[0] == "t":
            del image[op[1] :]
            if len(image) < op[1]:
                image.extend(b"\0" * (op[1] - len(image)))

    def images(self, initial: bytes, rng: random.Random):
        """Disk images after a power loss at each point: synced ops + any subset of the rest."""
        for k in range(len(self.ops) + 1):
            done = self.ops[:k]
            last_sync = max((i for i, op in enumerate(done) if op[0] == "s"), default=-1)
            durable, volatile = done[: last_sync + 1], [op for op in done[last_sync + 1 :]]
            volatile = [op for op in volatile if op[0] != "s"]
            if len(volatile) <= 6:
                subsets = itertools.product([False, True], repeat=len(volatile))
            else:
                subsets = [[rng.random() < 0.5 for _ in volatile] for _ in range(40)]
                subsets += [[True] * len(volatile), [False] * len(volatile)]
            base = bytearray(initial)
            for op in durable:
                self.apply(base, op)
            for mask in subsets:
                image = bytearray(base)
                for op, keep in zip(volatile, mask, strict=True):
                    if keep:
                        self.apply(image, op)
                yield k, bytes(image)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_power_loss_at_every_point(tmp_path, monkeypatch, scenario):
    commits, spec = SCENARIOS[scenario]
    base = _base(tmp_path, commits)
    initial = base.read_bytes()
    with TarArchive.open(str(base), writable=True) as a:
        old = our_view(a)
        rec = _Recorder(monkeypatch)
        for key, size in spec["blobs"].items():
            m = a.append_blob("blobs/" + key, content(key, size))
            a.rfs["refs"][key] = ["./" + m.name, 0, m.s]
        a.rfs["refs"].update(spec["inline"])
        a.commit(a.rfs, durable=True)
        new = our_view(a)
    monkeypatch.undo()
    assert new == _expected_new(old, spec)
    ops = rec.ops
    entry_writes = [i for i, op in enumerate(ops) if op[0] == "w" and op[1] == 512]
    assert len(entry_writes) == 1 and len(ops[entry_writes[0]][2]) == 512  # one-sector commit
    assert ops[entry_writes[0] - 1] == ("s",) and ops[entry_writes[0] + 1] == ("s",)
    rng = random.Random(7)
    p = tmp_path / "img.lindi.tar"
    seen = set()
    for k, image in rec.images(initial, rng):
        p.write_bytes(image)
        outcome = _verify_crashed(p, old, new)
        seen.add(outcome)
        if k > entry_writes[0] + 1:  # fsynced after the commit point: must be new
            assert outcome == "new"
    assert seen == {"old", "new"}
