"""Verify an archive (``lindifuse check``) and repair what can be repaired (``--repair``).

``check`` returns one line per problem (tar headers against the index, the entry and index
self-references, lindi.json, every internal reference inside its member); it never writes.
``repair`` fixes what a crash or a foreign writer can leave (a stale index rescued from the
headers, torn tails cut off) and returns one line per fix."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

from lindifuse.archive.base import (
    SPARE_KEY,
    TMP_DIR,
    load_rfs,
    pread_exact,
    pwrite_all,
    referenced_members,
    trash_name,
)
from lindifuse.archive.directory import DirArchive
from lindifuse.archive.tar import TarArchive, read_range, walk_all
from lindifuse.errors import FormatError, SourceError
from lindifuse.formats import tarfmt
from lindifuse.formats.tarfmt import (
    BLOCK,
    ENTRY_NAME,
    ENTRY_SIZE,
    INDEX_NAME,
    LINDI_JSON_NAME,
    TRAILER,
    Member,
)


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
        walked, stop, why = walk_all(fd, size)
        if why != "end":
            problems.append(f"{why} data at offset {stop} (after the last complete member)")
        else:
            tail = pread_exact(fd, size - stop, stop)
            if len(tail) < len(TRAILER):
                problems.append(f"the archive does not end with {len(TRAILER)} zero bytes")
            elif tail.strip(b"\0"):
                problems.append(f"non-zero bytes after the end-of-archive marker at {stop}")
        if not walked or walked[0].member.name != ENTRY_NAME or walked[0].member.o != 0:
            problems.append(f"the first member is not {ENTRY_NAME}")
        try:
            head = pread_exact(fd, BLOCK + ENTRY_SIZE, 0)
            entry = tarfmt.parse_entry(head[BLOCK:], path)
            if head[2 * BLOCK :].strip(b" "):
                problems.append(f"{ENTRY_NAME}: its second 512-byte sector is not spaces")
            raw_index = pread_exact(fd, entry.s, entry.d)
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
            rfs = load_rfs(read_range(fd, lj), path)
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
        walked, _stop, _why = walk_all(fd, size)
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
        walked, _stop, _why = walk_all(fd, size)
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
                load_rfs(read_range(fd, lj), path)
            except FormatError:
                continue
            pwrite_all(fd, tarfmt.encode_entry(cand), BLOCK)
            os.fsync(fd)
            return [f"{err}; re-pointed {ENTRY_NAME} at the index at offset {m.o}"]
        raise err
    finally:
        os.close(fd)
