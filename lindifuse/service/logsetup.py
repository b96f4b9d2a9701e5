"""Where the daemon's log lines go, in what form, and how often.

* ``--log-file F``: timestamped lines in F; SIGHUP reopens F (after logrotate moved it).
* ``-f`` without a log file: stderr, timestamped — unless stderr is the systemd journal
  (``$JOURNAL_STREAM`` names stderr's device and inode): then no timestamps (the journal adds
  its own) and a ``<N>`` syslog priority prefix, which journald turns into the entry's priority.
* A storm of similar warnings (a retry per request while a server is down) is one line when it
  starts and one summary line per window while it lasts, never one per read.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

# syslog priorities (sd-daemon(3)): <3> error, <4> warning, <6> info, <7> debug
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def under_journal(stream: IO[Any] | None = None, env: dict[str, str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is connected to the systemd journal."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class JournalFormatter(logging.Formatter):
    """``<6>lindifuse: mounted ...``: one priority prefix per line, no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler that can reopen its file (SIGHUP after logrotate moved it away)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.flush()
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def make_handler(log_file: str | None, stream: IO[Any] | None = None) -> logging.Handler:
    """The handler for ``--log-file`` (or stderr, journal-aware, when None)."""
    handler: logging.Handler
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = ReopenableFileHandler(log_file)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
    else:
        s = stream or sys.stderr
        handler = logging.StreamHandler(s)
        if under_journal(s):
            handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
        else:
            handler.setFormatter(logging.Formatter(FILE_FORMAT))
    return handler


def setup_logging(log_file: str | None, level: str) -> None:
    """Route the root logger to ``log_file`` or stderr at ``level``; quiet httpx."""
    root = logging.getLogger()
    root.handlers[:] = [make_handler(log_file)]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def reopen_logs() -> int:
    """Reopen every file handler of the root logger; returns how many were reopened."""
    n = 0
    for h in logging.getLogger().handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()
            n += 1
    return n
