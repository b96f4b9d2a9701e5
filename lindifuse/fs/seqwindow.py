"""Read-ahead window policy for one directory of chunk files: pure logic, no I/O.

A reader walking a Zarr array reads chunk files one after another in chunk-index order. Like the
kernel's own read-ahead, the window of chunks fetched ahead of it starts small (a random reader
pays little) and doubles every time the reader reaches the latest window (it keeps up, so the
stream is real), up to a bound; a jump resets it. A new window is started as soon as less than one
window lies ahead of the reader, so the next window is in flight while the current one is being
consumed: the request time of each window hides behind the reading of the previous one.

Readers walk backwards too: dask's task order reads a reduction's chunks from the last to the first
(``xarray.open_zarr(...).sum().compute()`` reads chunk n-1, n-2, ..., 0), one worker or many.
:class:`TwoWayWindow` runs the same policy on the mirrored ordinals for them, so both directions
get windows and neither direction's reader pays a request's latency per chunk.

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


class TwoWayWindow:
    """:class:`SeqWindow` in both directions over ordinals ``0 .. n-1``: a forward stream on the
    ordinals as they are, a backward one on the mirrored ordinals ``n-1-i``.

    Both record every read (a read in one direction is a jump for the other, which keeps that
    one's window small). A direction may start a window only for a read outside the other
    direction's latest window: a forward reader that reaches the last chunk starts no backward
    window over what it just read, a backward one that reaches chunk 0 no forward one, and two
    chunks read in rising order inside a descending stream (workers a little out of step) start
    nothing.
    """

    __slots__ = ("n", "fwd", "bwd")

    def __init__(self, n: int, initial: int, maximum: int) -> None:
        self.n = n
        self.fwd = SeqWindow(n, initial, maximum)
        self.bwd = SeqWindow(n, initial, maximum)

    @staticmethod
    def _in_latest(w: SeqWindow, k: int) -> bool:
        return 0 <= w.last_start <= k <= w.ahead

    def on_read(self, i: int, can_start: bool = True) -> tuple[int, int] | None:
        """As :meth:`SeqWindow.on_read`: the ordinals ``start, end`` (end exclusive) of a window
        to fetch now, in either direction, or None."""
        j = self.n - 1 - i
        fwd_may = can_start and not self._in_latest(self.bwd, j)
        bwd_may = can_start and not self._in_latest(self.fwd, i)
        span = self.fwd.on_read(i, fwd_may)
        back = self.bwd.on_read(j, bwd_may and span is None)
        if span is not None:
            return span
        if back is not None:
            return self.n - back[1], self.n - back[0]
        return None

    @property
    def grown(self) -> int:
        return self.fwd.grown + self.bwd.grown
