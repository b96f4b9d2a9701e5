"""What the installed pyfuse3 lets a mount ask of the kernel beyond stock pyfuse3 3.5.

``make setup`` rebuilds pyfuse3 from its source distribution with
``patches/pyfuse3/<version>.patch`` (see ``patches/pyfuse3/README.md``); when that build failed,
or pyfuse3 was installed some other way, the stock module is there and every mount works as
before. This module is the one place that tells the two apart, once, when the daemon starts:

- :func:`no_open`: the build hands ``read``/``readdir`` the inode once ``open``/``opendir``
  answered ``ENOSYS``. A read-only mount then answers ``ENOSYS``: the kernel sends no OPEN,
  RELEASE, OPENDIR or RELEASEDIR any more (two of the four requests of a small file) and keeps
  directory listings in its page cache (``FOPEN_CACHE_DIR``, its default without opendir).

- :func:`request_burst`: a worker reads the next request straight from the (non-blocking) FUSE
  fd after answering one, up to ``REQUEST_BURST`` in a row, instead of taking a trio lock
  and an epoll round before every request: with several readers, requests are queued
  already, and that wait cost about as much as a small request's handler.

- :func:`file_range`: ``read`` may return a ``pyfuse3.FileRange`` (a range of an open
  descriptor) that pyfuse3 replies with libfuse's ``fuse_reply_data``, splicing the pages into
  the kernel with the GIL released: a local uncompressed chunk is never copied through Python.

``LINDIFUSE_PYFUSE3_FEATURES=0`` in the daemon's environment turns the features off (the
benchmarks compare both on one build; a way out should a kernel misbehave).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import pyfuse3

ENV = "LINDIFUSE_PYFUSE3_FEATURES"


def patched() -> bool:
    """Whether the installed pyfuse3 is the patched build (whatever the environment says)."""
    return bool(getattr(pyfuse3, "NOOPEN_PASSES_INODE", False))


def _allowed() -> bool:
    return os.environ.get(ENV, "1") != "0"


def no_open() -> bool:
    """Whether read-only mounts may answer OPEN and OPENDIR with ENOSYS (see the module doc)."""
    return patched() and _allowed()


REQUEST_BURST = 16  # requests a worker takes in a row before it waits (and lets others run)
BURST_ENV = "LINDIFUSE_REQUEST_BURST"  # another burst length; 0 turns bursts off (benchmarks)


def request_burst(n: int = REQUEST_BURST) -> bool:
    """Turn on pyfuse3's request bursts (see the module doc) once the session is set up (from
    ``Operations.init``); False, and nothing changed, on a build without them or with the
    features turned off."""
    setter = getattr(pyfuse3, "set_request_burst", None)
    if setter is None or not _allowed():
        return False
    with contextlib.suppress(ValueError):  # a value that is not a number: the default
        n = int(os.environ.get(BURST_ENV, n))
    if n <= 0:
        return False
    try:
        setter(n)
    except (OSError, RuntimeError) as e:  # Operations.init must not raise: run without them
        logging.getLogger(__name__).warning("request bursts left off: %s", e)
        return False
    return True


RANGE_ENV = "LINDIFUSE_FILE_RANGE"  # 0: reply with bytes even where ranges work (benchmarks)


def file_range() -> Any:
    """``pyfuse3.FileRange`` when the build has it and neither the features nor file ranges
    are turned off, else None."""
    cls = getattr(pyfuse3, "FileRange", None)
    if cls is None or not _allowed() or os.environ.get(RANGE_ENV, "1") == "0":
        return None
    return cls
