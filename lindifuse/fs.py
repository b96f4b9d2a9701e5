"""The FUSE operations: a thin layer mapping kernel requests onto the tree and content service.

Read-only here; a writable mount plugs a ``Writer`` (see ``lindifuse.writer``) that owns every
mutating operation. Errors from one reference become EIO on that file and a log line naming the
key; they never take the mount down.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

import pyfuse3

from .content import ContentService
from .errors import RefError
from .tree import Node, Tree

log = logging.getLogger(__name__)

XATTR_REF = b"user.lindi.ref"
XATTR_PID = b"user.lindifuse.pid"
XATTR_STATS = b"user.lindifuse.stats"


class LindiOperations(pyfuse3.Operations):
    """pyfuse3 operations over a Tree whose files are served by a ContentService."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

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
        self.timeout = 300.0 if read_only else 1.0
        self.mtime_ns = int(mtime * 1e9)
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._stats = stats
        self._dir_handles: dict[int, list[Node]] = {}
        self._next_dir_fh = 1

    # -- helpers -----------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.tree.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        a.entry_timeout = self.timeout
        a.attr_timeout = self.timeout
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mtime_ns
        a.st_blksize = 128 * 1024
        if node.children is not None:
            a.st_mode = stat.S_IFDIR | (0o555 if self.read_only else 0o755)
            a.st_nlink = 2
            a.st_size = 0
        else:
            a.st_mode = stat.S_IFREG | (0o444 if self.read_only else 0o644)
            a.st_nlink = 1
            try:
                a.st_size = await self.content.size(node)
            except RefError as e:
                # The file still exists: show it with size 0 so ls works; reads give EIO.
                log.error("%s", e)
                a.st_size = 0
            a.st_blocks = (a.st_size + 511) // 512
        return a

    def _erofs(self) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    # -- namespace ---------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
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
        node = self._node(inode)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        # Snapshot the listing so offsets stay stable while the directory is read.
        self._dir_handles[fh] = sorted(node.children.values(), key=lambda n: n.name)
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self._dir_handles.get(fh, [])
        for i in range(start_id, len(entries)):
            node = entries[i]
            if not pyfuse3.readdir_reply(
                token, os.fsencode(node.name), await self._attrs(node), i + 1
            ):
                break

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        total = sum(n.size for n in self.tree.nodes.values() if n.children is None and n.size > 0)
        s.f_blocks = (total + 4095) // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.tree.nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- reading -----------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            self._erofs()
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(fh)
        try:
            return await self.content.read(node, off, size)
        except RefError as e:
            log.error("read failed: %s", e)
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
                log.error("%s", e)
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
