"""Writable mounts (issue 3), end to end: real mounts of local ``.lindi.tar`` / ``.lindi.d``
archives, real programs writing through them (zarr-python 3, hand-made zarr-2-style writes,
cp, rsync, the shell, dd), and the archive judged afterwards by the format (``writekit.
ArchiveView``), GNU tar, ``lindifuse check`` and lindi 0.4.6.

The promised semantics are docs/semantics.md ("Writing").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from harness import IN_CI, run, run_cli, wait_until
from writekit import (
    ArchiveView,
    assert_valid_archive,
    blob_name_ok,
    files_under,
    have_tool,
    json_from_output,
    tar_extract,
    tar_list,
)

# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_archives(tmp_path_factory) -> Path:
    """``empty.lindi.tar`` and ``empty.lindi.d`` made once by ``lindifuse create``."""
    d = tmp_path_factory.mktemp("empty")
    for kind in ("tar", "d"):
        res = run_cli("create", d / f"empty.lindi.{kind}")
        assert res.rc == 0, res.describe()
    return d


@pytest.fixture
def new_archive(empty_archives, tmp_path):
    """``new_archive(kind="tar", name="w") -> Path``: a fresh empty archive in tmp_path."""

    def make(kind: str = "tar", name: str = "w") -> Path:
        src = empty_archives / f"empty.lindi.{kind}"
        dst = tmp_path / f"{name}.lindi.{kind}"
        if src.is_dir():
            import shutil

            shutil.copytree(src, dst)
        else:
            dst.write_bytes(src.read_bytes())
        return dst

    return make


@pytest.fixture
def rw(new_archive, mount):
    """``rw(kind="tar") -> (archive, Mount)``: a fresh archive mounted writable."""

    def make(kind: str = "tar"):
        arch = new_archive(kind)
        return arch, mount(arch)

    return make


def rbytes(p) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def wbytes(p, data: bytes) -> None:
    with open(p, "wb") as f:
        f.write(data)


def fsync_file(p) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rnd(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


# -- operations -----------------------------------------------------------------------------


def test_create_write_read_back(rw):
    arch, m = rw()
    p = m.path / "f"
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o644)
    try:
        assert os.write(fd, b"hello ") == 6
        assert os.pwrite(fd, b"world", 6) == 5
        # an open file behaves like a local file: read back before close
        assert os.pread(fd, 100, 0) == b"hello world"
        assert os.fstat(fd).st_size == 11
        assert errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    finally:
        os.close(fd)
    # readers see the content right after close, in this process and in another one
    assert rbytes(p) == b"hello world"
    assert run(["cat", p]).stdout == "hello world"
    st = os.stat(p)
    assert st.st_size == 11 and st.st_nlink == 1 and (st.st_mode & 0o777) == 0o644
    assert sorted(os.listdir(m.path)) == [".zgroup", "f"]
    m.umount()
    view = assert_valid_archive(arch)
    assert view.refs["f"] == "hello world"  # small ASCII content: inline text


def test_open_file_reads_back_and_readers_see_new_content_after_close(rw):
    arch, m = rw()
    p = m.path / "data"
    old = rnd(3000, 1)
    wbytes(p, old)
    fsync_file(p)  # committed: the file now has a reference into the archive
    reader = open(p, "rb")  # noqa: SIM115
    try:
        assert reader.read(100) == old[:100]
        new = rnd(5000, 2)
        with open(p, "r+b") as w:
            w.write(new[:2500])
            w.flush()
            w.seek(0)
            assert w.read() == new[:2500] + old[2500:]  # own writes + old tail, before close
            w.seek(2500)
            w.write(new[2500:])
        assert rbytes(p) == new
        assert run(["cat", p]).rc == 0
        assert os.pread(reader.fileno(), 5000, 0) == new  # an older descriptor sees it too
    finally:
        reader.close()
    assert os.stat(p).st_size == 5000
    m.umount()
    view = assert_valid_archive(arch)
    assert view.content("data") == new


def test_write_at_offsets_makes_holes(rw):
    arch, m = rw()
    p = m.path / "holes"
    with open(p, "wb") as f:
        f.seek(5000)
        f.write(b"X" * 10)
    assert os.stat(p).st_size == 5010
    assert rbytes(p) == b"\0" * 5000 + b"X" * 10
    q = m.path / "grow"
    wbytes(q, b"abc")
    fsync_file(q)
    fd = os.open(q, os.O_WRONLY)
    try:
        os.pwrite(fd, b"Z", 2000)  # past the end of a committed file
    finally:
        os.close(fd)
    assert rbytes(q) == b"abc" + b"\0" * 1997 + b"Z"
    fd = os.open(q, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"tail")
    finally:
        os.close(fd)
    expect_q = b"abc" + b"\0" * 1997 + b"Ztail"
    assert rbytes(q) == expect_q
    m.umount()
    view = assert_valid_archive(arch)
    assert view.content("holes") == b"\0" * 5000 + b"X" * 10
    assert view.content("grow") == expect_q


def test_truncate_ftruncate_o_trunc(rw, mount):
    arch, m = rw()
    data = rnd(3000, 3)
    for name in ("a", "b", "c", "d"):
        wbytes(m.path / name, data)
    fsync_file(m.path / "a")  # commits every closed file
    os.truncate(m.path / "a", 1000)  # shrink a committed file
    assert rbytes(m.path / "a") == data[:1000]
    os.truncate(m.path / "a", 4000)  # grow: zeros
    assert rbytes(m.path / "a") == data[:1000] + b"\0" * 3000
    fd = os.open(m.path / "b", os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        assert os.fstat(fd).st_size == 10
        os.pwrite(fd, b"Z", 10)
        assert os.pread(fd, 100, 0) == data[:10] + b"Z"
    finally:
        os.close(fd)
    with open(m.path / "c", "wb") as f:  # O_TRUNC
        f.write(b"new")
    fd = os.open(m.path / "d", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(m.path / "d").st_size == 0
    expect = {"a": data[:1000] + b"\0" * 3000, "b": data[:10] + b"Z", "c": b"new", "d": b""}
    for k, v in expect.items():
        assert rbytes(m.path / k) == v, k
    m.umount()
    view = assert_valid_archive(arch)
    for k, v in expect.items():
        assert view.content(k) == v, k
    m2 = mount(arch)
    for k, v in expect.items():
        assert rbytes(m2.path / k) == v, k
    m2.umount()


def test_rename_files(rw, mount):
    arch, m = rw()
    a, b = rnd(2000, 4), rnd(1500, 5)
    wbytes(m.path / "a", a)
    wbytes(m.path / "b", b)
    fsync_file(m.path / "a")
    os.rename(m.path / "a", m.path / "b")  # onto an existing file
    assert not (m.path / "a").exists()
    assert rbytes(m.path / "b") == a
    os.mkdir(m.path / "sub")
    os.rename(m.path / "b", m.path / "sub" / "c")  # into another directory
    wbytes(m.path / "victim", b"old victim content")
    fsync_file(m.path / "victim")
    wbytes(m.path / "new", b"new content")
    with open(m.path / "victim", "rb") as held:  # replaced while open: like a local file
        os.rename(m.path / "new", m.path / "victim")
        assert held.read() == b"old victim content"
    assert rbytes(m.path / "victim") == b"new content"
    wbytes(m.path / "open", b"staged")
    os.rename(m.path / "open", m.path / "moved")  # a staged (uncommitted) file
    assert rbytes(m.path / "moved") == b"staged"
    assert errno_of(os.rename, m.path / "nope", m.path / "x") == errno.ENOENT
    assert sorted(os.listdir(m.path)) == [".zgroup", "moved", "sub", "victim"]
    m.umount()
    view = assert_valid_archive(arch)
    assert set(view.refs) == {".zgroup", "moved", "sub/c", "victim"}
    assert view.content("victim") == b"new content"
    assert view.content("sub/c") == a and view.content("moved") == b"staged"
    m2 = mount(arch)
    assert rbytes(m2.path / "sub" / "c") == a
    m2.umount()


def test_rename_directories(rw, mount):
    arch, m = rw()
    g = m.path / "g"
    (g / "x").mkdir(parents=True)
    (g / "sub").mkdir()
    wbytes(g / ".zgroup", b'{"zarr_format": 2}')
    wbytes(g / "x" / "0", rnd(1200, 6))
    wbytes(g / "sub" / "y", b"y")
    fsync_file(g / "sub" / "y")  # some committed, then a staged one
    wbytes(g / "x" / "1", rnd(1300, 7))
    before = files_under(g)
    os.rename(g, m.path / "h")
    assert not g.exists() and files_under(m.path / "h") == before
    os.mkdir(m.path / "empty")
    os.rename(m.path / "h", m.path / "empty")  # onto an empty directory
    assert files_under(m.path / "empty") == before
    os.mkdir(m.path / "full")
    wbytes(m.path / "full" / "f", b"f")
    wbytes(m.path / "file", b"file")
    assert errno_of(os.rename, m.path / "empty", m.path / "full") in (errno.ENOTEMPTY, errno.EEXIST)
    assert errno_of(os.rename, m.path / "file", m.path / "full") == errno.EISDIR
    assert errno_of(os.rename, m.path / "full", m.path / "file") == errno.ENOTDIR
    assert errno_of(os.rename, m.path / "empty", m.path / "empty" / "x" / "in") == errno.EINVAL
    m.umount()
    view = assert_valid_archive(arch)
    assert {k for k in view.refs if k.startswith("empty/")} == {"empty/" + k for k in before}
    assert not any(k.startswith(("g/", "h/")) for k in view.refs)
    for k, v in before.items():
        assert view.content("empty/" + k) == v
    m2 = mount(arch)
    assert files_under(m2.path / "empty") == before
    m2.umount()


_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100


def _renameat2(src, dst, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        pytest.skip("the C library has no renameat2")
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(src))


def test_rename_noreplace_and_exchange(rw):
    arch, m = rw()
    wbytes(m.path / "a", b"A")
    wbytes(m.path / "b", b"B")
    assert errno_of(_renameat2, m.path / "a", m.path / "b", _RENAME_NOREPLACE) == errno.EEXIST
    assert rbytes(m.path / "b") == b"B" and rbytes(m.path / "a") == b"A"
    _renameat2(m.path / "a", m.path / "c", _RENAME_NOREPLACE)
    assert rbytes(m.path / "c") == b"A" and not (m.path / "a").exists()
    assert errno_of(_renameat2, m.path / "b", m.path / "c", _RENAME_EXCHANGE) == errno.EINVAL
    assert rbytes(m.path / "b") == b"B" and rbytes(m.path / "c") == b"A"
    m.umount()
    assert set(assert_valid_archive(arch).refs) == {".zgroup", "b", "c"}


def test_link_makes_an_independent_copy(rw, mount):
    arch, m = rw()
    a = rnd(5000, 8)
    wbytes(m.path / "a", a)
    fsync_file(m.path / "a")
    os.link(m.path / "a", m.path / "b")  # of a committed file: a copy of the reference
    assert os.stat(m.path / "a").st_nlink == 1 and os.stat(m.path / "b").st_nlink == 1
    assert rbytes(m.path / "b") == a
    with open(m.path / "b", "r+b") as f:
        f.write(b"BBBB")
    with open(m.path / "a", "ab") as f:
        f.write(b"tail")
    assert rbytes(m.path / "a") == a + b"tail"
    assert rbytes(m.path / "b") == b"BBBB" + a[4:]
    # zarr-python 3's exclusive create: write key.<uuid>.partial, link it to key, unlink it
    part = m.path / f"k.{uuid.uuid4().hex}.partial"
    wbytes(part, rnd(3000, 9))
    os.link(part, m.path / "k")
    os.unlink(part)
    assert rbytes(m.path / "k") == rnd(3000, 9)
    assert errno_of(os.link, m.path / "a", m.path / "k") == errno.EEXIST
    os.mkdir(m.path / "dir")
    assert errno_of(os.link, m.path / "dir", m.path / "dir2") == errno.EPERM
    m.umount()
    view = assert_valid_archive(arch)
    assert set(view.refs) == {".zgroup", "a", "b", "k"}
    assert view.content("a") == a + b"tail"
    assert view.content("b") == b"BBBB" + a[4:]
    assert view.content("k") == rnd(3000, 9)
    assert view.blob_member("k") == "blobs/k"  # committed under its final name
    m2 = mount(arch)
    assert rbytes(m2.path / "a") == a + b"tail" and rbytes(m2.path / "b") == b"BBBB" + a[4:]
    m2.umount()


def test_unlink_including_open_files(rw):
    arch, m = rw()
    wbytes(m.path / "gone", rnd(2000, 10))
    wbytes(m.path / "keep", b"keep")
    ro_data = rnd(1500, 18)
    wbytes(m.path / "ro", ro_data)
    fsync_file(m.path / "keep")
    os.unlink(m.path / "gone")  # a committed file
    ro = os.open(m.path / "ro", os.O_RDONLY)  # committed, open for reading, not read yet
    try:
        os.unlink(m.path / "ro")
        assert os.pread(ro, 5000, 0) == ro_data
        assert os.fstat(ro).st_size == 1500
    finally:
        os.close(ro)
    p = m.path / "open"
    fd = os.open(p, os.O_CREAT | os.O_RDWR)
    try:
        os.write(fd, b"a" * 2000)
        os.unlink(p)
        assert not p.exists() and "open" not in os.listdir(m.path)
        # the descriptor stays readable and writable
        os.pwrite(fd, b"b", 2000)
        assert os.pread(fd, 3000, 0) == b"a" * 2000 + b"b"
        # a new file of the same name is independent
        wbytes(p, b"new one")
        assert os.pread(fd, 3000, 0) == b"a" * 2000 + b"b"
        assert os.fstat(fd).st_size == 2001
    finally:
        os.close(fd)
    assert rbytes(p) == b"new one"
    assert errno_of(os.unlink, m.path / "gone") == errno.ENOENT
    os.mkdir(m.path / "d")
    assert errno_of(os.unlink, m.path / "d") in (errno.EISDIR, errno.EPERM)
    m.umount()
    view = assert_valid_archive(arch)
    assert set(view.refs) == {".zgroup", "keep", "open"}
    assert view.content("open") == b"new one"


def test_unlinked_open_file_fstat_after_attr_timeout(rw):
    """fstat of an open, unlinked file keeps working once the kernel's attribute cache (1 s on
    a writable mount) has expired, like on a local file system."""
    import time

    _arch, m = rw()
    p = m.path / "f"
    fd = os.open(p, os.O_CREAT | os.O_RDWR)
    try:
        os.write(fd, b"x" * 100)
        os.unlink(p)
        time.sleep(1.3)
        assert os.fstat(fd).st_size == 100
        os.write(fd, b"y")
        assert os.fstat(fd).st_size == 101
    finally:
        os.close(fd)


def test_mkdir_rmdir(rw, mount):
    arch, m = rw()
    os.mkdir(m.path / "d")
    os.mkdir(m.path / "d" / "e")
    assert errno_of(os.mkdir, m.path / "d") == errno.EEXIST
    assert errno_of(os.rmdir, m.path / "d") == errno.ENOTEMPTY
    os.rmdir(m.path / "d" / "e")
    wbytes(m.path / "d" / "f", b"f")
    assert errno_of(os.rmdir, m.path / "d") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, m.path / "d" / "f") == errno.ENOTDIR
    assert errno_of(os.rmdir, m.path / "nope") == errno.ENOENT
    os.unlink(m.path / "d" / "f")
    os.rmdir(m.path / "d")
    assert not (m.path / "d").exists()
    os.makedirs(m.path / "kept" / "deep")
    wbytes(m.path / "kept" / "deep" / "x", b"x")
    os.mkdir(m.path / "empty")  # not stored: directories exist because keys do
    m.umount()
    view = assert_valid_archive(arch)
    assert set(view.refs) == {".zgroup", "kept/deep/x"}
    m2 = mount(arch)
    assert sorted(os.listdir(m2.path)) == [".zgroup", "kept"]
    m2.umount()


def test_chmod_chown_utime_accepted(rw):
    _arch, m = rw()
    p = m.path / "f"
    wbytes(p, b"f")
    os.chmod(p, 0o600)
    os.chmod(m.path, 0o700)
    os.utime(p, (1_000_000, 2_000_000))
    os.utime(p)
    os.chown(p, os.getuid(), os.getgid())
    assert run(["touch", p]).rc == 0
    assert rbytes(p) == b"f"


def test_unsupported_operations(rw):
    _arch, m = rw()
    wbytes(m.path / "f", b"f")
    assert errno_of(os.symlink, "f", m.path / "l") == errno.EPERM
    assert errno_of(os.mkfifo, m.path / "fifo") == errno.EPERM
    assert errno_of(os.setxattr, m.path / "f", "user.x", b"1") in (errno.ENOTSUP, errno.EOPNOTSUPP)


def test_xattr_ref_of_written_files(rw):
    """``user.lindi.ref`` of a committed blob names the archive and the member's bytes; a file
    that is still staged has no reference yet (ENODATA, not EIO and an error in the log)."""
    arch, m = rw()
    p = m.path / "f"
    with open(p, "wb") as f:
        f.write(rnd(3000, 20))
        assert errno_of(os.getxattr, p, "user.lindi.ref") == errno.ENODATA
    assert errno_of(os.getxattr, p, "user.lindi.ref") in (0, errno.ENODATA)
    fsync_file(p)
    where, off, size = json.loads(os.getxattr(p, "user.lindi.ref"))
    assert (where, size) == (str(arch), 3000)
    with open(arch, "rb") as f:
        f.seek(off)
        assert f.read(size) == rnd(3000, 20)
    wbytes(m.path / "small", b"small")
    fsync_file(m.path / "small")
    assert json.loads(os.getxattr(m.path / "small", "user.lindi.ref")) == "inline"
    _no_errors_logged(m)


def test_statfs(rw):
    arch, m = rw()
    v = os.statvfs(m.path)
    assert v.f_bsize > 0 and v.f_frsize > 0 and v.f_namemax >= 255
    assert v.f_bavail > 0 and v.f_blocks > 0  # the free space of the archive's file system
    res = run(["df", "-P", m.path])
    assert res.rc == 0, res.describe()
    assert arch.exists()


def test_fsync_is_durable_against_kill(rw, mount):
    arch, m = rw()
    big, small = rnd(4000, 11), b"small"
    fd = os.open(m.path / "big", os.O_CREAT | os.O_WRONLY)
    try:
        os.write(fd, big)
        os.fsync(fd)
        # on disk now, while the file is still open
        view = ArchiveView(arch)
        assert view.content("big") == big
        assert view.blob_member("big") == "blobs/big"
    finally:
        os.close(fd)
    wbytes(m.path / "small", small)  # closed, not synced itself: fsync of the directory
    dfd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert ArchiveView(arch).content("small") == small
    m.kill()
    m2 = mount(arch)  # recovers whatever the killed daemon left
    assert rbytes(m2.path / "big") == big and rbytes(m2.path / "small") == small
    m2.umount()
    assert_valid_archive(arch)


def test_closed_files_are_flushed_by_the_timer(rw):
    arch, m = rw("d")
    payload = rnd(2500, 12)
    wbytes(m.path / "t", payload)
    wbytes(m.path / "s", b"s")

    def flushed() -> bool:
        with contextlib.suppress(Exception):
            v = ArchiveView(arch)
            return v.content("t") == payload and v.content("s") == b"s"
        return False

    assert wait_until(flushed, 6.0), "closed files were not committed by the flush timer"
    assert (arch / "blobs" / "t").read_bytes() == payload


# -- the archive after umount -------------------------------------------------------------


def _write_zarr_sample(root) -> dict[str, np.ndarray]:
    """Arrays with blob-sized and inline-sized chunks, a rewritten chunk; returns the values."""
    g = zarr.open_group(root, mode="r+", zarr_format=2)
    g.attrs["title"] = "written through lindifuse"
    big = np.random.default_rng(13).standard_normal((40, 100))
    a = g.create_array("big", shape=big.shape, chunks=(10, 100), dtype="f8", compressors=None)
    a[:] = big
    # the renames' commits are done before the rewrite (a rewrite that overtakes the pending
    # commit of its key would leave one member, not two: right too, but not what is checked)
    os.setxattr(root, "user.lindifuse.flush", b"1")
    big[0:10] = 7.0
    a[0:10] = big[0:10]  # rewrite one chunk: a new member, the old one unreferenced
    small = np.arange(30, dtype="i4")
    s = g.create_array("sub/small", shape=(30,), chunks=(10,), dtype="i4", compressors=None)
    s[:] = small
    s.attrs["unit"] = "counts"
    return {"big": big, "sub/small": small}


@pytest.mark.parametrize("kind", ["tar", "d"])
def test_archive_after_umount(rw, mount, lindi_gen, tmp_path, kind):
    arch, m = rw(kind)
    values = _write_zarr_sample(m.path)
    m.umount()
    view = assert_valid_archive(arch)
    refs = view.refs
    # metadata and small chunks inline, big chunks in blobs named after their key
    for key in (".zgroup", ".zattrs", "big/.zarray", "sub/.zgroup", "sub/small/.zarray"):
        assert view.is_inline(key), (key, refs[key])
    for i in range(3):
        assert view.is_inline(f"sub/small/{i}")
        assert np.frombuffer(view.content(f"sub/small/{i}"), "<i4").tolist() == list(
            range(10 * i, 10 * i + 10)
        )
    for i in range(4):
        key = f"big/{i}.0"
        member = view.blob_member(key)
        assert member is not None and blob_name_ok(member, key), (key, refs[key])
        np.testing.assert_array_equal(
            np.frombuffer(view.content(key), "<f8").reshape(10, 100),
            values["big"][10 * i : 10 * i + 10],
        )
    assert json.loads(view.content(".zattrs")) == {"title": "written through lindifuse"}
    assert json.loads(view.content("big/.zarray"))["shape"] == [40, 100]
    if kind == "tar":
        names = tar_list(arch)
        assert not [n for n in names if "partial" in n], names
        blobs = [n for n in names if n.startswith("blobs/")]
        assert all(any(blob_name_ok(n, k) for k in refs) for n in blobs), blobs
        assert "blobs/big/0.0" in blobs and len(blobs) == 5  # 4 chunks + 1 rewrite
        # tar xf gives a valid .lindi.d
        d = tar_extract(arch, tmp_path / "extracted.lindi.d")
        dview = assert_valid_archive(d)
        for key in refs:
            assert dview.content(key) == view.content(key), key
    else:
        assert not (arch / ".lindifuse-tmp").exists() or not os.listdir(arch / ".lindifuse-tmp")
        files = {p.relative_to(arch).as_posix() for p in (arch / "blobs").rglob("*")}
        assert not [f for f in files if "partial" in f], files
        d = arch
    # lindifuse mounts the result (the extracted folder for a tar) and zarr reads it
    m2 = mount(d, None, "--read-only")
    g = zarr.open_group(m2.path, mode="r", zarr_format=2)
    np.testing.assert_array_equal(g["big"][:], values["big"])
    np.testing.assert_array_equal(g["sub/small"][:], values["sub/small"])
    assert g["sub/small"].attrs["unit"] == "counts"
    m2.umount()
    # lindi reads both
    sources = [arch, d] if kind == "tar" else [arch]
    for src in sources:
        out = json_from_output(lindi_gen("read-json", src, "big", "sub/small", "/"))
        np.testing.assert_array_equal(np.array(out["big"]["values"]), values["big"])
        assert out["sub/small"]["values"] == values["sub/small"].tolist()
        assert out["sub/small"]["attrs"] == {"unit": "counts"}
        assert out["/"]["attrs"] == {"title": "written through lindifuse"}


# -- real writers -----------------------------------------------------------------------------


def test_zarr3_writer(rw, mount, lindi_gen):
    arch, m = rw()
    rng = np.random.default_rng(14)
    g = zarr.open_group(m.path, mode="r+", zarr_format=2)
    g.attrs.update({"a": 1, "b": [1, 2], "c": {"d": "e"}})
    inner = g.create_group("outer").create_group("inner")
    inner.attrs["level"] = 2
    ints = rng.integers(-1000, 1000, (64, 64), dtype=np.int32)
    a = inner.create_array("ints", shape=ints.shape, chunks=(16, 32), dtype="i4")
    a[:] = ints
    floats = rng.standard_normal(3000).astype("f4")
    f = g.create_array("floats", shape=floats.shape, chunks=(700,), dtype="f4", compressors=None)
    f[:] = floats
    # overwrite chunks, whole and partly
    ints[0:16, 0:32] = -1
    ints[20:40, 10:50] = 5
    a[0:16, 0:32] = -1
    a[20:40, 10:50] = 5
    # resize: grow then shrink (chunks outside the new shape go away)
    f.resize((3500,))
    f[3000:] = 1.5
    floats = np.concatenate([floats, np.full(500, 1.5, "f4")])
    f.resize((1000,))
    floats = floats[:1000]
    # delete an array
    doomed = g.create_array("doomed", shape=(2000,), chunks=(500,), dtype="f8", compressors=None)
    doomed[:] = 3.0
    del g["doomed"]
    strs = g.create_array("strs", shape=(3,), dtype=str)
    strs[:] = ["x", "yy", "zzz"]

    def verify(root, mode="r"):
        g2 = zarr.open_group(root, mode=mode, zarr_format=2)
        assert dict(g2.attrs) == {"a": 1, "b": [1, 2], "c": {"d": "e"}}
        assert g2["outer/inner"].attrs["level"] == 2
        np.testing.assert_array_equal(g2["outer/inner/ints"][:], ints)
        assert g2["floats"].shape == (1000,)
        np.testing.assert_array_equal(g2["floats"][:], floats)
        assert "doomed" not in g2
        assert g2["strs"][:].tolist() == ["x", "yy", "zzz"]
        assert sorted(g2.keys()) == ["floats", "outer", "strs"]

    verify(m.path)
    assert not (m.path / "doomed").exists()
    m.umount()
    view = assert_valid_archive(arch)
    assert not [k for k in view.refs if k.startswith("doomed")]
    assert not [k for k in view.refs if "partial" in k]
    assert set(k for k in view.refs if k.startswith("floats/")) == {
        "floats/.zarray",
        "floats/.zattrs",
        "floats/0",
        "floats/1",
    }
    assert not [n for n in tar_list(arch) if "partial" in n]
    m2 = mount(arch)
    verify(m2.path, "r+")
    m2.umount()
    out = json_from_output(lindi_gen("read-json", arch, "outer/inner/ints", "floats", "/"))
    assert out["outer/inner/ints"]["values"] == ints.tolist()
    np.testing.assert_array_equal(np.array(out["floats"]["values"], "f4"), floats)
    attrs = out["/"]["attrs"]
    assert attrs["a"] == 1 and attrs["b"] == [1, 2] and "error" in attrs["c"]  # lindi: no dicts


def _zarr2_style_put(root: Path, key: str, data: bytes) -> None:
    """What zarr-python 2's DirectoryStore does: a temporary file next to the key, renamed."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.partial"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def test_zarr2_style_write_temp_then_rename(rw, mount, lindi_gen):
    arch, m = rw()
    values = np.random.default_rng(15).standard_normal((4, 250))
    zarray = {
        "chunks": [1, 250],
        "compressor": None,
        "dtype": "<f8",
        "fill_value": 0.0,
        "filters": None,
        "order": "C",
        "shape": [4, 250],
        "zarr_format": 2,
    }
    _zarr2_style_put(m.path, "z/.zgroup", json.dumps({"zarr_format": 2}).encode())
    _zarr2_style_put(m.path, "z/.zattrs", json.dumps({"by": "zarr2"}).encode())
    _zarr2_style_put(m.path, "z/v/.zarray", json.dumps(zarray, indent=4).encode())
    for i in range(4):
        _zarr2_style_put(m.path, f"z/v/{i}.0", np.zeros(250).tobytes())
    for i in range(4):  # overwrite every chunk the same way
        _zarr2_style_put(m.path, f"z/v/{i}.0", values[i].tobytes())
    assert not [p for p in files_under(m.path) if "partial" in p]
    np.testing.assert_array_equal(zarr.open_array(m.path / "z" / "v", mode="r")[:], values)
    m.umount()
    view = assert_valid_archive(arch)
    for i in range(4):
        key = f"z/v/{i}.0"
        assert blob_name_ok(view.blob_member(key), key), view.refs[key]
        assert view.content(key) == values[i].tobytes()
    assert json.loads(view.content("z/v/.zarray")) == zarray
    assert not [n for n in tar_list(arch) if "partial" in n]
    m2 = mount(arch)
    np.testing.assert_array_equal(zarr.open_array(m2.path / "z" / "v", mode="r")[:], values)
    m2.umount()
    out = json_from_output(lindi_gen("read-json", arch, "z/v", "z"))
    np.testing.assert_array_equal(np.array(out["z/v"]["values"]), values)
    assert out["z"]["attrs"] == {"by": "zarr2"}


