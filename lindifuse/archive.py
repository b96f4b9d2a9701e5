"""Local, writable LINDI containers: ``.lindi.tar`` (:class:`TarArchive`) and ``.lindi.d``
(:class:`DirArchive`), plus the offline tools :func:`check`, :func:`repair`, :func:`compact` and
:func:`create`.

Synchronous file I/O, no FUSE, no trio: the FUSE layer calls this from a worker thread. One
writer per archive (a writable open takes an exclusive ``flock``); reads of committed members
(:meth:`read_member`, :meth:`pread`) may run concurrently with the writer.

Usage: ``a = open_archive(path, writable=True)``; for each new chunk ``m = a.append_blob(
"blobs/" + key, data)`` and ``a.rfs["refs"][key] = ["./" + m.name, 0, m.s]``; small content goes
inline (:func:`lindifuse.tarfmt.inline_value`); then ``a.commit(a.rfs)`` makes it all durable.
Nothing appended is visible to a reader of the file before the commit that references it.

Crash safety of ``TarArchive.commit`` (SIGKILL or power loss at any moment leaves the old or the
new state, and a commit costs O(size of lindi.json + index), never O(archive)):

1. Blobs are appended past the end before the commit, each written data first, then the new
   1024-zero trailer, then its header over the old trailer, so a header on disk implies its data
   (a torn append is a zero block where a header would be: end of archive for every tar reader).
2. The new lindi.json is written into a member that the live index does not reference: a *spare*
   (an old lindi.json/index kept from an earlier commit, listed under ``"lindifuse": {"spares"}``
   in the index, header named ``.trash/...``) when it fits, else a newly appended padded member.
   The same for the new index, which lists the new lindi.json, itself and the new spares.
3. ``fsync``. Then the single commit point: the entry's JSON (about 100 bytes) is rewritten in the
   first 512-byte sector of ``.tar_entry.json``'s data (offset 512; the second sector stays
   spaces), an aligned one-sector write that lands whole or not at all. ``fsync``.
4. Header names are fixed afterwards (new live members renamed ``lindi.json`` /
   ``.tar_index.json``, the old ones ``.trash/<name>.<random>`` as lindi names trash), so that
   ``tar xf`` yields a valid ``.lindi.d``. A crash before this step only leaves stale header
   names, which a writable open fixes; readers only use the index.

A writable open recovers: it walks tar headers forward from the furthest indexed member; members
found there that lindi.json references but the index misses (lindi crashed between writing a blob
and its index) are adopted into the index; everything else past the indexed end (uncommitted
blobs, torn members, the unfinished JSON of a crashed commit) is cut off and a fresh trailer
written. lindi 0.4.6 opens, reads and extends (``r+``) archives written here: it only follows the
entry and index, and it preserves the extra index key.

``DirArchive``: blobs are files under the directory, written to a temporary name and renamed;
lindi.json is replaced atomically (temporary file, fsync, rename, fsync of the directory) after the
blobs and their directories are fsynced.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import os
import random
import shutil
import stat
import string
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import orjson

from . import tarfmt
from .errors import FormatError, SourceError
from .tarfmt import (
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

EMPTY_RFS: dict[str, Any] = {"refs": {".zgroup": {"zarr_format": 2}}}
"""What lindi writes for a new, empty file (``LindiH5pyFile._create_empty_lindi_file``)."""

SPARE_KEY = "lindifuse"
"""Top-level key of the index under which the spare members are listed."""
MAX_SPARES = 4
TMP_DIR = ".lindifuse-tmp"
"""Folder of a ``.lindi.d`` holding files being written (removed on a writable open)."""
_COPY_CHUNK = 8 << 20

Data = bytes | bytearray | memoryview | str | os.PathLike[str]
"""Blob content: bytes, or the path of a local file holding it (a staged write)."""


# ----------------------------------------------------------------------------------------------
# low-level helpers (os.* called through the module so tests can intercept them)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread(fd: int, size: int, offset: int) -> bytes:
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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _random_suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=10))


def trash_name(name: str) -> str:
    """lindi's name for a trashed member: ``.trash/<name>.<10 random lowercase letters>``."""
    return f".trash/{name}.{_random_suffix()}"


def _data_size(data: Data) -> int:
    if isinstance(data, bytes | bytearray | memoryview):
        return memoryview(data).nbytes
    return os.stat(data).st_size


def _check_blob_name(name: str) -> None:
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


def _load_rfs(raw: bytes, where: str) -> dict[str, Any]:
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


