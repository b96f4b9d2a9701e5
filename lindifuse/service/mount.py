"""Daemon life cycle: load the source, mount, serve, report readiness, unmount cleanly.

``lindifuse mount`` without ``-f`` forks the daemon off as a detached child (the CLI is
single-threaded and has imported little at that point) and waits on a pipe: the child writes
``OK`` once the FUSE session is up, or ``ERR <one line>`` when the source or mount point is bad.
The parent then checks that the mount answers (a ``listdir``) before it exits 0, so ``ls`` right
after ``lindifuse mount`` always works.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from lindifuse.errors import LindiError, SourceError
from lindifuse.service.unmount import is_mounted

log = logging.getLogger("lindifuse")


@dataclass
class MountOptions:
    source: str
    mountpoint: str
    read_only: bool = False
    fuse_options: list[str] = field(default_factory=list)
    log_file: str | None = None
    log_level: str = "INFO"
    pid_file: str | None = None
    memory_cache: int = 256 * 2**20
    ready_fd: int | None = None
    cache_dir: str | None = None  # persistent chunk cache (default $XDG_CACHE_HOME/lindifuse)
    cache_size: int | None = None  # its bound (default min(10 GiB, 10% of free space))
    no_cache: bool = False  # no persistent chunk cache
    allow_remote_cache: bool = False  # accept a cache directory on a network file system
    readahead: bool = True  # read-ahead of sibling chunks on sequential reads
    dandi_api: str | None = None  # DANDI API root for dandi:// sources (default: the public one)
    lindi_url_template: str | None = None  # where a dandiset's LINDI indexes are
    no_lindi_index: bool = False  # index NWB assets from their HDF5 files only
    xarray: bool = False  # serve the xarray view (lindifuse.fs.xview); implies read-only
    uid: int | None = None  # -o uid=: owner shown for every file (default: the daemon's)
    gid: int | None = None  # -o gid=
    umask: int | None = None  # -o umask=: bits cleared from the default modes
    offline: bool = False  # never use the network; serve what the persistent cache holds
    timeout: float | None = None  # seconds without an answer before a request fails
    allowed_hosts: list[str] = field(default_factory=list)  # hosts references may reach
    no_local_refs: bool = False  # a local source may not reference local files either
    root: str | None = None  # --root CID: the DAG of a CAR source to mount (default: its first)


def setup_logging(log_file: str | None, level: str) -> None:
    """Log to ``log_file`` or stderr (journal-aware); see lindifuse.service.logsetup."""
    from lindifuse.service.logsetup import setup_logging as _setup

    _setup(log_file, level)


def default_log_file(mountpoint: str) -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(state, "lindifuse", f"{name}.log")


class _Ready:
    """Reports the daemon's outcome to the waiting parent (or to stderr in the foreground)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._last_progress = 0.0
        self._line: Any = None

    def progress(self, objects: int, chunks: int) -> None:
        """Indexing progress (called from a worker thread): to the waiting parent, which shows
        it on its terminal, or to our own stderr when it is a terminal (``-f``)."""
        if self.fd is None:
            if self._line is None:
                from lindifuse.progress import ProgressLine

                self._line = ProgressLine("indexing")
            self._line.update(objects, chunks)
            return
        now = time.monotonic()
        if now - self._last_progress < 0.1:
            return
        self._last_progress = now
        with contextlib.suppress(OSError):
            os.write(self.fd, f"PROGRESS {objects} {chunks}\n".encode())

    def _send(self, msg: str) -> None:
        if self._line is not None:
            self._line.close()
        if self.fd is None:
            return
        try:
            os.write(self.fd, msg.encode() + b"\n")
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None

    def ok(self) -> None:
        self._send("OK")
        _sd_notify("READY=1")

    def error(self, message: str) -> None:
        if self.fd is None:
            print(f"lindifuse: {message}", file=sys.stderr)
        self._send("ERR " + message.replace("\n", " "))


