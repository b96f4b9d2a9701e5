"""Persistent chunk cache: an SQLite index plus content files, shared by processes, LRU-bounded.

Layout under the cache directory (``$XDG_CACHE_HOME/lindifuse`` or ``--cache-dir``)::

    v1/index.sqlite       one row per entry: key, url, size, crc32, atime, file name or inline data
    v1/data/<xx>/<name>   the bytes of entries larger than INLINE_MAX (smaller ones live in the row)

Why this store: SQLite (the stdlib ``sqlite3`` module) is the best-kept embedded database there
is, already on every machine, and its WAL mode gives exactly what several mounts sharing one
directory need: concurrent readers, one writer at a time across processes (``BEGIN IMMEDIATE``
with a busy timeout), crash-safe commits. ``diskcache`` is built on the same idea but adds a
dependency that sees little maintenance, pickles values, writes a row on *every* read to keep
LRU order and does not verify what it returns; lmdb maps the whole store into memory with a fixed
maximum size and a single-writer lock file that a killed mount can leave behind. Owning the ~300
lines lets us verify a checksum on every read, batch LRU updates, and keep large values in plain
files (a 1 MiB chunk is read with one ``read`` and never copied through SQLite's page cache).

Rules that make it safe:
- A key is ``sha256(url, validator, offset, size)``: a replaced object (new ETag or
  Last-Modified) has new keys, so its old bytes can never be served; they age out by LRU.
- Every value is stored with its size and CRC-32, checked on every read. A mismatch (flipped
  bytes, a file cut short by a crash or power loss, a file deleted by hand) drops the entry and
  reports a miss, so the caller fetches again: a damaged entry is never served.
- Content files are written under a unique temporary name and renamed into place before their
  row is committed, and each writer's file names are unique, so two processes writing the same
  key never write into one file; a file is unlinked only after the row naming it is gone.
- The index row ``meta.total`` (kept by triggers) is the sum of entry sizes; whoever inserts
  evicts the least recently used entries (``atime``, updated in batches, and only when the
  recorded one is over a minute old) down to 90% of the
  *smallest* ``max_bytes`` among the processes using the directory, in the same transaction:
  each one registers its bound in the ``limits`` table while it has the directory open (rows of
  processes that died without closing are ignored: their PID is gone on this host, or, from
  another host, they were not refreshed for LIMIT_STALE seconds), so mounts sharing a
  directory keep it under the smallest ``--cache-size`` among them.
- The ``versions`` table remembers, per URL, the validator (and total size) the origin last
  reported. It is what makes stale-if-error and ``--offline`` possible: when the origin cannot
  be asked, entries stored under that validator are the ones "validated earlier" and may be
  served; entries of older versions never are.
- A damaged index (SQLite reports the database malformed) turns the cache off for this process
  with one log line; mounts keep working, from the network.

Everything here is blocking; :class:`AsyncDiskCache` runs it in trio worker threads and owns a
writer thread that commits queued entries in batches (one transaction for many small chunks).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import queue
import secrets
import shutil
import socket
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from lindifuse.cache.directwrite import DirectWriter

log = logging.getLogger(__name__)

FORMAT_DIR = "v1"
INLINE_MAX = 32 * 1024  # values up to this size are stored in the index row
GET_BATCH = 500  # keys per SELECT in get_many (SQLite allows 32,766 parameters)
DEFAULT_MAX = 10 * 2**30
EVICT_TO = 0.9  # evict down to this fraction of max_bytes
ATIME_FLUSH_SECONDS = 2.0
# An entry read again within this many seconds of its last recorded access is not touched
# again: the eviction order is kept to the minute (as relatime keeps a file's atime), and a
# re-read of many small entries does not rewrite every row (one page write each).
TOUCH_MIN_SECONDS = 60.0
WRITE_BEHIND_QUIET = 0.1  # seconds without new entries before queued ones are written
ORPHAN_AGE = 3600.0  # content files with no row and older than this are deleted on open
LIMIT_STALE = 24 * 3600.0  # a bound registered from another host counts this long after a write
# Bytes of the index file SQLite may map for reads (PRAGMA mmap_size) instead of copying every
# page with pread: a warm read of many small entries (inline rows) costs about 40% less CPU.
# The price is SQLite's own: an I/O error of the cache disk while mapped is a SIGBUS for the
# daemon, not an error it can log and survive. MMAP_ENV=0 (in the daemon's environment) turns
# it off; another value sets the size in bytes.
READ_MMAP = 2**30
MMAP_ENV = "LINDIFUSE_CACHE_MMAP"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    size INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    atime REAL NOT NULL,
    file TEXT,
    data BLOB
);
CREATE INDEX IF NOT EXISTS entries_atime ON entries(atime);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('total', 0);
CREATE TABLE IF NOT EXISTS versions (
    url TEXT PRIMARY KEY,
    validator TEXT NOT NULL,
    size INTEGER,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS limits (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    max_bytes INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_add AFTER INSERT ON entries BEGIN
    UPDATE meta SET value = value + NEW.size WHERE name = 'total';
END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE meta SET value = value - OLD.size WHERE name = 'total';
END;
"""


