"""``.lindi.tar`` as a writable archive: :class:`TarArchive`, the walk over its headers, and
member reads.

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
entry and index, and it preserves the extra index key."""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
from typing import Any

from lindifuse.archive.base import (
    COPY_CHUNK,
    MAX_SPARES,
    SPARE_KEY,
    WRITEBACK_STEP,
    Data,
    Writeback,
    check_blob_name,
    data_size,
    load_rfs,
    pread_exact,
    pwrite_all,
    referenced_members,
    trash_name,
    writeback_range,
)
from lindifuse.errors import FormatError, SourceError
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
            block = pread_exact(fd, BLOCK, pos)
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
                ext = pread_exact(fd, hdr.size, pos + BLOCK)
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
        head = pread_exact(fd, BLOCK + ENTRY_SIZE, 0)
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
        raw_index = pread_exact(fd, entry.s, entry.d)
        members, doc = tarfmt.parse_index_doc(raw_index, entry, path, size)
        lj = members.get(LINDI_JSON_NAME)
        if lj is None:
            raise FormatError(f"{path}: the index lists no lindi.json")
        self.members = members
        self._index = entry
        self._extra = {k: v for k, v in doc.items() if k not in ("files", SPARE_KEY)}
        self._spares = self._valid_spares(doc.get(SPARE_KEY), size)
        try:
            self.rfs = load_rfs(pread_exact(fd, lj.s, lj.d), path)
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
                        self.rfs = load_rfs(read_range(fd, w.member), path)
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
        if size != keep_end + len(TRAILER) or pread_exact(fd, len(TRAILER), keep_end) != TRAILER:
            pwrite_all(fd, TRAILER, keep_end)
            os.ftruncate(fd, keep_end + len(TRAILER))
            changed = True
        # The entry's second sector must be spaces so the commit is a one-sector write.
        if head[BLOCK + BLOCK :] != b" " * (ENTRY_SIZE - BLOCK):
            pwrite_all(fd, tarfmt.encode_entry(entry), BLOCK)
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
                hdr = tarfmt.decode_header(pread_exact(self._fd, BLOCK, m.o))
            except FormatError:
                continue
            if hdr is None or hdr.size != m.s or hdr.typeflag != b"0":
                continue
            out.append(m)
        return out

    def _header_name(self, m: Member) -> str | None:
        try:
            hdr = tarfmt.decode_header(pread_exact(self._fd, BLOCK, m.d - BLOCK))
        except FormatError:
            return None
        return None if hdr is None else hdr.name

    def _rename_header(self, m: Member, new_name: str) -> None:
        """Rewrite the ustar header just before ``m``'s data with ``new_name``."""
        block = pread_exact(self._fd, BLOCK, m.d - BLOCK)
        pwrite_all(self._fd, tarfmt.rename_header(block, new_name), m.d - BLOCK)

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
        return pread_exact(self._fd, size, offset)

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
        size = data_size(data)
        headers = tarfmt.encode_headers(header_name or name, size)
        o = self.end
        m = Member(name, o, o + len(headers), size)
        fd = self._fd
        pad = padded(size) - size
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                pwrite_all(fd, data, m.d)
            else:
                copy_file(os.fspath(data), fd, m.d, size)
            pwrite_all(fd, b"\0" * pad + TRAILER, m.d + size)
        except BaseException:
            # (ENOSPC, EIO...) Roll back to the archive as it was: cut what was written past
            # the old end and restore the trailer there (its blocks are already allocated, so
            # this needs no space), so a full disk leaves no torn member behind.
            try:
                os.ftruncate(fd, o + len(TRAILER))
                pwrite_all(fd, TRAILER, o)
            except OSError:
                pass  # the next writable open cuts the tail off (recovery)
            raise
        pwrite_all(fd, headers, o)
        self.end = m.end
        self._start_writeback(o)
        return m

    _writeback_from = -1
    """Offset from which appended bytes have not been handed to :attr:`_writeback` (-1:
    nothing appended yet by this open)."""
    _writeback: Writeback | None = None
    """Started on the first ``WRITEBACK_STEP`` bytes appended."""

    def _start_writeback(self, appended_at: int) -> None:
        """Every ``WRITEBACK_STEP`` appended bytes, start their writeback (not durable: the
        commit still fsyncs), so that the commit's fsync finds them mostly written.
        ``appended_at``: where the member just appended starts."""
        if self._writeback_from < 0:
            self._writeback_from = appended_at
        if self.end - self._writeback_from < WRITEBACK_STEP:
            return
        off, n = writeback_range(self._writeback_from, self.end)
        if self._writeback is None:
            self._writeback = Writeback(self._fd)
        self._writeback.request(off, n)
        self._writeback_from = off + n

    def append_blob(self, name: str, data: Data) -> Member:
        """Append ``data`` (bytes or a local file path) as member ``name`` or ``name.vN``.

        The caller then sets ``rfs["refs"][key] = ["./" + m.name, 0, m.s]`` and commits. A
        member appended but never committed is discarded by the next writable open.
        """
        self._require_writable()
        check_blob_name(name)
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
            pwrite_all(fd, tarfmt.padded_json(text, lj.s), lj.d)
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
            pwrite_all(fd, raw_index, ix.d)
        if durable:
            os.fsync(fd)

        # 3. the commit point: one 512-byte sector of .tar_entry.json.
        pwrite_all(fd, tarfmt.encode_entry(idx_live)[:BLOCK], BLOCK)
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
        if self._writeback is not None:
            self._writeback.close()
            self._writeback = None
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
    data = pread_exact(fd, m.s, m.d)
    if len(data) != m.s:
        raise FormatError(f"member {m.name} is truncated")
    return data


def copy_file(src: str, fd: int, offset: int, size: int) -> None:
    """Copy ``size`` bytes of file ``src`` to ``fd`` at ``offset`` (copy_file_range if it can)."""
    with open(src, "rb") as f:
        sfd = f.fileno()
        done = 0
        use_cfr = hasattr(os, "copy_file_range")
        while done < size:
            n = min(COPY_CHUNK, size - done)
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
                    pwrite_all(fd, b, offset + done)
            if k == 0:
                raise OSError(errno.EIO, f"{src}: shorter than {size} bytes")
            done += k


# ----------------------------------------------------------------------------------------------
# check / repair


def walk_all(fd: int, size: int) -> tuple[list[_Walked], int, str]:
    return _walk(fd, 0, size)
