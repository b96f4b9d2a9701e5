"""Writes on a writable mount: staging, committing into the archive, batched durable flushes.

A file opened for writing is *staged*: in memory while it is small (up to 8 MiB, 256 MiB for all
files at once), else in an anonymous temporary file next to the archive (same file system, so
large writes never sit in RAM). Its content is *committed* into the archive when
it is renamed (zarr-python writes ``key.<uuid>.partial`` then renames it over ``key``: committing
at rename names the blob after the final key), on fsync, on the flush timer once it is closed, and
at unmount. Committing appends a ``blobs/<key>`` member (or keeps small content and metadata
inline, following lindi's rule) and edits the in-memory reference set; the reference set and the
index are written out in batches (``flush``), so the cost of a commit does not grow with the
archive. ``fsync`` and unmount flush durably; see ``lindifuse.archive`` for the crash-safe commit.

No pyfuse3 here: ``lindifuse.fs`` maps FUSE requests onto these methods.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
import time
from typing import Any

import trio

from lindifuse.archive.space import admits, free_bytes, is_no_space, no_space, reserve_for
from lindifuse.formats import tarfmt
from lindifuse.formats.hashes import chunk_hashes
from lindifuse.fs.content import ContentService
from lindifuse.fs.tree import Node, Tree

log = logging.getLogger(__name__)

COPY_BLOCK = 4 * 2**20
QUIET = 0.25
"""Seconds a closed file is left alone by the flush timer (and by flushes for another file's
fsync), so that write-temp-then-rename (zarr's ``key.<uuid>.partial``) commits it at the rename,
under its final name."""


MAX_BACKGROUND = 32
"""Commits started by renames that may be pending at once; beyond, a rename waits for its own
commit (so staged files do not pile up when the archive cannot keep up)."""
MEMORY_FILE_MAX = 8 * 2**20
"""A file is staged in memory while it is at most this big (zarr chunks, metadata)..."""
MEMORY_BUDGET = 256 * 2**20
"""... and while all files staged in memory hold at most this much; beyond, a temporary file."""


class Budget:
    """Bytes staged in memory by all files of a mount (touched on the trio thread only)."""

    __slots__ = ("used", "limit")

    def __init__(self, limit: int = MEMORY_BUDGET) -> None:
        self.used = 0
        self.limit = limit


class Staged:
    """Content of a file being written, plus bookkeeping.

    Small files are kept in memory (no temporary file to create, write, read back and close): a
    file's first write, at offset 0, is kept as the request's own ``bytes`` object, so a zarr
    chunk written in one request costs no copy at all before its append to the archive; a
    later change turns it into a ``bytearray`` (one copy). A file that
    grows past ``MEMORY_FILE_MAX`` (or past the mount's memory budget) is *spilled* into an
    anonymous temporary file next to the archive and stays there. In memory, every change runs
    on the trio thread (:meth:`in_memory`, :meth:`fits`); a file's reads and writes go to a
    worker thread only once it is a temporary file. :meth:`read_all` may run in a worker thread
    at any time (a commit): it sees a consistent snapshot (a spill fills the new file before
    switching to it, and never changes the old buffer).
    """

    __slots__ = (
        "file",
        "buf",
        "budget",
        "directory",
        "size",
        "dirty",
        "opens",
        "gen",
        "busy",
        "closing",
        "closed_at",
    )

    def __init__(self, directory: str, budget: Budget | None = None) -> None:
        self.directory = directory
        self.budget = budget if budget is not None else Budget(0)
        # bytearray, or the bytes of a file's first write kept as they came (see pwrite)
        self.buf: bytearray | bytes = bytearray()
        self.file: Any = None
        self.size = 0
        self.dirty = False
        self.opens = 0
        self.gen = 0  # bumped by every change: a commit knows whether it saw the last one
        self.busy = False  # a commit is reading it in a worker thread
        self.closing = False  # dropped while busy: the commit closes it when done
        self.closed_at = 0.0  # monotonic time of the last close

    @property
    def in_memory(self) -> bool:
        return self.file is None

    def fits(self, end: int) -> bool:
        """Can the in-memory content grow to ``end`` bytes?"""
        grow = max(0, end - len(self.buf))
        return end <= MEMORY_FILE_MAX and self.budget.used + grow <= self.budget.limit

    def spill(self) -> None:
        """Move the content into a temporary file (for good)."""
        if self.file is not None:
            return
        f = tempfile.TemporaryFile(dir=self.directory, prefix=".lindifuse-")  # noqa: SIM115
        view = memoryview(self.buf)
        off = 0
        while off < len(view):
            off += os.pwrite(f.fileno(), view[off:], off)
        view.release()
        self.file = f  # first the filled file, then drop the buffer (see read_all)
        self.budget.used -= len(self.buf)
        self.buf = bytearray()

    def _mutable(self) -> bytearray:
        """The in-memory content as a ``bytearray``: a first write kept as its request's
        ``bytes`` (see :meth:`pwrite`) is copied once, before its first change."""
        if type(self.buf) is bytes:
            self.buf = bytearray(self.buf)
        return self.buf  # type: ignore[return-value]

    def pwrite(self, off: int, buf: bytes) -> int:
        """Write (in memory only when :meth:`fits`: else call it from a worker thread)."""
        end = off + len(buf)
        if self.file is None and not self.fits(end):
            self.spill()
        if self.file is None:
            start = len(self.buf)
            if not start and not off and type(buf) is bytes:
                # The first write of a new file (a zarr chunk arrives whole): keep the request's
                # own bytes object, no copy (it is immutable, so a commit reading it in a worker
                # thread needs no snapshot either).
                self.buf = buf
            else:
                b = self._mutable()
                cur = start
                if off > cur:  # a hole: zeros
                    b.extend(bytes(off - cur))
                    cur = off
                data = memoryview(buf)
                k = min(len(data), cur - off)
                if k:
                    b[off : off + k] = data[:k]
                if k < len(data):
                    b += data[k:]
            self.budget.used += len(self.buf) - start  # the hole's zeros count too
            n = len(buf)
        else:
            n = os.pwrite(self.file.fileno(), buf, off)
        self.size = max(self.size, off + n)
        self.dirty = True
        self.gen += 1
        return n

    def pread(self, off: int, size: int) -> bytes:
        size = max(0, min(size, self.size - off))
        if self.file is None:
            return bytes(self.buf[off : off + size])
        return os.pread(self.file.fileno(), size, off)

    def truncate(self, size: int) -> None:
        if self.file is None and not self.fits(size):
            self.spill()
        if self.file is None:
            b = self._mutable()
            cur = len(b)
            if size < cur:
                del b[size:]
            else:
                b.extend(bytes(size - cur))
            self.budget.used += size - cur
        else:
            os.ftruncate(self.file.fileno(), size)
        self.size = size
        self.dirty = True
        self.gen += 1

    def read_all(self) -> bytes:
        buf, f = self.buf, self.file  # buffer first: a spill sets the file before the buffer
        if f is None:
            return buf if type(buf) is bytes else bytes(buf)
        return os.pread(f.fileno(), self.size, 0)

    def release(self) -> None:
        """Free the content now."""
        if self.file is not None:
            self.file.close()
        else:
            self.budget.used -= len(self.buf)
            self.buf = bytearray()

    def close(self) -> None:
        if self.busy:
            self.closing = True
        else:
            self.release()


class Writer:
    """Owns every mutation of a writable mount's namespace and reference set."""

    def __init__(
        self,
        archive: Any,
        tree: Tree,
        content: ContentService,
        refs: dict[str, Any],
        doc_extra: dict[str, Any],
        *,
        staging_dir: str,
        flush_interval: float = 1.0,
    ) -> None:
        self.archive = archive
        self.tree = tree
        self.content = content
        self.refs = refs
        self.doc_extra = doc_extra
        self.staging_dir = staging_dir
        self.flush_interval = flush_interval
        self.staged: dict[int, Staged] = {}
        self.budget = Budget()
        self.refs_dirty = False
        self.lock = trio.Lock()  # serializes archive I/O (one writer thread at a time)
        self.commits = 0
        self.flushes = 0
        self._nursery: trio.Nursery | None = None  # run_timer's: runs commits started by renames
        self._background = 0
        self.refused_writes = 0  # writes answered ENOSPC by the free-space admission
        self.full_commits = 0  # commits or flushes that met a full file system
        self._full_logged = False  # one log line per episode of a full file system
        self._json_bytes = self._measure_json()

    # -- free space ---------------------------------------------------------------------------

    def _measure_json(self) -> int:
        """Current size of the JSON members a commit rewrites (lindi.json, the tar index)."""
        members = getattr(self.archive, "members", None)
        if isinstance(members, dict) and members:
            return sum(m.s for n, m in members.items() if n in ("lindi.json", ".tar_index.json"))
        try:
            return os.stat(os.path.join(self.archive.path, "lindi.json")).st_size
        except (OSError, AttributeError, TypeError):
            return 0

    def _admit(self, node: Node, st: Staged, end: int) -> None:
        """Raise ENOSPC unless the archive's file system can take ``st`` grown to ``end``
        bytes on top of everything staged and not committed (see ``lindifuse.archive.space``)."""
        extra = max(0, end - st.size) + (0 if st.dirty else st.size)
        if extra <= 0:
            return
        free = free_bytes(self.staging_dir)
        if free is None:
            return
        pending = sum(s.size * (1 if s.in_memory else 2) for s in self.staged.values() if s.dirty)
        reserve = reserve_for(self._json_bytes)
        if admits(free, pending, extra, reserve):
            if self._full_logged and free > pending + extra + 2 * reserve:
                self._full_logged = False
            return
        self.refused_writes += 1
        if not self._full_logged:
            self._full_logged = True
            log.warning(
                "%s: no space left for writing %s (%d bytes free, %d staged and not yet "
                "committed, %d kept for the next commit): writes that grow files get ENOSPC",
                self.staging_dir,
                node.key,
                free,
                pending,
                reserve,
            )
        raise no_space(node.key)

    def _note_full(self, what: str, e: BaseException) -> None:
        """A commit or flush met a full file system: say so once per episode, retry later."""
        self.full_commits += 1
        if not self._full_logged:
            self._full_logged = True
            log.warning("%s failed: %s; kept staged, retried every second", what, e)

    # -- staging ----------------------------------------------------------------------------

    def new_file(self, node: Node) -> Staged:
        st = Staged(self.staging_dir, self.budget)
        st.dirty = True  # an empty new file is content too
        self.staged[node.inode] = st
        return st

    async def ensure_staged(self, node: Node, *, truncate: bool = False) -> Staged:
        """Stage ``node`` for writing, copying its committed content unless truncating."""
        st = self.staged.get(node.inode)
        if st is not None:
            if truncate and st.size:
                st.truncate(0)
            return st
        st = Staged(self.staging_dir, self.budget)
        if truncate:
            st.dirty = True
        elif node.key in self.refs:
            size = await self.content.size(node)
            off = 0
            while off < size:
                data = await self.content.read(node, off, min(COPY_BLOCK, size - off))
                await self._pwrite(st, off, data)
                off += len(data)
            st.dirty = False
        self.staged[node.inode] = st
        return st

    def size(self, node: Node) -> int | None:
        st = self.staged.get(node.inode)
        return None if st is None else st.size

    async def read(self, node: Node, off: int, size: int) -> bytes | None:
        """Staged content, or None when the file is not staged (read the committed ref)."""
        st = self.staged.get(node.inode)
        if st is None:
            return None
        if st.in_memory:
            return st.pread(off, size)
        return await trio.to_thread.run_sync(st.pread, off, size)

    async def write(self, node: Node, off: int, buf: bytes) -> int:
        st = await self.ensure_staged(node)
        self._admit(node, st, off + len(buf))
        return await self._pwrite(st, off, buf)

    @staticmethod
    async def _pwrite(st: Staged, off: int, buf: bytes) -> int:
        if st.in_memory and not st.fits(off + len(buf)):
            st.spill()  # on the trio thread: in-memory content is only touched there
        if st.in_memory:
            return st.pwrite(off, buf)  # a memory copy: no worker-thread round trip
        return await trio.to_thread.run_sync(st.pwrite, off, buf)

    async def truncate(self, node: Node, size: int) -> None:
        st = await self.ensure_staged(node, truncate=size == 0)
        if st.size != size:
            self._admit(node, st, size)
            st.truncate(size)

    def opened(self, node: Node) -> None:
        st = self.staged.get(node.inode)
        if st is not None:
            st.opens += 1

    async def released(self, node: Node) -> None:
        st = self.staged.get(node.inode)
        if st is None:
            return
        st.opens = max(0, st.opens - 1)
        if st.opens == 0:
            st.closed_at = time.monotonic()
        if st.opens == 0 and (not st.dirty or node.inode not in self.tree.nodes):
            # Opened for writing but unchanged (or committed by fsync), or unlinked while
            # open: the committed reference (if any) is the content.
            self._drop(node)

    def _drop(self, node: Node) -> None:
        st = self.staged.pop(node.inode, None)
        if st is not None:
            st.close()

    # -- namespace edits --------------------------------------------------------------------

    def _listing_changed(self, parent: Node | None) -> None:
        """Read-ahead keeps each directory's chunk order: drop it when files come and go."""
        if parent is not None and self.content.readahead is not None:
            self.content.readahead.forget(parent)

    def _invalidate(self, node: Node) -> None:
        node.extra = None
        node.size = -1
        self._listing_changed(node.parent)
        if node.name == ".zarray" and node.parent is not None:
            # Padded sizes of the sibling chunks depend on .zarray.
            self.content.forget_dir_meta(node.parent)
            for sib in (node.parent.children or {}).values():
                if sib.children is None and sib is not node:
                    sib.extra = None
                    sib.size = -1

    def _chunk_hashes(self) -> dict[str, Any] | None:
        """The archive's recorded chunk digests (lindifuse.formats.hashes), if it keeps them
        (made with ``lindifuse create --hashes``): a written blob records its sha256 there."""
        return chunk_hashes(self.doc_extra)

    def removed(self, node: Node) -> None:
        """``node`` was unlinked (already detached from the tree)."""
        if self.refs.pop(node.key, None) is not None:
            self.refs_dirty = True
        hashes = self._chunk_hashes()
        if hashes is not None and hashes.pop(node.key, None) is not None:
            self.refs_dirty = True
        self._listing_changed(node.parent)
        st = self.staged.get(node.inode)
        if st is not None and st.opens == 0:
            self._drop(node)
        if node.name == ".zarray":
            self._invalidate(node)

    def moved(self, pairs: list[tuple[str, str]]) -> None:
        """Keys renamed by a rename(2): move their references."""
        hashes = self._chunk_hashes()
        for old, new in pairs:
            value = self.refs.pop(old, None)
            if value is not None:
                self.refs[new] = value
                self.refs_dirty = True
            if hashes is not None:
                digest = hashes.pop(old, None)
                hashes.pop(new, None)
                if digest is not None:
                    hashes[new] = digest
            node = self.tree.by_key(new)
            if node is not None:
                self._invalidate(node)

    async def commit_after_rename(self, node: Node) -> None:
        """Commit closed staged files that a rename just gave their final name.

        The commits run in the background and the rename returns at once: the kernel
        serializes the creates and renames of a directory, so a rename waiting for the copy
        into the archive held up every writer of that directory (zarr-python writes each chunk
        as ``key.<uuid>.partial`` and renames it, several at a time). Until its commit is done
        the file stays staged (readable, sized); fsync, the flush timer and unmount commit
        whatever is still pending. With ``MAX_BACKGROUND`` commits pending, or without the
        background task (not mounted), the rename waits for the commit.
        """
        for n in [node] if node.children is None else list(self.tree.walk_files(node)):
            st = self.staged.get(n.inode)
            if st is not None and st.opens == 0 and st.dirty:
                if self._nursery is not None and self._background < MAX_BACKGROUND:
                    self._background += 1
                    self._nursery.start_soon(self._commit_in_background, n)
                else:
                    await self.commit(n)

    async def _commit_in_background(self, node: Node) -> None:
        try:
            await self.commit(node)
        except Exception as e:
            if is_no_space(e):
                self._note_full(f"commit of {node.key}", e)
            else:
                log.exception("commit of %s failed; the flush timer will retry", node.key)
        finally:
            self._background -= 1

    def linked(self, src: Node, dst: Node) -> None:
        """``dst`` is a new name for ``src``'s content (a copy of its reference)."""
        st = self.staged.get(src.inode)
        if st is not None:
            new = self.new_file(dst)
            new.pwrite(0, st.read_all())
            new.truncate(st.size)
        elif src.key in self.refs:
            self.refs[dst.key] = copy.deepcopy(self.refs[src.key])
            self.refs_dirty = True
            hashes = self._chunk_hashes()
            if hashes is not None and src.key in hashes:
                hashes[dst.key] = hashes[src.key]

    # -- committing -------------------------------------------------------------------------

    async def commit(self, node: Node) -> None:
        """Move a staged file's content into the archive (blob or inline) and the refs.

        The FUSE loop keeps serving requests while the content is read and appended in worker
        threads: the file may meanwhile be renamed (its reference goes to the new name), unlinked
        (nothing is referenced), written again (it stays dirty) or committed and dropped by
        another caller that held the lock first (nothing left to do).
        """
        st = self.staged.get(node.inode)
        if st is None or not st.dirty:
            return
        async with self.lock:
            if self.staged.get(node.inode) is not st or not st.dirty:
                return  # committed (and maybe dropped) while we waited for the lock
            if node.inode not in self.tree.nodes:
                return  # unlinked meanwhile
            gen = st.gen
            st.busy = True
            key = node.key

            hashes = self._chunk_hashes()

            def store() -> Any:  # in one worker thread: read the file, append it if a blob
                data = st.read_all()
                if tarfmt.lindi_inline_rule(key, len(data)):
                    return tarfmt.inline_value(key, data, exact=True), None
                member = self.archive.append_blob("blobs/" + key, data)
                digest = hashlib.sha256(data).hexdigest() if hashes is not None else None
                return ["./" + member.name, 0, len(data)], digest

            try:
                value, digest = await trio.to_thread.run_sync(store)
            finally:
                st.busy = False
                if st.closing:
                    st.release()
            if node.inode not in self.tree.nodes:
                return  # unlinked meanwhile: the appended blob stays unreferenced
            self.refs[node.key] = value  # its current name, if it was renamed meanwhile
            if hashes is not None:
                hashes.pop(node.key, None)
                if digest is not None:
                    hashes[node.key] = digest
            if st.gen == gen:
                st.dirty = False
            self.refs_dirty = True
            self.commits += 1
        if st.opens == 0 and not st.dirty:
            self._drop(node)
        self._invalidate(node)

    async def commit_all(self, *, include_open: bool = False, quiet: float = 0.0) -> None:
        """Commit dirty files: closed ones (closed at least ``quiet`` seconds ago), or all."""
        now = time.monotonic()
        for inode, st in list(self.staged.items()):
            if st.dirty and (include_open or (st.opens == 0 and now - st.closed_at >= quiet)):
                node = self.tree.get(inode)
                if node is not None:
                    await self.commit(node)

    async def flush(self, *, durable: bool = True, quiet: float = 0.0) -> None:
        """Commit closed files and write lindi.json + index (durably: fsync before returning).

        ``quiet``: leave files closed less than that many seconds ago for a later flush (a
        rename is likely to follow and commit them under their final name).
        """
        await self.commit_all(quiet=quiet)
        async with self.lock:
            if not self.refs_dirty:
                return
            # A snapshot: the trio thread keeps editing self.refs while a worker thread dumps it.
            doc = {**self.doc_extra, "refs": dict(self.refs)}
            self.refs_dirty = False
            try:
                await trio.to_thread.run_sync(lambda: self.archive.commit(doc, durable=durable))
            except BaseException:
                self.refs_dirty = True
                raise
            self.flushes += 1
            self._json_bytes = self._measure_json()
            if self._full_logged and not any(st.dirty for st in self.staged.values()):
                self._full_logged = False
                log.warning("%s: everything staged is committed again", self.staging_dir)

    async def fsync(self, node: Node) -> None:
        st = self.staged.get(node.inode)
        if st is not None and st.dirty:
            await self.commit(node)
        await self.flush(durable=True, quiet=QUIET)

    async def run_timer(self) -> None:
        """Background task: flush every ``flush_interval`` seconds while there is work, and
        run the commits started by renames. Cancelled at unmount; :meth:`close` then commits
        whatever is left (a commit cancelled while waiting for the lock left its file dirty)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    await trio.sleep(self.flush_interval)
                    if self.refs_dirty or any(
                        s.dirty and s.opens == 0 for s in self.staged.values()
                    ):
                        try:
                            await self.flush(durable=True, quiet=QUIET)
                        except Exception as e:
                            if is_no_space(e):
                                self._note_full("periodic flush", e)
                            else:
                                log.exception("periodic flush failed; will retry")
            finally:
                self._nursery = None

    async def close(self) -> None:
        """Final flush at unmount: every file, open or not, is committed."""
        await self.commit_all(include_open=True)
        await self.flush(durable=True)
        for st in self.staged.values():
            st.close()
        self.staged.clear()
        await trio.to_thread.run_sync(self.archive.close)