def open_archive(path: str, *, writable: bool = False) -> TarArchive | DirArchive:
    """Open a ``.lindi.d`` directory or a ``.lindi.tar`` file (see the classes' ``open``)."""
    if os.path.isdir(path):
        return DirArchive.open(path, writable=writable)
    return TarArchive.open(path, writable=writable)


# ----------------------------------------------------------------------------------------------
# .lindi.tar


class _Walked:
    """A member found by walking headers, with the offset of its last (ustar) header block."""

    __slots__ = ("member", "header_name")

    def __init__(self, member: Member, header_name: str) -> None:
        self.member = member
        self.header_name = header_name


def _walk(fd: int, pos: int, size: int) -> tuple[list[_Walked], int, str]:
    """Walk tar members from ``pos``; return them, where the walk stopped and why.

    The reason is ``"end"`` (a zero block or end of file at a member boundary), ``"torn"`` (a
    header or data running past end of file) or ``"junk"`` (a block that is not a header).
    PAX ``x`` and GNU ``L`` extension headers are followed; the member's ``o`` is its first
    header block.
    """
    out: list[_Walked] = []
    while True:
        start = pos
        overrides: dict[str, str] = {}
        while True:
            if pos >= size:
                return out, start, "end" if pos == start else "torn"
            block = _pread(fd, BLOCK, pos)
            if len(block) < BLOCK:
                return out, start, "torn"
            try:
                hdr = tarfmt.decode_header(block)
            except FormatError:
                return out, start, "junk"
            if hdr is None:
                return out, start, "end" if pos == start else "torn"
            if hdr.typeflag in (b"x", b"L", b"g"):
                if pos + BLOCK + hdr.size > size:
                    return out, start, "torn"
                ext = _pread(fd, hdr.size, pos + BLOCK)
                try:
                    if hdr.typeflag == b"x":
                        overrides.update(tarfmt.parse_pax(ext))
                    elif hdr.typeflag == b"L":
                        overrides["path"] = ext.split(b"\0", 1)[0].decode("utf-8", "replace")
                except FormatError:
                    return out, start, "junk"
                pos += BLOCK + padded(hdr.size)
                continue
            name = overrides.get("path", hdr.name)
            try:
                msize = int(overrides.get("size", hdr.size))
            except ValueError:
                return out, start, "junk"
            m = Member(name, start, pos + BLOCK, msize)
            if m.d + m.s > size:
                return out, start, "torn"
            out.append(_Walked(m, hdr.name))
            pos = m.end
            break


