"""A one-line progress display for long work (indexing an HDF5 file), on a terminal only.

``ProgressLine(label)`` rewrites one stderr line at most ``rate`` times a second while stderr is
a terminal and prints nothing otherwise (logs, pipes and CI output stay clean). ``close()``
erases the line. Thread-safe enough for its use: one worker thread updates, and a lost update
only delays the next redraw.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(
        self, label: str, *, stream: TextIO | None = None, rate: float = 8.0, force: bool = False
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.label = label
        self.min_gap = 1.0 / rate
        self._last = 0.0
        self._shown = False
        self._t0 = time.monotonic()

    def text(self, objects: int, chunks: int) -> str:
        secs = time.monotonic() - self._t0
        return f"{self.label}: {objects:,} objects, {chunks:,} chunks ({secs:.1f}s)"

    def update(self, objects: int, chunks: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.min_gap:
            return
        self._last = now
        self.stream.write("\r\x1b[K" + self.text(objects, chunks))
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