def _sd_notify(state: str) -> None:
    """Tell systemd (Type=notify units) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    import socket

    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify failed: %s", e)


def _check_mountpoint(mp: str) -> None:
    _clear_dead_mount(mp)
    if not os.path.isdir(mp):
        raise SourceError(f"{mp}: mount point is not a directory")
    if is_mounted(mp):
        raise SourceError(f"{mp}: something is already mounted there")


def _clear_dead_mount(mp: str) -> None:
    """Detach a dead lindifuse mount at ``mp`` (saying so on stderr), or raise SourceError
    with the command that clears it."""
    from lindifuse.service.lifecycle import clear_dead_mount, fix_command, is_dead_mount, mount_type

    if is_mounted(mp) and is_dead_mount(mp):
        # A daemon was killed (SIGKILL, OOM, crash) and left "Transport endpoint is not
        # connected" behind: detach it if it was ours, else say how.
        kind = mount_type(mp)
        if kind != "fuse.lindifuse":
            raise SourceError(
                f"{mp}: a dead FUSE mount ({kind}) is in the way; clear it with: {fix_command(mp)}"
            )
        err = clear_dead_mount(mp)
        if err is not None:
            raise SourceError(
                f"{mp}: a dead lindifuse mount is in the way and could not be cleared ({err}); "
                f"run: {fix_command(mp)}"
            )
        log.warning("%s: cleared a dead lindifuse mount left by a daemon that was killed", mp)
        print(f"lindifuse: {mp}: cleared a dead mount left by a killed daemon", file=sys.stderr)


async def serve(opts: MountOptions) -> int:
    """Run the daemon in the current process until unmounted; returns the exit status."""
    import pyfuse3
    import trio

    from lindifuse.service.daemon import build_filesystem
    from lindifuse.service.lifecycle import check_allow_other
    from lindifuse.service.parts import cache_refusal

    ready = _Ready(opts.ready_fd)
    refusal = check_allow_other(opts.fuse_options, os.getuid())
    if refusal is not None:
        ready.error(f"{opts.mountpoint}: {refusal}")
        return 1
    refusal = cache_refusal(opts)
    if refusal is not None:
        ready.error(refusal)
        return 1
    try:
        _check_mountpoint(opts.mountpoint)
        # Loading creates millions of long-lived objects: collecting during that is wasted work,
        # and freezing them afterwards keeps later collections from rescanning them (the
        # collector is already off when run_foreground started us).
        gc.disable()
        try:
            fs = await build_filesystem(opts, progress=ready.progress)
        finally:
            gc.freeze()
            gc.enable()
    except LindiError as e:
        if opts.log_file:  # the log says why too (on stderr, the line below is enough)
            log.error("cannot mount: %s", e)
        ready.error(str(e))
        return 1
    fuse_opts = set(pyfuse3.default_options)
    fuse_opts.discard("default_permissions")
    fuse_opts |= {
        "fsname=" + opts.source.replace(",", "\\,"),
        "subtype=lindifuse",
        "default_permissions",
    }
    if fs.read_only:
        fuse_opts.add("ro")
    fs.ops.set_owner(opts.uid, opts.gid, opts.umask)
    for o in opts.fuse_options:
        fuse_opts.update(x for x in o.split(",") if x)
    try:
        pyfuse3.init(fs.ops, opts.mountpoint, fuse_opts)
    except Exception as e:  # pyfuse3 raises RuntimeError with libfuse's message
        await fs.aclose()
        ready.error(f"{opts.mountpoint}: cannot mount: {e}")
        return 1
    if opts.pid_file:
        with open(opts.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    log.info(
        "mounted %s (%s) at %s, pid %d", opts.source, fs.describe(), opts.mountpoint, os.getpid()
    )
    status = 0
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, pyfuse3)
            nursery.start_soon(fs.background)
            if getattr(opts, "readahead", True):
                from lindifuse.fs.readahead import tune_kernel_readahead_when_up

                nursery.start_soon(tune_kernel_readahead_when_up, opts.mountpoint)
            nursery.start_soon(_announce_ready, ready, fs, opts.mountpoint)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    except BaseException:
        log.exception("daemon failed")
        status = 1
        raise
    finally:
        _sd_notify("STOPPING=1\nSTATUS=Unmounting " + opts.mountpoint + ", committing writes")
        with trio.CancelScope(shield=True):
            try:
                await fs.aclose()
            except Exception:
                log.exception("error while closing")
                status = 1
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", opts.mountpoint)
    return status


STATUS_INTERVAL = 30.0  # seconds between STATUS= updates under systemd


async def _announce_ready(ready: _Ready, fs: Any, mountpoint: str) -> None:
    """Report readiness once the mount answers, then keep systemd's STATUS= line current.

    A ``listdir`` from a worker thread goes through the kernel to this very daemon, so it
    succeeds only once pyfuse3's loop serves requests: only then do the waiting parent (``OK``)
    and systemd (``READY=1``) hear that the mount is up.
    """
    import trio

    from lindifuse.service.lifecycle import status_line

    with trio.move_on_after(60) as scope:
        try:
            await trio.to_thread.run_sync(os.listdir, mountpoint, abandon_on_cancel=True)
        except OSError as e:
            log.warning("%s: mount does not answer yet (%s); reporting ready anyway", mountpoint, e)
    if scope.cancelled_caught:
        log.warning("%s: no answer after 60 s; reporting ready anyway", mountpoint)
    ready.ok()
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    keys = fs.nkeys
    while True:
        try:
            text = status_line(fs.stats(), keys, fs.read_only)
        except Exception as e:  # the status line must never stop the daemon
            text = f"{keys} keys (status unavailable: {e})"
        _sd_notify(f"STATUS=Serving {fs.container.source} at {mountpoint}: {text}")
        await trio.sleep(STATUS_INTERVAL)


async def _watch_signals(pyfuse3: Any) -> None:
    """SIGTERM and SIGINT unmount (pending writes are committed on the way out); SIGHUP
    reopens the log file, as logrotate's postrotate expects."""
    import trio

    from lindifuse.service.logsetup import reopen_logs

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            if sig == signal.SIGHUP:
                n = reopen_logs()
                log.info("SIGHUP: reopened %d log file(s)", n)
                continue
            log.info("%s: unmounting", signal.Signals(sig).name)
            pyfuse3.terminate()
            return