@pytest.fixture
def local_zarr(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A Zarr v2 directory on the local disk: nested groups, '/'-separated chunk keys,
    compressed and uncompressed arrays, attributes."""
    root = tmp_path / "src.zarr"
    rng = np.random.default_rng(16)
    g = zarr.open_group(root, mode="w", zarr_format=2)
    g.attrs["origin"] = "local"
    vals = {
        "a": rng.standard_normal((50, 60)),
        "grp/b": rng.integers(0, 100, 5000, dtype=np.int64),
        "grp/nested/c": np.arange(10, dtype="u1"),
    }
    g.create_array("a", shape=(50, 60), chunks=(25, 20), dtype="f8", compressors=None)[:] = vals[
        "a"
    ]
    b = g.create_array(
        "grp/b",
        shape=(5000,),
        chunks=(1000,),
        dtype="i8",
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    b[:] = vals["grp/b"]
    g.create_array("grp/nested/c", shape=(10,), dtype="u1")[:] = vals["grp/nested/c"]
    return root, vals


def _diff(a, b) -> None:
    res = run(["diff", "-r", str(a), str(b)])
    assert res.rc == 0, res.describe()


def test_cp_r_of_a_zarr_directory(rw, mount, local_zarr):
    src, vals = local_zarr
    arch, m = rw()
    res = run(["cp", "-r", src, m.path / "copy"])
    assert res.rc == 0, res.describe()
    _diff(src, m.path / "copy")
    m.umount()
    view = assert_valid_archive(arch)
    assert {k.removeprefix("copy/") for k in view.refs if k.startswith("copy/")} == set(
        files_under(src)
    )
    m2 = mount(arch)
    _diff(src, m2.path / "copy")
    g = zarr.open_group(m2.path / "copy", mode="r", zarr_format=2)
    for k, v in vals.items():
        np.testing.assert_array_equal(g[k][:], v)
    m2.umount()


def test_rsync_a(rw, mount, local_zarr):
    if not have_tool("rsync"):
        if IN_CI:
            pytest.fail("rsync is missing in CI (.ci/run installs it)")
        pytest.skip("rsync is not installed (apt-get install rsync); CI installs it")
    src, vals = local_zarr
    arch, m = rw()
    res = run(["rsync", "-a", f"{src}/", f"{m.path}/rs/"])
    assert res.rc == 0, res.describe()
    _diff(src, m.path / "rs")
    # a second run after a change: rsync rewrites the changed file through a temp + rename
    g = zarr.open_group(src, mode="r+", zarr_format=2)
    g["a"][0:25, 0:20] = 42.0
    vals["a"][0:25, 0:20] = 42.0
    # Times are not stored: every file of the mount shows the mount time, and rsync's quick
    # check (size + mtime) would skip a same-size file modified within that very second.
    os.utime(src / "a" / "0.0", (1_000_000_000, 1_000_000_000))
    res = run(["rsync", "-a", "--delete", f"{src}/", f"{m.path}/rs/"])
    assert res.rc == 0, res.describe()
    _diff(src, m.path / "rs")
    m.umount()
    view = assert_valid_archive(arch)
    assert not [k for k in view.refs if not k.startswith("rs/") and k != ".zgroup"], view.refs
    m2 = mount(arch)
    _diff(src, m2.path / "rs")
    np.testing.assert_array_equal(
        zarr.open_array(m2.path / "rs" / "a", mode="r", zarr_format=2)[:], vals["a"]
    )
    m2.umount()


def test_shell_redirection(rw, mount):
    arch, m = rw()
    script = (
        'set -e; cd "$1"; echo hello > f; echo world >> f; printf x >> f; : > empty; '
        "echo first > g; echo second > g; mkdir -p d/e; seq 1 500 > d/e/n; seq 501 600 >> d/e/n"
    )
    res = run(["bash", "-c", script, "sh", m.path])
    assert res.rc == 0, res.describe()
    numbers = "".join(f"{i}\n" for i in range(1, 601)).encode()
    expect = {"f": b"hello\nworld\nx", "empty": b"", "g": b"second\n", "d/e/n": numbers}
    for k, v in expect.items():
        assert rbytes(m.path / k) == v, k
    assert run(["bash", "-c", 'cat "$1"/f', "sh", m.path]).stdout == "hello\nworld\nx"
    m.umount()
    view = assert_valid_archive(arch)
    for k, v in expect.items():
        assert view.content(k) == v, k
    m2 = mount(arch)
    for k, v in expect.items():
        assert rbytes(m2.path / k) == v, k
    m2.umount()


def test_dd_seek_and_notrunc(rw, mount, tmp_path):
    arch, m = rw()
    f = m.path / "f"
    base = b"A" * 3000
    wbytes(f, base)
    xyz = tmp_path / "xyz"
    xyz.write_bytes(b"XYZ")
    blk = tmp_path / "blk"
    blk.write_bytes(rnd(512, 17))

    def dd(*args) -> None:
        res = run(["dd", *args, "status=none"])
        assert res.rc == 0, res.describe()

    dd(f"if={xyz}", f"of={f}", "bs=1", "seek=100", "conv=notrunc")
    expect_f = base[:100] + b"XYZ" + base[103:]
    assert rbytes(f) == expect_f
    dd(f"if={blk}", f"of={m.path / 'g'}", "bs=512", "seek=4")  # new file: a hole, then data
    expect_g = b"\0" * 2048 + rnd(512, 17)
    assert rbytes(m.path / "g") == expect_g
    wbytes(m.path / "h", base)
    dd(f"if={xyz}", f"of={m.path / 'h'}", "bs=1000", "seek=1")  # without notrunc: cut at 1003
    expect_h = base[:1000] + b"XYZ"
    assert rbytes(m.path / "h") == expect_h
    expect = {"f": expect_f, "g": expect_g, "h": expect_h}
    m.umount()
    view = assert_valid_archive(arch)
    for k, v in expect.items():
        assert view.content(k) == v, k
    m2 = mount(arch)
    for k, v in expect.items():
        assert rbytes(m2.path / k) == v, k
    m2.umount()


# -- one writer -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar", "d"])
def test_second_writable_mount_is_refused(rw, mount, kind):
    arch, m = rw(kind)
    wbytes(m.path / "f", b"committed")
    fsync_file(m.path / "f")
    m2 = mount(arch, None, check=False)
    res = m2.result
    assert res.rc != 0, res.describe()
    assert not m2.is_mounted()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.describe()
    assert lines[0].startswith("lindifuse: ") and str(arch) in lines[0], lines
    assert "writ" in lines[0], lines  # e.g. "already open for writing"
    # a read-only mount works meanwhile and sees the committed state
    ro = mount(arch, None, "--read-only")
    assert rbytes(ro.path / "f") == b"committed"
    assert errno_of(wbytes, ro.path / "g", b"g") == errno.EROFS
    ro.umount()
    wbytes(m.path / "f2", b"more")
    m.umount()
    assert set(assert_valid_archive(arch).refs) == {".zgroup", "f", "f2"}


# -- commits racing with the namespace ----------------------------------------------------------


def _no_errors_logged(m) -> None:
    errors = [line for line in m.log_text().splitlines() if " ERROR " in line]
    assert not errors, "daemon logged errors:\n" + m.log_text()[-5000:]


def test_zarr_writes_racing_the_flush_timer(rw, mount):
    """Many small zarr writes (key.<uuid>.partial -> rename) for a few seconds, with fsyncs of
    another file (each flushes the archive) in between: every blob is named after its final
    key, nothing is lost, the daemon logs no error."""
    arch, m = rw()
    rng = np.random.default_rng(19)
    data = rng.standard_normal((1200, 300))
    g = zarr.open_group(m.path, mode="r+", zarr_format=2)
    a = g.create_array("x", shape=data.shape, chunks=(1, 300), dtype="f8", compressors=None)
    side = os.open(m.path / "side", os.O_CREAT | os.O_WRONLY)
    try:
        for i in range(0, 1200, 50):
            a[i : i + 50] = data[i : i + 50]
            os.pwrite(side, b"s" * 2000, 0)
            os.fsync(side)
    finally:
        os.close(side)
    np.testing.assert_array_equal(a[:], data)
    assert m.daemon_alive()
    _no_errors_logged(m)
    m.umount()
    view = assert_valid_archive(arch)
    bad = {k: v for k, v in view.refs.items() if isinstance(v, list) and "partial" in v[0]}
    assert not bad, f"{len(bad)} chunks stored under a temporary name, e.g. {next(iter(bad))}"
    assert not [n for n in tar_list(arch) if "partial" in n]
    for i in range(0, 1200, 97):
        assert view.content(f"x/{i}.0") == data[i].tobytes()


def _during_timer_commit(arch: Path, action) -> None:
    """Run ``action()`` while the flush timer is appending a big closed file to ``arch``."""
    size0 = arch.stat().st_size
    assert wait_until(lambda: arch.stat().st_size > size0, 5.0, interval=0), "no commit"
    action()


def test_namespace_changes_during_a_timer_commit(rw, mount):
    """rename, unlink and a new write of a file while the timer is committing it: the archive
    ends up with the file's final name and content (no resurrected name, no lost write)."""
    arch, m = rw()
    big = 24 << 20
    blk = b"a" * (1 << 20)

    def write_big(name: str) -> Path:
        p = m.path / name
        with open(p, "wb") as f:
            for _ in range(big >> 20):
                f.write(blk)
        return p

    p = write_big("renamed")
    _during_timer_commit(arch, lambda: os.rename(p, m.path / "renamed.final"))
    p = write_big("unlinked")
    _during_timer_commit(arch, lambda: os.unlink(p))
    p = write_big("rewritten")

    def rewrite():
        with open(p, "r+b") as f:
            f.write(b"Z")

    _during_timer_commit(arch, rewrite)
    assert m.daemon_alive()
    assert sorted(os.listdir(m.path)) == [".zgroup", "renamed.final", "rewritten"]
    assert rbytes(m.path / "rewritten")[:2] == b"Za"
    _no_errors_logged(m)
    m.umount()
    view = assert_valid_archive(arch)
    assert set(view.refs) == {".zgroup", "renamed.final", "rewritten"}
    assert len(view.content("renamed.final")) == big
    c = view.content("rewritten")
    assert len(c) == big and c[:2] == b"Za"


# -- unmount, stop, crash -------------------------------------------------------------------


def test_umount_while_a_file_is_open(rw):
    arch, m = rw()
    f = open(m.path / "open", "wb")  # noqa: SIM115
    try:
        f.write(b"data")
        f.flush()
        res = run_cli("umount", m.path)
        assert res.rc == 1 and len(res.stderr.strip().splitlines()) == 1, res.describe()
        assert "busy" in res.stderr.lower(), res.describe()
        assert m.is_mounted() and rbytes(m.path / "open") == b"data"
    finally:
        f.close()
    m.umount()
    assert ArchiveView(arch).refs["open"] == "data"


def test_sigterm_flushes_everything(rw):
    import signal

    arch, m = rw()
    big = rnd(5000, 21)
    wbytes(m.path / "closed", big)
    f = open(m.path / "still-open", "wb")  # noqa: SIM115
    f.write(b"partial content")
    f.flush()
    m.kill(signal.SIGTERM)
    with contextlib.suppress(OSError):  # the file system is gone: ENOTCONN
        f.close()
    assert wait_until(lambda: not m.is_mounted(), 10), "SIGTERM did not unmount"
    view = assert_valid_archive(arch)
    assert view.content("closed") == big
    assert view.content("still-open") == b"partial content"


def test_kill_during_writes_then_recover(rw, mount):
    """SIGKILL while zarr writes: the next writable mount opens the state of the last commit
    (fsynced data included), the archive checks clean after it, lindi-readable."""
    import threading

    arch, m = rw()
    synced = rnd(3000, 22)
    wbytes(m.path / "synced", synced)
    fsync_file(m.path / "synced")
    g = zarr.open_group(m.path, mode="r+", zarr_format=2)
    a = g.create_array("x", shape=(100000, 100), chunks=(1, 100), dtype="f8", compressors=None)
    stop = threading.Event()

    def writer():
        with contextlib.suppress(Exception):
            for i in range(0, 100000, 10):
                if stop.is_set():
                    return
                a[i : i + 10] = float(i)

    t = threading.Thread(target=writer)
    t.start()
    try:

        def flushed_some() -> bool:
            st = json.loads(os.getxattr(m.path, "user.lindifuse.stats"))
            return arch.stat().st_size > 400_000 and st["writer"]["flushes"] >= 2

        # Kill once batches of chunks have been committed (flushes run about once a second).
        assert wait_until(flushed_some, 30), "writes did not start"
        m.kill()
    finally:
        stop.set()
        t.join(30)
    m2 = mount(arch)
    assert rbytes(m2.path / "synced") == synced
    x = zarr.open_array(m2.path / "x", mode="r")
    n = len([k for k in os.listdir(m2.path / "x") if not k.startswith(".")])
    assert n > 100, n  # commits happened before the kill
    np.testing.assert_array_equal(x[0:10], np.zeros((10, 100)))
    m2.umount()
    assert_valid_archive(arch)


def test_flush_control_commits_durably(rw, mount):
    """The root's ``user.lindifuse.flush`` (what ``lindifuse umount`` sets first) commits every
    closed file durably: it survives SIGKILL of the daemon right after."""
    arch, m = rw("tar")
    wbytes(m.path / "kept.bin", rnd(5000, seed=3))
    os.setxattr(m.path, "user.lindifuse.flush", b"1")
    m.kill()
    m2 = mount(arch)
    assert rbytes(m2.path / "kept.bin") == rnd(5000, seed=3)


def test_flush_control_is_refused_on_read_only_mounts(new_archive, mount):
    m = mount(new_archive("tar"), None, "--read-only")
    assert errno_of(os.setxattr, m.path, "user.lindifuse.flush", b"1") == errno.EROFS
