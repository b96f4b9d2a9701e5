"""The floor: a pyfuse3 file system with no logic at all, on the same pyfuse3 build as lindifuse.

    .venv/bin/python benchmarks/_floorfs.py SPEC.json MOUNTPOINT [--memory] [--stock] [--writable] [--now]

It serves the keys of a ``.lindi.tar`` made by ``_gen.build_array_tar`` (SPEC.json: the tar's
path, key -> [absolute offset, size] of every chunk, key -> text of every metadata file) as a
read-only tree, with what lindifuse itself asks of the kernel: entries and attributes kept for
300 s, OPEN/OPENDIR answered ENOSYS (the patched build: no OPEN/RELEASE at all), request bursts
of 16, the kernel's read-ahead raised as lindifuse raises it. A READ is one ``os.pread`` of the
tar (or, with ``--memory``, a slice of bytes loaded at start: a warm cache that costs nothing).
``--stock`` leaves the patched features off. ``--writable`` also takes new files, writes,
renames, directories and removals, kept in memory (as lindifuse's writable mounts do, it keeps
OPEN and RELEASE: they carry the file handles of writes). ``--now`` answers LOOKUP and in-memory
READs from pyfuse3's C callback (``Operations.lookup_now``/``read_now``): only on a build with
``patches/pyfuse3/measured/3.5.0-answer-now.patch``, which lindifuse does not ship.

Nothing here is lindifuse's: every request costs only pyfuse3's dispatch, trio and the kernel
round trip. ``bench_floor.py`` runs lindifuse beside it on the same workloads, so the difference
is what lindifuse's own code costs and the floor is what no change inside lindifuse can pass.
The daemon runs in the foreground until SIGTERM/SIGINT (or unmount) and writes its PID to
``MOUNTPOINT``'s ``--pid-file``.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import signal
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE
TIMEOUT = 300.0


class FloorOps(pyfuse3.Operations):
    def __init__(self, spec: dict, memory: bool, patched: bool, writable: bool = False) -> None:
        super().__init__()
        self.patched = patched
        self.writable = writable
        self.fd = os.open(spec["tar"], os.O_RDONLY) if spec.get("tar") else -1
        # inode -> (name -> child inode) for directories; inode -> (offset, size) or bytes
        self.dirs: dict[int, dict[str, int]] = {ROOT: {}}
        self.files: dict[int, tuple[int, int] | bytes | bytearray] = {}
        self.parent: dict[int, int] = {ROOT: ROOT}
        nxt = ROOT + 1

        def place(key: str) -> tuple[int, str]:
            nonlocal nxt
            *parts, name = key.split("/")
            at = ROOT
            for p in parts:
                child = self.dirs[at].get(p)
                if child is None:
                    child = nxt
                    nxt += 1
                    self.dirs[at][p] = child
                    self.dirs[child] = {}
                    self.parent[child] = at
                at = child
            ino = nxt
            nxt += 1
            self.dirs[at][name] = ino
            self.parent[ino] = at
            return ino, name

        for key, (off, size) in spec["files"].items():
            ino, _ = place(key)
            self.files[ino] = os.pread(self.fd, size, off) if memory else (off, size)
        for key, text in spec["inline"].items():
            ino, _ = place(key)
            self.files[ino] = text.encode()
        self.next_inode = nxt

    def init(self) -> None:
        if self.patched and hasattr(pyfuse3, "set_request_burst"):
            pyfuse3.set_request_burst(16)

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.entry_timeout = a.attr_timeout = TIMEOUT
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        if ino in self.dirs:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
            a.st_size = 0
        else:
            f = self.files[ino]
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = f[1] if isinstance(f, tuple) else len(f)
        a.st_blksize = 2**20
        a.st_blocks = (a.st_size + 511) // 512
        return a

    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        if inode not in self.dirs and inode not in self.files:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        ino = self.dirs.get(parent_inode, {}).get(os.fsdecode(name))
        if ino is None:
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0
            a.entry_timeout = TIMEOUT
            return a
        return self._attrs(ino)

    def _lookup_now(self, parent_inode: int, name: bytes) -> pyfuse3.EntryAttributes | None:
        """``--now``: the same answer from pyfuse3's C callback (patched build, ANSWER_NOW)."""
        ino = self.dirs.get(parent_inode, {}).get(os.fsdecode(name))
        return None if ino is None else self._attrs(ino)

    def _read_now(self, fh: int, off: int, size: int) -> bytes | None:
        f = self.files.get(fh)
        if f is None or isinstance(f, tuple):
            return None
        return f[off : off + size]

    async def opendir(self, inode: int, ctx):
        if self.patched and not self.writable:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return inode

    async def readdir(self, fh: int, start_id: int, token) -> None:
        names = list(self.dirs[fh].items())
        for i in range(start_id, len(names)):
            name, ino = names[i]
            if not pyfuse3.readdir_reply(token, name.encode(), self._attrs(ino), i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        if self.patched and not self.writable:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self.files[fh]
        if not isinstance(f, tuple):
            return f[off : off + size]
        base, length = f
        if off >= length:
            return b""
        return os.pread(self.fd, min(size, length - off), base + off)

    async def release(self, fh: int) -> None:
        return None

    # -- writable (--writable): everything in memory --------------------------------------------

    def _new(self, parent: int, name: bytes, is_dir: bool) -> int:
        ino = self.next_inode
        self.next_inode += 1
        if is_dir:
            self.dirs[ino] = {}
        else:
            self.files[ino] = bytearray()
        self.dirs[parent][os.fsdecode(name)] = ino
        self.parent[ino] = parent
        return ino

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx):
        ino = self._new(parent_inode, name, False)
        return pyfuse3.FileInfo(fh=ino), self._attrs(ino)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx):
        return self._attrs(self._new(parent_inode, name, True))

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        f = self.files[fh]
        if not isinstance(f, bytearray):
            f = self.files[fh] = bytearray(f if isinstance(f, bytes) else b"")
        if off > len(f):
            f.extend(bytes(off - len(f)))
        f[off : off + len(buf)] = buf
        return len(buf)

    async def rename(self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes,
                     flags: int, ctx) -> None:  # fmt: skip
        ino = self.dirs[parent_old].pop(os.fsdecode(name_old))
        self.dirs[parent_new][os.fsdecode(name_new)] = ino
        self.parent[ino] = parent_new

    async def unlink(self, parent_inode: int, name: bytes, ctx) -> None:
        ino = self.dirs[parent_inode].pop(os.fsdecode(name))
        self.files.pop(ino, None)

    async def setattr(self, inode: int, attr, fields, fh, ctx) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            f = self.files[inode]
            data = bytearray(f if not isinstance(f, tuple) else os.pread(self.fd, f[1], f[0]))
            del data[attr.st_size :]
            data.extend(bytes(attr.st_size - len(data)))
            self.files[inode] = data
        return self._attrs(inode)

    async def getxattr(self, inode: int, name: bytes, ctx) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None


