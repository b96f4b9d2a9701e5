"""Durability and crash safety of writable mounts, with real mounts and SIGKILL.

What docs/semantics.md promises and these tests hold the daemon to:

* after ``fsync(2)`` returns on a file written through the mount, its content survives a
  SIGKILL of the daemon (``test_fsync_survives_sigkill``);
* after ``lindifuse umount`` returns, everything written is in the archive
  (``test_umount_commits_everything``);
* a crash at any other moment leaves an archive that ``lindifuse check`` finds clean or that
  ``check --repair`` (or simply the next writable mount) makes clean, where every fsynced file
  is intact and every other key holds a complete version of what was written, or is absent
  (``test_crash_torture``: SIGKILL at many random moments of a heavy zarr + plain-file writer;
  ``test_kill_during_flush``: SIGKILL while the daemon is inside the batch flush of a large
  lindi.json, spotted from the daemon's ``/proc`` entries (``task/*/syscall`` for fsync,
  ``io`` for the large JSON write), including during the final flush of an unmount).

After every crash: force-unmount, check (and repair), writable remount, verify every file
through the mount, write one more file, clean unmount, ``check`` clean, ``tar tf`` lists the
archive; at the end lindi (in its own venv) opens every archive and reads every key.

The writer is ``tests/crash_writer.py`` (its docstring describes the log it keeps).
``LINDIFUSE_CRASH_SEED`` reproduces a run; ``LINDIFUSE_CRASH_KILLS`` changes the number of
random kill points of the torture (default 20).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import crash_writer as W
import pytest
from harness import Mount, force_unmount, pid_alive, run, run_cli

WRITER = Path(__file__).resolve().parent / "crash_writer.py"
SEED = int(os.environ.get("LINDIFUSE_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
N_KILLS = int(os.environ.get("LINDIFUSE_CRASH_KILLS") or 20)
HAVE_TAR = shutil.which("tar") is not None

PARTIAL = re.compile(r"^(?P<base>.*)\.[0-9a-f]{32}\.partial$")  # zarr-python 3's temporary names


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the writer and its log --------------------------------------------------------------------


@dataclass
class WriterLog:
    """What crash_writer.py logged: which versions it began, closed, fsynced."""

    begun: dict[str, set[int]] = field(default_factory=dict)
    closed: dict[str, set[int]] = field(default_factory=dict)
    fsynced: dict[str, int] = field(default_factory=dict)  # key -> highest fsynced version
    chunks: dict[str, int] = field(default_factory=dict)  # array -> highest chunk written
    deleted: set[str] = field(default_factory=set)
    error: str | None = None
    lines: int = 0

    @classmethod
    def read(cls, path: Path) -> WriterLog:
        log = cls()
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            parts = line.split()
            if not parts:
                continue
            log.lines += 1
            tag = parts[0]
            if tag == "B":
                log.begun.setdefault(parts[1], set()).add(int(parts[2]))
            elif tag == "C":
                log.closed.setdefault(parts[1], set()).add(int(parts[2]))
            elif tag == "S":
                log.fsynced[parts[1]] = max(log.fsynced.get(parts[1], -1), int(parts[2]))
            elif tag == "Z":
                log.chunks[parts[1]] = max(log.chunks.get(parts[1], -1), int(parts[2]))
            elif tag == "D":
                log.deleted.add(parts[1])
            elif tag == "E":
                log.error = parts[1] if len(parts) > 1 else "?"
        return log


class Writer:
    """crash_writer.py as a child process, started before the mount (its imports overlap
    the mount); :meth:`go` gives it the mount point."""

    def __init__(self, mode: str, log: Path, seed: int, steps: int | None = None):
        self.log_path = log
        args = [sys.executable, str(WRITER), mode, str(log), str(seed)]
        if steps is not None:
            args.append(str(steps))
        self.err_path = log.with_suffix(".stderr")
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
            )

    def go(self, mnt: Path, timeout: float = 60) -> float:
        """Wait for ``ready``, start writing into ``mnt``; returns when it was told to."""
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert r, f"writer not ready after {timeout}s: {self.stderr()}"
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", f"writer: {line!r} {self.stderr()}"
        self.proc.stdin.write(os.fsencode(mnt) + b"\n")
        self.proc.stdin.flush()
        return time.monotonic()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")[-3000:]

    def stop(self, timeout: float = 15) -> int | None:
        """Wait for it to exit (it stops at its first error); kill it by PID if it hangs."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    f.close()

    def log(self) -> WriterLog:
        return WriterLog.read(self.log_path)


