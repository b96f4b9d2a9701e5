"""What both archive kinds share: the ``Archive`` protocol, low-level I/O helpers, lindi.json
loading and the members lindi.json references.

Synchronous file I/O, no FUSE, no trio: the FUSE layer calls this from a worker thread. One
writer per archive (a writable open takes an exclusive ``flock``); reads of committed members
(:meth:`read_member`, :meth:`pread`) may run concurrently with the writer.

Usage: ``a = open_archive(path, writable=True)``; for each new chunk ``m = a.append_blob(
"blobs/" + key, data)`` and ``a.rfs["refs"][key] = ["./" + m.name, 0, m.s]``; small content goes
inline (:func:`lindifuse.formats.tarfmt.inline_value`); then ``a.commit(a.rfs)`` makes it all durable.
Nothing appended is visible to a reader of the file before the commit that references it."""

from __future__ import annotations

import os
import random
import string
from typing import Any, Protocol, runtime_checkable

import orjson

from lindifuse.errors import FormatError
from lindifuse.formats.tarfmt import (
    ENTRY_NAME,
    INDEX_NAME,
    LINDI_JSON_NAME,
    Member,
)

EMPTY_RFS: dict[str, Any] = {"refs": {".zgroup": {"zarr_format": 2}}}
"""What lindi writes for a new, empty file (``LindiH5pyFile._create_empty_lindi_file``)."""

SPARE_KEY = "lindifuse"
"""Top-level key of the index under which the spare members are listed."""
MAX_SPARES = 4
TMP_DIR = ".lindifuse-tmp"
"""Folder of a ``.lindi.d`` holding files being written (removed on a writable open)."""
COPY_CHUNK = 8 << 20

Data = bytes | bytearray | memoryview | str | os.PathLike[str]
"""Blob content: bytes, or the path of a local file holding it (a staged write)."""


# ----------------------------------------------------------------------------------------------
# low-level helpers (os.* called through the module so tests can intercept them)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (fewer only at end of file)."""
    parts = []
    while size > 0:
        b = os.pread(fd, size, offset)
        if not b:
            break
        parts.append(b)
        size -= len(b)
        offset += len(b)
    return b"".join(parts)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def random_suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=10))


def trash_name(name: str) -> str:
    """lindi's name for a trashed member: ``.trash/<name>.<10 random lowercase letters>``."""
    return f".trash/{name}.{random_suffix()}"


def data_size(data: Data) -> int:
    if isinstance(data, bytes | bytearray | memoryview):
        return memoryview(data).nbytes
    return os.stat(data).st_size


def check_blob_name(name: str) -> None:
    parts = name.split("/")
    if not name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid member name {name!r}")
    if name in (ENTRY_NAME, INDEX_NAME, LINDI_JSON_NAME) or parts[0] in (".trash", TMP_DIR):
        raise ValueError(f"reserved member name {name!r}")


def referenced_members(rfs: dict[str, Any]) -> dict[str, int]:
    """``{member name: bytes needed}`` for every ``./`` reference of ``rfs``.

    Templates are expanded first, as lindi does before it tests for ``./``. The value is the
    largest ``offset + size`` among the references to that member.
    """
    refs = rfs.get("refs")
    templates = rfs.get("templates") or {}
    out: dict[str, int] = {}
    if not isinstance(refs, dict):
        return out
    for v in refs.values():
        if type(v) is not list or not v or not isinstance(v[0], str):
            continue
        target = v[0]
        if "{{" in target and isinstance(templates, dict):
            for k, t in templates.items():
                if isinstance(t, str):
                    target = target.replace("{{" + k + "}}", t)
        if not target.startswith("./"):
            continue
        need = 0
        if len(v) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in v[1:]):
            need = v[1] + v[2]
        name = target[2:]
        out[name] = max(out.get(name, 0), need)
    return out


def load_rfs(raw: bytes, where: str) -> dict[str, Any]:
    try:
        rfs = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FormatError(f"{where}: lindi.json is not valid JSON") from None
    if not isinstance(rfs, dict) or not isinstance(rfs.get("refs"), dict):
        raise FormatError(f"{where}: lindi.json has no 'refs' object")
    return rfs


# ----------------------------------------------------------------------------------------------
# the common interface


@runtime_checkable
class Archive(Protocol):
    """What the FUSE layer needs from a writable container."""

    path: str
    writable: bool
    rfs: dict[str, Any]

    def member(self, name: str) -> Member | None:
        """Where member ``name`` is (for a directory: o = d = 0, s = file size), or None."""
        ...

    def read_member(self, name: str) -> bytes:
        """The whole content of member ``name`` (KeyError when absent)."""
        ...

    def append_blob(self, name: str, data: Data) -> Member:
        """Store ``data`` as a new member named ``name`` (``.v2``, ``.v3``... if taken).

        Not visible to readers of the file until a :meth:`commit` whose rfs references it.
        """
        ...

    def commit(self, rfs: dict[str, Any], *, durable: bool = True) -> None:
        """Make ``rfs`` (and every blob appended so far) the archive's state, atomically.

        With ``durable`` the state survives power loss when this returns (fsync); without,
        the old-or-new guarantee still holds for a process crash.
        """
        ...

    def close(self) -> None:
        """Release the file (does not commit)."""
        ...


def atomic_write(path: str, data: bytes, durable: bool = True, tmp_dir: str | None = None) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync of the folder.

    The temporary file is made in ``tmp_dir`` (same file system) when given, else next to
    ``path``.
    """
    if tmp_dir is not None:
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = os.path.join(tmp_dir, f"{os.path.basename(path)}.{random_suffix()}")
    else:
        tmp = f"{path}.{random_suffix()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        pwrite_all(fd, data, 0)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
