"""The FUSE operations: a thin layer mapping kernel requests onto the tree and content service.

Read-only here; a writable mount plugs a ``Writer`` (see ``lindifuse.fs.writer``) that owns every
mutating operation. Errors from one reference become EIO on that file and a log line naming the
key; they never take the mount down.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import inspect
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3

from lindifuse.archive.space import is_no_space
from lindifuse.errors import RefError
from lindifuse.fs import features
from lindifuse.fs.content import LOCAL_RANGE_MIN, ContentService, Resolved
from lindifuse.fs.tree import Node, Tree
from lindifuse.fs.writer import Writer
from lindifuse.stormlog import StormLog

log = logging.getLogger(__name__)
# A failing source fails every read of it: one line per distinct error a minute, not per read.
_read_errors = StormLog(log)

XATTR_REF = b"user.lindi.ref"
XATTR_PID = b"user.lindifuse.pid"
XATTR_STATS = b"user.lindifuse.stats"
XATTR_FLUSH = b"user.lindifuse.flush"

# Read-only mounts: how long the kernel may keep entries (also negative ones) and attributes.
# The tree of a read-only mount never changes while it is mounted and every byte it serves is
# pinned to one version of its source (see docs/semantics.md), so nothing the kernel cached can
# become wrong; the bound only limits how long the kernel holds memory for entries.
READ_ONLY_TIMEOUT = 24 * 3600.0
# Block size shown in st_blksize: cat, cp and stdio read (and write) this much per call, so a
# 1 MiB chunk file arrives as one 1 MiB READ (the largest the kernel sends: FUSE max_pages 256)
# instead of one per 128 KiB.
BLKSIZE = 2**20
# Directory listings kept for READDIRPLUS continuations without OPENDIR (no-open mounts).
LISTINGS_KEPT = 64


def _guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn an unexpected exception in a request handler into EIO plus a logged traceback.

    pyfuse3 ends the main loop when a handler raises anything but FUSEError: one bug hit by
    one request must not unmount everything.
    """

    name = fn.__name__

    @functools.wraps(fn)
    async def handler(self: Any, *args: Any) -> Any:
        # Counted once per request: not again when an override calls its base class's handler
        # (WritableOperations.getxattr -> LindiOperations.getxattr is one GETXATTR).
        if getattr(type(self), name) is handler:
            try:
                self.requests[name] += 1  # shown in the stats xattr; tests count requests
            except AttributeError:  # a subclass that skipped LindiOperations.__init__
                self.requests = collections.Counter({name: 1})
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("internal error in %s%r", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


def _guard_handlers(cls: type) -> None:
    for name, fn in list(vars(cls).items()):
        if name in _HANDLER_NAMES and inspect.iscoroutinefunction(fn):
            setattr(cls, name, _guarded(fn))


_HANDLER_NAMES = {
    n for n, f in vars(pyfuse3.Operations).items() if not n.startswith("_") and callable(f)
}


class LindiOperations(pyfuse3.Operations):
    """pyfuse3 operations over a Tree whose files are served by a ContentService."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _guard_handlers(cls)

    def __init__(
        self,
        tree: Tree,
        content: ContentService,
        *,
        mtime: float,
        read_only: bool = True,
        stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.content = content
        self.read_only = read_only
        self.timeout = READ_ONLY_TIMEOUT if read_only else 1.0
        self.mtime_ns = int(mtime * 1e9)
        self._dir_mode = stat.S_IFDIR | (0o555 if read_only else 0o755)
        self._file_mode = stat.S_IFREG | (0o444 if read_only else 0o644)
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._stats = stats
        self._dir_handles: dict[int, list[tuple[str, Node]]] = {}
        # Called before a directory is looked into (lists external-link chunks on first use).
        self.prepare_dir: Callable[[Node], Awaitable[None]] | None = None
        self._next_dir_fh = 1
        self.requests: collections.Counter[str] = collections.Counter()  # per handler
        # Read-only mounts with the patched pyfuse3 answer OPEN/OPENDIR with ENOSYS: the kernel
        # then sends neither (nor RELEASE/RELEASEDIR), passes the inode as the handle, and keeps
        # listings in its page cache (see lindifuse.fs.features). Writable mounts need handles.
        self.no_open = read_only and features.no_open()
        self._listings: dict[int, list[tuple[str, Node]]] = {}  # no_open: inode -> listing
        self.request_burst = False  # pyfuse3 reads queued requests in bursts (features)
        # Local stored ranges replied from their descriptor, spliced into the kernel
        # (features.file_range); pyfuse3 reads enable_splice_write when INIT arrives.
        self._file_range = features.file_range()
        self.enable_splice_write = self._file_range is not None
        self.range_replies = 0  # reads replied as a FileRange (in stats)
        self.range_thread_replies = 0  # of those, replied from a worker thread (not cached)

    def init(self) -> None:
        """pyfuse3 calls this when the kernel's INIT arrives: the session is up, so the FUSE
        fd may be made non-blocking for request bursts (lindifuse.fs.features)."""
        self.request_burst = features.request_burst()

    def set_owner(
        self, uid: int | None = None, gid: int | None = None, umask: int | None = None
    ) -> None:
        """Show every file as owned by ``uid``/``gid`` and clear the ``umask`` bits from the
        default modes (-o uid=,gid=,umask=). Who may access is still decided by the kernel
        (default_permissions) from these attributes."""
        if uid is not None:
            self.uid = uid
        if gid is not None:
            self.gid = gid
        if umask is not None:
            self._dir_mode = stat.S_IFDIR | (self._dir_mode & 0o777 & ~umask)
            self._file_mode = stat.S_IFREG | (self._file_mode & 0o777 & ~umask)

    # -- helpers -----------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.tree.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _new_attrs(self) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.generation = 0
        a.entry_timeout = self.timeout
        a.attr_timeout = self.timeout
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mtime_ns
        a.st_blksize = BLKSIZE
        return a

    async def _fill(self, a: pyfuse3.EntryAttributes, node: Node) -> pyfuse3.EntryAttributes:
        """Set the per-node fields of ``a`` (the rest is the same for every node)."""
        a.st_ino = node.inode
        if node.children is not None:
            a.st_mode = self._dir_mode
            a.st_nlink = self.tree.nlink(node)
            a.st_size = 0
            a.st_blocks = 0
        else:
            a.st_mode = self._file_mode
            a.st_nlink = 1
            try:
                a.st_size = await self._file_size(node)
            except RefError as e:
                # The file still exists: show it with size 0 so ls works; reads give EIO. Without
                # OPEN (which fails such a file) size 1, so that a read reaches us and fails.
                _read_errors.error(str(e), "%s", e)
                a.st_size = 1 if self.no_open else 0
            a.st_blocks = (a.st_size + 511) // 512
        return a

    async def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        return await self._fill(self._new_attrs(), node)

    async def _file_size(self, node: Node) -> int:
        return await self.content.size(node)

    async def _prepare(self, node: Node) -> None:
        if self.prepare_dir is not None:
            try:
                await self.prepare_dir(node)
            except RefError as e:
                _read_errors.error(str(e), "%s", e)
                raise pyfuse3.FUSEError(errno.EIO) from None

    def _erofs(self) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    # -- namespace ---------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        await self._prepare(parent)
        sname = os.fsdecode(name)
        if sname == ".":
            node: Node | None = parent
        elif sname == "..":
            node = parent.parent or parent
        else:
            node = self.tree.lookup(parent, sname)
        if node is None:
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0  # negative entry, cached by the kernel
            a.entry_timeout = self.timeout
            return a
        return await self._attrs(node)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return await self._attrs(self._node(inode))

    async def forget(self, inode_list: Any) -> None:
        return None  # nodes live as long as the mount

    async def opendir(self, inode: int, ctx: Any) -> int:
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # once: the kernel sends no more OPENDIR
        node = self._node(inode)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._prepare(node)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        # Snapshot the listing so offsets stay stable while the directory is read
        self._dir_handles[fh] = self._listing(node)
        return fh

    @staticmethod
    def _listing(node: Node) -> list[tuple[str, Node]]:
        """The entries of directory ``node``: "." and ".." first, as on a local file system,
        then the children in name order."""
        assert node.children is not None
        return [
            (".", node),
            ("..", node.parent or node),
            *((n.name, n) for n in sorted(node.children.values(), key=lambda n: n.name)),
        ]

    async def _listing_of_inode(self, inode: int) -> list[tuple[str, Node]]:
        """no_open: the listing of directory ``inode`` (READDIRPLUS arrives without OPENDIR).
        The tree of a read-only mount does not change, so a listing computed once stays valid
        for the continuations of a large directory; a few are kept."""
        entries = self._listings.get(inode)
        if entries is None:
            node = self._node(inode)
            if node.children is None:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            await self._prepare(node)
            entries = self._listing(node)
            if len(self._listings) >= LISTINGS_KEPT:
                del self._listings[next(iter(self._listings))]
            self._listings[inode] = entries
        return entries

    def _known_size(self, node: Node) -> int:
        """The served size of file ``node`` when known without awaiting anything, else -1."""
        return node.size

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if self.no_open:  # fh is the inode
            entries = await self._listing_of_inode(fh)
        else:
            entries = self._dir_handles.get(fh, [])
        a = self._new_attrs()  # readdir_reply copies it: one object serves the whole listing
        reply = pyfuse3.readdir_reply
        file_mode = self._file_mode
        known_size = self._known_size
        # This loop runs once per entry of every listing (readdirplus fills the kernel's
        # attribute cache, so a walk's stat calls cost no further request): files whose size
        # is known are filled inline, without the coroutine chain of _fill.
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            size = known_size(node) if node.children is None else -1
            if size >= 0:
                a.st_ino = node.inode
                a.st_mode = file_mode
                a.st_nlink = 1
                a.st_size = size
                a.st_blocks = (size + 511) // 512
            else:
                await self._fill(a, node)
            if not reply(token, os.fsencode(name), a, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    def _statvfs(self) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.tree.nodes) + self.tree.npending
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = self._statvfs()
        total = sum(n.size for n in self.tree.nodes.values() if n.children is None and n.size > 0)
        s.f_blocks = (total + 4095) // 4096
        return s

    # -- reading -----------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if self.no_open:
            # Once: the kernel opens every file itself from now on (the handle is the inode,
            # FOPEN_KEEP_CACHE) and sends no RELEASE. Writes are refused by the kernel (the
            # mount is "ro"); a bad reference fails at the first read instead of here.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self._node(inode)
        if node.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            self._erofs()
        try:
            # A reference that cannot be resolved (bad base64, [url] whose size request
            # failed) was shown with size 0: the kernel would never send a read, so a reader
            # would see an empty file instead of EIO. Fail here.
            await self.content.resolve(node)
        except RefError as e:
            _read_errors.error(str(e), "open failed: %s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> Any:
        return await self._read_content(self._node(fh), off, size)

    async def _read_content(self, node: Node, off: int, size: int) -> Any:
        """The reply to a read of ``node``'s content: bytes, or a ``pyfuse3.FileRange`` of the
        local file that stores them (replied from a worker thread when its pages may have to
        come from disk). A reference that fails is EIO, logged once per cause."""
        try:
            # (a shorter request cannot be one: no lookup of the reference for small files)
            if self._file_range is not None and size >= LOCAL_RANGE_MIN:
                span = await self.content.local_range(node, off, size)
                if span is not None:
                    fd, start, n, cached = span
                    self.range_replies += 1
                    self.range_thread_replies += not cached
                    return self._file_range(fd, start, n, in_thread=not cached)
            return await self.content.read(node, off, size)
        except RefError as e:
            # keyed by the cause without the file's name: a dead server is one storm
            _read_errors.error(str(e).removeprefix(f"{node.key}: "), "read failed: %s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: int) -> None:
        return None

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return not (self.read_only and mode & os.W_OK)

    # -- extended attributes -----------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        node = self._node(inode)
        if inode == pyfuse3.ROOT_INODE:
            if name == XATTR_PID:
                return str(os.getpid()).encode()
            if name == XATTR_STATS and self._stats is not None:
                return json.dumps(self._stats()).encode()
        if name == XATTR_REF and node.children is None:
            try:
                r = await self.content.resolve(node)
            except RefError as e:
                _read_errors.error(str(e), "%s", e)
                raise pyfuse3.FUSEError(errno.EIO) from None
            return json.dumps(r.describe()).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        node = self._node(inode)
        names = []
        if inode == pyfuse3.ROOT_INODE:
            names.append(XATTR_PID)
            if self._stats is not None:
                names.append(XATTR_STATS)
        if node.children is None:
            names.append(XATTR_REF)
        return names

    # -- writes: refused on a read-only mount ---------------------------------------------------

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self._erofs()

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._erofs()

    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        self._erofs()
        raise AssertionError

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        self._erofs()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        self._erofs()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        self._erofs()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        self._erofs()

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._erofs()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._erofs()

    async def rename(
        self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any
    ) -> None:
        self._erofs()

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        self._erofs()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._erofs()
        raise AssertionError


_guard_handlers(LindiOperations)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class WritableOperations(LindiOperations):
    """Operations of a writable mount: every mutation goes through a ``Writer``."""

    def __init__(
        self,
        tree: Tree,
        content: ContentService,
        writer: Writer,
        *,
        mtime: float,
        statvfs_path: str,
        stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(tree, content, mtime=mtime, read_only=False, stats=stats)
        self.writer = writer
        self.statvfs_path = statvfs_path
        self._handles: dict[int, Node] = {}
        self._ghosts: dict[int, Node] = {}  # detached files the kernel may still reference
        self._next_fh = 1

    def _new_handle(self, node: Node) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = node
        return fh

    def _handle(self, fh: int) -> Node:
        node = self._handles.get(fh)
        if node is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return node

    def _node(self, inode: int) -> Node:
        node = self.tree.get(inode)
        if node is not None:
            return node
        # Unlinked (or renamed over) after the kernel looked it up: like a local file, it lives
        # until the kernel forgets it (a reader's open that raced with a rename-over must not
        # fail with ENOENT) and while it is open.
        node = self._ghosts.get(inode)
        if node is not None:
            return node
        for n in self._handles.values():
            if n.inode == inode:
                return n
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def forget(self, inode_list: Any) -> None:
        for inode, _nlookup in inode_list:
            self._ghosts.pop(inode, None)

    async def _detach(self, node: Node) -> None:
        """Remove file ``node`` from the namespace; it keeps its (committed) content for the
        kernel's references to it until they are forgotten, and for open files."""
        if self.writer.size(node) is None and not isinstance(node.extra, Resolved):
            with contextlib.suppress(RefError):
                await self.content.resolve(node)  # pins the reference in the node
        if self.tree.get(node.inode) is not node:
            return  # detached by another request meanwhile
        self.tree.remove(node)
        self.writer.removed(node)
        self._ghosts[node.inode] = node

    async def _file_size(self, node: Node) -> int:
        size = self.writer.size(node)
        return size if size is not None else await self.content.size(node)

    def _known_size(self, node: Node) -> int:
        size = self.writer.size(node)
        return size if size is not None else node.size

    def _child(self, parent_inode: int, name: bytes) -> tuple[Node, str, Node | None]:
        parent = self._node(parent_inode)
        if parent.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        sname = os.fsdecode(name)
        if sname in (".", "..") or "/" in sname or "\0" in sname:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return parent, sname, parent.children.get(sname)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        # The space of the file system holding the archive (where writes go), not a sum over
        # every file of the tree.
        try:
            v = os.statvfs(self.statvfs_path)
        except OSError:
            return await super().statfs(ctx)
        s = self._statvfs()
        s.f_bsize, s.f_frsize = v.f_bsize, v.f_frsize
        s.f_blocks, s.f_bfree, s.f_bavail = v.f_blocks, v.f_bfree, v.f_bavail
        s.f_ffree = s.f_favail = max(v.f_ffree, 1 << 20)
        return s

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True

    # -- files --------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR):
            try:
                await self.writer.ensure_staged(node, truncate=bool(flags & os.O_TRUNC))
            except RefError as e:
                log.error("cannot open %s for writing: %s", node.key, e)
                raise pyfuse3.FUSEError(errno.EIO) from None
        elif self.writer.size(node) is None:
            try:
                await self.content.resolve(node)  # a bad reference fails here, as read-only
            except RefError as e:
                log.error("open failed: %s", e)
                raise pyfuse3.FUSEError(errno.EIO) from None
        self.writer.opened(node)
        return pyfuse3.FileInfo(fh=self._new_handle(node), keep_cache=False)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent, sname, existing = self._child(parent_inode, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise pyfuse3.FUSEError(errno.EEXIST)
            return await self.open(existing.inode, flags, ctx), await self._attrs(existing)
        node = self.tree.add_file(parent, sname)
        self.writer.new_file(node)
        self.writer.opened(node)
        fi = pyfuse3.FileInfo(fh=self._new_handle(node), keep_cache=False)
        return fi, await self._attrs(node)

    async def read(self, fh: int, off: int, size: int) -> Any:
        node = self._handle(fh)
        data = await self.writer.read(node, off, size)
        if data is not None:
            return data
        return await self._read_content(node, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self._handle(fh)
        try:
            return await self.writer.write(node, off, buf)
        except RefError as e:
            log.error("write failed: %s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as e:
            if is_no_space(e):
                raise pyfuse3.FUSEError(e.errno) from None  # logged once by the writer
            log.error("write of %s failed: %s", node.key, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    # No flush(): pyfuse3's default answers ENOSYS, after which the kernel stops sending one on
    # every close(2). Content is committed on rename, fsync, the timer and unmount instead.

    async def fsync(self, fh: int, datasync: bool) -> None:
        node = self._handle(fh)
        try:
            await self.writer.fsync(node)
        except OSError as e:
            log.error("fsync of %s failed: %s", node.key, e)
            raise pyfuse3.FUSEError(e.errno if is_no_space(e) else errno.EIO) from None

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        try:
            await self.writer.flush(durable=True)
        except OSError as e:
            log.error("fsync of a directory failed: %s", e)
            raise pyfuse3.FUSEError(e.errno if is_no_space(e) else errno.EIO) from None

    async def release(self, fh: int) -> None:
        node = self._handles.pop(fh, None)
        if node is not None:
            await self.writer.released(node)

    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size:
            if node.children is not None:
                raise pyfuse3.FUSEError(errno.EISDIR)
            try:
                await self.writer.truncate(node, attr.st_size)
            except OSError as e:
                if not is_no_space(e):
                    raise
                raise pyfuse3.FUSEError(e.errno) from None
        # Modes, owners and times are accepted but not stored (see docs/semantics.md).
        return await self._attrs(node)

    # -- namespace ------------------------------------------------------------------------------

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        parent, sname, existing = self._child(parent_inode, name)
        if existing is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        return await self._attrs(self.tree.add_dir(parent, sname))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        _, _, node = self._child(parent_inode, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self.tree.remove(node)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        _, _, node = self._child(parent_inode, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._detach(node)

    async def rename(
        self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any
    ) -> None:
        if flags & RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        _, _, node = self._child(p_old, n_old)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        new_parent, new_name, target = self._child(p_new, n_new)
        if target is node:
            return
        anc: Node | None = new_parent
        while anc is not None:
            if anc is node:
                raise pyfuse3.FUSEError(errno.EINVAL)  # moving a directory into itself
            anc = anc.parent
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if target.children is not None:
                if node.children is None:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if target.children:
                    raise pyfuse3.FUSEError(errno.ENOTEMPTY)
                self.tree.remove(target)
            else:
                if node.children is not None:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                await self._detach(target)
        self.writer.moved(self.tree.move(node, new_parent, new_name))
        await self.writer.commit_after_rename(node)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        src = self._node(inode)
        if src.children is not None:
            raise pyfuse3.FUSEError(errno.EPERM)
        parent, sname, existing = self._child(new_parent_inode, new_name)
        if existing is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        dst = self.tree.add_file(parent, sname)
        self.writer.linked(src, dst)
        return await self._attrs(dst)

    def _uncommitted(self, node: Node) -> bool:
        st = self.writer.staged.get(node.inode)
        return st is not None and st.dirty

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        node = self._node(inode)
        if name == XATTR_REF and node.children is None and self._uncommitted(node):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)  # no reference until it is committed
        return await super().getxattr(inode, name, ctx)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        names = await super().listxattr(inode, ctx)
        if self._uncommitted(self._node(inode)):
            names = [n for n in names if n != XATTR_REF]
        return names

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if inode == pyfuse3.ROOT_INODE and name == XATTR_FLUSH:
            # Control channel: `lindifuse umount` asks for a durable flush before unmounting, so
            # that a failure is reported to it (the final flush after unmount has no caller).
            try:
                await self.writer.flush(durable=True)
            except OSError as e:
                log.error("requested flush failed: %s", e)
                raise pyfuse3.FUSEError(e.errno if is_no_space(e) else errno.EIO) from None
            return
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)
