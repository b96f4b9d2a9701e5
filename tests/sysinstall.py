"""Helpers for the tests of the system install (test_install.py, test_docs.py).

``make install`` into a temporary prefix (never /opt), mount(8)'s helper links in /sbin for
the duration of a test (mount(8) looks for helpers only in /sbin, /sbin/fs.d and /sbin/fs and
runs them with a clean PATH, so no temporary directory can stand in for it), a temporary user,
and /dev/fuse opened to ordinary users — each restored in ``finally``, serialized by a lock
because they change machine-wide state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import REPO, force_unmount, is_mounted, pid_alive, run, wait_until

LOCK = "/run/lock/lindifuse-tests-system.lock"
SBIN = Path("/sbin")
HELPERS = ("mount.fuse.lindifuse", "mount.lindifuse")


@dataclass
class Install:
    """A ``make install`` into ``root`` (world-readable: ordinary users run it too)."""

    root: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt"

    @property
    def bindir(self) -> Path:
        return self.root / "bin"

    @property
    def sbindir(self) -> Path:
        return self.root / "sbin"

    @property
    def unitdir(self) -> Path:
        return self.root / "units"

    @property
    def lindifuse(self) -> Path:
        return self.bindir / "lindifuse"

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    def make_vars(self) -> list[str]:
        return [
            f"PREFIX={self.prefix}",
            f"BINDIR={self.bindir}",
            f"SBINDIR={self.sbindir}",
            f"UNITDIR={self.unitdir}",
        ]

    def make(self, target: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-C", str(REPO), target, *self.make_vars()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def new_install_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="lindifuse-install-", dir="/tmp"))
    root.chmod(0o755)
    return root


@contextlib.contextmanager
def system_lock() -> Iterator[None]:
    """Serialize tests that change /sbin, /etc/fuse.conf, /dev/fuse or the user database."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def sbin_helpers(inst: Install) -> Iterator[None]:
    """/sbin/mount.fuse.lindifuse and /sbin/mount.lindifuse -> this install, for the block.
    An existing link (a real install) is put back afterwards; a regular file is never touched."""
    saved: dict[str, str | None] = {}
    try:
        for name in HELPERS:
            p = SBIN / name
            if p.is_symlink():
                # a link left by an interrupted run points into a deleted temp dir: drop it
                saved[name] = os.readlink(p) if p.exists() else None
                p.unlink()
            elif p.exists():
                raise RuntimeError(f"{p} exists and is not a link: not replacing it")
            else:
                saved[name] = None
            p.symlink_to(inst.prefix / "bin" / "lindifuse")
        yield
    finally:
        for name, old in saved.items():
            p = SBIN / name
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            if old is not None:
                p.symlink_to(old)


def read_pid(pid_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().split()[0])
    return None


def stop_mount(mp: Path, pid_file: Path | None) -> list[str]:
    """Teardown for mounts made by mount(8) or another user: unmount, end the daemon by PID.
    Returns what had to be forced (empty when the test already cleaned up)."""
    forced = []
    if is_mounted(mp):
        forced.append("unmounted in teardown")
        subprocess.run(["umount", str(mp)], capture_output=True, timeout=60)
        if is_mounted(mp):
            force_unmount(mp)
    pid = read_pid(pid_file) if pid_file else None
    if (
        pid is not None
        and pid_alive(pid)
        and not wait_until(lambda: not pid_alive(pid), 10)
        and "lindifuse" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    ):
        forced.append(f"daemon {pid} killed")
        os.kill(pid, signal.SIGKILL)
    return forced


def wait_daemon_exit(pid_file: Path, timeout: float = 60) -> bool:
    pid = read_pid(pid_file)
    return pid is None or wait_until(lambda: not pid_alive(pid), timeout)


@contextlib.contextmanager
def temp_user(prefix: str = "lftest") -> Iterator[str]:
    """A throwaway system user (no home), deleted afterwards."""
    name = f"{prefix}{os.getpid() % 100000}"
    subprocess.run(["userdel", name], capture_output=True)
    res = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, f"useradd failed: {res.stderr}"
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@contextlib.contextmanager
def dev_fuse_open_to_all() -> Iterator[None]:
    """chmod 0666 /dev/fuse (Debian's default; these machines ship 0600), restored after."""
    old = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", old)


@contextlib.contextmanager
def fuse_conf_user_allow_other(enable: bool) -> Iterator[None]:
    """/etc/fuse.conf with (or without) a user_allow_other line, restored after."""
    conf = Path("/etc/fuse.conf")
    old = conf.read_bytes() if conf.exists() else None
    lines = [] if old is None else old.decode().splitlines()
    lines = [ln for ln in lines if ln.split("#", 1)[0].strip() != "user_allow_other"]
    if enable:
        lines.append("user_allow_other")
    try:
        conf.write_text("\n".join(lines) + "\n")
        yield
    finally:
        if old is None:
            conf.unlink()
        else:
            conf.write_bytes(old)


def as_user(user: str, *args, env: dict | None = None, timeout: float = 120):
    """Run ARGS as USER through runuser (the environment given, or a minimal one)."""
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"}
    base.update(env or {})
    envargs = [f"{k}={v}" for k, v in base.items()]
    return run(["runuser", "-u", user, "--", "env", "-i", *envargs, *args], timeout=timeout)


def chown_tree(path: Path, user: str) -> None:
    shutil.chown(path, user, user)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            shutil.chown(os.path.join(dirpath, n), user, user)


def wait_mounted(mp: Path, timeout: float = 30) -> bool:
    return wait_until(lambda: is_mounted(mp), timeout)
