"""One lindifuse mount per node for a Dask cluster: a ``distributed`` worker plugin.

    from distributed import Client
    from lindifuse.dask import LindifuseMount

    client = Client(cluster)
    client.register_plugin(
        LindifuseMount("https://example.org/rec.nwb", "/tmp/lindifuse/rec", xarray=True)
    )
    ds = xr.open_zarr("/tmp/lindifuse/rec/acquisition/ts/data", ...)  # on every worker

Contract. On every worker the plugin makes sure the node's mount of ``source`` at ``mountpoint``
is up: the first worker of a node mounts it (``python -m lindifuse mount``, which returns once the
mount answers), the others find it. A lock file on the node (``flock``) serialises that, and each
worker that uses the mount leaves a holder file named by its PID and start time: the node's
reference count. On teardown (the worker closes, or the plugin is unregistered) the worker
removes its holder; the last holder unmounts, unless ``keep=True`` or the mount was not made by
the plugin (an administrator's or a DaemonSet's mount is never unmounted by it). Holders of
workers that died without a teardown (SIGKILL, OOM) are pruned under the lock, so a crashed
worker cannot keep a mount alive forever.

A mount whose daemon died under the workers (stat/statfs fail with ENOTCONN) is detected before
each task runs and by :func:`ensure_mounted` (which a task may call itself), and remounted once,
with a warning in the worker's log; if the new mount does not answer either, the task fails with
:class:`MountError`.

Why a plugin and a CLI subprocess: all workers of a node share one daemon, one memory cache and
one persistent cache, so every chunk is fetched from the origin once per node instead of once
per worker; and the daemon outlives no worker that does not want it. The daemon never imports
this module (``distributed`` is the optional extra ``lindifuse[dask]``).

``mountpoint``, ``cache_dir`` and ``state_dir`` are expanded on the worker (``~`` and
``$VARIABLES``), so one plugin can name a per-job or per-node path (``$TMPDIR/lindifuse``).
The persistent cache defaults to a node-local directory (see :func:`default_cache_dir`): SQLite's
WAL mode needs local locking, and ``lindifuse mount`` refuses a cache on NFS, Lustre and the like.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from lindifuse.errors import LindiError
from lindifuse.mounttable import mountinfo_entries, top_mount

# under distributed.worker: the lines show in the Dask worker logs (client.get_worker_logs())
log = logging.getLogger("distributed.worker.lindifuse")

__all__ = [
    "LindifuseMount",
    "MountError",
    "NodeMount",
    "default_cache_dir",
    "ensure_mounted",
    "mount_args",
]

DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)
# Where a node-local cache goes when neither cache_dir nor $TMPDIR says: the usual spellings of
# a compute node's local scratch disk, then /tmp.
LOCAL_SCRATCH = ("/local/scratch", "/scratch/local", "/local_scratch", "/lscratch", "/tmp")
MOUNT_TIMEOUT = 300.0  # seconds for `lindifuse mount` (a remote HDF5 file is indexed first)
UMOUNT_TIMEOUT = 120.0


class MountError(LindiError):
    """The node's mount could not be made, found or remounted (one line, names the mount)."""


# -- pure helpers --------------------------------------------------------------------------------


def mount_args(options: Mapping[str, Any]) -> list[str]:
    """``lindifuse mount`` flags for keyword options: ``xarray=True`` -> ``--xarray``,
    ``memory_cache="1G"`` -> ``--memory-cache 1G``, ``o="allow_other"`` (or a list) -> ``-o ...``;
    False and None leave a flag out. Names are the long options of ``lindifuse mount --help``
    with ``_`` for ``-``; the CLI rejects unknown ones."""
    args: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        if name == "o":
            values = [value] if isinstance(value, str) else list(value)
            for v in values:
                args += ["-o", str(v)]
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


def expand(path: str) -> str:
    """``~`` and ``$VARIABLES`` expanded, made absolute (on the worker, not the client)."""
    return os.path.abspath(os.path.expandvars(os.path.expanduser(path)))


