"""Is a directory on a network file system? The persistent cache's node-local guard.

The persistent cache is SQLite in WAL mode: its readers and writers coordinate through a shared
memory file (``-shm``) and POSIX locks, which only work where every process sees the same kernel.
On NFS, CIFS/SMB, Lustre, GPFS and the like that is not so (or locking is emulated and slow, or
silently local to each client): a cache there can be corrupted by two nodes, or lock up. So
``lindifuse mount`` refuses a cache directory on one, unless forced (``--allow-remote-cache``).

Two sources of truth, combined by :func:`classify` (pure, unit-tested):

* the ``f_type`` magic of ``statfs(2)`` (through ctypes: ``os.statvfs`` does not report it),
  which names kernel file systems whatever they are called in the mount table;
* the mount table's type (``/proc/self/mountinfo``), for FUSE file systems, whose magic is
  FUSE's own: ``fuse.sshfs`` is remote, ``fuse.lindifuse`` too, a local FUSE overlay is not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from lindifuse.mounttable import mountinfo_entries

# statfs f_type values (linux/magic.h and the file systems' own headers) of file systems whose
# storage is on other machines, or shared by several.
REMOTE_MAGIC: dict[int, str] = {
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x19830326: "beegfs",
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0x6B414653: "kafs",
    0x01021997: "9p",
    0x73757245: "coda",
    0x564C: "ncp",
    0xAAD7AAEA: "panfs",
    0x7461636F: "ocfs2",
    0x01161970: "gfs2",
    0x20030528: "orangefs",
    0x013111A8: "ibrix",
}
FUSE_MAGIC = 0x65735546

# mount-table types of network file systems (also when the magic is unknown or unavailable)
REMOTE_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "afs",
        "9p",
        "coda",
        "ncpfs",
        "panfs",
        "ocfs2",
        "gfs2",
        "orangefs",
        "pvfs2",
        "wekafs",
        "glusterfs",
        "davfs",
    }
)
# FUSE subtypes (``fuse.<name>``) that keep their data elsewhere
REMOTE_FUSE = frozenset(
    {
        "sshfs",
        "s3fs",
        "gcsfuse",
        "rclone",
        "juicefs",
        "goofys",
        "glusterfs",
        "ceph-fuse",
        "cephfs",
        "mountpoint-s3",
        "blobfuse",
        "blobfuse2",
        "davfs",
        "lindifuse",
        "beegfs",
        "lizardfs",
        "moosefs",
        "mfs",
        "seaweedfs",
        "alluxio-fuse",
        "cvmfs",
    }
)


def classify(magic: int | None, fstype: str | None) -> str | None:
    """The name of the network file system described by ``magic`` (statfs f_type) and
    ``fstype`` (the mount table's type), or None for a local one."""
    if magic is not None and magic in REMOTE_MAGIC:
        return REMOTE_MAGIC[magic]
    if fstype:
        base = fstype.lower()
        if base in REMOTE_TYPES:
            return base
        if base.startswith(("fuse.", "fuseblk.")):
            sub = base.split(".", 1)[1]
            if sub in REMOTE_FUSE:
                return base
    return None


def mount_type_of(path: str, mountinfo: str) -> str | None:
    """The mount-table type of the mount holding ``path`` (an absolute, resolved path): the
    longest mount point that contains it, the last listed among equals (the top of a stack)."""
    best, best_len = None, -1
    for e in mountinfo_entries(mountinfo):
        mp = e.mountpoint
        inside = path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= best_len:
            best, best_len = e.fstype, len(mp)
    return best


class _Statfs(ctypes.Structure):
    # struct statfs begins with f_type (__fsword_t, a long) on every Linux ABI; the rest of the
    # buffer is room for the other fields, which are not read.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


def statfs_magic(path: str) -> int | None:
    """statfs(2)'s f_type for ``path``, or None when it cannot be had."""
    try:
        # glibc's soname first: find_library runs `ldconfig -p` (tens of ms at every mount)
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        except OSError:
            return None
    buf = _Statfs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


def existing_ancestor(path: str) -> str:
    """``path`` resolved, or its nearest existing parent (a cache directory may not exist yet)."""
    p = os.path.realpath(os.path.abspath(path))
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    return p


def remote_filesystem(path: str, mountinfo_file: str = "/proc/self/mountinfo") -> str | None:
    """The network file system ``path`` (or where it would be created) lives on, or None."""
    p = existing_ancestor(path)
    try:
        with open(mountinfo_file) as f:
            table = f.read()
    except OSError:
        table = ""
    return classify(statfs_magic(p), mount_type_of(p, table) if table else None)
