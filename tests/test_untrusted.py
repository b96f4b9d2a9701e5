"""Bad local references and untrusted sources (issue 9, items 4 and 7).

- A reference to a local file whose range lies past the file's end, to a directory or to a FIFO
  fails at ``open`` with EIO (instead of a file that claims a size it cannot deliver, or that
  blocks its reader); so does a ``./`` member of a ``.lindi.d`` that is missing or that a
  symlink leads outside the folder.
- ``--no-local-refs``: a local lindi.json is treated like a remote one.
- ``--allowed-hosts``: references, redirects and the SOURCE may only reach the listed hosts.
- POSIX details: ``readdir`` returns ``.`` and ``..``; a directory's ``st_nlink`` is 2 plus
  its subdirectories.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
from plain_lindi import write_json


def open_errno(path) -> int:
    """The errno of opening ``path`` and reading it; 0 if both work. A read-only mount without
    OPEN requests (the patched pyfuse3, see tests/test_fewer_requests.py) cannot fail the open:
    there the same checks fail the first read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return e.errno
    try:
        os.read(fd, 1)
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)
    return 0


@pytest.fixture
def local_files(tmp_path):
    data = tmp_path / "data.bin"
    blob = os.urandom(100)
    data.write_bytes(blob)
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    return tmp_path, blob


def test_bad_local_references_fail_at_open(mount, local_files):
    d, blob = local_files
    refs = {
        ".zgroup": {"zarr_format": 2},
        "ok": [str(d / "data.bin"), 10, 90],
        "past": [str(d / "data.bin"), 90, 20],
        "offset_past": [str(d / "data.bin"), 200, 1],
        "dir": [str(d / "adir"), 0, 10],
        "dir_whole": [str(d / "adir")],
        "fifo": [str(d / "fifo"), 0, 10],
        "fifo_whole": [str(d / "fifo")],
        "missing": [str(d / "nothing.bin"), 0, 1],
        "relative_past": ["data.bin", 99, 2],
    }
    write_json(d / "r.lindi.json", {"refs": refs})
    m = mount(d / "r.lindi.json")
    assert (m.path / "ok").read_bytes() == blob[10:]
    for key in sorted(refs):
        if key in ("ok", ".zgroup"):
            continue
        assert open_errno(m.path / key) == errno.EIO, key
    log = m.log_text()
    for key, why in [
        ("past", "runs past the end of the file (size 100)"),
        ("dir", "is a directory"),
        ("fifo", "not a regular file"),
        ("missing", "No such file"),
    ]:
        assert any(key in ln and why in ln for ln in log.splitlines()), (key, why)
    # the rest of the mount is unaffected
    assert (m.path / "ok").read_bytes() == blob[10:]
    m.umount()


