"""Failures. A bad SOURCE (or mount point): non-zero exit, exactly one line on stderr naming
the file and the problem, no traceback, nothing left mounted, no daemon left running.
A bad reference in a good file: EIO on that file only, a log line naming the key and the
cause, every other file keeps working."""

from __future__ import annotations

import errno
import json
import os
import socket
import tarfile
from pathlib import Path

import pytest
from harness import fuse_mounts_under, pid_alive
from plain_lindi import write_dir, write_json, write_tar

GOOD_REFS = {
    ".zgroup": {"zarr_format": 2},
    "a/.zgroup": {"zarr_format": 2},
    "a/text": "hello",
}


def _doc(refs=None, **top):
    return {"version": 1, "refs": dict(GOOD_REFS if refs is None else refs), **top}


def _daemons_for(mp: Path) -> list[int]:
    """PIDs of lindifuse processes whose command line names ``mp``."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"lindifuse" in b" ".join(cmd) and str(mp).encode() in cmd and pid_alive(int(d)):
            pids.append(int(d))
    return pids


def assert_refused(mount, source, *, names, problem, mountpoint=None, extra=("--read-only",)):
    """Mount ``source``; expect failure with one stderr line naming ``names`` and ``problem``
    (case-insensitive; any of them when ``problem`` is a tuple)."""
    m = mount(source, mountpoint, *extra, check=False)
    rc, out, err = m.result
    assert rc != 0, m.describe()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, m.describe()
    line = lines[0]
    assert line.startswith("lindifuse: "), line
    assert "Traceback" not in err and "Traceback" not in out, m.describe()
    for n in [names] if isinstance(names, str) else names:
        assert n in line, (n, line)
    problems = (problem,) if isinstance(problem, str) else problem
    assert any(p.lower() in line.lower() for p in problems), (problem, line)
    assert not m.is_mounted() and not fuse_mounts_under(m.path), m.describe()
    assert _daemons_for(m.path) == [], m.describe()
    assert "Traceback" not in m.log_text()
    return line


# -- bad JSON / not LINDI -----------------------------------------------------------------------


def test_invalid_json(mount, tmp_path):
    p = tmp_path / "broken.lindi.json"
    p.write_text('{"refs": {".zgroup": {"zarr_format": 2},}}')
    line = assert_refused(mount, p, names="broken.lindi.json", problem="invalid JSON", extra=())
    assert "line 1 column" in line


def test_invalid_json_in_a_directory_and_in_a_tar(mount, tmp_path):
    d = tmp_path / "broken.lindi.d"
    d.mkdir()
    (d / "lindi.json").write_text("{nope")
    assert_refused(mount, d, names="broken.lindi.d", problem="invalid JSON")
    t = tmp_path / "broken.lindi.tar"
    write_tar(t, _doc())
    # overwrite lindi.json's text inside the tar, keeping every offset
    with tarfile.open(t) as tf:
        m = tf.getmember("lindi.json")
    with open(t, "r+b") as f:
        f.seek(m.offset_data)
        f.write(b"{{{{")
    assert_refused(mount, t, names=["broken.lindi.tar", "lindi.json"], problem="invalid JSON")


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty.lindi.json", b"", "empty file"),
        ("garbage.lindi.json", bytes(range(256)) * 8, "not a LINDI file"),
        ("array.lindi.json", b"[1, 2, 3]", "not a LINDI file"),
        ("norefs.lindi.json", b'{"version": 1, "templates": {}}', "no 'refs'"),
        ("version.lindi.json", b'{"version": 3, "refs": {}}', "version 3"),
        ("latin1.lindi.json", b'{"refs": {"a": "\xe9"}}', "UTF-8"),
        ("garbage.lindi.tar", bytes(range(256)) * 8, "not a tar archive"),
    ],
)
def test_not_a_lindi_file(mount, tmp_path, name, content, problem):
    p = tmp_path / name
    p.write_bytes(content)
    assert_refused(mount, p, names=name, problem=problem)


def test_plain_tar_is_not_a_lindi_tar(mount, tmp_path):
    (tmp_path / "x.txt").write_text("x")
    t = tmp_path / "plain.tar"
    with tarfile.open(t, "w", format=tarfile.USTAR_FORMAT) as tf:
        tf.add(tmp_path / "x.txt", "x.txt")
    assert_refused(mount, t, names="plain.tar", problem="not a .lindi.tar")


@pytest.mark.parametrize(
    "name, cut, problem",
    [
        ("truncated.h5", "half", ("truncated", "damaged")),
        ("corrupt.nwb", "scribble", ("damaged", "HDF5")),
        ("zeros.nwb", "zeros", "not an HDF5 file"),
    ],
)
def test_bad_hdf5_file_is_refused_in_one_line(mount, lindi_files, tmp_path, name, cut, problem):
    data = lindi_files.h5.read_bytes()
    if cut == "half":
        data = data[: len(data) // 3]
    elif cut == "scribble":
        data = data[:8] + b"\xff" * 4000 + data[4008:]
    else:
        data = b"\0" * len(data)
    p = tmp_path / name
    p.write_bytes(data)
    assert_refused(mount, p, names=name, problem=problem)


def test_directory_without_lindi_json(mount, tmp_path):
    d = tmp_path / "empty.lindi.d"
    d.mkdir()
    assert_refused(mount, d, names="empty.lindi.d", problem="no lindi.json")


def test_missing_source(mount, tmp_path):
    assert_refused(
        mount, tmp_path / "nothere.lindi.tar", names="nothere.lindi.tar", problem="no such file"
    )


# -- bad references that make the whole SOURCE invalid -----------------------------------------


@pytest.mark.parametrize(
    "refs, templates, problem, key, kind",
    [
        ({"a/0": ["/data.bin", 0, -1]}, None, "negative size", "a/0", "json"),
        ({"a/0": ["./blobs/x", 0, -1]}, None, "negative size", "a/0", "tar"),
        ({"a/0": ["./blobs/x", 0, -1]}, None, "negative size", "a/0", "d"),
        ({"a/0": ["{{nope}}", 0, 1]}, {"u": "/x"}, "unknown template {{nope}}", "a/0", "tar"),
        ({"a/0": ["/data.bin", -4, 10]}, None, "negative offset", "a/0", "json"),
        ({"b/c/1": ["/data.bin", 0]}, None, "reference must be", "b/c/1", "json"),
        ({"a/0": 12}, None, "reference must be", "a/0", "d"),
    ],
)
def test_invalid_reference_fails_the_source(mount, tmp_path, refs, templates, problem, key, kind):
    doc = _doc({**GOOD_REFS, **refs}, **({"templates": templates} if templates else {}))
    p = tmp_path / f"badref.lindi.{kind}"
    {"json": write_json, "tar": write_tar, "d": write_dir}[kind](p, doc)
    line = assert_refused(mount, p, names=p.name, problem=problem)
    assert repr(key) in line


def test_bad_gen_fails_the_source(mount, tmp_path):
    doc = _doc(gen=[{"key": "g/{{i}}", "url": "/x", "dimensions": {"i": {"start": 0}}}])
    p = tmp_path / "gen.lindi.json"
    write_json(p, doc)
    assert_refused(mount, p, names="gen.lindi.json", problem="gen[0]")


# -- damaged tar archives ----------------------------------------------------------------------


@pytest.fixture
def good_tar(tmp_path) -> tuple[Path, dict]:
    p = tmp_path / "good.lindi.tar"
    blobs = {"blobs/a/big": b"B" * 3000}
    refs = {**GOOD_REFS, "a/big": ["./blobs/a/big", 0, 3000]}
    layout = write_tar(p, _doc(refs), blobs)
    return p, layout


def _truncated(good: Path, size: int) -> Path:
    p = good.with_name("cut.lindi.tar")
    p.write_bytes(good.read_bytes()[:size])
    return p


@pytest.mark.parametrize(
    "cut, problem",
    [
        (100, "not a tar archive"),  # not even one header
        (1000, "truncated archive"),  # the header, part of .tar_entry.json
        (3000, "past the end"),  # .tar_entry.json, part of the index
        (9000, "past the end"),  # index, part of lindi.json
        (16000, "past the end"),  # everything but the end of the blob
    ],
)
def test_truncated_tar(mount, good_tar, cut, problem):
    good, layout = good_tar
    o, d, s = layout["blobs/a/big"]
    assert d + s > 16000 > d  # the last case cuts the blob
    assert_refused(mount, _truncated(good, cut), names="cut.lindi.tar", problem=problem)


@pytest.mark.parametrize("damage", ["json", "truncate", "index"])
def test_damaged_archives_without_read_only(mount, tmp_path, good_tar, damage):
    """Mounted the default (writable) way, a damaged local archive fails the same way: one
    line naming it, non-zero exit, nothing mounted."""
    good, layout = good_tar
    if damage == "json":
        d = tmp_path / "damaged.lindi.d"
        d.mkdir()
        (d / "lindi.json").write_text('{"refs": {"a": ')
        src = d
    elif damage == "truncate":
        src = tmp_path / "damaged.lindi.tar"
        src.write_bytes(good.read_bytes()[:9000])
    else:

        def fn(doc):
            _member(doc, ".tar_index.json")["s"] += 1

        src = _tampered(tmp_path, fn, "damaged.lindi.tar")
    assert_refused(mount, src, names="damaged.lindi", problem="", extra=())


def test_good_tar_mounts(mount, good_tar):
    """The archives the other tests damage are fine before the damage."""
    good, _ = good_tar
    m = mount(good, None, "--read-only")
    assert (m.path / "a" / "big").read_bytes() == b"B" * 3000
    assert (m.path / "a" / "text").read_bytes() == b"hello"
    m.umount()


def _tampered(tmp_path, fn, name="tampered.lindi.tar") -> Path:
    p = tmp_path / name
    write_tar(p, _doc(), {"blobs/x": b"x" * 600}, tamper=fn)
    return p


def _member(doc: dict, name: str) -> dict:
    return next(f for f in doc["files"] if f["n"] == name)


def test_index_disagrees_with_the_entry(mount, tmp_path):
    def fn(doc):
        _member(doc, ".tar_index.json")["s"] += 1

    assert_refused(
        mount, _tampered(tmp_path, fn), names="tampered.lindi.tar", problem="lists itself"
    )


def test_index_misplaces_the_entry(mount, tmp_path):
    def fn(doc):
        _member(doc, ".tar_entry.json")["s"] = 512

    assert_refused(
        mount, _tampered(tmp_path, fn), names="tampered.lindi.tar", problem=".tar_entry.json"
    )


def test_index_points_lindi_json_at_another_member(mount, tmp_path):
    def fn(doc):
        lj, x = _member(doc, "lindi.json"), _member(doc, "blobs/x")
        lj["o"], lj["d"], lj["s"] = x["o"], x["d"], x["s"]

    assert_refused(mount, _tampered(tmp_path, fn), names="tampered.lindi.tar", problem="lindi.json")


def test_index_without_lindi_json(mount, tmp_path):
    def fn(doc):
        doc["files"] = [f for f in doc["files"] if f["n"] != "lindi.json"]

    assert_refused(
        mount, _tampered(tmp_path, fn), names="tampered.lindi.tar", problem="no lindi.json"
    )


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("s", 10**9, "past the end"),
        ("s", -1, "negative"),
        ("d", 513, "inconsistent"),
    ],
)
def test_index_member_out_of_bounds(mount, tmp_path, field, value, problem):
    def fn(doc):
        _member(doc, "blobs/x")[field] = value

    line = assert_refused(
        mount, _tampered(tmp_path, fn), names="tampered.lindi.tar", problem=problem
    )
    assert "blobs/x" in line


def test_entry_points_past_the_end(mount, tmp_path, good_tar):
    good, _ = good_tar
    data = bytearray(good.read_bytes())
    far = 512 * 2000
    entry = json.dumps({"index": {"n": ".tar_index.json", "o": far, "d": far + 512, "s": 9}})
    data[512 : 512 + 1024] = entry.encode().ljust(1024)
    p = tmp_path / "entry.lindi.tar"
    p.write_bytes(bytes(data))
    assert_refused(mount, p, names="entry.lindi.tar", problem="past the end")


def test_entry_not_json(mount, tmp_path, good_tar):
    good, _ = good_tar
    data = bytearray(good.read_bytes())
    data[512:520] = b"NOTJSON!"
    p = tmp_path / "entry.lindi.tar"
    p.write_bytes(bytes(data))
    assert_refused(mount, p, names="entry.lindi.tar", problem=".tar_entry.json")


# -- URLs ----------------------------------------------------------------------------------------


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_url(mount):
    url = f"http://127.0.0.1:{_closed_port()}/x.lindi.json"
    assert_refused(mount, url, names=url, problem="connect")


def test_http_404(mount, http_server):
    url = http_server.url("missing.lindi.tar")
    assert_refused(mount, url, names=url, problem="404")
    assert http_server.count("missing.lindi.tar") == 1  # 4xx: no retries


def test_http_403(mount, http_server):
    (http_server.root / "secret.lindi.json").write_text(json.dumps(_doc()))
    http_server.forbid.add("secret.lindi.json")
    url = http_server.url("secret.lindi.json")
    assert_refused(mount, url, names=url, problem="403")


def test_http_500_forever(mount, http_server):
    (http_server.root / "x.lindi.json").write_text(json.dumps(_doc()))
    http_server.fail_next("x.lindi.json", 503, 100)
    url = http_server.url("x.lindi.json")
    assert_refused(mount, url, names=url, problem="503")
    assert 2 <= http_server.count("x.lindi.json") <= 6  # retried, boundedly


def test_remote_invalid_json_and_truncated_tar(mount, http_server, good_tar):
    (http_server.root / "bad.lindi.json").write_text('{"refs": ')
    url = http_server.url("bad.lindi.json")
    assert_refused(mount, url, names=url, problem="invalid JSON")
    good, _ = good_tar
    (http_server.root / "cut.lindi.tar").write_bytes(good.read_bytes()[:9000])
    url = http_server.url("cut.lindi.tar")
    assert_refused(mount, url, names=url, problem="past the end")


# -- mount points -----------------------------------------------------------------------------------


def test_mountpoint_missing(mount, tmp_path, good_tar):
    good, _ = good_tar
    mp = tmp_path / "no" / "such" / "dir"
    assert_refused(mount, good, names=str(mp), problem="not a directory", mountpoint=mp)


def test_mountpoint_is_a_file(mount, tmp_path, good_tar):
    good, _ = good_tar
    mp = tmp_path / "afile"
    mp.write_text("x")
    assert_refused(mount, good, names="afile", problem="not a directory", mountpoint=mp)


def test_already_mounted(mount, good_tar):
    good, _ = good_tar
    m = mount(good, None, "--read-only")
    pid = m.pid
    m2 = mount(good, m.path, "--read-only", check=False)
    rc, _, err = m2.result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1, m2.describe()
    assert str(m.path) in lines[0] and "already mounted" in lines[0]
    assert "Traceback" not in err
    # the first mount is untouched
    assert m.is_mounted() and pid_alive(pid)
    assert (m.path / "a" / "text").read_bytes() == b"hello"
    assert _daemons_for(m.path) == [pid]
    m.umount()


def test_usage_errors_exit_2(run_cli, tmp_path):
    rc, _, err = run_cli("mount")
    assert rc == 2 and "usage:" in err
    rc, _, err = run_cli("mount", tmp_path, tmp_path, "--no-such-option")
    assert rc == 2 and "usage:" in err
    rc, _, err = run_cli("frobnicate")
    assert rc == 2


def test_umount_of_something_not_mounted(run_cli, tmp_path):
    rc, out, err = run_cli("umount", tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1 and str(tmp_path) in lines[0]
    assert "Traceback" not in err


# -- one bad reference in a good file ----------------------------------------------------------------


def _eio(path: Path):
    with pytest.raises(OSError) as e:
        path.read_bytes()
    assert e.value.errno == errno.EIO, (path, e.value)


def test_one_bad_reference_gives_eio_on_that_file_only(mount, http_server, tmp_path):
    blob = bytes(range(256)) * 20
    (http_server.root / "data.bin").write_bytes(blob)
    local = tmp_path / "local.bin"
    local.write_bytes(b"L" * 100)
    url = http_server.url("data.bin")
    good = {
        ".zgroup": {"zarr_format": 2},
        "ok/text": "still fine",
        "ok/local": [str(local), 10, 20],
        "ok/remote": [url, 100, 200],
        "ok/whole": [url],
    }
    bad = {
        "bad/http404": [http_server.url("nope.bin"), 0, 10],
        "bad/remote_past_end": [url, len(blob) - 5, 10],
        "bad/remote_beyond": [url, len(blob) + 100, 10],
        "bad/local_past_end": [str(local), 90, 20],
        "bad/local_missing": [str(tmp_path / "gone.bin"), 0, 10],
        "bad/b64": "base64:abcde",
        "bad/whole_404": [http_server.url("nope2.bin")],
        "bad/escape": ["./../../etc/passwd", 0, 10],
    }
    causes = {
        "bad/http404": "404",
        "bad/remote_past_end": "past the end",
        "bad/remote_beyond": "416",
        "bad/local_past_end": "past the end",
        "bad/local_missing": "No such file",
        "bad/b64": "base64",
        "bad/whole_404": "404",
        "bad/escape": "escapes",
    }
    p = tmp_path / "mixed.lindi.json"
    write_json(p, _doc({**good, **bad}))
    m = mount(p, None, "--no-cache")
    expected = {
        "ok/text": b"still fine",
        "ok/local": b"L" * 20,
        "ok/remote": blob[100:300],
        "ok/whole": blob,
    }
    assert sorted(os.listdir(m.path / "bad")) == sorted(k.split("/")[1] for k in bad)
    for key in bad:
        _eio(m.path / key)
        # the others keep working after each failure
        for k, v in expected.items():
            assert (m.path / k).read_bytes() == v
    log = m.log_text()
    for key, cause in causes.items():
        lines = [ln for ln in log.splitlines() if key in ln]
        assert lines, f"no log line names {key}:\n{log}"
        assert any(cause.lower() in ln.lower() for ln in lines), (key, cause, lines)
        assert all("Traceback" not in ln for ln in lines)
    assert "Traceback" not in log
    # listing, stat and xattrs of the good files are unaffected; the mount is still healthy
    for k, v in expected.items():
        assert os.stat(m.path / k).st_size == len(v)
    assert json.loads(os.getxattr(m.path / "ok/local", "user.lindi.ref")) == [str(local), 10, 20]
    m.umount()


def test_bad_member_references_in_a_tar(mount, tmp_path):
    blobs = {"blobs/real": b"R" * 1500}
    refs = {
        **GOOD_REFS,
        "ok/blob": ["./blobs/real", 100, 1000],
        "bad/missing": ["./blobs/nope", 0, 10],
        "bad/past_member": ["./blobs/real", 1000, 501],
        "bad/escape": ["./../outside", 0, 1],
    }
    p = tmp_path / "members.lindi.tar"
    write_tar(p, _doc(refs), blobs)
    d = tmp_path / "members.lindi.d"
    write_dir(d, _doc(refs), blobs)
    for src in (p, d):
        m = mount(src, None, "--read-only")
        for key in ("bad/missing", "bad/past_member", "bad/escape"):
            _eio(m.path / key)
            assert (m.path / "ok/blob").read_bytes() == b"R" * 1000
            assert (m.path / "a/text").read_bytes() == b"hello"
        log = m.log_text()
        for key, cause in (
            ("bad/missing", "nope"),
            ("bad/past_member", "past the end"),
            ("bad/escape", "escapes"),
        ):
            assert any(key in ln and cause in ln for ln in log.splitlines()), (src, key, log)
        m.umount()


def test_source_removed_while_mounted(mount, tmp_path):
    """A data file that disappears after mounting: EIO for its keys, the rest keeps working."""
    data = tmp_path / "data.bin"
    data.write_bytes(b"D" * 100)
    p = tmp_path / "gone.lindi.json"
    write_json(p, _doc({**GOOD_REFS, "x/0": [str(data), 0, 50]}))
    m = mount(p)
    os.unlink(data)
    _eio(m.path / "x" / "0")
    assert (m.path / "a" / "text").read_bytes() == b"hello"
    m.umount()


def test_no_traceback_for_user_errors_anywhere(run_cli, tmp_path):
    p = tmp_path / "x.lindi.json"
    p.write_text("{")
    rc, out, err = run_cli("info", p)
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "x.lindi.json" in err and "invalid JSON" in err
