"""What the installed pyfuse3 lets a mount ask of the kernel beyond stock pyfuse3 3.5.

``make setup`` rebuilds pyfuse3 from its source distribution with
``patches/pyfuse3/<version>.patch`` (see ``patches/pyfuse3/README.md``); when that build failed,
or pyfuse3 was installed some other way, the stock module is there and every mount works as
before. This module is the one place that tells the two apart, once, when the daemon starts:

- :func:`no_open`: the build hands ``read``/``readdir`` the inode once ``open``/``opendir``
  answered ``ENOSYS``. A read-only mount then answers ``ENOSYS``: the kernel sends no OPEN,
  RELEASE, OPENDIR or RELEASEDIR any more (two of the four requests of a small file) and keeps
  directory listings in its page cache (``FOPEN_CACHE_DIR``, its default without opendir).

``LINDIFUSE_PYFUSE3_FEATURES=0`` in the daemon's environment turns the features off (the
benchmarks compare both on one build; a way out should a kernel misbehave).
"""

from __future__ import annotations

import os

import pyfuse3

ENV = "LINDIFUSE_PYFUSE3_FEATURES"


def patched() -> bool:
    """Whether the installed pyfuse3 is the patched build (whatever the environment says)."""
    return bool(getattr(pyfuse3, "NOOPEN_PASSES_INODE", False))


def no_open() -> bool:
    """Whether read-only mounts may answer OPEN and OPENDIR with ENOSYS (see the module doc)."""
    return patched() and os.environ.get(ENV, "1") != "0"