def test_lindi_d_members_missing_or_outside(mount, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not yours" * 10)
    d = tmp_path / "x.lindi.d"
    (d / "blobs").mkdir(parents=True)
    (d / "blobs" / "real").write_bytes(b"R" * 50)
    os.symlink(d / "blobs" / "real", d / "blobs" / "inside_link")  # stays inside: fine
    os.symlink(outside, d / "blobs" / "outside_link")
    os.symlink("../../secret.txt", d / "blobs" / "relative_out")
    os.symlink(tmp_path, d / "blobs" / "dirlink")
    refs = {
        ".zgroup": {"zarr_format": 2},
        "real": ["./blobs/real", 0, 50],
        "inside": ["./blobs/inside_link", 0, 50],
        "outside": ["./blobs/outside_link", 0, 10],
        "relative_out": ["./blobs/relative_out", 0, 10],
        "through_dir": ["./blobs/dirlink/secret.txt", 0, 10],
        "missing": ["./blobs/none", 0, 1],
        "past": ["./blobs/real", 40, 20],
        "dotdot": ["./../secret.txt", 0, 10],
    }
    (d / "lindi.json").write_text(json.dumps({"refs": refs}))
    for extra in ((), ("--read-only",)):
        m = mount(d, None, *extra)
        assert (m.path / "real").read_bytes() == b"R" * 50
        assert (m.path / "inside").read_bytes() == b"R" * 50
        for key in ("outside", "relative_out", "through_dir", "missing", "past", "dotdot"):
            assert open_errno(m.path / key) == errno.EIO, (key, extra)
        log = m.log_text()
        assert "leads outside" in log and "escapes its container" in log
        assert b"not yours" not in b"".join(
            p.read_bytes() for p in m.path.iterdir() if p.name in ("real", "inside")
        )
        m.umount()


# -- --no-local-refs ------------------------------------------------------------------------------


def test_no_local_refs(mount, tmp_path, http_server):
    srv = http_server
    (srv.root / "remote.bin").write_bytes(b"REMOTE" * 10)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S" * 100)
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "next.bin").write_bytes(b"N" * 100)
    os.symlink(secret, folder / "link.bin")
    refs = {
        ".zgroup": {"zarr_format": 2},
        "absolute": [str(secret), 0, 10],
        "file_url": ["file://" + str(secret), 0, 10],
        "relative": ["../secret.bin", 0, 10],
        "sibling": ["./next.bin", 0, 10],
        "sibling_link": ["./link.bin", 0, 10],
        "url": [srv.url("remote.bin"), 0, 12],
        "inline": "base64:" + "aGVsbG8=",
    }
    write_json(folder / "r.lindi.json", {"refs": refs})
    m = mount(folder / "r.lindi.json")  # trusted: everything reads
    for key in ("absolute", "file_url", "relative", "sibling_link"):
        assert (m.path / key).read_bytes() == b"S" * 10, key
    m.umount()
    m = mount(folder / "r.lindi.json", None, "--no-local-refs")
    assert (m.path / "url").read_bytes() == b"REMOTEREMOTE"
    assert (m.path / "inline").read_bytes() == b"hello"
    assert (m.path / "sibling").read_bytes() == b"N" * 10  # its own folder, like a remote ./
    for key in ("absolute", "file_url", "relative", "sibling_link"):
        assert open_errno(m.path / key) == errno.EIO, key
    log = m.log_text()
    assert log.count("--no-local-refs") >= 3 and "leads outside" in log
    m.umount()


def test_no_local_refs_tar_members_still_read(mount, tmp_path):
    from plain_lindi import write_tar

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S" * 100)
    refs = {".zgroup": {"zarr_format": 2}, "member": ["./blobs/a", 0, 3], "abs": [str(secret)]}
    write_tar(tmp_path / "t.lindi.tar", {"refs": refs}, {"blobs/a": b"abc"})
    for extra in (("--read-only",), ()):  # read-only, and writable
        m = mount(tmp_path / "t.lindi.tar", None, "--no-local-refs", *extra)
        assert (m.path / "member").read_bytes() == b"abc"
        assert open_errno(m.path / "abs") == errno.EIO
        m.umount()


# -- --allowed-hosts --------------------------------------------------------------------------------


@pytest.fixture
def two_servers(tmp_path):
    from httpserver import RangeServer

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with RangeServer(tmp_path / "a") as a, RangeServer(tmp_path / "b") as b:
        yield a, b


def test_allowed_hosts(mount, two_servers):
    a, b = two_servers
    (a.root / "ok.bin").write_bytes(b"A" * 100)
    (b.root / "internal.bin").write_bytes(b"B" * 100)
    a.add_redirect("jump.bin", b.url("internal.bin"))
    refs = {
        ".zgroup": {"zarr_format": 2},
        "same": [a.url("ok.bin"), 0, 10],
        "other": [b.url("internal.bin"), 0, 10],
        "other_whole": [b.url("internal.bin")],
        "redirected": [a.url("jump.bin"), 0, 10],
    }
    write_json(a.root / "r.lindi.json", {"refs": refs})
    (b.root / "r.lindi.json").write_bytes((a.root / "r.lindi.json").read_bytes())
    allow_a = f"127.0.0.1:{a.port}"
    m = mount(a.url("r.lindi.json"), None, "--allowed-hosts", allow_a, "--no-cache")
    assert (m.path / "same").read_bytes() == b"A" * 10
    for key in ("other", "other_whole", "redirected"):
        assert open_errno(m.path / key) == errno.EIO or _read_errno(m.path / key) == errno.EIO
    assert b.count() == 0, b.log  # not one request reached the other host
    assert "not in --allowed-hosts" in m.log_text()
    s = json.loads(os.getxattr(m.path, "user.lindifuse.stats"))
    assert s["http"]["refused_hosts"] >= 1  # the redirect, refused before it was sent
    m.umount()
    # the SOURCE itself on a host not listed: one line, nothing mounted, no request
    bad = mount(b.url("r.lindi.json"), None, "--allowed-hosts", allow_a, check=False)
    assert bad.result.rc != 0 and not bad.is_mounted()
    err = bad.result.stderr.strip().splitlines()
    assert len(err) == 1 and "not in --allowed-hosts" in err[0], err
    assert b.count() == 0
    # a name is not its address: "localhost" does not allow 127.0.0.1
    bad = mount(a.url("r.lindi.json"), None, "--allowed-hosts", f"localhost:{a.port}", check=False)
    assert bad.result.rc != 0
    # both listed (comma-separated, or the option twice): everything reads
    m = mount(
        a.url("r.lindi.json"),
        None,
        "--allowed-hosts",
        f"{allow_a},127.0.0.1:{b.port}",
        "--no-cache",
    )
    assert (m.path / "other").read_bytes() == b"B" * 10
    assert (m.path / "redirected").read_bytes() == b"B" * 10
    m.umount()