def default_cache_dir(env: Mapping[str, str] | None = None, candidates=LOCAL_SCRATCH) -> str:
    """A node-local persistent cache: ``$TMPDIR/lindifuse-cache`` when $TMPDIR names a
    directory (batch systems point it at the job's local scratch), else
    ``<dir>/lindifuse-cache-<uid>`` in the first writable one of ``candidates``."""
    env = os.environ if env is None else env
    tmp = env.get("TMPDIR")
    if tmp and os.path.isdir(tmp) and os.access(tmp, os.W_OK):
        return os.path.join(os.path.abspath(tmp), "lindifuse-cache")
    for d in candidates:
        if os.path.isdir(d) and os.access(d, os.W_OK):
            return os.path.join(d, f"lindifuse-cache-{os.getuid()}")
    return os.path.join(tempfile.gettempdir(), f"lindifuse-cache-{os.getuid()}")


def default_state_dir() -> str:
    """Lock, holder and log files of the node's mounts. Deliberately the node's /tmp and not
    $TMPDIR: several jobs on a node have several $TMPDIRs but share the mount points."""
    return os.path.join("/tmp", f"lindifuse-dask-{os.getuid()}")


def parse_mountinfo(text: str, mountpoint: str) -> tuple[str, str] | None:
    """(fstype, source) of the topmost mount at ``mountpoint`` in mountinfo ``text``."""
    e = top_mount(mountinfo_entries(text), mountpoint)
    return None if e is None else (e.fstype, e.source.replace("\\,", ","))


def mount_entry(mountpoint: str) -> tuple[str, str] | None:
    try:
        with open("/proc/self/mountinfo") as f:
            return parse_mountinfo(f.read(), mountpoint)
    except OSError:
        return None


def normalize_source(source: str) -> str:
    """The SOURCE as ``lindifuse mount`` records it (its fsname): URLs as given, paths absolute."""
    return source if "://" in source else os.path.abspath(os.path.expanduser(source))


def _proc_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if rest[0] in ("Z", "X") else int(rest[19])


def holder_alive(name: str) -> bool:
    """A holder file ``<pid>.<starttime>.<token>`` belongs to a process that still runs."""
    try:
        pid, start, _ = name.split(".", 2)
        return _proc_start(int(pid)) == int(start)
    except ValueError:
        return False


# -- the node's mount ------------------------------------------------------------------------------