class TarArchive:
    """A local ``.lindi.tar`` opened for reading or as its single writer.

    Attributes: ``path``; ``writable``; ``rfs`` (the parsed lindi.json of the last commit, or
    what the caller last committed); ``members`` (``{name: Member}``: the live index plus blobs
    appended since the last commit; one dict for the archive's lifetime, updated in place, so a
    reader sharing it sees appended blobs at once); ``end`` (offset of the trailer, where the next member goes);
    ``recovered`` (one line per thing a writable open fixed, or found when read-only).
    """

    def __init__(self) -> None:
        raise TypeError("use TarArchive.open() or lindifuse.archive.create()")

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, writable: bool = False, durable: bool = True) -> TarArchive:
        """Open and validate ``path``; with ``writable``, lock it and recover from a crash.

        Raises FormatError (one line naming the file) when the entry, the index or lindi.json is
        unusable, SourceError when another process holds it open for writing.
        """
        self = object.__new__(cls)
        self.path = path
        self.writable = writable
        self.recovered = []
        self._spares: list[Member] = []
        self._extra: dict[str, Any] = {}
        try:
            self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as e:
            raise SourceError(f"{path}: {e.strerror}") from None
        try:
            if writable:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise SourceError(f"{path}: already open for writing") from None
            self._load(durable)
        except BaseException:
            os.close(self._fd)
            raise
        return self

    def _load(self, durable: bool) -> None:
        fd, path = self._fd, self.path
        size = os.fstat(fd).st_size
        head = _pread(fd, BLOCK + ENTRY_SIZE, 0)
        if len(head) < BLOCK + ENTRY_SIZE:
            raise FormatError(f"{path}: truncated archive ({size} bytes)")
        try:
            first = tarfmt.decode_header(head[:BLOCK])
        except FormatError as e:
            raise FormatError(f"{path}: not a tar archive ({e})") from None
        if first is None or not first.is_ustar:
            raise FormatError(f"{path}: not a ustar tar archive")
        entry = tarfmt.parse_entry(head[BLOCK:], path)
        if entry.d + entry.s > size:
            raise FormatError(f"{path}: index runs past the end of the file")
        raw_index = _pread(fd, entry.s, entry.d)
        members, doc = tarfmt.parse_index_doc(raw_index, entry, path, size)
        lj = members.get(LINDI_JSON_NAME)
        if lj is None:
            raise FormatError(f"{path}: the index lists no lindi.json")
        self.members = members
        self._index = entry
        self._extra = {k: v for k, v in doc.items() if k not in ("files", SPARE_KEY)}
        self._spares = self._valid_spares(doc.get(SPARE_KEY), size)
        try:
            self.rfs = _load_rfs(_pread(fd, lj.s, lj.d), path)
            lindi_json_ok = True
        except FormatError:
            if not self.writable:
                raise
            lindi_json_ok = False

        # The true end: walk forward from the furthest indexed member.
        indexed_end = max(m.end for m in (*members.values(), *self._spares))
        walked, stop, why = _walk(fd, indexed_end, size)
        if not lindi_json_ok:
            # lindi trashes lindi.json before appending the new one and only then writes the
            # index: after a crash there, the newest complete lindi.json is past the end.
            for w in reversed(walked):
                if w.member.name == LINDI_JSON_NAME:
                    try:
                        self.rfs = _load_rfs(read_range(fd, w.member), path)
                    except FormatError:
                        continue
                    members[LINDI_JSON_NAME] = w.member
                    self.recovered.append(f"adopted lindi.json at offset {w.member.o}")
                    lindi_json_ok = True
                    break
            if not lindi_json_ok:
                raise FormatError(f"{path}: lindi.json is not valid JSON")
        refs = referenced_members(self.rfs)
        keep_end = indexed_end
        adopted = False
        junk: list[_Walked] = []
        for w in walked:
            m = w.member
            live = members.get(m.name)
            if live == m:
                keep_end = max(keep_end, m.end)  # adopted lindi.json above
            elif live is None and m.name in refs and refs[m.name] <= m.s:
                members[m.name] = m
                keep_end = m.end
                adopted = True
                self.recovered.append(f"adopted unindexed member {m.name} at offset {m.o}")
            else:
                junk.append(w)
        self.end = keep_end
        dropped = [w for w in junk if w.member.o >= keep_end]
        if dropped or why != "end":
            what = f"{len(dropped)} uncommitted member(s)" if dropped else "nothing"
            self.recovered.append(
                f"{'discarded' if self.writable else 'found'} {what} past offset {keep_end}"
                + ("" if why == "end" else f" and a {why} tail")
            )
        if not self.writable:
            return

        changed = False
        # Members that stay before the cut but are not referenced: give them trash names.
        for w in junk:
            if w.member.o < keep_end and not w.header_name.startswith(".trash/"):
                self._rename_header(w.member, trash_name(w.member.name))
                self.recovered.append(f"trashed unreferenced member {w.member.name}")
                changed = True
        # Cut everything past the kept end and write a fresh trailer (trailer first, then cut,
        # so the file always ends with one).
        if size != keep_end + len(TRAILER) or _pread(fd, len(TRAILER), keep_end) != TRAILER:
            _pwrite_all(fd, TRAILER, keep_end)
            os.ftruncate(fd, keep_end + len(TRAILER))
            changed = True
        # The entry's second sector must be spaces so the commit is a one-sector write.
        if head[BLOCK + BLOCK :] != b" " * (ENTRY_SIZE - BLOCK):
            _pwrite_all(fd, tarfmt.encode_entry(entry), BLOCK)
            self.recovered.append("normalised .tar_entry.json padding")
            changed = True
        changed |= self._fix_header_names()
        if durable and changed:
            os.fsync(fd)
        if adopted or not lindi_json_ok:
            self.commit(self.rfs, durable=durable)

    def _valid_spares(self, section: Any, size: int) -> list[Member]:
        """The spares listed in the index, minus any that are not safe to overwrite."""
        if not isinstance(section, dict) or not isinstance(section.get("spares"), list):
            return []
        live = sorted((m.o, m.end) for m in self.members.values())
        starts = [a for a, _ in live]
        out: list[Member] = []
        for obj in section["spares"]:
            try:
                m = tarfmt._member_from_json(obj, self.path, "spare", size)
            except FormatError:
                continue
            if m.name in self.members or not m.name.startswith(".trash/") or m.d != m.o + BLOCK:
                continue
            i = bisect.bisect_left(starts, m.end)
            if i > 0 and live[i - 1][1] > m.o:  # overlaps a live member
                continue
            if any(s.o < m.end and m.o < s.end for s in out):
                continue
            try:
                hdr = tarfmt.decode_header(_pread(self._fd, BLOCK, m.o))
            except FormatError:
                continue
            if hdr is None or hdr.size != m.s or hdr.typeflag != b"0":
                continue
            out.append(m)
        return out

    def _header_name(self, m: Member) -> str | None:
        try:
            hdr = tarfmt.decode_header(_pread(self._fd, BLOCK, m.d - BLOCK))
        except FormatError:
            return None
        return None if hdr is None else hdr.name

    def _rename_header(self, m: Member, new_name: str) -> None:
        """Rewrite the ustar header just before ``m``'s data with ``new_name``."""
        block = _pread(self._fd, BLOCK, m.d - BLOCK)
        _pwrite_all(self._fd, tarfmt.rename_header(block, new_name), m.d - BLOCK)

    def _fix_header_names(self) -> bool:
        """Make the headers of the entry, index, lindi.json and spares agree with the index."""
        changed = False
        for name in (ENTRY_NAME, INDEX_NAME, LINDI_JSON_NAME):
            m = self.members[name]
            cur = self._header_name(m)
            if cur is not None and cur != name:
                self._rename_header(m, name)
                self.recovered.append(f"renamed header {cur!r} to {name!r}")
                changed = True
        for m in self._spares:
            cur = self._header_name(m)
            if cur is not None and cur != m.name:
                self._rename_header(m, m.name)
                changed = True
        return changed

    # -- reading ---------------------------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def pread(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of the archive file."""
        return _pread(self._fd, size, offset)

    def member(self, name: str) -> Member | None:
        return self.members.get(name)

    def read_member(self, name: str) -> bytes:
        """The content of member ``name`` (KeyError when the index does not list it)."""
        return read_range(self._fd, self.members[name])

    # -- writing ---------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError(errno.EROFS, f"{self.path}: opened read-only")

    def unique_name(self, name: str) -> str:
        """``name``, or lindi's ``name.v2``, ``name.v3``... when a member already has it."""
        if name not in self.members:
            return name
        v = 2
        while f"{name}.v{v}" in self.members:
            v += 1
        return f"{name}.v{v}"

    def _append(self, name: str, data: Data, *, header_name: str | None = None) -> Member:
        """Append a member at :attr:`end`: data, then the trailer, then the header."""
        size = _data_size(data)
        headers = tarfmt.encode_headers(header_name or name, size)
        o = self.end
        m = Member(name, o, o + len(headers), size)
        fd = self._fd
        pad = padded(size) - size
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                _pwrite_all(fd, data, m.d)
            else:
                _copy_file(os.fspath(data), fd, m.d, size)
            _pwrite_all(fd, b"\0" * pad + TRAILER, m.d + size)
        except BaseException:
            # (ENOSPC, EIO...) Roll back to the archive as it was: cut what was written past
            # the old end and restore the trailer there (its blocks are already allocated, so
            # this needs no space), so a full disk leaves no torn member behind.
            try:
                os.ftruncate(fd, o + len(TRAILER))
                _pwrite_all(fd, TRAILER, o)
            except OSError:
                pass  # the next writable open cuts the tail off (recovery)
            raise
        _pwrite_all(fd, headers, o)
        self.end = m.end
        return m

    def append_blob(self, name: str, data: Data) -> Member:
        """Append ``data`` (bytes or a local file path) as member ``name`` or ``name.vN``.

        The caller then sets ``rfs["refs"][key] = ["./" + m.name, 0, m.s]`` and commits. A
        member appended but never committed is discarded by the next writable open.
        """
        self._require_writable()
        _check_blob_name(name)
        name = self.unique_name(name)
        m = self._append(name, data)
        self.members[name] = m
        return m

    def _spare_for(self, size: int, pool: list[Member]) -> Member | None:
        """The smallest spare of ``pool`` holding ``size`` bytes (removed from it), or None."""
        fits = [m for m in pool if m.s >= size]
        if not fits:
            return None
        m = min(fits, key=lambda x: x.s)
        pool.remove(m)
        return m

    def commit(self, rfs: dict[str, Any], *, durable: bool = True) -> None:
        """Atomically make ``rfs`` and all appended blobs the archive's state (module docstring).

        Costs O(len(lindi.json) + len(index)) bytes of writes and two fsyncs (none when not
        ``durable``). On an exception the previous state stays committed.
        """
        self._require_writable()
        fd = self._fd
        text = tarfmt.dump_lindi_json(rfs)
        pool = list(self._spares)
        old_lj, old_idx = self.members[LINDI_JSON_NAME], self.members[INDEX_NAME]

        # 1. lindi.json into a member the live index does not reference: the smallest spare that
        #    fits, else a new member padded by lindi's growth rule (trash-named until step 4).
        lj = self._spare_for(len(text), pool)
        if lj is not None:
            _pwrite_all(fd, tarfmt.padded_json(text, lj.s), lj.d)
        else:
            lj = self._append(trash_name(LINDI_JSON_NAME), tarfmt.padded_json(text))
        lj_live = Member(LINDI_JSON_NAME, lj.o, lj.d, lj.s)

        # 2. the index, listing the new lindi.json and itself; the old ones become spares.
        files = dict(self.members)
        files[LINDI_JSON_NAME] = lj_live
        retired = [
            Member(trash_name(LINDI_JSON_NAME), old_lj.o, old_lj.d, old_lj.s),
            Member(trash_name(INDEX_NAME), old_idx.o, old_idx.d, old_idx.s),
        ]

        def encode(idx: Member, spares: list[Member]) -> bytes:
            files[INDEX_NAME] = idx
            extra = dict(self._extra)
            extra[SPARE_KEY] = {"spares": [s.as_json() for s in spares]}
            return tarfmt.encode_index(sorted(files.values(), key=lambda m: m.o), extra)

        big = 10**15  # a placeholder location whose digits bound the real one
        bound = len(encode(Member(INDEX_NAME, big, big, big), pool + retired))
        ix = self._spare_for(bound, pool)
        appended = ix is None
        if ix is None:
            size = tarfmt.grown_size(bound, INITIAL_INDEX_SIZE)
            ix = Member(INDEX_NAME, self.end, self.end + BLOCK, size)
        idx_live = Member(INDEX_NAME, ix.o, ix.d, ix.s)
        spares = sorted(pool + retired, key=lambda m: m.s, reverse=True)[:MAX_SPARES]
        raw_index = tarfmt.padded_json(encode(idx_live, spares), ix.s)
        assert len(raw_index) == ix.s
        if appended:
            m = self._append(INDEX_NAME, raw_index, header_name=trash_name(INDEX_NAME))
            assert (m.o, m.d, m.s) == (ix.o, ix.d, ix.s)
        else:
            _pwrite_all(fd, raw_index, ix.d)
        if durable:
            os.fsync(fd)

        # 3. the commit point: one 512-byte sector of .tar_entry.json.
        _pwrite_all(fd, tarfmt.encode_entry(idx_live)[:BLOCK], BLOCK)
        if durable:
            os.fsync(fd)
        # in place: the read path shares this dict (containers.container_from_archive)
        self.members[LINDI_JSON_NAME] = lj_live
        self.members[INDEX_NAME] = idx_live
        self._index = idx_live
        self._spares = spares
        self.rfs = rfs

        # 4. header names, for tar extraction (a crash here is fixed by the next open).
        self._rename_header(lj_live, LINDI_JSON_NAME)
        self._rename_header(idx_live, INDEX_NAME)
        for r in retired:
            self._rename_header(r, r.name)

    def close(self) -> None:
        """Close the file and release the write lock. Does not commit."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TarArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def spares(self) -> list[Member]:
        """Unreferenced padded members that the next commits may overwrite."""
        return list(self._spares)


def read_range(fd: int, m: Member) -> bytes:
    """The ``m.s`` data bytes of member ``m``; FormatError when the file is shorter."""
    data = _pread(fd, m.s, m.d)
    if len(data) != m.s:
        raise FormatError(f"member {m.name} is truncated")
    return data


def _copy_file(src: str, fd: int, offset: int, size: int) -> None:
    """Copy ``size`` bytes of file ``src`` to ``fd`` at ``offset`` (copy_file_range if it can)."""
    with open(src, "rb") as f:
        sfd = f.fileno()
        done = 0
        use_cfr = hasattr(os, "copy_file_range")
        while done < size:
            n = min(_COPY_CHUNK, size - done)
            if use_cfr:
                try:
                    k = os.copy_file_range(sfd, fd, n, done, offset + done)
                except OSError:
                    use_cfr = False
                    continue
            else:
                b = os.pread(sfd, n, done)
                k = len(b)
                if k:
                    _pwrite_all(fd, b, offset + done)
            if k == 0:
                raise OSError(errno.EIO, f"{src}: shorter than {size} bytes")
            done += k


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
        self.rfs = _load_rfs(raw, path)
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
        _check_blob_name(name)
        name = self.unique_name(name)
        tmpdir = os.path.join(self.path, TMP_DIR)
        os.makedirs(tmpdir, exist_ok=True)
        tmp = os.path.join(tmpdir, _random_suffix())
        if isinstance(data, bytes | bytearray | memoryview):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _pwrite_all(fd, data, 0)
            finally:
                os.close(fd)
        else:
            shutil.copyfile(os.fspath(data), tmp)
        final = self._file(name)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(tmp, final)
        self._pending.append(final)
        return Member(name, 0, 0, _data_size(data))

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
                _fsync_dir(d)
        _atomic_write(
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


def _atomic_write(path: str, data: bytes, durable: bool = True, tmp_dir: str | None = None) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync of the folder.

    The temporary file is made in ``tmp_dir`` (same file system) when given, else next to
    ``path``.
    """
    if tmp_dir is not None:
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = os.path.join(tmp_dir, f"{os.path.basename(path)}.{_random_suffix()}")
    else:
        tmp = f"{path}.{_random_suffix()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _pwrite_all(fd, data, 0)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        _fsync_dir(os.path.dirname(os.path.abspath(path)))


