"""Read-ahead window policy for one directory of chunk files: pure logic, no I/O.

A reader walking a Zarr array reads chunk files one after another in chunk-index order. Like the
kernel's own read-ahead, the window of chunks fetched ahead of it starts small (a random reader
pays little) and doubles every time the reader reaches the latest window (it keeps up, so the
stream is real), up to a bound; a jump resets it. A new window is started as soon as less than one
window lies ahead of the reader, so the next window is in flight while the current one is being
consumed: the request time of each window hides behind the reading of the previous one.

:class:`SeqWindow` only decides *which* chunk ordinals to fetch; ``lindifuse.fs.readahead.ReadAhead``
maps ordinals to files and fetches them.
"""

from __future__ import annotations

from collections import deque

# A read of chunk i counts as sequential when one of the LOOKBACK chunks before it was read
# recently (readers with a few threads read slightly out of order).
LOOKBACK = 3


class SeqWindow:
    """Sequential-read detection and a growing read-ahead window over ordinals ``0 .. n-1``."""

    __slots__ = ("n", "initial", "maximum", "window", "ahead", "last_start", "recent", "grown")

    def __init__(self, n: int, initial: int, maximum: int) -> None:
        self.n = n
        self.maximum = max(1, maximum)
        self.initial = max(1, min(initial, self.maximum))
        self.window = self.initial  # chunks in the next window
        self.ahead = -1  # highest ordinal a window has been started for
        self.last_start = -1  # first ordinal of the latest window (-1: none yet)
        self.recent: deque[int] = deque(maxlen=32)
        self.grown = 0  # times the window doubled (for tests and stats)

    def on_read(self, i: int, can_start: bool = True) -> tuple[int, int] | None:
        """Record a read of the first bytes of chunk ``i``; return the ordinals ``start, end``
        (end exclusive) of a window to fetch now, or None.

        ``can_start`` False (no fetch slot free) records the read but starts nothing; the
        next read asks again.
        """
        recent = self.recent
        hit = 0 <= i <= self.ahead  # the reader reached chunks a window fetched
        sequential = i == 0 or hit or any((i - d) in recent for d in range(1, LOOKBACK + 1))
        recent.append(i)
        if not sequential:
            self.window = self.initial  # a jump: start small again
            return None
        if self.ahead - i >= self.window:
            return None  # a whole window is already fetched or in flight ahead of the reader
        start = max(self.ahead + 1, i + 1)
        end = min(self.n, start + self.window)
        if start >= end or not can_start:
            return None
        if 0 <= self.last_start <= i and self.window < self.maximum:
            # The reader has reached the latest window: it keeps up, so widen the next one.
            self.window = min(self.maximum, self.window * 2)
            self.grown += 1
            end = min(self.n, start + self.window)
        self.ahead = end - 1
        self.last_start = start
        return start, end