def _read_errno(path) -> int:
    try:
        path.read_bytes()
    except OSError as e:
        return e.errno
    return 0


def test_host_rule_patterns():
    from lindifuse.sources.http import HostRule

    r = HostRule(["data.example.org", "*.cdn.example.net", "10.0.0.5:8080", "[::1]:9000"])
    assert r.allows("https://data.example.org/x") and r.allows("http://DATA.example.org:81/x")
    assert not r.allows("https://example.org/x")
    assert r.allows("https://a.b.cdn.example.net/x") and not r.allows("https://cdn.example.net/")
    assert r.allows("http://10.0.0.5:8080/") and not r.allows("http://10.0.0.5/")
    assert r.allows("http://[::1]:9000/") and not r.allows("http://[::1]:9001/")
    assert not r.allows("http://data.example.org.evil.test/")
    assert HostRule([]).allows("http://anything/")


# -- POSIX details ---------------------------------------------------------------------------------


def ls_a(path) -> list[str]:
    import subprocess

    res = subprocess.run(["ls", "-a1", "-f", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_readdir_dot_entries_and_nlink(mount, tmp_path):
    refs = {
        ".zgroup": {"zarr_format": 2},
        "a/b/c": "1",
        "a/d/e": "2",
        "a/f": "3",
        "g": "4",
    }
    d = tmp_path / "n.lindi.d"
    d.mkdir()
    (d / "lindi.json").write_text(json.dumps({"refs": refs}))
    for extra in (("--read-only",), ()):
        m = mount(d, None, *extra)
        assert ls_a(m.path)[:2] == [".", ".."]
        assert sorted(ls_a(m.path / "a")) == [".", "..", "b", "d", "f"]
        assert os.stat(m.path).st_nlink == 3  # ".", its entry, a/..
        assert os.stat(m.path / "a").st_nlink == 4  # b and d
        assert os.stat(m.path / "a/b").st_nlink == 2
        assert os.stat(m.path / "g").st_nlink == 1
        # find's leaf optimisation relies on st_nlink: it must still see every file
        import subprocess

        found = subprocess.run(["find", str(m.path), "-type", "f"], capture_output=True, text=True)
        assert len(found.stdout.split()) == 5
        if not extra:  # writable: mkdir, rename and rmdir keep the counts right
            os.mkdir(m.path / "a/new")
            assert os.stat(m.path / "a").st_nlink == 5
            os.rename(m.path / "a/new", m.path / "moved")
            assert os.stat(m.path / "a").st_nlink == 4
            assert os.stat(m.path).st_nlink == 4
            os.rmdir(m.path / "moved")
            assert os.stat(m.path).st_nlink == 3
        m.umount()


def test_key_names_cannot_forge_log_lines(mount, tmp_path):
    """A key is untrusted text: a newline in it must not start a new line in the log (or in an
    error message); control characters are escaped."""
    forged = "2026-01-01 00:00:00,000 ERROR lindifuse: forged"
    refs = {".zgroup": {"zarr_format": 2}, f"g/bad\n{forged}": "base64:00000", "g/ok": "fine"}
    write_json(tmp_path / "k.lindi.json", {"refs": refs})
    m = mount(tmp_path / "k.lindi.json")
    names = os.listdir(m.path / "g")
    assert len(names) == 2 and (m.path / "g/ok").read_text() == "fine"
    bad = next(n for n in names if n != "ok")
    assert open_errno(m.path / "g" / bad) == errno.EIO
    lines = m.log_text().splitlines()
    assert not any(ln.startswith(forged) for ln in lines), lines
    assert any("bad\\n2026-01-01" in ln and "base64" in ln for ln in lines), lines
    m.umount()
