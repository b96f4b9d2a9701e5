"""Rate-limited warnings: one line per storm of the same problem (a host down, a file failing
every read), not one per request. Used by the sources and the FUSE operations."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class StormLog:
    """Rate-limits one kind of warning per key (a host): the first one of a storm is logged,
    the rest of each ``window`` seconds are counted and summed up in one line when the next
    one arrives after the window (so a long outage gives one line a minute, not one per read).
    """

    def __init__(
        self,
        logger: logging.Logger,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.window = window
        self.clock = clock
        self._since: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        """Log (True) or count (False) one warning about ``key``."""
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: Any) -> bool:
        """Log (True) or count (False) one error about ``key``."""
        return self.log(logging.ERROR, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log (True) or count (False) one message about ``key`` at ``level``."""
        now = self.clock()
        start = self._since.get(key)
        if start is not None and now - start < self.window:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        n = self._suppressed.pop(key, 0)
        if n:
            self.logger.log(
                level, "%s: %d more like this in the last %.0f s (storm)", key, n, now - start
            )
        self._since[key] = now
        self.logger.log(level, msg, *args)
        return True