# -- verification through a mount --------------------------------------------------------------


@dataclass
class Seen:
    """The files of a mount: every key listed, ``{key: (size, sha256)}`` of those read."""

    keys: list[str] = field(default_factory=list)
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def lindi_spec(self) -> dict:
        return {"all": self.keys, "keys": self.files}


def _zarr_expected(key: str) -> bytes | None:
    """The bytes zarr writes for chunk key ``z/<array>/<i>``, None when not a chunk key."""
    arr, _, name = key[2:].rpartition("/")
    if not name.isdigit():
        return None
    i = int(name)
    if arr == "raw":
        return W.raw_chunk(i).tobytes()
    if arr == "zl":
        return W.zl_codec().encode(W.zl_chunk(i).tobytes())
    return None


def check_zarr_key(key: str, data: bytes, wlog: WriterLog) -> None:
    m = PARTIAL.match(key)
    real = m.group("base") if m else key
    arr, _, name = real[2:].rpartition("/")
    if name in (".zgroup", ".zattrs", ".zarray"):
        meta = json.loads(data)  # complete JSON: never a torn write
        assert isinstance(meta, dict), f"{key}: {data[:200]!r}"
        if name == ".zarray":
            assert meta["chunks"] == [W.RAW_CHUNK if arr == "raw" else W.ZL_CHUNK], (key, meta)
        return
    want = _zarr_expected(real)
    assert want is not None, f"unexpected key {key!r} under z/"
    assert data == want, f"{key}: corrupted chunk ({len(data)} bytes, want {len(want)})"
    i = int(name)
    # chunk i can exist only if the writer got to it (logged, or the one in flight)
    assert i <= wlog.chunks.get(arr, -1) + 1, f"{key}: chunk {i} never written"


def check_plain_key(key: str, data: bytes, wlog: WriterLog) -> None:
    logical = key.removesuffix(".tmp") if key.startswith("r/") else key
    head = W.parse_head(data)
    assert head is not None, f"{key}: {len(data)} bytes that no version of any file starts with"
    k, ver = head
    assert k == logical, f"{key}: holds content of {k!r}"
    assert ver in wlog.begun.get(k, ()), f"{key}: version {ver} was never written"
    want = W.content(k, ver)
    assert data == want, (
        f"{key}: version {ver} is corrupted or incomplete ({len(data)} bytes, want {len(want)})"
    )


def verify_mount(
    root: Path,
    wlog: WriterLog,
    base: dict[str, bytes],
    *,
    extra: dict[str, bytes] | None = None,
    sample: int | None = None,
    rng: random.Random | None = None,
) -> Seen:
    """Check every file under ``root`` (a mount after a crash) against what was written.

    ``base``: the keys the archive held before the writer ran (they must be intact);
    ``extra``: more exact ``{key: bytes}``; ``sample``: read only that many base keys (all
    of them are listed), for huge archives. Fsynced versions must be there.
    """
    seen = Seen()
    keys: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for f in files:
            keys.append(f if rel == "." else f"{rel}/{f}")
    seen.keys = keys
    present = set(keys)
    missing = sorted(set(base) - present)
    assert not missing, f"keys of the original archive lost: {missing[:10]} ({len(missing)})"
    to_read = keys
    if sample is not None:
        assert rng is not None
        others = [k for k in keys if k not in base]
        to_read = others + rng.sample(sorted(set(keys) & set(base)), min(sample, len(base)))
    for key in to_read:
        with open(root / key, "rb") as fh:
            data = fh.read()
        seen.files[key] = (len(data), sha(data))
        top = key.split("/", 1)[0]
        if key in base:
            assert data == base[key], f"{key}: original content changed"
            seen.counts["base"] += 1
        elif extra and key in extra:
            assert data == extra[key], f"{key}: wrong content"
            seen.counts["extra"] += 1
        elif top == "z":
            check_zarr_key(key, data, wlog)
            seen.counts["zarr"] += 1
        elif top in ("p", "r", "d", "b", "f"):
            check_plain_key(key, data, wlog)
            seen.counts["plain"] += 1
        else:
            raise AssertionError(f"unexpected key {key!r}")
    for key, ver in wlog.fsynced.items():
        assert key in present, f"{key}: fsynced (version {ver}) but lost"
        head = W.parse_head((root / key).read_bytes()[:300])
        assert head is not None and head[1] >= ver, f"{key}: fsynced version {ver}, found {head}"
        seen.counts["fsynced"] += 1
    return seen