@dataclass
class NodeMount:
    """The mount of ``source`` at ``mountpoint`` on this node, shared by its processes.

    ``acquire()`` makes sure it is up and registers this process as a holder, ``release()``
    unregisters it and unmounts after the last holder, ``ensure()`` remounts a dead mount once.
    Every step runs under the node's lock file. No Dask here: usable from any process."""

    source: str
    mountpoint: str
    keep: bool = False
    cache_dir: str | None = None
    state_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float = MOUNT_TIMEOUT

    def __post_init__(self) -> None:
        self.source = normalize_source(self.source)
        self.mountpoint = expand(self.mountpoint)
        self.cache_dir = expand(self.cache_dir) if self.cache_dir else default_cache_dir()
        self.state_dir = expand(self.state_dir) if self.state_dir else default_state_dir()
        key = hashlib.sha1(self.mountpoint.encode()).hexdigest()[:16]
        base = os.path.join(self.state_dir, key)
        self.lock_path = base + ".lock"
        self.holders_dir = base + ".holders"
        self.owner_path = base + ".owner"  # exists while the mount is one the plugin made
        self.log_path = self.options.get("log_file") or base + ".log"

    # -- state -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def holders(self) -> list[str]:
        try:
            return sorted(os.listdir(self.holders_dir))
        except FileNotFoundError:
            return []

    def prune(self) -> list[str]:
        """Remove holders of processes that are gone (a worker killed without a teardown)."""
        gone = [h for h in self.holders() if not holder_alive(h)]
        for h in gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.holders_dir, h))
        if gone:
            log.info("%s: pruned %d holder(s) of exited workers", self.mountpoint, len(gone))
        return gone

    def state(self) -> str:
        """ "absent", "alive", "dead" (daemon gone: ENOTCONN) or "other" (something else is
        mounted there: another file system type or another source)."""
        entry = mount_entry(self.mountpoint)
        if entry is None:
            return "absent"
        fstype, source = entry
        if fstype != "fuse.lindifuse":
            return "other"
        try:
            os.statvfs(self.mountpoint)  # statfs always reaches the daemon
        except OSError as e:
            if e.errno in DEAD_ERRNOS:
                return "dead"
            raise MountError(f"{self.mountpoint}: cannot check the mount: {e.strerror}") from e
        return "alive" if source == self.source else "other"

    # -- actions -------------------------------------------------------------------------------

    def _cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "lindifuse", *args]
        try:
            return subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            raise MountError(f"{self.mountpoint}: `lindifuse {args[0]}` timed out") from e

    def _mount(self) -> None:
        os.makedirs(self.mountpoint, exist_ok=True)
        opts = {k: v for k, v in self.options.items() if k != "log_file"}
        if not opts.get("no_cache"):
            os.makedirs(self.cache_dir, exist_ok=True)
            opts["cache_dir"] = self.cache_dir
        args = ["mount", self.source, self.mountpoint, "--log-file", self.log_path]
        res = self._cli(*args, *mount_args(opts), timeout=self.timeout)
        if res.returncode != 0:
            lines = (res.stderr or res.stdout).strip().splitlines()
            why = lines[-1].removeprefix("lindifuse: ") if lines else f"exit {res.returncode}"
            raise MountError(f"{self.mountpoint}: mounting {self.source} failed: {why}")
        with open(self.owner_path, "w") as f:
            json.dump({"source": self.source, "mounted_by": os.getpid()}, f)
        log.info("%s: mounted %s (cache %s)", self.mountpoint, self.source, self.cache_dir)

    def _ensure_locked(self) -> bool:
        st = self.state()
        if st == "alive":
            return False
        if st == "other":
            entry = mount_entry(self.mountpoint)
            raise MountError(
                f"{self.mountpoint}: already mounted from {entry[1] if entry else '?'} "
                f"({entry[0] if entry else '?'}), not {self.source}"
            )
        if st == "dead":
            log.warning(
                "%s: the lindifuse mount of %s died (transport endpoint is not connected); "
                "remounting it once",
                self.mountpoint,
                self.source,
            )
            ours = os.path.exists(self.owner_path)
            self._mount()  # `lindifuse mount` clears the dead mount first
            if not ours:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.owner_path)  # still someone else's mount to keep
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.owner_path)  # left by a node whose workers all crashed
            self._mount()
        if self.state() != "alive":
            raise MountError(f"{self.mountpoint}: the mount of {self.source} does not answer")
        return True

    def ensure(self) -> bool:
        """Mount if absent, remount once if dead; True when a mount was made."""
        with self.locked():
            return self._ensure_locked()

    def acquire(self) -> str:
        """Make sure the mount is up and register this process; returns the holder token."""
        with self.locked():
            self.prune()
            self._ensure_locked()
            os.makedirs(self.holders_dir, mode=0o700, exist_ok=True)
            token = f"{os.getpid()}.{_proc_start(os.getpid())}.{uuid.uuid4().hex[:8]}"
            with open(os.path.join(self.holders_dir, token), "w"):
                pass
            return token

    def release(self, token: str) -> bool:
        """Unregister ``token``; the last holder unmounts a mount the plugin made (unless
        ``keep``). True when it unmounted."""
        with self.locked():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.holders_dir, token))
            self.prune()
            if self.holders() or self.keep or not os.path.exists(self.owner_path):
                return False
            if mount_entry(self.mountpoint) is not None:
                res = self._cli("umount", self.mountpoint, timeout=UMOUNT_TIMEOUT)
                if res.returncode != 0:
                    log.warning(
                        "%s: %s; detaching it lazily",
                        self.mountpoint,
                        (res.stderr or res.stdout).strip().splitlines()[-1:] or "umount failed",
                    )
                    self._cli("umount", "--lazy", self.mountpoint, timeout=UMOUNT_TIMEOUT)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.owner_path)
            log.info("%s: unmounted (last worker of the node)", self.mountpoint)
            return True


