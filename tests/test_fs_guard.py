"""An unexpected exception in a request handler becomes EIO (and a log line), never the end of
the daemon's main loop."""

from __future__ import annotations

import errno
import logging

import pyfuse3
import pytest
import trio

from lindifuse.fs.ops import LindiOperations


class Broken(LindiOperations):
    def __init__(self) -> None:  # no tree needed
        pass

    async def getattr(self, inode, ctx=None):
        raise KeyError("bug")

    async def lookup(self, parent_inode, name, ctx=None):
        raise pyfuse3.FUSEError(errno.ENOENT)


def test_unexpected_exception_is_eio(caplog):
    ops = Broken()
    with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as e:
        trio.run(ops.getattr, 5)
    assert e.value.errno == errno.EIO
    assert "internal error in getattr" in caplog.text and "KeyError" in caplog.text


def test_fuse_errors_pass_through():
    with pytest.raises(pyfuse3.FUSEError) as e:
        trio.run(Broken().lookup, 1, b"x")
    assert e.value.errno == errno.ENOENT
