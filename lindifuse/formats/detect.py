"""Content detection: which kind of SOURCE a file is, from its first bytes.

``sniff(head, where)`` answers ``tar``, ``json`` or ``hdf5`` for the first ``HEAD_BYTES`` of a
source (a ``.lindi.d`` is a directory and is recognised by its ``lindi.json``). The name is only a
hint, used in error messages and to decide whether to look for an HDF5 superblock after a user
block. A new format adds its signature here."""

from __future__ import annotations

from lindifuse.errors import FormatError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HEAD_BYTES = 1536  # first tar header + the 1024-byte .tar_entry.json data
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".he5", ".nwb")
# The superblock sits at 0 or at a power of two from 512 on (after a user block).
SUPERBLOCK_OFFSETS = tuple([0] + [512 * 2**i for i in range(14)])  # up to 4 MiB


def is_tar_head(head: bytes) -> bool:
    """The first bytes of a file start a ustar (POSIX tar) archive."""
    return len(head) >= 262 and head[257:262] == b"ustar"


def hdf5_superblock(head: bytes) -> int | None:
    """Offset of the HDF5 signature within ``head`` (0 or a user-block size), or None."""
    for off in SUPERBLOCK_OFFSETS:
        if off + 8 > len(head):
            return None
        if head[off : off + 8] == HDF5_MAGIC:
            return off
    return None


def looks_hdf5(where: str) -> bool:
    return where.lower().endswith(HDF5_EXTENSIONS)


def sniff(head: bytes, where: str) -> str:
    """Kind of a file from its first bytes: 'tar', 'json' or 'hdf5'; FormatError otherwise."""
    if hdf5_superblock(head) is not None:
        return "hdf5"
    if is_tar_head(head):
        return "tar"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "json"
    if where.endswith(".tar"):
        if not head:
            raise FormatError(f"{where}: empty file")
        raise FormatError(f"{where}: not a tar archive (truncated or damaged header)")
    if not stripped:
        raise FormatError(f"{where}: empty file")
    if looks_hdf5(where):
        raise FormatError(f"{where}: not an HDF5 file (no HDF5 signature; truncated or damaged?)")
    raise FormatError(f"{where}: not a LINDI file (neither JSON, tar nor HDF5)")
