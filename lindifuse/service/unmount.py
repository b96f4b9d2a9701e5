"""``lindifuse umount``: ask the daemon for a durable flush, unmount, wait for the daemon to exit.

Kept apart from ``mount.py`` and lean on purpose: ``lindifuse umount`` is a short-lived process
whose interpreter start is part of every unmount's wall time (a writable mount's unmount is part
of the zarr write benchmark), so this module imports only ``os``, ``errno``, ``sys``, ``time`` and
``lindifuse.mounttable`` at load (and ``contextlib``, already loaded by ``site``);
``subprocess`` only to run ``fusermount3``, ``lifecycle`` only for a busy or lazy unmount. No
``dataclasses``, ``logging``, ``shutil``, ``typing``, trio or pyfuse3
(``tests/test_umount_lean.py`` checks which modules ``lindifuse umount`` loads).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time

from lindifuse.mounttable import mounts_entries, top_mount


def is_mounted(mountpoint: str) -> bool:
    """True when the mount a path lookup sees at ``mountpoint`` is a FUSE file system."""
    try:
        with open("/proc/mounts") as f:
            text = f.read()
    except OSError:
        return False
    e = top_mount(mounts_entries(text), os.path.abspath(mountpoint))
    return e is not None and e.fstype.startswith("fuse")


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_pid_exit(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` (not necessarily a child) has exited; False on timeout.

    A pidfd (Linux 5.3+) wakes the caller the moment the process exits; elsewhere, or when the
    pidfd cannot be had, ``/proc`` is polled every 20 ms (up to 20 ms late)."""
    deadline = time.monotonic() + timeout
    fd = -1
    with contextlib.suppress(AttributeError, OSError):
        fd = os.pidfd_open(pid)
    if fd >= 0:
        import select

        try:
            p = select.poll()
            p.register(fd, select.POLLIN)
            while True:
                left = deadline - time.monotonic()
                if p.poll(max(0, int(left * 1000)) + 1):
                    return True
                if time.monotonic() > deadline:
                    return not pid_alive(pid)
        finally:
            os.close(fd)
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _which(name: str) -> str | None:
    """``shutil.which(name)`` without importing ``shutil`` (and with it bz2, lzma, fnmatch)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        p = os.path.join(d or ".", name)
        if os.access(p, os.X_OK) and not os.path.isdir(p):
            return p
    return None


def umount(mountpoint: str, *, lazy: bool = False, timeout: float = 120.0) -> int:
    """Unmount and wait until the daemon has exited (so its final flush is done); exit status.

    A writable mount first commits durably (``user.lindifuse.flush``); if that fails the mount
    stays and the status is 1. A busy mount is not unmounted (the holders are named, status 1)
    unless ``lazy``: then it is detached at once and the daemon exits when the last file closes.
    """
    mp = os.path.abspath(mountpoint)
    if not is_mounted(mp):
        print(f"lindifuse: {mountpoint}: not a mounted lindifuse file system", file=sys.stderr)
        return 1
    pid: int | None = None
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.getxattr(mp, "user.lindifuse.pid"))
    try:
        # A writable mount commits everything durably now, while a failure can still be
        # reported; read-only mounts answer EROFS (ENOTSUP from older daemons).
        os.setxattr(mp, "user.lindifuse.flush", b"1")
    except OSError as e:
        if e.errno in (errno.EIO, errno.ENOSPC, errno.EDQUOT):
            why = "no space left on device" if e.errno != errno.EIO else "see the log"
            print(
                f"lindifuse: {mountpoint}: flushing pending writes failed ({why}); still mounted",
                file=sys.stderr,
            )
            return 1
    tool = _which("fusermount3") or _which("fusermount")
    cmd = (
        [tool, "-u", *(["-z"] if lazy else []), mp]
        if tool
        else ["umount", *(["-l"] if lazy else []), mp]
    )
    holders: list = []
    if lazy:
        from lindifuse.service.lifecycle import busy_holders

        holders = busy_holders(mp)
    import subprocess

    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()
        reason = err[-1] if err else "failed"
        if "busy" in reason.lower():
            from lindifuse.service.lifecycle import busy_holders, describe_holders

            holders = busy_holders(mp)
            who = describe_holders(holders) if holders else "a process (see: fuser -vm " + mp + ")"
            print(
                f"lindifuse: {mountpoint}: busy, still in use by {who}; close those files or "
                f"leave the directory, or detach now with: lindifuse umount --lazy {mountpoint}",
                file=sys.stderr,
            )
            return 1
        print(f"lindifuse: {mountpoint}: cannot unmount: {reason}", file=sys.stderr)
        return 1
    if lazy and holders:
        from lindifuse.service.lifecycle import describe_holders

        # Detached; the daemon serves the open files until they are closed, then exits.
        print(
            f"lindifuse: {mountpoint}: detached; the daemon exits once these close: "
            f"{describe_holders(holders)}",
            file=sys.stderr,
        )
        return 0
    if pid is not None and not wait_pid_exit(pid, timeout):
        print(
            f"lindifuse: {mountpoint}: daemon {pid} still running after {timeout:.0f}s",
            file=sys.stderr,
        )
        return 1
    return 0
