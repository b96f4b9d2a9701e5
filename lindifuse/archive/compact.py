"""Copy an archive keeping only what its lindi.json references (``lindifuse compact``): trashed
JSON members, spares, overwritten and deleted blobs are left out. The output is written to a
temporary name and renamed, so a failed compaction never leaves a half-written OUT."""

from __future__ import annotations

import errno
import os
from typing import Any

from lindifuse.archive.base import (
    COPY_CHUNK,
    fsync_dir,
    pwrite_all,
    random_suffix,
    referenced_members,
)
from lindifuse.archive.create import create, is_dir_path
from lindifuse.archive.directory import DirArchive
from lindifuse.archive.open import open_archive
from lindifuse.archive.tar import TarArchive, copy_file
from lindifuse.errors import FormatError
from lindifuse.formats import tarfmt
from lindifuse.formats.tarfmt import (
    BLOCK,
    ENTRY_NAME,
    ENTRY_SIZE,
    INDEX_NAME,
    INITIAL_INDEX_SIZE,
    LINDI_JSON_NAME,
    TRAILER,
    Member,
    padded,
)


def compact(src: str, dst: str, *, durable: bool = True) -> list[str]:
    """Write ``dst``: ``src`` without trash, spares or members that lindi.json does not reference.

    ``dst`` is a ``.lindi.d`` folder when its name ends in ``.d`` and a ``.lindi.tar``
    otherwise (so this also converts between the two). Member names are kept, so lindi.json is
    unchanged. Written under a temporary name and renamed. Returns the names dropped.
    """
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, f"{dst}: already exists")
    a = open_archive(src, writable=False)
    try:
        rfs = a.rfs
        wanted = referenced_members(rfs)
        keep: list[Member] = []
        for name in wanted:
            m = a.member(name)
            if m is None:
                raise FormatError(f"{src}: lindi.json references missing member {name!r}")
            keep.append(m)
        if isinstance(a, TarArchive):
            keep.sort(key=lambda m: m.o)
            special = (ENTRY_NAME, INDEX_NAME, LINDI_JSON_NAME)
            dropped = sorted(n for n in a.members if n not in wanted and n not in special)
        else:
            dropped = []
        tmp = f"{dst.rstrip('/')}.{random_suffix()}.tmp"
        if is_dir_path(dst):
            tmp += ".d"
            create(tmp, rfs, durable=False)
            d = DirArchive.open(tmp, writable=True)
            try:
                for m in keep:
                    d.append_blob(m.name, _member_bytes(a, m))
                d.commit(rfs, durable=durable)
            finally:
                d.close()
        else:
            _write_compact_tar(tmp, a, rfs, keep)
            if durable:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.rename(tmp, dst)
        if durable:
            fsync_dir(os.path.dirname(os.path.abspath(dst)))
        return dropped
    finally:
        a.close()


def _member_bytes(a: TarArchive | DirArchive, m: Member) -> bytes:
    return a.read_member(m.name)


def _write_compact_tar(
    path: str, a: TarArchive | DirArchive, rfs: dict[str, Any], keep: list[Member]
) -> None:
    """Lay out entry, index, lindi.json, then the kept members, then the trailer."""
    text = tarfmt.dump_lindi_json(rfs)
    lj_size = tarfmt.grown_size(len(text))
    heads = [len(tarfmt.encode_headers(m.name, m.s)) for m in keep]
    entry = Member(ENTRY_NAME, 0, BLOCK, ENTRY_SIZE)
    idx_size = INITIAL_INDEX_SIZE
    while True:
        index = Member(INDEX_NAME, entry.end, entry.end + BLOCK, idx_size)
        lj = Member(LINDI_JSON_NAME, index.end, index.end + BLOCK, lj_size)
        pos = lj.end
        placed = []
        for m, h in zip(keep, heads, strict=True):
            placed.append(Member(m.name, pos, pos + h, m.s))
            pos = placed[-1].end
        raw_index = tarfmt.encode_index([entry, index, lj, *placed])
        if len(raw_index) <= idx_size:
            break
        idx_size = tarfmt.grown_size(len(raw_index), INITIAL_INDEX_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        pwrite_all(fd, tarfmt.encode_header(ENTRY_NAME, ENTRY_SIZE), 0)
        pwrite_all(fd, tarfmt.encode_entry(index), BLOCK)
        pwrite_all(fd, tarfmt.encode_header(INDEX_NAME, idx_size), index.o)
        pwrite_all(fd, tarfmt.padded_json(raw_index, idx_size), index.d)
        pwrite_all(fd, tarfmt.encode_header(LINDI_JSON_NAME, lj_size), lj.o)
        pwrite_all(fd, tarfmt.padded_json(text, lj_size), lj.d)
        for src_m, m in zip(keep, placed, strict=True):
            pwrite_all(fd, tarfmt.encode_headers(m.name, m.s), m.o)
            if isinstance(a, TarArchive):
                _copy_fd_range(a.fileno(), src_m.d, fd, m.d, m.s)
            else:
                copy_file(a._file(m.name), fd, m.d, m.s)
            pwrite_all(fd, b"\0" * (padded(m.s) - m.s), m.d + m.s)
        pwrite_all(fd, TRAILER, pos)
    finally:
        os.close(fd)


def _copy_fd_range(sfd: int, soff: int, dfd: int, doff: int, size: int) -> None:
    done = 0
    while done < size:
        b = os.pread(sfd, min(COPY_CHUNK, size - done), soff + done)
        if not b:
            raise FormatError(f"source truncated at offset {soff + done}")
        pwrite_all(dfd, b, doff + done)
        done += len(b)
