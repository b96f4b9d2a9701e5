"""Early writeback of appended archive data (``lindifuse.archive.base.Writeback``).

A ``.lindi.tar`` hands every ``WRITEBACK_STEP`` appended bytes to a thread that starts their
writeback (``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that the commit's fsync finds them
mostly written. These tests pin what it may and may not do: only whole pages of appended data,
never the page the next append rewrites, never after ``close``; appends and commits work the
same when the call is unavailable; and the commit still fsyncs (early writeback is no
durability)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from lindifuse.archive import base as archive_base
from lindifuse.archive import create as archive_create
from lindifuse.archive.tar import TarArchive

STEP = archive_base.WRITEBACK_STEP
PAGE = 4096


def new_tar(tmp_path) -> str:
    p = str(tmp_path / "a.lindi.tar")
    archive_create.create(p)
    return p


def append_chunks(a: TarArchive, n: int, size: int = 2**20) -> None:
    for i in range(n):
        m = a.append_blob(f"blobs/x/{i}", bytes([i % 251]) * size)
        a.rfs["refs"][f"x/{i}"] = ["./" + m.name, 0, m.s]


@pytest.mark.parametrize(
    ("start", "end", "want"),
    [
        (0, 4096, (0, 4096)),
        (0, 4095, (0, 0)),  # the page holding end is left out
        (0, 4097, (0, 4096)),
        (1000, 3 * 4096 + 1, (0, 3 * 4096)),
        (4096, 4096, (4096, 0)),
        (8192 + 512, 8 * 4096 + 512, (8192, 6 * 4096)),
    ],
)
def test_writeback_range_whole_pages_without_the_last(start, end, want):
    assert archive_base.writeback_range(start, end) == want


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_start_writeback_on_a_real_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * (4 * PAGE))
    fd = os.open(p, os.O_RDWR)
    try:
        assert archive_base.start_writeback(fd, 0, 4 * PAGE) is True
        assert archive_base.start_writeback(fd, 0, 0) is False  # nothing to do
    finally:
        os.close(fd)
    assert archive_base.start_writeback(fd, 0, PAGE) is False  # closed fd: fails, no raise


def test_appends_hand_whole_pages_to_the_thread(tmp_path, monkeypatch):
    calls: list[tuple[int, int, int]] = []
    seen = threading.Event()

    def record(fd: int, off: int, n: int) -> bool:
        calls.append((fd, off, n))
        seen.set()
        return True

    monkeypatch.setattr(archive_base, "start_writeback", record)
    p = new_tar(tmp_path)
    with TarArchive.open(p, writable=True) as a:
        first = a.end
        append_chunks(a, 3 * STEP // 2**20 + 1)
        assert seen.wait(10)
        end = a.end
        thread = a._writeback._thread
        assert thread is not None and thread.is_alive()
        a.commit(a.rfs)
    assert not thread.is_alive()  # close() joined it
    covered = sorted((off, off + n) for _, off, n in calls)
    assert covered
    for lo, hi in covered:
        assert lo % PAGE == 0 and hi % PAGE == 0
        assert first - first % PAGE <= lo < hi <= end - end % PAGE
    for (_, hi), (lo, _) in zip(covered, covered[1:], strict=False):
        assert hi <= lo  # each range once
    with TarArchive.open(p) as r:  # nothing changed in what was written
        assert r.read_member("blobs/x/3") == bytes([3]) * 2**20


def test_small_appends_start_no_thread(tmp_path):
    with TarArchive.open(new_tar(tmp_path), writable=True) as a:
        append_chunks(a, 2, 4096)
        a.commit(a.rfs)
        assert a._writeback is None


def test_unavailable_call_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_base, "_sync_file_range", False)
    p = new_tar(tmp_path)
    with TarArchive.open(p, writable=True) as a:
        append_chunks(a, STEP // 2**20 + 2)
        a.commit(a.rfs)
        thread = a._writeback._thread
    assert thread is not None and not thread.is_alive()
    with TarArchive.open(p) as r:
        assert r.read_member(f"blobs/x/{STEP // 2**20}") == bytes([STEP // 2**20]) * 2**20


def test_commit_still_fsyncs(tmp_path, monkeypatch):
    """Early writeback is not durability: a durable commit fsyncs as before (twice)."""
    p = new_tar(tmp_path)
    fsyncs: list[int] = []
    real = os.fsync
    with TarArchive.open(p, writable=True) as a:
        append_chunks(a, STEP // 2**20 + 2)
        monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
        a.commit(a.rfs)
        assert fsyncs == [a.fileno(), a.fileno()]
