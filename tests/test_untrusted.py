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
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return e.errno
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