def _is_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e).lower()


def _key_batches(keys: list[str]) -> Iterator[tuple[list[str], str]]:
    """``keys`` in slices of ``GET_BATCH``, each with its ``?,?,...`` placeholders for an
    ``IN (...)`` clause."""
    for i in range(0, len(keys), GET_BATCH):
        batch = keys[i : i + GET_BATCH]
        yield batch, ",".join("?" * len(batch))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "lindifuse")


def read_mmap_setting() -> int:
    """``READ_MMAP``, or the bytes that ``MMAP_ENV`` in the environment names (a value that is
    not a number is ignored with a warning)."""
    value = os.environ.get(MMAP_ENV)
    if value is None:
        return READ_MMAP
    try:
        return int(value)
    except ValueError:
        log.warning("%s=%r is not a number of bytes: ignored", MMAP_ENV, value)
        return READ_MMAP


def default_cache_size(directory: str) -> int:
    """min(10 GiB, 10% of the free space of the file system holding ``directory``)."""
    probe = directory
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return DEFAULT_MAX
    return max(64 * 2**20, min(DEFAULT_MAX, st.f_bavail * st.f_frsize // 10))


def make_key(url: str, validator: str, offset: int, size: int) -> str:
    """The entry key of ``size`` bytes at ``offset`` of ``url`` as of ``validator``."""
    raw = f"{url}\n{validator}\n{offset}\n{size}".encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass
class DiskStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0  # entries dropped because their bytes failed the check
    writes: int = 0
    bytes_written: int = 0
    evictions: int = 0
    errors: int = 0
    dropped_writes: int = 0
    full: int = 0  # writes that failed because the cache's file system is full
    direct_writes: int = 0  # content files written with O_DIRECT (no page cache copy)


class DiskCache:
    """The blocking store. Thread-safe; safe with other processes on the same directory."""

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        *,
        inline_max: int = INLINE_MAX,
        register: bool = True,
        direct_writes: bool = True,
        read_mmap: int = READ_MMAP,
    ) -> None:
        """Open (creating) the store. ``register``: take part in the shared bound (a mount);
        administration commands (``lindifuse cache``) open it without a bound of their own.
        ``direct_writes``: write content files with ``O_DIRECT`` where the file system takes it
        (``lindifuse.cache.directwrite``). ``read_mmap``: see ``READ_MMAP``."""
        self.directory = os.path.abspath(directory)
        self.root = os.path.join(self.directory, FORMAT_DIR)
        self.data_dir = os.path.join(self.root, "data")
        self.max_bytes = max_bytes
        self.inline_max = inline_max
        self.stats = DiskStats()
        self.broken: str | None = None
        self._full_logged = False
        os.makedirs(self.data_dir, exist_ok=True)
        self._lock = threading.Lock()  # guards the read connection and the atime batch
        self._touched: dict[str, float] = {}
        self.touch_min = TOUCH_MIN_SECONDS  # see TOUCH_MIN_SECONDS
        self._last_touch_flush = time.monotonic()
        self._read_db = self._connect()
        # What SQLite took (it caps the size at its compile-time maximum; 0 where it has none)
        (self.read_mmap,) = self._read_db.execute(
            f"PRAGMA mmap_size={max(0, read_mmap)}"
        ).fetchone()
        self._write_db = self._connect()
        self._write_lock = threading.Lock()
        self._direct = DirectWriter(direct_writes)
        self._limit_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        with self._write_lock:
            self._write_db.executescript(_SCHEMA)
            if register:
                self._write_db.execute(
                    "INSERT OR REPLACE INTO limits VALUES (?, ?, ?, ?, ?)",
                    (self._limit_id, socket.gethostname(), os.getpid(), max_bytes, time.time()),
                )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            os.path.join(self.root, "index.sqlite"),
            timeout=30.0,
            isolation_level=None,
            check_same_thread=False,
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _fail(self, e: Exception) -> None:
        self.stats.errors += 1
        if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
            if self.broken is None:
                self.broken = str(e)
                log.error("disk cache %s is damaged (%s): disabled for this mount", self.root, e)
        elif _is_full(e):
            # A full cache file system: reads go on from the network; say so once.
            self.stats.full += 1
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "disk cache %s: %s: chunks are not stored (reads go on from the network; "
                    "logged once)",
                    self.root,
                    e,
                )
        else:
            log.warning("disk cache %s: %s", self.root, e)

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The verified bytes of ``key`` or None (missing, damaged, or the cache is off)."""
        return self.get_many([key]).get(key)

    def _checked(self, key: str, size: int, crc: int, fname: str | None, data: Any) -> bytes | None:
        """The bytes of one row (read from its content file if it has one) if they pass the
        size and CRC check; otherwise the entry is dropped and None returned."""
        if fname is not None:
            try:
                with open(self._path(fname), "rb") as f:
                    data = f.read(size + 1)
            except OSError:
                data = None
        if data is None or len(data) != size or zlib.crc32(data) != crc:
            self.stats.corrupt += 1
            log.warning("disk cache: dropping damaged entry %s (size or checksum mismatch)", key)
            self._drop(key, fname)
            return None
        return bytes(data)

    def note_version(self, url: str, validator: str, size: int | None) -> None:
        """Record that the origin reported ``validator`` (and total ``size``, when known) for
        ``url``: the version whose entries may be served when the origin cannot be asked."""
        if self.broken:
            return
        try:
            with self._write_lock:
                self._write_db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?) ON CONFLICT(url) DO UPDATE SET "
                    "size = CASE WHEN excluded.validator = versions.validator "
                    "THEN coalesce(excluded.size, versions.size) ELSE excluded.size END, "
                    "validator = excluded.validator, time = excluded.time",
                    (url, validator, size, time.time()),
                )
        except sqlite3.Error as e:
            self._fail(e)

    def last_version(self, url: str) -> tuple[str, int | None] | None:
        """(validator, size or None) last recorded for ``url``, or None."""
        if self.broken:
            return None
        try:
            with self._lock:
                row = self._read_db.execute(
                    "SELECT validator, size FROM versions WHERE url = ?", (url,)
                ).fetchone()
        except sqlite3.Error as e:
            self._fail(e)
            return None
        return (row[0], row[1]) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The verified bytes of those ``keys`` that are stored and intact. Rows are selected
        GET_BATCH keys per query: read-ahead asks for a thousand 4 KiB chunks at a time, and one
        query per key cost more than the rest of a warm read."""
        if self.broken:
            return {}
        keys = list(keys)
        out: dict[str, bytes] = {}
        touch: list[str] = []
        now = time.time()
        stale = now - self.touch_min
        for batch, marks in _key_batches(keys):
            try:
                with self._lock:
                    rows = self._read_db.execute(
                        f"SELECT key, size, crc, file, data, atime FROM entries "
                        f"WHERE key IN ({marks})",
                        batch,
                    ).fetchall()
            except sqlite3.Error as e:
                self._fail(e)
                return out
            for key, size, crc, fname, data, atime in rows:
                got = self._checked(key, size, crc, fname, data)
                if got is not None:
                    out[key] = got
                    if atime < stale:
                        touch.append(key)
        self.stats.hits += len(out)
        self.stats.misses += len(keys) - len(out)
        if touch:
            with self._lock:
                self._touched.update(dict.fromkeys(touch, now))
        return out

    def entry_keys(self) -> list[str]:
        """Every entry's key (for ``lindifuse cache verify``)."""
        with self._lock:
            return [row[0] for row in self._read_db.execute("SELECT key FROM entries")]

    def drop(self, key: str) -> None:
        """Delete the entry ``key`` (its bytes failed a check made by the caller)."""
        with self._lock:
            row = self._read_db.execute("SELECT file FROM entries WHERE key = ?", (key,)).fetchone()
        if row is not None:
            self._drop(key, row[0])

    def _path(self, fname: str) -> str:
        return os.path.join(self.data_dir, fname[:2], fname)

    def _drop(self, key: str, fname: str | None) -> None:
        try:
            with self._write_lock:
                self._write_db.execute(
                    "DELETE FROM entries WHERE key = ? AND file IS ?", (key, fname)
                )
        except sqlite3.Error as e:
            self._fail(e)
            return
        if fname is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path(fname))

    # -- writing -----------------------------------------------------------------------------

    def put_many(self, items: list[tuple[str, str, bytes]]) -> None:
        """Store ``(key, url, data)`` items in one transaction, then evict if over budget."""
        if self.broken or not items:
            return
        files: list[tuple[str, str, str, bytes]] = []  # (key, url, fname, data) written to disk
        rows = []
        now = time.time()
        for key, url, data in items:
            if len(data) > self.inline_max:
                fname = f"{key}-{secrets.token_hex(4)}"
                try:
                    self._write_file(fname, data)
                except OSError as e:
                    self._fail(e)
                    continue
                files.append((key, url, fname, data))
                rows.append((key, url, len(data), zlib.crc32(data), now, fname, None))
            else:
                rows.append((key, url, len(data), zlib.crc32(data), now, None, data))
        unlink: list[str] = []
        try:
            with self._write_lock:
                db = self._write_db
                db.execute("BEGIN IMMEDIATE")
                try:
                    for row in rows:
                        old = db.execute(
                            "SELECT file FROM entries WHERE key = ?", (row[0],)
                        ).fetchone()
                        if old is not None:
                            db.execute("DELETE FROM entries WHERE key = ?", (row[0],))
                            if old[0]:
                                unlink.append(old[0])
                        db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                    self._flush_touched(db)
                    unlink += self._evict(db)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            self._fail(e)
            unlink = [f[2] for f in files]  # none of the new rows made it
        else:
            self.stats.writes += len(rows)
            self.stats.bytes_written += sum(r[2] for r in rows)
        for fname in unlink:
            with contextlib.suppress(OSError):
                os.unlink(self._path(fname))

    def _write_file(self, fname: str, data: bytes) -> None:
        """Write a content file under a temporary name and rename it into place: with
        ``O_DIRECT`` where the file system takes it (``lindifuse.cache.directwrite``: no page
        cache copy allocated), else buffered."""
        folder = os.path.join(self.data_dir, fname[:2])
        tmp = os.path.join(folder, f".tmp-{fname}")
        try:
            try:
                direct = self._direct.write(tmp, data)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                direct = self._direct.write(tmp, data)
            if direct:
                self.stats.direct_writes += 1
            else:
                try:
                    f = open(tmp, "wb")  # noqa: SIM115 - closed below
                except FileNotFoundError:
                    os.makedirs(folder, exist_ok=True)
                    f = open(tmp, "wb")  # noqa: SIM115
                with f:
                    f.write(data)
            os.rename(tmp, os.path.join(folder, fname))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a full disk: leave no partial file behind
            raise

    def _flush_touched(self, db: sqlite3.Connection) -> None:
        with self._lock:
            touched, self._touched = self._touched, {}
        if touched:
            db.executemany(
                "UPDATE entries SET atime = ? WHERE key = ?", [(t, k) for k, t in touched.items()]
            )
        self._last_touch_flush = time.monotonic()

    def flush_touched(self, force: bool = False) -> None:
        """Write the batched access times (every ATIME_FLUSH_SECONDS, or now with ``force``)."""
        if self.broken or not self._touched:
            return
        if not force and time.monotonic() - self._last_touch_flush < ATIME_FLUSH_SECONDS:
            return
        try:
            with self._write_lock:
                self._write_db.execute("BEGIN IMMEDIATE")
                try:
                    self._flush_touched(self._write_db)
                    self._write_db.execute("COMMIT")
                except BaseException:
                    self._write_db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            self._fail(e)

    def effective_max(self, db: sqlite3.Connection | None = None) -> int:
        """The bound that applies now: the smallest ``max_bytes`` of the live processes using
        the directory (this one included)."""
        db = db if db is not None else self._read_db
        host, now = socket.gethostname(), time.time()
        limit = self.max_bytes
        try:
            rows = db.execute("SELECT host, pid, max_bytes, time FROM limits").fetchall()
        except sqlite3.Error:
            return limit
        for h, pid, mx, t in rows:
            live = _pid_alive(pid) if h == host else now - t < LIMIT_STALE
            if live and mx < limit:
                limit = mx
        return limit

    def _evict(self, db: sqlite3.Connection) -> list[str]:
        """Delete least recently used rows until the total is at most EVICT_TO times the
        effective bound (the smallest among the live users of the directory); returns the
        content files to unlink once committed."""
        total = db.execute("SELECT value FROM meta WHERE name = 'total'").fetchone()[0]
        limit = self.effective_max(db)  # one small SELECT per batch of inserts
        if total <= limit:
            return []
        db.execute("UPDATE limits SET time = ? WHERE id = ?", (time.time(), self._limit_id))
        target = int(limit * EVICT_TO)
        files = []
        while total > target:
            victims = db.execute(
                "SELECT key, size, file FROM entries ORDER BY atime LIMIT 256"
            ).fetchall()
            if not victims:
                break
            for key, size, fname in victims:
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                total -= size
                self.stats.evictions += 1
                if fname:
                    files.append(fname)
                if total <= target:
                    break
        return files

    # -- administration ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        with self._lock:
            entries, nbytes, urls, nfiles = self._read_db.execute(
                "SELECT count(*), total(size), count(DISTINCT url), count(file) FROM entries"
            ).fetchone()
        disk = 0
        for dirpath, _dirs, names in os.walk(self.root):
            for n in names:
                with contextlib.suppress(OSError):
                    disk += os.lstat(os.path.join(dirpath, n)).st_size
        return {
            "directory": self.directory,
            "entries": entries,
            "bytes": int(nbytes),
            "urls": urls,
            "files": nfiles,
            "disk_usage": disk,
        }

    def clear(self) -> tuple[int, int]:
        """Delete every entry (safe while mounts use the directory); returns (entries, bytes)."""
        with self._write_lock:
            db = self._write_db
            db.execute("BEGIN IMMEDIATE")
            try:
                n, nbytes = db.execute("SELECT count(*), total(size) FROM entries").fetchone()
                db.execute("DELETE FROM entries")
                db.execute("DELETE FROM versions")
                db.execute("UPDATE meta SET value = 0 WHERE name = 'total'")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        # No row names a content file any more: remove them all (a writer racing with us only
        # loses its new entry, whose row then points to a missing file and is dropped on read).
        for name in os.listdir(self.data_dir):
            shutil.rmtree(os.path.join(self.data_dir, name), ignore_errors=True)
        with contextlib.suppress(sqlite3.Error), self._write_lock:
            self._write_db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._write_db.execute("VACUUM")
        return n, int(nbytes)

    def remove_orphans(self, min_age: float = ORPHAN_AGE) -> int:
        """Delete content files no row names (left by a crash between write and commit).

        Only files older than ``min_age`` are candidates, and only their rows are looked up
        (a content file's name starts with its entry's key): a store of small entries, which
        live in their rows, is not read through at every mount."""
        if self.broken:
            return 0
        cutoff = time.time() - min_age
        old: dict[str, str] = {}  # path -> the key its row would have ("" for temporary files)
        for sub in os.listdir(self.data_dir):
            folder = os.path.join(self.data_dir, sub)
            with contextlib.suppress(OSError):
                for name in os.listdir(folder):
                    p = os.path.join(folder, name)
                    with contextlib.suppress(OSError):
                        if os.lstat(p).st_mtime < cutoff:
                            old[p] = "" if name.startswith(".tmp-") else name.rsplit("-", 1)[0]
        keys = sorted({k for k in old.values() if k})
        known: set[str] = set()
        for batch, marks in _key_batches(keys):
            with self._lock:
                known.update(
                    r[0]
                    for r in self._read_db.execute(
                        f"SELECT file FROM entries WHERE key IN ({marks}) AND file", batch
                    )
                )
        removed = 0
        for p in old:
            if os.path.basename(p) not in known:
                with contextlib.suppress(OSError):
                    os.unlink(p)
                    removed += 1
        return removed

    def close(self) -> None:
        self.flush_touched(force=True)
        with contextlib.suppress(sqlite3.Error), self._write_lock:
            self._write_db.execute("DELETE FROM limits WHERE id = ?", (self._limit_id,))
        with self._lock, self._write_lock:
            for db in (self._read_db, self._write_db):
                with contextlib.suppress(sqlite3.Error):
                    db.close()