# ----------------------------------------------------------------------------------------------
# create / compact


def _is_dir_path(path: str) -> bool:
    return os.path.isdir(path) or path.rstrip("/").endswith(".d")


def create(path: str, rfs: dict[str, Any] | None = None, *, durable: bool = True) -> None:
    """Create a new archive at ``path`` (a ``.lindi.d`` folder when the name ends in ``.d``).

    ``rfs`` defaults to lindi's empty file (an empty root group). The tar layout is
    byte-identical to lindi's ``LindiTarFile.create``: entry, an 8 KiB index at 1536, then
    lindi.json padded by lindi's growth rule, then the trailer. Raises FileExistsError.
    """
    if rfs is None:
        rfs = json.loads(json.dumps(EMPTY_RFS))
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, f"{path}: already exists")
    text = tarfmt.dump_lindi_json(rfs)
    if _is_dir_path(path):
        os.makedirs(path)
        _atomic_write(os.path.join(path, LINDI_JSON_NAME), text, durable)
        return
    entry = Member(ENTRY_NAME, 0, BLOCK, ENTRY_SIZE)
    index = Member(INDEX_NAME, BLOCK + ENTRY_SIZE, 2 * BLOCK + ENTRY_SIZE, INITIAL_INDEX_SIZE)
    lj_data = tarfmt.padded_json(text)
    lj = Member(LINDI_JSON_NAME, index.end, index.end + BLOCK, len(lj_data))
    raw_index = tarfmt.encode_index([entry, index, lj])
    if len(raw_index) > index.s:  # pragma: no cover - three members always fit 8 KiB
        raise AssertionError("initial index too large")
    image = b"".join(
        [
            tarfmt.encode_header(ENTRY_NAME, ENTRY_SIZE),
            tarfmt.encode_entry(index),
            tarfmt.encode_header(INDEX_NAME, index.s),
            tarfmt.padded_json(raw_index, index.s),
            tarfmt.encode_header(LINDI_JSON_NAME, lj.s),
            lj_data,
            b"\0" * (padded(lj.s) - lj.s),
            TRAILER,
        ]
    )
    _atomic_write(path, image, durable)


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
        tmp = f"{dst.rstrip('/')}.{_random_suffix()}.tmp"
        if _is_dir_path(dst):
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
            _fsync_dir(os.path.dirname(os.path.abspath(dst)))
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
        _pwrite_all(fd, tarfmt.encode_header(ENTRY_NAME, ENTRY_SIZE), 0)
        _pwrite_all(fd, tarfmt.encode_entry(index), BLOCK)
        _pwrite_all(fd, tarfmt.encode_header(INDEX_NAME, idx_size), index.o)
        _pwrite_all(fd, tarfmt.padded_json(raw_index, idx_size), index.d)
        _pwrite_all(fd, tarfmt.encode_header(LINDI_JSON_NAME, lj_size), lj.o)
        _pwrite_all(fd, tarfmt.padded_json(text, lj_size), lj.d)
        for src_m, m in zip(keep, placed, strict=True):
            _pwrite_all(fd, tarfmt.encode_headers(m.name, m.s), m.o)
            if isinstance(a, TarArchive):
                _copy_fd_range(a.fileno(), src_m.d, fd, m.d, m.s)
            else:
                _copy_file(a._file(m.name), fd, m.d, m.s)
            _pwrite_all(fd, b"\0" * (padded(m.s) - m.s), m.d + m.s)
        _pwrite_all(fd, TRAILER, pos)
    finally:
        os.close(fd)


