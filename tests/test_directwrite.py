"""cache/directwrite: O_DIRECT content files, and the buffered fallback where it is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lindifuse.cache import directwrite
from lindifuse.cache.directwrite import DirectWriter
from lindifuse.cache.disk import DiskCache


def _direct_ok(folder: Path) -> bool:
    try:
        fd = os.open(folder / ".probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    os.unlink(folder / ".probe")
    return True


@pytest.mark.parametrize("size", [64 * 1024, 2**20 - 100, 2**20, 3 * 2**20 + 1])
def test_direct_write_gives_the_exact_bytes_and_length(tmp_path, size):
    if not _direct_ok(tmp_path):
        pytest.skip(f"{tmp_path}: this file system refuses O_DIRECT")
    w = DirectWriter()
    data = os.urandom(size)
    assert w.write(str(tmp_path / "f"), data) is True
    assert (tmp_path / "f").read_bytes() == data  # padded write cut back to the length
    # another file through the same buffer: no bytes of an earlier, longer one leak in
    short = os.urandom(max(directwrite.MIN_SIZE, size // 2) + 7)
    assert w.write(str(tmp_path / "g"), short) is True
    assert (tmp_path / "g").read_bytes() == short
    assert w.files == 2


def test_small_and_huge_files_and_a_disabled_writer_are_left_to_the_caller(tmp_path):
    w = DirectWriter()
    assert w.write(str(tmp_path / "s"), b"x" * (directwrite.MIN_SIZE - 1)) is False
    assert not (tmp_path / "s").exists()
    off = DirectWriter(enabled=False)
    assert off.write(str(tmp_path / "o"), os.urandom(2**20)) is False
    assert not (tmp_path / "o").exists()


def test_a_file_system_without_o_direct_turns_the_writer_off():
    shm = Path("/dev/shm")
    if not shm.is_dir() or _direct_ok(shm):
        pytest.skip("no tmpfs that refuses O_DIRECT here")
    w = DirectWriter()
    target = shm / f"lindifuse-dw-{os.getpid()}"
    try:
        assert w.write(str(target), os.urandom(2**20)) is False
        assert w.enabled is False
    finally:
        target.unlink(missing_ok=True)


def test_disk_cache_entries_written_direct_read_back_and_survive_reopen(tmp_path):
    c = DiskCache(str(tmp_path / "c"), 64 * 2**20)
    items = [(f"k{i}", "http://h/x", os.urandom(2**20 - i)) for i in range(4)]
    c.put_many(items)
    if _direct_ok(tmp_path):
        assert c.stats.direct_writes == 4
    else:
        assert c.stats.direct_writes == 0
    for k, _, data in items:
        assert c.get(k) == data
    c.close()
    again = DiskCache(str(tmp_path / "c"), 64 * 2**20)
    for k, _, data in items:
        assert again.get(k) == data  # crc32 and size checked on read
    again.close()
    plain = DiskCache(str(tmp_path / "p"), 64 * 2**20, direct_writes=False)
    plain.put_many(items[:1])
    assert plain.stats.direct_writes == 0 and plain.get("k0") == items[0][2]
    plain.close()