def _batches(items: list[tuple[str, str, bytes]]) -> Iterator[list[tuple[str, str, bytes]]]:
    """Split queued entries into transactions of at most 4096 entries or 64 MiB."""
    part: list[tuple[str, str, bytes]] = []
    nbytes = 0
    for it in items:
        part.append(it)
        nbytes += len(it[2])
        if len(part) >= 4096 or nbytes >= 64 * 2**20:
            yield part
            part, nbytes = [], 0
    if part:
        yield part


_WAKE = ("", "", b"")  # queued to wake the writer thread for queued versions


class AsyncDiskCache:
    """Trio front of a DiskCache: reads in worker threads, writes queued to one writer thread.

    ``put`` never blocks the trio loop for long: it queues the entry (visible to ``get`` at once)
    and waits only when more than ``max_pending`` bytes are queued. Writing is behind: the
    writer thread (at a lower CPU priority) waits for a quiet gap in the fetches, or for half
    of ``max_pending`` to be queued, so that storing does not compete with a burst of reads.
    ``aclose`` commits whatever is queued before returning, so an unmount persists everything
    that was fetched.
    """

    def __init__(self, store: DiskCache, *, max_pending: int = 256 * 2**20) -> None:
        self.store = store
        self.stats = store.stats
        self.max_pending = max_pending
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue()
        self._versions: list[tuple[str, str, int | None]] = []  # queued note_version calls
        self._thread = threading.Thread(
            target=self._writer, name="lindifuse-disk-cache", daemon=True
        )
        self._thread.start()
        self._closed = False

    async def get(self, key: str) -> bytes | None:
        data = self._pending.get(key)
        if data is not None:
            return data
        return await trio.to_thread.run_sync(self.store.get, key)

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        out = {k: self._pending[k] for k in keys if k in self._pending}
        rest = [k for k in keys if k not in out]
        if rest:
            out.update(await trio.to_thread.run_sync(self.store.get_many, rest))
        return out

    async def note_version(self, url: str, validator: str, size: int | None) -> None:
        """Record a URL's version, written behind by the writer thread (a read never waits for
        another process's write transaction); committed at the latest by ``aclose``."""
        if self._closed or self.store.broken:
            return
        with self._cond:
            self._versions.append((url, validator, size))
        self._queue.put(_WAKE)

    async def last_version(self, url: str) -> tuple[str, int | None] | None:
        return await trio.to_thread.run_sync(self.store.last_version, url)

    async def put(self, key: str, url: str, data: bytes) -> None:
        if self._closed or self.store.broken:
            return
        if self._pending_bytes > self.max_pending:
            await trio.to_thread.run_sync(self._wait_room)
        with self._cond:
            if key not in self._pending:
                self._pending[key] = data
                self._pending_bytes += len(data)
                self._queue.put((key, url, data))

    def _wait_room(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending_bytes <= self.max_pending, timeout=30)

    def _writer(self) -> None:
        # Storing is background work: let reads (the trio thread, FUSE requests) go first.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while True:
            try:
                item = self._queue.get(timeout=ATIME_FLUSH_SECONDS)
            except queue.Empty:
                self.store.flush_touched()
                continue
            # Write-behind: keep collecting while fetches keep coming (they compete with the
            # writing for the CPU), until a quiet gap, or half the pending budget is queued.
            batch = []
            stop = item is None
            if item is not None:
                batch.append(item)
            while not stop and self._pending_bytes < self.max_pending // 2:
                try:
                    nxt = self._queue.get(timeout=WRITE_BEHIND_QUIET)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            while not stop:  # and whatever else is queued now
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            with self._cond:
                versions, self._versions = self._versions, []
            for url, validator, size in versions:
                try:
                    self.store.note_version(url, validator, size)
                except Exception:
                    log.exception("disk cache: recording the version of %s failed", url)
            batch = [it for it in batch if it is not _WAKE]
            for part in _batches(batch):
                try:
                    self.store.put_many(part)
                except Exception:
                    log.exception("disk cache: writing %d entries failed", len(part))
                with self._cond:
                    for key, _, data in part:
                        if self._pending.pop(key, None) is not None:
                            self._pending_bytes -= len(data)
                    self._cond.notify_all()
            if stop:
                return

    def _close_sync(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.store.close()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await trio.to_thread.run_sync(self._close_sync)