def _copy_fd_range(sfd: int, soff: int, dfd: int, doff: int, size: int) -> None:
    done = 0
    while done < size:
        b = os.pread(sfd, min(_COPY_CHUNK, size - done), soff + done)
        if not b:
            raise FormatError(f"source truncated at offset {soff + done}")
        _pwrite_all(dfd, b, doff + done)
        done += len(b)


# ----------------------------------------------------------------------------------------------
# check / repair


def _walk_all(fd: int, size: int) -> tuple[list[_Walked], int, str]:
    return _walk(fd, 0, size)


def check(path: str) -> list[str]:
    """Problems with the archive at ``path``, one line each; an empty list means clean.

    For a tar: the first header, the entry and index invariants, every header agreeing with
    the index (name, size, position), no overlapping members, lindi.json readable, every ``./``
    reference inside its member, no unindexed members other than trash, and a clean trailer.
    For a directory: lindi.json readable, every ``./`` reference inside its file, no unfinished
    temporary files, no unreferenced files under ``blobs/``. O(archive): an offline tool.
    """
    if os.path.isdir(path):
        return _check_dir(path)
    problems: list[str] = []
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return [f"{path}: {e.strerror}"]
    try:
        size = os.fstat(fd).st_size
        walked, stop, why = _walk_all(fd, size)
        if why != "end":
            problems.append(f"{why} data at offset {stop} (after the last complete member)")
        else:
            tail = _pread(fd, size - stop, stop)
            if len(tail) < len(TRAILER):
                problems.append(f"the archive does not end with {len(TRAILER)} zero bytes")
            elif tail.strip(b"\0"):
                problems.append(f"non-zero bytes after the end-of-archive marker at {stop}")
        if not walked or walked[0].member.name != ENTRY_NAME or walked[0].member.o != 0:
            problems.append(f"the first member is not {ENTRY_NAME}")
        try:
            head = _pread(fd, BLOCK + ENTRY_SIZE, 0)
            entry = tarfmt.parse_entry(head[BLOCK:], path)
            if head[2 * BLOCK :].strip(b" "):
                problems.append(f"{ENTRY_NAME}: its second 512-byte sector is not spaces")
            raw_index = _pread(fd, entry.s, entry.d)
            members, doc = tarfmt.parse_index_doc(raw_index, entry, path, size)
        except FormatError as e:
            return [*problems, str(e).removeprefix(f"{path}: ")]
        names = [f.get("n") for f in doc["files"] if isinstance(f, dict)]
        for n in sorted(n for n, c in Counter(names).items() if c > 1):
            problems.append(f"the index lists {n!r} more than once")
        by_offset = {w.member.o: w for w in walked}
        spare_names = set()
        sec = doc.get(SPARE_KEY)
        if isinstance(sec, dict) and isinstance(sec.get("spares"), list):
            for s in sec["spares"]:
                if isinstance(s, dict):
                    spare_names.add(s.get("n"))
        last_end = 0
        for m in sorted(members.values(), key=lambda m: m.o):
            if m.o < last_end:
                problems.append(f"member {m.name} at {m.o} overlaps the previous member")
            last_end = max(last_end, m.end)
            w = by_offset.get(m.o)
            if w is None:
                problems.append(f"indexed member {m.name} has no tar header at offset {m.o}")
            elif w.member != m:
                problems.append(
                    f"header at {m.o} says {w.member.name!r} (d={w.member.d}, s={w.member.s}) "
                    f"but the index says {m.name!r} (d={m.d}, s={m.s})"
                )
        indexed_offsets = {m.o for m in members.values()}
        for w in walked:
            n = w.member.name
            if w.member.o in indexed_offsets:  # reported above when it disagrees
                continue
            if n.startswith(".trash/") or n in spare_names:
                continue
            problems.append(f"unindexed member {n!r} at offset {w.member.o}")
        lj = members.get(LINDI_JSON_NAME)
        if lj is None:
            problems.append("the index lists no lindi.json")
            return problems
        try:
            rfs = _load_rfs(read_range(fd, lj), path)
        except FormatError as e:
            problems.append(str(e).removeprefix(f"{path}: "))
            return problems
        for name, need in sorted(referenced_members(rfs).items()):
            m = members.get(name)
            if m is None:
                problems.append(f"lindi.json references {name!r}, which the index does not list")
            elif need > m.s:
                problems.append(f"a reference to {name!r} runs past its size ({need} > {m.s})")
        return problems
    finally:
        os.close(fd)


