"""``.lindi.d`` as a writable archive: :class:`DirArchive`.

``DirArchive``: blobs are files under the directory, written to a temporary name and renamed;
lindi.json is replaced atomically (temporary file, fsync, rename, fsync of the directory) after the
blobs and their directories are fsynced."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from typing import Any

from lindifuse.archive.base import (
    TMP_DIR,
    Data,
    atomic_write,
    check_blob_name,
    data_size,
    fsync_dir,
    load_rfs,
    pwrite_all,
    random_suffix,
)
from lindifuse.errors import SourceError
from lindifuse.formats import tarfmt
from lindifuse.formats.tarfmt import (
    LINDI_JSON_NAME,
    Member,
)

# ----------------------------------------------------------------------------------------------
# .lindi.d


class DirArchive:
    """A local ``.lindi.d`` directory: ``lindi.json`` plus the files its ``./`` refs name.

    Blobs are written to ``.lindifuse-tmp/`` and renamed into place (so a file under its final
    name is always complete); :meth:`commit` fsyncs them and their folders, then replaces
    lindi.json atomically. Same attributes as :class:`TarArchive` except ``members``/``end``.
    """

    def __init__(self) -> None:
        raise TypeError("use DirArchive.open() or lindifuse.archive.create()")

    @classmethod
    def open(cls, path: str, *, writable: bool = False) -> DirArchive:
        """Open and validate the directory; with ``writable``, lock it and clear temp files."""
        self = object.__new__(cls)
        self.path = os.path.normpath(path)
        self.writable = writable
        self.recovered = []
        self._pending: list[str] = []
        self._lock_fd = -1
        lj = os.path.join(path, LINDI_JSON_NAME)
        try:
            with open(lj, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise SourceError(f"{path}: cannot read lindi.json: {e.strerror}") from None
        self.rfs = load_rfs(raw, path)
        if writable:
            self._lock_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise SourceError(f"{path}: already open for writing") from None
            tmp = os.path.join(path, TMP_DIR)
            if os.path.isdir(tmp):
                n = len(os.listdir(tmp))
                shutil.rmtree(tmp)
                if n:
                    self.recovered.append(f"removed {n} unfinished file(s) in {TMP_DIR}")
        return self

    def _file(self, name: str) -> str:
        return os.path.join(self.path, *name.split("/"))

    def member(self, name: str) -> Member | None:
        try:
            st = os.stat(self._file(name))
        except OSError:
            return None
        return Member(name, 0, 0, st.st_size) if stat.S_ISREG(st.st_mode) else None

    def read_member(self, name: str) -> bytes:
        try:
            with open(self._file(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise KeyError(name) from None

    def unique_name(self, name: str) -> str:
        if not os.path.lexists(self._file(name)):
            return name
        v = 2
        while os.path.lexists(self._file(f"{name}.v{v}")):
            v += 1
        return f"{name}.v{v}"

    def append_blob(self, name: str, data: Data) -> Member:
        """Write ``data`` to the file ``name`` (or ``name.vN``) via a temporary file + rename."""
        if not self.writable:
            raise PermissionError(errno.EROFS, f"{self.path}: opened read-only")
        check_blob_name(name)
        name = self.unique_name(name)
        tmpdir = os.path.join(self.path, TMP_DIR)
        os.makedirs(tmpdir, exist_ok=True)
        tmp = os.path.join(tmpdir, random_suffix())
        if isinstance(data, bytes | bytearray | memoryview):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                pwrite_all(fd, data, 0)
            finally:
                os.close(fd)
        else:
            shutil.copyfile(os.fspath(data), tmp)
        final = self._file(name)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(tmp, final)
        self._pending.append(final)
        return Member(name, 0, 0, data_size(data))

    def commit(self, rfs: dict[str, Any], *, durable: bool = True) -> None:
        """fsync the new blobs and their folders, then replace lindi.json atomically."""
        if not self.writable:
            raise PermissionError(errno.EROFS, f"{self.path}: opened read-only")
        if durable:
            dirs = set()
            for p in self._pending:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                d = os.path.dirname(p)
                while len(d) > len(self.path):  # new folders must be durable in their parents
                    dirs.add(d)
                    d = os.path.dirname(d)
            if dirs:
                dirs.add(self.path)  # before lindi.json names anything in them
            for d in sorted(dirs, key=len, reverse=True):
                fsync_dir(d)
        atomic_write(
            os.path.join(self.path, LINDI_JSON_NAME),
            tarfmt.dump_lindi_json(rfs),
            durable,
            tmp_dir=os.path.join(self.path, TMP_DIR),
        )
        self._pending.clear()
        self.rfs = rfs

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> DirArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