# -- the Dask worker plugin -------------------------------------------------------------------------

_ACTIVE: dict[str, NodeMount] = {}  # mountpoint -> NodeMount set up in this worker process


def ensure_mounted(mountpoint: str | None = None) -> str:
    """From a task: remount the worker's lindifuse mount (at ``mountpoint``, or the only one)
    once if its daemon died; returns the mount point. Raises MountError when there is no such
    mount on this worker or remounting fails."""
    if mountpoint is None:
        if len(_ACTIVE) != 1:
            raise MountError(f"ensure_mounted: {len(_ACTIVE)} lindifuse mounts on this worker")
        node = next(iter(_ACTIVE.values()))
    else:
        node = _ACTIVE.get(expand(mountpoint))
        if node is None:
            raise MountError(f"{mountpoint}: no lindifuse mount set up on this worker")
    if node.state() != "alive":
        node.ensure()
    return node.mountpoint


class LindifuseMount(WorkerPlugin):
    """Worker plugin: the node's lindifuse mount of ``source`` at ``mountpoint``.

    ``keep``: leave the mount up after the last worker of the node; ``cache_dir``: persistent
    cache (default node-local, :func:`default_cache_dir`); ``state_dir``: lock and holder files
    (default ``/tmp/lindifuse-dask-<uid>``); ``name``: the plugin's name (default from the mount
    point, so several mounts can be registered); other keywords are ``lindifuse mount`` options
    (``xarray=True``, ``read_only=True``, ``memory_cache="1G"``, ``o="allow_other"``...).
    """

    def __init__(
        self,
        source: str,
        mountpoint: str,
        keep: bool = False,
        cache_dir: str | None = None,
        *,
        state_dir: str | None = None,
        name: str | None = None,
        timeout: float = MOUNT_TIMEOUT,
        **mount_options: Any,
    ) -> None:
        self.source = source if "://" in source else os.path.abspath(os.path.expanduser(source))
        self.mountpoint = mountpoint
        self.keep = keep
        self.cache_dir = cache_dir
        self.state_dir = state_dir
        self.timeout = timeout
        self.mount_options = mount_options
        self.name = name or f"lindifuse-mount:{mountpoint}"
        self._node: NodeMount | None = None
        self._token: str | None = None

    def _make_node(self) -> NodeMount:
        return NodeMount(
            self.source,
            self.mountpoint,
            keep=self.keep,
            cache_dir=self.cache_dir,
            state_dir=self.state_dir,
            options=dict(self.mount_options),
            timeout=self.timeout,
        )

    async def setup(self, worker: Any) -> None:
        node = self._make_node()
        # blocking work (waiting for the lock, mounting) off the worker's event loop
        self._token = await asyncio.to_thread(node.acquire)
        self._node = node
        _ACTIVE[node.mountpoint] = node

    async def teardown(self, worker: Any) -> None:
        node, token = self._node, self._token
        if node is None or token is None:
            return
        self._node = self._token = None
        if _ACTIVE.get(node.mountpoint) is node:
            del _ACTIVE[node.mountpoint]
        await asyncio.to_thread(node.release, token)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """Before a task runs: a dead mount (ENOTCONN) is remounted once, so the task reads
        from a live one. One statfs per task; the remount itself blocks this worker briefly."""
        node = self._node
        if finish != "executing" or node is None:
            return
        try:
            os.statvfs(node.mountpoint)
            return
        except OSError as e:
            if e.errno not in DEAD_ERRNOS:
                return
        try:
            node.ensure()
        except (MountError, OSError) as e:
            log.error("%s", e)  # the task itself then fails reading the mount