async def _serve(mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:

        async def stop() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop)
        try:
            from lindifuse.fs.readahead import tune_kernel_readahead_when_up

            nursery.start_soon(tune_kernel_readahead_when_up, mountpoint)
        except ImportError:  # the floor runs without lindifuse too
            pass
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="JSON: tar, files {key: [offset, size]}, inline {key: text}")
    p.add_argument("mountpoint")
    p.add_argument("--memory", action="store_true", help="serve reads from bytes in memory")
    p.add_argument("--stock", action="store_true", help="no ENOSYS open, no request bursts")
    p.add_argument("--writable", action="store_true", help="take writes (kept in memory)")
    p.add_argument(
        "--now", action="store_true", help="answer LOOKUP and in-memory READs synchronously"
    )
    p.add_argument("--pid-file")
    a = p.parse_args(argv)
    spec = json.loads(Path(a.spec).read_text())
    patched = bool(getattr(pyfuse3, "NOOPEN_PASSES_INODE", False)) and not a.stock
    ops = FloorOps(spec, a.memory, patched, a.writable)
    if a.now and not getattr(pyfuse3, "ANSWER_NOW", False):
        p.error("--now needs a pyfuse3 built with patches/pyfuse3/measured/3.5.0-answer-now.patch")
    if a.now:  # pyfuse3's C callbacks call these first (patched build, ANSWER_NOW)
        ops.lookup_now, ops.read_now = ops._lookup_now, ops._read_now
    gc.freeze()  # as lindifuse does after loading: later collections skip the tables
    opts = set(pyfuse3.default_options)
    opts.discard("default_permissions")
    opts |= {"fsname=floorfs", "subtype=floorfs", "default_permissions"}
    if not a.writable:
        opts.add("ro")
    pyfuse3.init(ops, a.mountpoint, opts)
    if a.pid_file:
        Path(a.pid_file).write_text(f"{os.getpid()}\n")
    try:
        trio.run(_serve, a.mountpoint)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
