"""A writer for the crash tests: writes into a lindifuse mount and logs what returned.

    python tests/crash_writer.py MODE LOG SEED [STEPS]

Prints ``ready`` once its imports are done, then reads the mount point from a line on stdin
and starts (so the interpreter and zarr load while the mount is being made). It writes until
the first error (the daemon was killed: ``E <errno>`` is logged, exit 3) or until it is done
(after STEPS steps: exit 0). Every line of LOG is written after the event it names (``O_APPEND`` writes to a
local file, which survive the death of this process):

    B key ver        version ``ver`` of ``key`` is about to be written (before its first byte)
    C key ver        close() of that version returned (after a rename, for ``r/`` files)
    S key ver        fsync() of that version returned (the file still open)
    Z array i        zarr's write of chunk ``i`` of ``z/<array>`` returned
    D key            unlink() returned
    E errno          the first failing call (then exit)

MODE ``mixed``: a zarr group ``z`` (array ``raw``: float64, 4 KiB uncompressed chunks; array
``zl``: int32, zlib chunks, many of them under 1000 bytes so they are inlined) written chunk
by chunk, interleaved with plain files: new files written in several ``write`` calls, some
fsynced; rewrites of earlier files (``O_TRUNC``, fsync); rename-over writes (``r/``); large
files (1-3 MiB, fsynced); deletions (``d/``); ``.zattrs`` updates.

MODE ``fsync-loop``: 2 KiB files ``f/<i>``, each fsynced (so a flush of lindi.json follows
every file: with a large lindi.json the daemon is almost always flushing).

The content of a version is :func:`content` ``(key, ver)``: its first bytes name the key and
the version, the rest is pseudo-random, so a reader can tell which complete version it holds,
or that it holds none.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import sys

RAW_CHUNK = 512  # float64 values per chunk of z/raw (4 KiB)
ZL_CHUNK = 256  # int32 values per chunk of z/zl
N_CHUNKS = 100_000  # arrays are long enough never to run out


def content(key: str, ver: int) -> bytes:
    """The bytes of version ``ver`` of plain file ``key`` (deterministic)."""
    h = hashlib.sha256(f"{key}|{ver}".encode()).digest()
    rng = random.Random(h)
    top = key.split("/", 1)[0]
    if top == "b":
        n = rng.randrange(1 << 20, 3 << 20)
    elif top == "f":
        n = 2048
    elif rng.random() < 0.35:
        n = rng.randrange(10, 900)  # inlined
    else:
        n = rng.randrange(1000, 96 << 10)
    head = f"{key}|{ver}|".encode()
    return head + rng.randbytes(max(0, n - len(head)))


def parse_head(data: bytes) -> tuple[str, int] | None:
    """(key, ver) named by the first bytes of ``data``, or None."""
    parts = data[:300].split(b"|", 2)
    if len(parts) < 3:
        return None
    try:
        return parts[0].decode(), int(parts[1])
    except (UnicodeDecodeError, ValueError):
        return None


def raw_chunk(i: int):
    import numpy as np

    return np.arange(RAW_CHUNK, dtype="<f8") * 0.5 + i


def zl_chunk(i: int):
    import numpy as np

    return ((np.arange(ZL_CHUNK, dtype="<i4") * (i % 7 + 1)) % 97 + i).astype("<i4")


def zl_codec():
    import numcodecs

    return numcodecs.Zlib(level=1)


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __call__(self, *parts: object) -> None:
        os.write(self.fd, (" ".join(str(p) for p in parts) + "\n").encode())


def write_file(
    log: Log, mnt: str, key: str, ver: int, *, fsync: bool, via: str | None = None
) -> None:
    """Write version ``ver`` of ``key`` in pieces (at path ``via`` first, then renamed)."""
    data = content(key, ver)
    path = os.path.join(mnt, via or key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log("B", key, ver)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        step = 64 << 10
        for off in range(0, len(data), step):
            os.pwrite(fd, data[off : off + step], off)
        if fsync:
            os.fsync(fd)
            if via is None:
                log("S", key, ver)
    finally:
        os.close(fd)
    if via is not None:
        os.rename(path, os.path.join(mnt, key))
    log("C", key, ver)


def mixed(log: Log, mnt: str, seed: int, steps: int) -> None:
    import zarr

    rng = random.Random(seed)
    g = zarr.open_group(os.path.join(mnt, "z"), mode="a", zarr_format=2)  # relative: see main
    raw = g.create_array(
        "raw",
        shape=(RAW_CHUNK * N_CHUNKS,),
        chunks=(RAW_CHUNK,),
        dtype="<f8",
        compressors=None,
        fill_value=-1.0,
    )
    zl = g.create_array(
        "zl",
        shape=(ZL_CHUNK * N_CHUNKS,),
        chunks=(ZL_CHUNK,),
        dtype="<i4",
        compressors=zl_codec(),
        fill_value=-1,
    )
    log("Z", "meta", 0)
    versions: dict[str, int] = {}
    plain: list[str] = []
    dfiles: list[str] = []
    step = 0
    while step < steps:
        step += 1
        raw[(step - 1) * RAW_CHUNK : step * RAW_CHUNK] = raw_chunk(step - 1)
        log("Z", "raw", step - 1)
        if step % 2 == 0:
            i = step // 2 - 1
            zl[i * ZL_CHUNK : (i + 1) * ZL_CHUNK] = zl_chunk(i)
            log("Z", "zl", i)
        if step % 3 == 0:
            key = f"p/{step // 3 % 5}/f{step}"
            versions[key] = 0
            write_file(log, mnt, key, 0, fsync=step % 6 == 0)
            plain.append(key)
        if step % 5 == 0 and plain:
            key = rng.choice(plain)
            versions[key] += 1
            write_file(log, mnt, key, versions[key], fsync=True)
        if step % 7 == 0:
            key = f"r/k{step % 4}"
            versions[key] = versions.get(key, -1) + 1
            write_file(log, mnt, key, versions[key], fsync=False, via=f"{key}.tmp")
        if step % 4 == 0:
            key = f"d/x{step}"
            write_file(log, mnt, key, 0, fsync=False)
            dfiles.append(key)
        if step % 11 == 0 and dfiles:
            key = dfiles.pop(0)
            os.unlink(os.path.join(mnt, key))
            log("D", key)
        if step % 9 == 0:
            g.attrs["step"] = step
        if step % 13 == 0:
            key = f"b/big{step}"
            write_file(log, mnt, key, 0, fsync=True)


def fsync_loop(log: Log, mnt: str, seed: int, steps: int) -> None:
    i = 0
    while i < steps:
        write_file(log, mnt, f"f/{seed}-{i}", 0, fsync=True)
        i += 1


def main(argv: list[str]) -> int:
    mode, log_path, seed = argv[0], argv[1], int(argv[2])
    steps = int(argv[3]) if len(argv) > 3 else 1 << 62
    if mode == "mixed":
        import numcodecs  # noqa: F401
        import numpy  # noqa: F401
        import zarr  # noqa: F401
    print("ready", flush=True)
    mnt = sys.stdin.readline().rstrip("\n")
    if not mnt:
        return 0  # not needed after all
    log = Log(log_path)
    try:
        # Work relative to a cwd inside the mount: once the daemon is killed and the mount
        # lazily detached, every call fails (ENOTCONN) instead of writing into the empty
        # directory underneath. Make sure the cwd is the mount, not that directory.
        os.chdir(mnt)
        os.getxattr(".", "user.lindifuse.pid")
        mnt = "."
        if mode == "mixed":
            mixed(log, mnt, seed, steps)
        elif mode == "fsync-loop":
            fsync_loop(log, mnt, seed, steps)
        else:
            raise SystemExit(f"unknown mode {mode}")
    except OSError as e:
        log("E", errno.errorcode.get(e.errno or 0, e.errno))
        return 3
    except Exception as e:  # zarr wraps some OSErrors
        log("E", type(e).__name__)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