# -- offline checks ----------------------------------------------------------------------------


def check_clean(archive: Path) -> None:
    res = run_cli("check", archive)
    assert res.rc == 0, f"check not clean:\n{res.describe()}"


def check_or_repair(archive: Path) -> tuple[str, list[str]]:
    """``lindifuse check --repair`` (checks, repairs what it found, checks again) must end
    clean; returns ("check: clean" or "check --repair", the fixes made)."""
    res = run_cli("check", "--repair", archive)
    assert res.rc == 0, f"check --repair left problems:\n{res.describe()}"
    fixes = [x.removeprefix("fixed: ") for x in res.stdout.splitlines() if x.startswith("fixed:")]
    return ("check --repair" if fixes else "check: clean"), fixes


def tar_lists(archive: Path) -> list[str]:
    res = run(["tar", "tf", archive], timeout=60)
    assert res.rc == 0, f"tar tf failed:\n{res.describe()}"
    names = res.stdout.splitlines()
    assert names[0] == ".tar_entry.json" and "lindi.json" in names, names[:5]
    return names


LINDI_CHECK = r"""
import hashlib, json, sys
import lindi

def sha(b):
    return hashlib.sha256(b).hexdigest()

spec = json.load(open(sys.argv[1]))
out = {}
for path, want in spec.items():
    problems = []
    try:
        f = lindi.LindiH5pyFile.from_lindi_file(path)
        store = f._zarr_store
        base = getattr(store, "_base_store", store)
        keys = set(base.rfs["refs"])
        if want.get("all") is not None and keys != set(want["all"]):
            a, b = sorted(keys - set(want["all"])), sorted(set(want["all"]) - keys)
            problems.append(f"keys differ: only lindi {a[:5]}, only the mount {b[:5]}")
        for key, (n, digest) in want["keys"].items():
            data = bytes(store[key])
            # lindi 0.4 zero-pads every short chunk of a numeric array (the mount only
            # uncompressed ones): equal up to trailing zeros
            if sha(data) != digest and not (
                len(data) > n and not data[n:].strip(b"\0") and sha(data[:n]) == digest
            ):
                problems.append(f"{key}: lindi reads {len(data)} other bytes")
        for name in want.get("datasets", []):
            f[name][()]
        f.close()
    except Exception as e:
        problems.append(f"{type(e).__name__}: {e}")
    out[path] = problems
print(json.dumps(out))
"""


def lindi_reads(lindi_python: str, tmp: Path, spec: dict[str, dict]) -> None:
    """lindi opens every archive of ``spec`` and reads the same bytes as the mount did."""
    spec_file = tmp / "lindi-spec.json"
    spec_file.write_text(json.dumps(spec))
    res = run([lindi_python, "-c", LINDI_CHECK, spec_file], timeout=600)
    assert res.rc == 0, res.describe()
    out = json.loads(res.stdout.strip().splitlines()[-1])
    bad = {p: probs for p, probs in out.items() if probs}
    assert not bad, f"lindi cannot read {len(bad)} archive(s): {json.dumps(bad, indent=1)[:4000]}"


# -- the daemon's syscalls (to kill it inside a flush) ------------------------------------------

_SYSCALLS = {
    "x86_64": {"pwrite64": 18, "fsync": 74, "fdatasync": 75},
    "aarch64": {"pwrite64": 68, "fsync": 82, "fdatasync": 83},
}.get(platform.machine())


