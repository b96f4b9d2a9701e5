"""The persistent cache must be node-local: a cache directory on a network file system is refused
at mount with one line, unless --allow-remote-cache.

The detection (lindifuse.cache.fstype) is pure logic over statfs magics and mount-table types,
tested here with the values NFS, Lustre, GPFS, CIFS... report. The refusal goes through the CLI
with a real network-type file system: a cache directory inside another lindifuse mount
(``fuse.lindifuse``, whose bytes live elsewhere), the one such file system every test machine
has.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import run_cli
from plain_lindi import make_plain

from lindifuse.cache.fstype import (
    FUSE_MAGIC,
    classify,
    existing_ancestor,
    mount_type_of,
    remote_filesystem,
    statfs_magic,
)

EXT4, TMPFS, XFS = 0xEF53, 0x01021994, 0x58465342


@pytest.mark.parametrize(
    ("magic", "fstype", "want"),
    [
        (0x6969, "nfs4", "nfs"),
        (0x6969, None, "nfs"),
        (0x0BD00BD0, "lustre", "lustre"),
        (0x47504653, "gpfs", "gpfs"),
        (0xFF534D42, "cifs", "cifs"),
        (0xFE534D42, "smb3", "smb2"),
        (0x19830326, "beegfs", "beegfs"),
        (0x00C36400, "ceph", "ceph"),
        (0x01021997, "9p", "9p"),
        (None, "nfs4", "nfs4"),  # statfs unavailable: the mount table decides
        (FUSE_MAGIC, "fuse.sshfs", "fuse.sshfs"),
        (FUSE_MAGIC, "fuse.lindifuse", "fuse.lindifuse"),
        (FUSE_MAGIC, "fuse.s3fs", "fuse.s3fs"),
        (FUSE_MAGIC, "fuse.bindfs", None),  # a local FUSE overlay
        (FUSE_MAGIC, "fuseblk", None),  # ntfs-3g on a local disk
        (EXT4, "ext4", None),
        (XFS, "xfs", None),
        (TMPFS, "tmpfs", None),
        (None, None, None),
    ],
)
def test_classify(magic, fstype, want):
    assert classify(magic, fstype) == want


def test_mount_type_of_takes_the_longest_mount_point_and_the_top_of_a_stack():
    table = "\n".join(
        [
            "22 1 8:1 / / rw - ext4 /dev/vda rw",
            "30 22 0:40 / /home rw - nfs4 srv:/home rw",
            "31 22 0:41 / /home2 rw - xfs /dev/vdb rw",
            "32 30 0:42 / /home/ada/scratch\\040x rw - tmpfs tmpfs rw",
            "33 32 0:43 / /home/ada/scratch\\040x rw - fuse.sshfs ada@h: rw",
        ]
    )
    assert mount_type_of("/home/ada/.cache/lindifuse", table) == "nfs4"
    assert mount_type_of("/home2/x", table) == "xfs"  # not inside /home
    assert mount_type_of("/home", table) == "nfs4"
    assert mount_type_of("/home/ada/scratch x/c", table) == "fuse.sshfs"
    assert mount_type_of("/tmp/c", table) == "ext4"


def test_this_machine(tmp_path):
    """statfs through ctypes gives the magic the kernel reports; tmp_path is local here."""
    assert statfs_magic(str(tmp_path)) not in (None, 0)
    assert remote_filesystem(str(tmp_path / "not" / "yet")) is None
    assert existing_ancestor(str(tmp_path / "not" / "yet")) == str(tmp_path.resolve())


# -- through the CLI ------------------------------------------------------------------------------


@pytest.fixture
def outer(mount, tmp_path):
    """A lindifuse mount: a file system whose type (fuse.lindifuse) is a network one."""
    plain = make_plain(tmp_path / "plain")
    (tmp_path / "outer").mkdir()
    return mount(
        plain.sources["plain.lindi.json"],
        tmp_path / "outer",
        "--cache-dir",
        tmp_path / "outer-cache",
    )


@pytest.fixture
def source(tmp_path) -> Path:
    return make_plain(tmp_path / "inner-src").sources["plain.lindi.json"]


def test_a_cache_on_a_network_file_system_is_refused(outer, source, tmp_path):
    mp = tmp_path / "inner"
    mp.mkdir()
    cache = outer.path / "sub" / "cache"
    rc, out, err = run_cli("mount", source, mp, "--cache-dir", cache, timeout=60)
    assert rc == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lindifuse: {cache}: ")
    assert "fuse.lindifuse" in lines[0] and "--allow-remote-cache" in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("force", [["--allow-remote-cache"], ["-o", "allow_remote_cache"]])
def test_forced_or_no_cache_mounts(outer, source, mount, tmp_path, force):
    cache = outer.path / "cache"
    (tmp_path / "inner").mkdir()
    m = mount(source, tmp_path / "inner", "--cache-dir", cache, *force)
    assert (m.path / ".zgroup").exists()
    m.umount()
    (tmp_path / "inner2").mkdir()
    m2 = mount(source, tmp_path / "inner2", "--cache-dir", cache, "--no-cache")
    assert (m2.path / ".zgroup").exists()


def test_a_forced_network_cache_is_read_not_mapped(tmp_path, monkeypatch):
    """Mapped pages of a network file system fail as SIGBUS, not as an error the daemon can
    log and survive: a cache forced there reads its index with pread (READ_MMAP off). (No NFS
    here, and SQLite cannot open its index on the outer lindifuse mount: the file system type
    is what is faked.)"""
    import argparse

    import trio

    from lindifuse.cache import fstype
    from lindifuse.cache.disk import READ_MMAP
    from lindifuse.service.parts import open_disk_cache

    async def read_mmap(directory: Path, force: bool) -> int:
        opts = argparse.Namespace(cache_dir=str(directory), allow_remote_cache=force)
        d = await open_disk_cache(opts)
        assert d is not None
        try:
            return d.store.read_mmap
        finally:
            await d.aclose()

    assert trio.run(read_mmap, tmp_path / "local", True) == READ_MMAP
    assert trio.run(read_mmap, tmp_path / "local", False) == READ_MMAP
    monkeypatch.setattr(fstype, "remote_filesystem", lambda path: "nfs")
    assert trio.run(read_mmap, tmp_path / "nfs", True) == 0
