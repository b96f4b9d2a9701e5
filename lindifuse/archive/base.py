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
import threading
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


WRITEBACK_STEP = 8 << 20
"""Bytes appended to an archive between two :func:`start_writeback` calls."""
_PAGE = 4096
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
_sync_file_range: Any = None  # libc's sync_file_range once looked up; False when unavailable


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing ``length`` bytes of ``fd`` at ``offset`` to disk, without waiting for it.

    ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` (Linux; through libc, as ``os`` has no wrapper).
    Why: a 256 MiB write stays far below the kernel's dirty thresholds, so without this every
    appended page is first written at the commit's ``fsync`` (about 0.15 s of a 0.2 s
    ``lindifuse umount`` after a zarr write, measured); started as the data arrives, that
    fsync mostly finds clean pages. It only starts writeback: it makes nothing durable (no
    metadata, no cache flush), so every commit still fsyncs exactly as before. It may wait for
    the device's request queue, so call it from a worker thread, never the event loop's.
    Returns False, silently, where the call is unavailable (not Linux, not glibc) or fails.
    """
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            f = ctypes.CDLL(None, use_errno=True).sync_file_range
            f.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            f.restype = ctypes.c_int
            _sync_file_range = f
        except (OSError, AttributeError, ImportError):
            _sync_file_range = False
    if not _sync_file_range or length <= 0:
        return False
    return _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0


def writeback_range(start: int, end: int) -> tuple[int, int]:
    """``(offset, length)`` of the whole pages of ``[start, end)``, the page holding ``end``
    left out: an archive's next append rewrites it (its trailer becomes a header), and a page
    rewritten while under writeback would only be written twice."""
    first = start - start % _PAGE
    last = end - end % _PAGE
    return first, max(0, last - first)


class Writeback:
    """Starts writeback (:func:`start_writeback`) of ranges of one file in a thread of its own.

    Why a thread: the call does the writeback's submission work (block allocation, building the
    requests) in the caller's context and may wait for the device's queue; done in the thread
    that appends, it would hold up the next append (and the FUSE writer's lock) for as long.
    Ranges requested while the thread is busy are merged into one. :meth:`close` waits for the
    thread, so the file descriptor is never used after the caller closes it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._todo: tuple[int, int] | None = None  # [start, end) not yet handed to the kernel
        self._closed = False
        self._thread: threading.Thread | None = None

    def request(self, offset: int, length: int) -> None:
        """Queue ``[offset, offset + length)``; returns at once."""
        if length <= 0:
            return
        with self._cond:
            if self._closed:
                return
            if self._todo is None:
                self._todo = (offset, offset + length)
            else:
                lo, hi = self._todo
                self._todo = (min(lo, offset), max(hi, offset + length))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="lindifuse-writeback", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._todo is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                assert self._todo is not None
                lo, hi = self._todo
                self._todo = None
            if not start_writeback(self._fd, lo, hi - lo):
                with self._cond:
                    self._closed = True  # unavailable: stop asking
                return

    def close(self) -> None:
        """Drop what is queued and wait for the thread (a call in progress finishes first)."""
        with self._cond:
            self._closed = True
            self._todo = None
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()


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