def archive_fds(pid: int, path: Path) -> set[int]:
    """The daemon's descriptors of ``path`` (the writer's, and the read path's)."""
    target = os.path.realpath(path)
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    out.add(int(fd))
    return out


def archive_syscall(pid: int, fds: set[int]) -> str | None:
    """``"fsync"`` when a thread of ``pid`` is blocked in fsync of one of ``fds``, else None.

    (``/proc/*/syscall`` only shows blocked threads: a pwrite into the page cache runs on a
    CPU and shows as "running"; see :func:`wait_for_big_write`.)"""
    assert _SYSCALLS is not None
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                parts = f.read().split()
        except OSError:
            continue
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        nr, a0, a2 = int(parts[0]), int(parts[1], 16), int(parts[3], 16)
        if a0 not in fds:
            continue
        if nr == _SYSCALLS["pwrite64"] and a2 >= 64 << 10:
            return "pwrite"  # blocked in a large write (dirty-page throttling)
        if nr in (_SYSCALLS["fsync"], _SYSCALLS["fdatasync"]):
            return "fsync"
    return None


def _write_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_for_big_write(pid: int, timeout: float, min_burst: int = 256 << 10) -> int | None:
    """Return (the bytes dirtied so far) while ``pid`` is in the middle of a large write.

    The kernel accounts ``write_bytes`` page by page as a write dirties the page cache, so
    a counter that keeps growing from one poll to the next (polls are ~20 us apart) past
    ``min_burst`` is a large pwrite in progress: here only the padded lindi.json member (8
    MiB; blobs are 2 KiB and the index a few KiB). A SIGKILL then usually lands inside that
    write, which the kernel may cut short: a torn JSON member."""
    deadline = time.monotonic() + timeout
    prev = _write_bytes(pid)
    burst = 0
    while prev is not None and time.monotonic() < deadline:
        cur = _write_bytes(pid)
        if cur is None:
            return None
        burst = burst + cur - prev if cur > prev else 0
        prev = cur
        if burst >= min_burst:
            return burst
    return None


