"""What an administrator meets around a mount: dead mounts, busy mounts, ``allow_other`` for
ordinary users, and the one-line status systemd shows.

Small functions over /proc and /etc, no pyfuse3: ``mount.py`` calls them before mounting and
when unmounting, the status line is built from the ``stats`` dictionary of a mounted file
system.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lindifuse.mounttable import mounts_entries, top_mount

FUSE_CONF = "/etc/fuse.conf"


# -- /proc/mounts ------------------------------------------------------------------------------


def mount_type(mountpoint: str, mounts_file: str = "/proc/mounts") -> str | None:
    """File system type of the mount whose mount point is ``mountpoint`` (the last one wins,
    as the kernel shows the top of a stack), or None."""
    try:
        with open(mounts_file) as f:
            text = f.read()
    except OSError:
        return None
    e = top_mount(mounts_entries(text), os.path.abspath(mountpoint))
    return None if e is None else e.fstype


# "Transport endpoint is not connected" (the daemon died), "Software caused connection abort"
# (the connection was aborted, e.g. through /sys/fs/fuse/connections)
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def is_dead_mount(mountpoint: str) -> bool:
    """True when a FUSE mount is there but its daemon is gone — what a killed daemon leaves
    behind."""
    try:
        # statfs always reaches the daemon (stat of the root may be answered from the
        # kernel's attribute cache)
        os.statvfs(mountpoint)
    except OSError as e:
        return e.errno in DEAD_ERRNOS
    return False


def clear_dead_mount(mountpoint: str) -> str | None:
    """Detach a dead FUSE mount (``fusermount3 -u -z``, or ``umount -l`` for root without
    fusermount3). Returns None when cleared, else the error text."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", "-z", mountpoint] if tool else ["umount", "-l", mountpoint]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit {res.returncode}"
    return None


def fix_command(mountpoint: str) -> str:
    """The command a person runs to clear a dead or stuck mount by hand."""
    return f"fusermount3 -u -z {mountpoint}"


# -- busy mounts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """A process that keeps a mount busy: an open file, its cwd or root under the mount."""

    pid: int
    command: str
    path: str


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def busy_holders(mountpoint: str, proc: str = "/proc") -> list[Holder]:
    """Processes with an open file, working directory or root under ``mountpoint`` (what
    ``fuser -vm`` shows). Processes we may not inspect are skipped; the list is sorted."""
    root = os.path.abspath(mountpoint)
    found: dict[tuple[int, str], Holder] = {}
    try:
        pids = [int(d) for d in os.listdir(proc) if d.isdigit()]
    except OSError:
        return []
    for pid in pids:
        base = f"{proc}/{pid}"
        links: list[str] = [f"{base}/cwd", f"{base}/root"]
        with contextlib.suppress(OSError):
            links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if _under(target, root) and (pid, target) not in found:
                found[(pid, target)] = Holder(pid, _comm(base), target)
    return sorted(found.values(), key=lambda h: (h.pid, h.path))


def _comm(base: str) -> str:
    try:
        with open(f"{base}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def describe_holders(holders: Iterable[Holder], limit: int = 5) -> str:
    """``pid 12 (bash): /mnt/x; pid 40 (python3): /mnt/x/a/0.0`` (at most ``limit``)."""
    hs = list(holders)
    text = "; ".join(f"pid {h.pid} ({h.command}): {h.path}" for h in hs[:limit])
    if len(hs) > limit:
        text += f"; and {len(hs) - limit} more"
    return text


# -- ordinary users ------------------------------------------------------------------------------


def user_allow_other(conf: str = FUSE_CONF) -> bool:
    """True when /etc/fuse.conf has a ``user_allow_other`` line (lets non-root users mount with
    allow_other or allow_root)."""
    try:
        with open(conf) as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def check_allow_other(fuse_options: Iterable[str], uid: int, conf: str = FUSE_CONF) -> str | None:
    """The one-line refusal when a non-root user asks for allow_other/allow_root that
    /etc/fuse.conf does not permit, else None."""
    wanted = {o for opts in fuse_options for o in opts.split(",")} & {"allow_other", "allow_root"}
    if uid == 0 or not wanted or user_allow_other(conf):
        return None
    name = sorted(wanted)[0]
    return (
        f"{name} is only allowed for ordinary users when {conf} has a line 'user_allow_other' "
        "(ask the administrator), or mount as root"
    )


# -- systemd status -------------------------------------------------------------------------------


def _mib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MiB"


def status_line(stats: dict[str, Any], keys: int, read_only: bool) -> str:
    """A human ``STATUS=`` text for ``systemctl status``: keys served, requests, cache use.

    ``stats`` is ``FileSystem.stats()``; missing parts are left out rather than failing."""
    parts = [f"{keys} keys, {'read-only' if read_only else 'read-write'}"]
    http = stats.get("http") or {}
    if http.get("requests"):
        parts.append(f"{http['requests']} HTTP requests, {_mib(http.get('bytes', 0))} fetched")
        if http.get("errors"):
            parts.append(f"{http['errors']} HTTP errors")
    mem = stats.get("memory_cache") or {}
    if mem:
        parts.append(f"memory cache {_mib(mem.get('bytes'))} of {_mib(mem.get('max_bytes'))}")
    disk = stats.get("disk_cache") or {}
    if disk.get("enabled"):
        parts.append(f"disk cache at most {_mib(disk.get('max_bytes'))}")
    w = stats.get("writer")
    if w:
        parts.append(f"{w.get('commits', 0)} commits")
    return "; ".join(parts)