def _check_dir(path: str) -> list[str]:
    try:
        a = DirArchive.open(path, writable=False)
    except (FormatError, SourceError) as e:
        return [str(e).removeprefix(f"{path}: ")]
    problems = []
    refs = referenced_members(a.rfs)
    for name, need in sorted(refs.items()):
        m = a.member(name)
        if m is None:
            problems.append(f"lindi.json references {name!r}, which does not exist")
        elif need > m.s:
            problems.append(f"a reference to {name!r} runs past its size ({need} > {m.s})")
    tmp = os.path.join(path, TMP_DIR)
    if os.path.isdir(tmp) and os.listdir(tmp):
        problems.append(f"unfinished files in {TMP_DIR}")
    # Files no reference names (left by an overwritten or deleted key) are normal, as a tar's
    # unreferenced members are: `lindifuse compact` drops them.
    return problems


def _dir_blobs(path: str) -> Iterator[str]:
    base = os.path.join(path, "blobs")
    for root, _dirs, files in os.walk(base):
        for f in files:
            yield os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/")


def repair(path: str) -> list[str]:
    """Fix what :func:`check` reports where that is safe; return what was done, one line each.

    A writable open recovers the tail (see the module docstring). Beyond that, for a tar whose
    entry or index is unusable (a crash inside lindi's own non-atomic index move), the newest
    index member found by a full walk that is consistent is made live again; then every
    header that disagrees with the index is renamed, and unindexed members that are not trash
    get trash names. For a directory: temporary files and unreferenced blobs are removed.
    """
    if os.path.isdir(path):
        a = DirArchive.open(path, writable=True)
        done = list(a.recovered)
        try:
            refs = referenced_members(a.rfs)
            for name in list(_dir_blobs(path)):
                if name not in refs:
                    os.unlink(a._file(name))
                    done.append(f"removed unreferenced file {name}")
        finally:
            a.close()
        return done
    done: list[str] = []
    try:
        a = TarArchive.open(path, writable=True)
    except FormatError as e:
        done += _rescue_index(path, e)
        a = TarArchive.open(path, writable=True)
    try:
        done += a.recovered
        fd = a.fileno()
        size = os.fstat(fd).st_size
        walked, _stop, _why = _walk_all(fd, size)
        by_offset = {w.member.o: w for w in walked}
        live = {m.o for m in a.members.values()} | {m.o for m in a.spares}
        for m in a.members.values():
            w = by_offset.get(m.o)
            if (
                w is not None
                and (w.member.d, w.member.s) == (m.d, m.s)
                and w.header_name != m.name
                and tarfmt.split_ustar_name(m.name) is not None
            ):
                a._rename_header(m, m.name)
                done.append(f"renamed header {w.header_name!r} to {m.name!r}")
        for w in walked:
            if w.member.o not in live and not w.header_name.startswith(".trash/"):
                a._rename_header(w.member, trash_name(w.member.name))
                done.append(f"trashed unindexed member {w.member.name!r}")
        os.fsync(fd)
    finally:
        a.close()
    return done


def _rescue_index(path: str, err: FormatError) -> list[str]:
    """Re-point the entry at the newest consistent index found by walking the whole archive."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        walked, _stop, _why = _walk_all(fd, size)
        for w in reversed(walked):
            m = w.member
            if not (m.name == INDEX_NAME or m.name.startswith(f".trash/{INDEX_NAME}.")):
                continue
            cand = Member(INDEX_NAME, m.o, m.d, m.s)
            try:
                members = tarfmt.parse_index(read_range(fd, m), cand, path, size)
                lj = members.get(LINDI_JSON_NAME)
                if lj is None:
                    continue
                _load_rfs(read_range(fd, lj), path)
            except FormatError:
                continue
            _pwrite_all(fd, tarfmt.encode_entry(cand), BLOCK)
            os.fsync(fd)
            return [f"{err}; re-pointed {ENTRY_NAME} at the index at offset {m.o}"]
        raise err
    finally:
        os.close(fd)


__all__ = [
    "EMPTY_RFS",
    "Archive",
    "DirArchive",
    "TarArchive",
    "check",
    "compact",
    "create",
    "open_archive",
    "read_range",
    "referenced_members",
    "repair",
    "trash_name",
]