def wait_for_syscall(pid: int, fd: set[int], want: set[str], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        s = archive_syscall(pid, fd)
        if s in want:
            return s
    return None


# -- one crash cycle ---------------------------------------------------------------------------


@dataclass
class Outcome:
    label: str
    when: str
    log: WriterLog
    recovery: str
    fixes: list[str]
    archive: Path
    seen: Seen


def recover_and_verify(
    mount,
    archive: Path,
    wlog: WriterLog,
    base: dict[str, bytes],
    *,
    repair_first: bool,
    sample: int | None = None,
    rng: random.Random | None = None,
) -> tuple[str, list[str], Seen]:
    """After a crash: check (+repair) or straight to a writable remount; verify every file;
    write one more; clean unmount; check clean; tar lists it."""
    recovery, fixes = check_or_repair(archive) if repair_first else ("remount", [])
    m2 = mount(archive)
    marker = W.content("p/marker", 0)
    try:
        seen = verify_mount(m2.path, wlog, base, sample=sample, rng=rng)
        (m2.path / "crash-marker").write_bytes(marker)
    finally:
        m2.umount()
    seen.files["crash-marker"] = (len(marker), sha(marker))
    seen.keys.append("crash-marker")
    if recovery == "remount":
        fixes = re.findall(r"recovered: (.*)", m2.log_text())
    check_clean(archive)
    if archive.is_file() and HAVE_TAR:
        tar_lists(archive)
    return recovery, fixes, seen


def kill_and_unmount(m: Mount) -> None:
    try:
        if m.daemon_alive():
            m.kill()
    finally:
        if m.is_mounted():
            force_unmount(m.path)
    assert not m.is_mounted()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rng() -> random.Random:
    print(f"\ncrash tests: LINDIFUSE_CRASH_SEED={SEED}")
    return random.Random(SEED)


# -- 1. fsync then SIGKILL -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar", "dir"])
def test_fsync_survives_sigkill(mount, lindi_files, lindi_python, tmp_path, kind):
    name = "amended.lindi.tar" if kind == "tar" else "amended.lindi.d"
    archive = lindi_files.copy(name, tmp_path)
    base = dict(lindi_files.expected(name))
    m = mount(archive)
    mp = m.path
    overwritten = "processing/amended/values/0"
    assert overwritten in base
    blob = W.content("p/blob", 0)[:5000] + os.urandom(200_000)
    small = b"small inline content\n"
    renamed = os.urandom(3000)
    later = os.urandom(4000)
    fds: list[int] = []
    try:
        # a new blob fsynced and still open at the kill
        os.makedirs(mp / "new", exist_ok=True)
        fd = os.open(mp / "new/blob.bin", os.O_RDWR | os.O_CREAT, 0o644)
        fds.append(fd)
        os.write(fd, blob)
        os.fsync(fd)
        # a small (inline) file, fdatasync'ed, closed
        fd2 = os.open(mp / "new/small.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd2, small)
        os.fdatasync(fd2)
        os.close(fd2)
        # an existing chunk overwritten in place, fsynced, still open
        fd3 = os.open(mp / overwritten, os.O_RDWR)
        fds.append(fd3)
        os.pwrite(fd3, b"\x7f" * 16, 8)
        os.fsync(fd3)
        new_chunk = base[overwritten][:8] + b"\x7f" * 16 + base[overwritten][24:]
        # zarr-style: write a temporary name, rename it over the key, fsync the directory
        (mp / "new/k.tmp").write_bytes(renamed)
        os.rename(mp / "new/k.tmp", mp / "new/k")
        dfd = os.open(mp / "new", os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        # written after the last fsync and never synced: no promise either way
        os.write(fd, later)
        (mp / "new/unsynced").write_bytes(later)
    finally:
        kill_and_unmount(m)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    want = {"new/blob.bin": None, "new/small.txt": small, overwritten: new_chunk, "new/k": renamed}
    recovery, fixes = check_or_repair(archive)
    m2 = mount(archive)
    try:
        got = (m2.path / "new/blob.bin").read_bytes()
        assert got in (blob, blob + later), f"fsynced blob: {len(got)} bytes"
        for key, data in want.items():
            if data is not None:
                assert (m2.path / key).read_bytes() == data, key
        for key, data in base.items():
            if key != overwritten:
                assert (m2.path / key).read_bytes() == data, key
        if (m2.path / "new/unsynced").exists():
            assert (m2.path / "new/unsynced").read_bytes() == later
        assert sorted(os.listdir(m2.path / "new")) in (
            ["blob.bin", "k", "small.txt"],
            ["blob.bin", "k", "small.txt", "unsynced"],
        )
    finally:
        m2.umount()
    check_clean(archive)
    if kind == "tar" and HAVE_TAR:
        tar_lists(archive)
    keys = {k: (len(v), sha(v)) for k, v in base.items() if k != overwritten}
    keys.update({k: (len(v), sha(v)) for k, v in want.items() if v is not None})
    lindi_reads(lindi_python, tmp_path, {str(archive): {"keys": keys}})
    print(f"{kind}: after fsync + SIGKILL: {recovery} {fixes}; fsynced files intact")


# -- 2. umount then everything is there --------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar", "dir"])
def test_umount_commits_everything(mount, lindi_files, lindi_python, tmp_path, kind):
    import numpy as np
    import zarr

    name = "amended.lindi.tar" if kind == "tar" else "amended.lindi.d"
    archive = lindi_files.copy(name, tmp_path)
    base = dict(lindi_files.expected(name))
    m = mount(archive)
    files = {f"u/f{i}": W.content(f"u/f{i}", i) for i in range(40)}
    for key, data in files.items():
        os.makedirs(m.path / os.path.dirname(key), exist_ok=True)
        (m.path / key).write_bytes(data)
    os.unlink(m.path / "u/f3")
    del files["u/f3"]
    os.rename(m.path / "u/f4", m.path / "u/moved")
    files["u/moved"] = files.pop("u/f4")
    g = zarr.open_group(m.path / "zz", mode="a", zarr_format=2)
    data = np.arange(64 * 300, dtype="<f8")
    g.create_array("a", shape=data.shape, chunks=(300,), dtype="<f8", compressors=None)[:] = data
    g.attrs["done"] = True
    # unmount at once: nothing has waited for the 1 s flush timer
    m.umount()
    check_clean(archive)
    if kind == "tar" and HAVE_TAR:
        names = tar_lists(archive)
        assert "blobs/u/f0" in names or "blobs/u/f1" in names
    m2 = mount(archive, None, "--read-only")
    try:
        for key, want in {**base, **files}.items():
            assert (m2.path / key).read_bytes() == want, key
        assert not (m2.path / "u/f3").exists() and not (m2.path / "u/f4").exists()
        back = zarr.open_group(m2.path / "zz", mode="r", zarr_format=2)
        assert back.attrs["done"] is True
        np.testing.assert_array_equal(back["a"][:], data)
        all_keys = set()
        for dirpath, _d, fs in os.walk(m2.path):
            rel = os.path.relpath(dirpath, m2.path)
            all_keys |= {f if rel == "." else f"{rel}/{f}" for f in fs}
        keys = {k: (len(v), sha(v)) for k, v in {**base, **files}.items()}
        for k in all_keys - set(keys):
            b = (m2.path / k).read_bytes()
            keys[k] = (len(b), sha(b))
    finally:
        m2.umount()
    assert sum(1 for k in all_keys if k.startswith("zz/a/") and k[5:].isdigit()) == 64
    lindi_reads(lindi_python, tmp_path, {str(archive): {"all": sorted(keys), "keys": keys}})


# -- 3. torture: SIGKILL at random moments of a heavy writer ---------------------------------------


def crash_cycle(
    mount,
    writer: Writer,
    archive: Path,
    base: dict[str, bytes],
    label: str,
    delay: float,
    *,
    repair_first: bool,
    started=None,
) -> Outcome:
    """``writer`` (already started) writes into a fresh mount of ``archive``; SIGKILL of the
    daemon ``delay`` seconds after it starts; then recovery and verification. ``started()``
    is called once the writer runs (to spawn the next one meanwhile)."""
    mp = archive.parent / f"mnt-{label}"
    mp.mkdir()
    try:
        m = mount(archive, mp)
        try:
            t0 = writer.go(mp)
            if started is not None:
                started()
            time.sleep(max(0.0, t0 + delay - time.monotonic()))
            assert writer.proc.poll() is None, f"writer ended early: {writer.stderr()}"
        finally:
            kill_and_unmount(m)
    finally:
        writer.stop()
    wlog = writer.log()
    assert not os.listdir(mp), f"the writer wrote under the unmounted {mp}: {os.listdir(mp)}"
    assert wlog.lines > 0 or delay < 0.3, f"the writer wrote nothing in {delay:.2f}s"
    recovery, fixes, seen = recover_and_verify(
        mount, archive, wlog, base, repair_first=repair_first
    )
    return Outcome(label, f"{delay:.2f}s", wlog, recovery, fixes, archive, seen)


def fix_kind(line: str) -> str:
    """A recovery line without its numbers and names, for counting kinds of fixes."""
    line = re.sub(r"'[^']*'|\S*/\S*", "X", line)
    return re.sub(r"\d+", "N", line)


def summary_table(outcomes: list[Outcome]) -> str:
    rows = [f"{'kill':<12} {'at':>12} {'log':>5} {'fsynced':>7} {'files':>6}  recovery"]
    kinds: Counter = Counter()
    for o in outcomes:
        rows.append(
            f"{o.label:<12} {o.when:>12} {o.log.lines:>5} {len(o.log.fsynced):>7} "
            f"{len(o.seen.keys):>6}  {o.recovery}: {len(o.fixes)} fixes"
        )
        kinds.update(fix_kind(x) for x in o.fixes)
    rows += ["fixes made, by kind:"] + [f"  {n:3d} x {k}" for k, n in kinds.most_common()]
    return "\n".join(rows)


LANES = 2  # crash cycles run two at a time (2 cores: a mount + writer each)


def test_crash_torture(mount, lindi_files, lindi_python, tmp_path, rng):
    """SIGKILL the daemon at N_KILLS moments spread over the first ~2.4 s of a heavy writer
    (zarr chunks, inline and blob files, fsyncs, renames, deletions), each on a fresh copy of
    a lindi-made archive (most .lindi.tar, some .lindi.d); every crash must recover."""
    t_start = time.monotonic()
    span = 2.4
    plan = []
    for i in range(N_KILLS):
        kind = "dir" if i % 4 == 3 else "tar"
        delay = rng.uniform(i * span / N_KILLS, (i + 1) * span / N_KILLS)
        plan.append((i, kind, delay, rng.randrange(1 << 30)))
    rng.shuffle(plan)  # each lane gets early and late kill points
    outcomes: dict[int, Outcome] = {}
    writers: list[Writer] = []
    stop = threading.Event()

    def spawn(item) -> Writer:
        i, _kind, _delay, seed = item
        (tmp_path / f"k{i:02d}").mkdir()
        w = Writer("mixed", tmp_path / f"k{i:02d}" / "writer.log", seed)
        writers.append(w)
        return w

    def lane(items) -> None:
        nxt = spawn(items[0]) if items else None
        for n, item in enumerate(items):
            if stop.is_set():
                return
            i, kind, delay, _seed = item
            name = "amended.lindi.tar" if kind == "tar" else "amended.lindi.d"
            writer, nxt = nxt, None
            holder: list[Writer] = []

            def started(n=n, holder=holder) -> None:
                if n + 1 < len(items):
                    holder.append(spawn(items[n + 1]))

            try:
                outcomes[i] = crash_cycle(
                    mount,
                    writer,
                    lindi_files.copy(name, tmp_path / f"k{i:02d}"),
                    dict(lindi_files.expected(name)),
                    f"{kind}-{i:02d}",
                    delay,
                    repair_first=i % 2 == 0,
                    started=started,
                )
            except BaseException:
                stop.set()
                raise
            nxt = holder[0] if holder else (spawn(items[n + 1]) if n + 1 < len(items) else None)

    try:
        with concurrent.futures.ThreadPoolExecutor(LANES) as ex:
            futures = [ex.submit(lane, plan[k::LANES]) for k in range(LANES)]
            for f in futures:
                f.result()
    finally:
        for w in writers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.stop()
    ordered = [outcomes[i] for i in sorted(outcomes)]
    table = summary_table(ordered)
    print(f"\n{table}")
    lindi_reads(lindi_python, tmp_path, {str(o.archive): o.seen.lindi_spec() for o in ordered})
    total = time.monotonic() - t_start
    print(f"torture: {N_KILLS} kills in {total:.1f}s (seed {SEED})")
    fsynced = sum(len(o.log.fsynced) for o in ordered)
    assert fsynced > 0, f"no fsync returned before any kill: the test proves nothing\n{table}"
    assert any(o.fixes for o in ordered), "no kill ever needed a recovery"


# -- 4. SIGKILL inside the batch flush of a large lindi.json -------------------------------------

BIG_KEYS = 40_000
FLUSH_MODES = ("pwrite", "fsync", "after-fsync", "umount")


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A .lindi.tar whose lindi.json holds 40,000 inline keys (2 MB of JSON in an 8 MiB padded
    member): every batch flush rewrites all of it, so the daemon spends most of an
    fsync-per-file workload flushing."""
    d = tmp_path_factory.mktemp("big")
    refs: dict = {".zgroup": {"zarr_format": 2}}
    for i in range(BIG_KEYS):
        refs[f"big/g{i // 1000}/k{i}"] = f"value {i} " + "x" * (i % 40)
    (d / "big.lindi.json").write_text(json.dumps({"refs": refs}))
    res = run_cli("create", d / "big.lindi.tar", "--from", d / "big.lindi.json")
    assert res.rc == 0, res.describe()
    base = {k: v.encode() for k, v in refs.items() if isinstance(v, str)}
    base[".zgroup"] = json.dumps(refs[".zgroup"]).encode()
    return d / "big.lindi.tar", base


def flush_cycle(
    mount, src: Path, base: dict[str, bytes], work: Path, i: int, mode: str, rng: random.Random
) -> Outcome:
    """Writer fsyncing one file after another (each fsync flushes the whole lindi.json);
    SIGKILL when a daemon thread is in the big pwrite of the JSON member, in fsync of the
    archive, just after that fsync (commit point, header renames), or in the final flush of
    ``lindifuse umount``."""
    work.mkdir()
    archive = work / src.name
    shutil.copyfile(src, archive)
    writer = Writer("fsync-loop", work / "writer.log", rng.randrange(1 << 30))
    mp = work / "mnt"
    mp.mkdir()
    umount_proc = None
    hit = None
    try:
        m = mount(archive, mp, "-f")  # the daemon is our child: its /proc/*/syscall readable
        try:
            pid = m.pid
            fd = archive_fds(pid, archive)
            assert fd, f"no fd of {archive} in the daemon"
            writer.go(mp)
            time.sleep(rng.uniform(0.05, 0.4))  # a few flushes in
            if mode == "umount":
                writer.proc.terminate()
                writer.stop()
                # closed files left for the unmount's final flush
                with open(writer.log_path, "a") as log:
                    for j in range(3):
                        key = f"f/u{i}-{j}"
                        log.write(f"B {key} 0\n")
                        (mp / key).write_bytes(W.content(key, 0))
                umount_proc = subprocess.Popen(
                    [sys.executable, "-m", "lindifuse", "umount", str(mp)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                burst = wait_for_big_write(pid, 20)
                hit = f"umount:pwrite@{burst >> 10}K" if burst else None
            elif mode == "after-fsync":
                if wait_for_syscall(pid, fd, {"fsync"}, 20):
                    while archive_syscall(pid, fd) == "fsync":
                        pass
                    hit = "after-fsync"
            elif mode == "pwrite":
                burst = wait_for_big_write(pid, 20)
                hit = f"pwrite@{burst >> 10}K" if burst else None
            else:
                hit = wait_for_syscall(pid, fd, {mode}, 20)
                time.sleep(rng.uniform(0, 0.003))
            if hit and m.daemon_alive():
                m.kill()
        finally:
            kill_and_unmount(m)
            if umount_proc is not None:
                umount_proc.wait(60)
    finally:
        if writer.proc.poll() is None and mode == "umount":
            writer.proc.kill()
        writer.stop()
    wlog = writer.log()
    assert not os.listdir(mp), f"files written under the unmounted {mp}: {os.listdir(mp)}"
    assert hit or mode == "umount", f"{mode}: never saw the daemon flushing"
    recovery, fixes, seen = recover_and_verify(
        mount, archive, wlog, base, repair_first=i % 2 == 1, sample=300, rng=rng
    )
    return Outcome(f"flush-{i:02d}", hit or "no flush", wlog, recovery, fixes, archive, seen)


@pytest.mark.skipif(_SYSCALLS is None, reason=f"syscall numbers unknown on {platform.machine()}")
def test_kill_during_flush(mount, big_archive, lindi_python, tmp_path, rng):
    """SIGKILL the daemon inside the batch flush (large lindi.json), 8 times: in the write of
    the JSON member, in fsync, just after fsync, during the final flush of an unmount."""
    src, base = big_archive
    t_start = time.monotonic()
    outcomes = []
    for i in range(8):
        mode = FLUSH_MODES[i % len(FLUSH_MODES)]
        outcomes.append(flush_cycle(mount, src, base, tmp_path / f"f{i:02d}", i, mode, rng))
    table = summary_table(outcomes)
    print(f"\n{table}")
    spec = {str(o.archive): o.seen.lindi_spec() for o in outcomes[:3]}
    lindi_reads(lindi_python, tmp_path, spec)
    print(f"flush kills: {len(outcomes)} in {time.monotonic() - t_start:.1f}s (seed {SEED})")
    hits = Counter(o.when.partition("@")[0] for o in outcomes)
    assert hits["pwrite"] and hits["fsync"] and hits["after-fsync"], hits
    assert sum(len(o.log.fsynced) for o in outcomes) > 0
