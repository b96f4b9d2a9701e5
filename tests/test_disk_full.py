"""Full file systems (issue 9, item 3), on small real tmpfs mounts (``mount -t tmpfs -o
size=...``; root only; unmounted in teardown).

- A writable archive on a full file system: the writer gets ENOSPC (at ``write`` while it can
  still be refused, else at ``fsync``), nothing committed before is lost, the archive stays
  ``lindifuse check``-clean, and once there is room again everything commits.
- A full persistent-cache directory never fails a read: chunks come from the network, one log
  line says the cache is full.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from harness import IN_CI, run_cli, wait_until
from remote_data import build_tar
from writekit import ArchiveView, assert_valid_archive


def rnd(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size) -> Path``: a fresh tmpfs of ``size`` (e.g. "2m"), unmounted at the end."""
    made: list[Path] = []

    def make(size: str, name: str = "small") -> Path:
        d = tmp_path / f"{name}-fs"
        d.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(d)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            msg = f"cannot mount a tmpfs (needs root): {res.stderr.strip()}"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        made.append(d)
        return d

    yield make
    for d in reversed(made):
        subprocess.run(["umount", str(d)], capture_output=True)
        if os.path.ismount(d):
            subprocess.run(["umount", "-l", str(d)], capture_output=True)
        assert not os.path.ismount(d), f"{d} still mounted"


def fill(directory: Path, name: str = "filler") -> Path:
    """Fill the file system holding ``directory`` to the last byte (returns the filler)."""
    p = directory / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        block = 65536
        while block >= 512:
            try:
                os.write(fd, b"\xff" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                block //= 2
    finally:
        os.close(fd)
    return p


def write_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        mv = memoryview(data)
        while mv:
            n = os.write(fd, mv[:131072])
            mv = mv[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["tar", "d"])
def test_writes_into_a_full_archive_get_enospc(mount, tmpfs, kind):
    fs = tmpfs("2m")
    arch = fs / f"w.lindi.{kind}"
    res = run_cli("create", arch)
    assert res.rc == 0, res.describe()
    ballast = fs / "ballast"
    ballast.write_bytes(bytes(300_000))  # removed later to make room (an archive never shrinks)
    m = mount(arch)
    committed: dict[str, bytes] = {}
    # 1. files written and fsynced until the writer is refused: ENOSPC, nothing else
    refused = None
    for i in range(40):  # 40 x 100 KB > 2 MiB: bounded
        key = f"data/{i}"
        blob = rnd(100_000, i)
        try:
            write_fsync(m.path / key if i else _mkdir(m.path / "data") / "0", blob)
        except OSError as e:
            refused = (i, e.errno)
            break
        committed[key] = blob
    assert refused is not None, "the 2 MiB file system never filled"
    assert refused[1] == errno.ENOSPC, refused
    assert len(committed) >= 5, committed.keys()
    # the mount still works: committed files read back, small writes still fit... or ENOSPC
    for key, blob in committed.items():
        assert (m.path / key).read_bytes() == blob, key
    assert "no space left" in m.log_text()
    s = json.loads(os.getxattr(m.path, "user.lindifuse.stats"))
    assert s["writer"]["refused_writes"] >= 1
    # 2. the partially written file is kept as far as it was accepted (like a local file)
    partial = m.path / f"data/{refused[0]}"
    kept = partial.read_bytes() if partial.exists() else b""
    assert kept == rnd(100_000, refused[0])[: len(kept)]
    # 3. room again on the file system: writing works again
    ballast.unlink()
    write_fsync(m.path / "again", b"A" * 50_000)
    committed["again"] = b"A" * 50_000
    m.umount()
    view = assert_valid_archive(arch)  # lindifuse check clean, headers agree with the index
    for key, blob in committed.items():
        assert view.content(key) == blob, key
    # 4. a remount serves exactly the committed files
    m2 = mount(arch, None, "--read-only")
    for key, blob in committed.items():
        assert (m2.path / key).read_bytes() == blob, key
    m2.umount()


def _mkdir(p: Path) -> Path:
    p.mkdir(exist_ok=True)
    return p


def test_disk_filled_by_another_program_before_the_commit(mount, tmpfs):
    """The writes were admitted, then another program takes the last byte: fsync gives ENOSPC
    (not EIO), the archive on disk keeps its last commit (no torn member), umount refuses to
    lose the staged data; once the other file is gone, everything commits."""
    fs = tmpfs("4m")
    arch = fs / "w.lindi.tar"
    assert run_cli("create", arch).rc == 0
    m = mount(arch)
    first = rnd(300_000, 1)
    write_fsync(m.path / "first", first)
    # staged, admitted (in memory), not yet committed: the flush timer runs every second, so
    # fill right after the close and check what the timer and fsync do
    fd = os.open(m.path / "second", os.O_WRONLY | os.O_CREAT, 0o644)
    second = rnd(600_000, 2)
    os.write(fd, second)
    filler = fill(fs)
    with pytest.raises(OSError) as e:
        os.fsync(fd)
    assert e.value.errno == errno.ENOSPC
    os.close(fd)
    # the archive as committed is intact and check-clean; the failed append left nothing
    assert run_cli("check", arch).rc == 0, run_cli("check", arch).describe()
    assert ArchiveView(arch).content("first") == first
    res = run_cli("umount", m.path)
    assert res.rc == 1 and "no space left" in res.stderr and m.is_mounted(), res.describe()
    assert (m.path / "second").read_bytes() == second  # still staged, still readable
    logged = [ln for ln in m.log_text().splitlines() if "No space left" in ln]
    assert 1 <= len(logged) <= 4, logged  # not one line per second
    filler.unlink()
    m.umount()
    view = assert_valid_archive(arch)
    assert view.content("first") == first and view.content("second") == second


def test_full_cache_directory_never_fails_a_read(mount, tmpfs, http_server):
    cache_fs = tmpfs("400k", "cache")
    data = build_tar(http_server.root / "d.lindi.tar", 24, 40_000)  # 960 kB > 400 kB
    m = mount(http_server.url("d.lindi.tar"), None, "--cache-dir", cache_fs / "c")
    for _ in range(2):
        for i in range(data.nchunks):
            assert (m.path / "x" / str(i)).read_bytes() == data.expected(i), i
    # the cache writes behind the reads: wait (bounded) for the writer to meet the full disk
    assert wait_until(
        lambda: json.loads(os.getxattr(m.path, "user.lindifuse.stats"))["disk_cache"]["full"],
        10,
    ), json.loads(os.getxattr(m.path, "user.lindifuse.stats"))["disk_cache"]
    full = [ln for ln in m.log_text().splitlines() if "logged once" in ln]
    assert len(full) == 1, full
    assert not [ln for ln in m.log_text().splitlines() if "read failed" in ln]
    m.umount()
    # and a cache directory that cannot even be created (the file system is full)
    filler = fill(cache_fs, "filler")
    m = mount(http_server.url("d.lindi.tar"), None, "--cache-dir", cache_fs / "new")
    for i in range(data.nchunks):
        assert (m.path / "x" / str(i)).read_bytes() == data.expected(i), i
    m.umount()
    filler.unlink()