def run_foreground(opts: MountOptions) -> int:
    # No collection until the file system is built (``serve`` freezes what exists then and
    # turns it back on): imports and loading make only objects that live as long as the daemon,
    # and collections while importing trio, pyfuse3 and the layers cost about 9 ms of a mount.
    gc.disable()
    import trio  # here, not at the top: `lindifuse mount` without -f never needs it

    setup_logging(opts.log_file, opts.log_level)
    prof_out = os.environ.get("LINDIFUSE_PROFILE")
    if prof_out:
        # Developer aid: LINDIFUSE_PROFILE=FILE dumps the daemon's cProfile statistics to FILE
        # at unmount (how the per-request profiles in benchmarks/RESULTS.md were taken).
        import cProfile

        prof = cProfile.Profile()
        status = prof.runcall(trio.run, serve, opts)
        prof.dump_stats(prof_out)
    else:
        status = trio.run(serve, opts)
    # Everything is flushed and closed: skip freeing millions of objects one by one.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def start_background(opts: MountOptions) -> int:
    """Fork the daemon, wait until it is ready (or failed) and the mount answers."""
    try:
        _clear_dead_mount(opts.mountpoint)  # here, so the message reaches the user's terminal
    except SourceError as e:
        print(f"lindifuse: {e}", file=sys.stderr)
        return 1
    log_file = opts.log_file or default_log_file(opts.mountpoint)
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        try:
            os.close(r)
            _detach(log_file, keep=w)
            opts.ready_fd, opts.log_file = w, log_file
            run_foreground(opts)  # never returns: it ends with os._exit
        finally:
            os._exit(1)
    os.close(w)
    msg = _wait_ready(r, opts.source)
    if msg == "OK":
        deadline = time.monotonic() + 30
        while True:
            try:
                os.listdir(opts.mountpoint)
                return 0
            except OSError as e:
                if time.monotonic() > deadline:
                    print(
                        f"lindifuse: {opts.mountpoint}: mount does not answer: {e}", file=sys.stderr
                    )
                    return 1
                time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if msg.startswith("ERR "):
        print(f"lindifuse: {msg[4:]}", file=sys.stderr)
    else:
        print(
            f"lindifuse: daemon exited with status {rc} before mounting; see {log_file}",
            file=sys.stderr,
        )
    return 1 if rc == 0 else rc


def _detach(log_file: str, keep: int) -> None:
    """Make the forked daemon a session of its own with stdin on /dev/null, stdout and stderr
    appended to ``log_file``, and no other descriptor of the caller's open but ``keep``.

    A fork rather than a fresh interpreter: the CLI is single-threaded here and has imported
    only the argument parser, so the child starts in a known state, and skips an interpreter
    start and a second parse of the command line (about 60 ms of every mount)."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)


def _wait_ready(fd: int, source: str) -> str:
    """Read the daemon's readiness pipe to its end: ``PROGRESS objects chunks`` lines (shown
    on our terminal while an HDF5 source is indexed), then ``OK`` or ``ERR message``."""
    from lindifuse.progress import ProgressLine

    line = ProgressLine(f"indexing {os.path.basename(source.rstrip('/')) or source}")
    final = ""
    try:
        with os.fdopen(fd, "rb") as pipe:
            for raw in pipe:
                text = raw.decode(errors="replace").strip()
                if text.startswith("PROGRESS "):
                    parts = text.split()
                    with contextlib.suppress(ValueError, IndexError):
                        line.update(int(parts[1]), int(parts[2]))
                elif text:
                    final = text
    finally:
        line.close()
    return final
