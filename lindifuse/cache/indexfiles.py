"""Derived indexes kept on disk: one file per key under ``<cache dir>/indexes``, written
atomically (a temporary file renamed into place), so a crash leaves the old file or none.

Shared by the HDF5 index cache and the CAR block-table cache. A full or read-only cache never
fails a mount: a failed write is one warning, and the index is simply built again next time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

log = logging.getLogger(__name__)


class IndexFiles:
    """Files named ``<key[:2]>/<key><suffix>`` below ``<directory>/indexes``."""

    def __init__(self, directory: str, suffix: str) -> None:
        self.root = os.path.join(directory, "indexes")
        self.suffix = suffix

    def path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key + self.suffix)

    def read(self, key: str) -> bytes | None:
        """The file's bytes, or None when there is none (or it cannot be read)."""
        try:
            with open(self.path(key), "rb") as f:
                return f.read()
        except OSError:
            return None

    def write(self, key: str, data: bytes, what: str) -> None:
        """Replace the file atomically; on failure, one warning naming ``what``."""
        path = self.path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            log.warning("cannot keep the %s in %s: %s", what, self.root, e)
