"""Helpers shared by the tests (imported by conftest.py and by test modules).

Nothing here imports lindifuse: the daemon is always driven through its CLI
(``python -m lindifuse ...``) in a subprocess, like a user would.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
LINDI_GEN = TESTS / "lindi_gen.py"
IN_CI = bool(os.environ.get("CI"))

UMOUNT_TIMEOUT = 60.0  # seconds for `lindifuse umount` in teardown
MOUNT_TIMEOUT = 60.0  # seconds for `lindifuse mount` to return


# -- the lindi reference environment -------------------------------------------------


def find_lindi_python() -> str | None:
    """$LINDI_PYTHON, else <repo>/.venv-lindi/bin/python, else /tmp/lv/bin/python."""
    env = os.environ.get("LINDI_PYTHON")
    candidates = [env] if env else []
    candidates += [str(REPO / ".venv-lindi" / "bin" / "python"), "/tmp/lv/bin/python"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


# -- running commands ----------------------------------------------------------------


@dataclass
class CliResult:
    """Outcome of one command. Unpacks as ``rc, out, err = result``."""

    rc: int
    stdout: str
    stderr: str
    args: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def __iter__(self):
        return iter((self.rc, self.stdout, self.stderr))

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.rc}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def run(args, *, timeout: float = 120, env=None, input: str | None = None, cwd=None) -> CliResult:
    """Run a command, capture its output through files (a daemon that keeps an
    inherited pipe open cannot make us hang), kill it on timeout."""
    args = [str(a) for a in args]
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
        )
        try:
            proc.communicate(input.encode() if input is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out.seek(0)
            err.seek(0)
            raise AssertionError(
                f"timed out after {timeout}s: {' '.join(args)}\n"
                f"--- stdout ---\n{out.read().decode(errors='replace')}\n"
                f"--- stderr ---\n{err.read().decode(errors='replace')}"
            ) from None
        out.seek(0)
        err.seek(0)
        return CliResult(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            args,
        )


def cli_args(*args) -> list[str]:
    return [sys.executable, "-m", "lindifuse", *[str(a) for a in args]]


def run_cli(*args, timeout: float = 120, env=None, input: str | None = None, cwd=None) -> CliResult:
    """``python -m lindifuse ARGS...`` -> CliResult(rc, stdout, stderr)."""
    return run(cli_args(*args), timeout=timeout, env=env, input=input, cwd=cwd)


# -- mounts and processes ------------------------------------------------------------


def _unescape_mount_field(s: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and len(s) - i >= 4 and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def fuse_mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) of every FUSE mount in /proc/self/mounts."""
    result = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            src, mp, fstype = parts[0], _unescape_mount_field(parts[1]), parts[2]
            if fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk")):
                result.append((src, mp, fstype))
    return result


def is_mounted(path) -> bool:
    """True when ``path`` is the mount point of a FUSE file system (dead or alive)."""
    p = os.path.abspath(path)
    return any(mp == p for _, mp, _ in fuse_mounts())


def fuse_mounts_under(root) -> list[str]:
    root = os.path.abspath(root).rstrip("/") + "/"
    return [mp for _, mp, _ in fuse_mounts() if (mp + "/").startswith(root)]


def fuse_available() -> str | None:
    """None when FUSE mounts can be made here, else the reason they can't."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'
    rest = data[data.rindex(")") + 2 :].split()
    return rest  # rest[0] = state, rest[19] = starttime


def process_start_time(pid: int) -> int | None:
    st = _proc_stat(pid)
    return int(st[19]) if st else None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """The process exists and is not a zombie (and, if given, started at ``start_time``)."""
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return start_time is None or int(st[19]) == start_time


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(pred, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate_pid(pid: int, start_time: int | None = None, grace: float = 5.0) -> str | None:
    """SIGTERM, then SIGKILL, one PID (only if it still is the same lindifuse process).

    Returns what had to be done ("SIGTERM", "SIGKILL") or None if it was already gone.
    """
    if not pid_alive(pid, start_time):
        return None
    if "lindifuse" not in _cmdline(pid):
        return None  # the PID was reused by something else: never touch it
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: not pid_alive(pid, start_time), grace):
        _reap(pid)
        return "SIGTERM"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid, start_time), grace)
    _reap(pid)
    return "SIGKILL"


def _reap(pid: int) -> None:
    # Only our own children can be reaped; a daemonized process belongs to init.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def force_unmount(path) -> bool:
    """``fusermount3 -u -z PATH``; True when it is no longer mounted."""
    with contextlib.suppress(Exception):
        subprocess.run(
            ["fusermount3", "-u", "-z", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
    return not is_mounted(path)


class Mount:
    """A lindifuse mount made by the ``mount`` fixture.

    Attributes: ``path`` (mount point), ``source``, ``args`` (the command),
    ``result`` (CliResult of the mount command; for -f mounts, filled when the
    process ends), ``log_file``, ``pid_file``, ``proc`` (Popen, -f mounts only).
    """

    def __init__(self, source, path: Path, log_file: Path, pid_file: Path, args: list[str]):
        self.source = str(source)
        self.path = Path(path)
        self.log_file = log_file
        self.pid_file = pid_file
        self.args = args
        self.result: CliResult | None = None
        self.proc: subprocess.Popen | None = None
        self.expect_unclean = False  # set by kill(): teardown may need force
        self._pid: int | None = None
        self._start_time: int | None = None
        self._out_path: Path | None = None
        self._err_path: Path | None = None

    def __repr__(self) -> str:
        return f"<Mount {self.source} at {self.path} pid={self._pid}>"

    # -- state ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The daemon's PID: pid file, else the user.lindifuse.pid xattr, else -f's process."""
        if self._pid is None:
            self._pid = self._read_pid()
            if self._pid is not None:
                self._start_time = process_start_time(self._pid)
        return self._pid

    def _read_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            text = self.pid_file.read_text().strip()
            if text:
                return int(text.split()[0])
        if self.is_mounted():
            with contextlib.suppress(OSError, ValueError):
                return int(os.getxattr(self.path, "user.lindifuse.pid").decode().strip())
        if self.proc is not None:
            return self.proc.pid
        return None

    def xattr_pid(self) -> int:
        return int(os.getxattr(self.path, "user.lindifuse.pid").decode().strip())

    def is_mounted(self) -> bool:
        return is_mounted(self.path)

    def daemon_alive(self) -> bool:
        pid = self.pid
        return pid is not None and pid_alive(pid, self._start_time)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def output(self) -> str:
        """stdout + stderr of a -f mount process so far (empty for background mounts)."""
        parts = []
        for p in (self._out_path, self._err_path):
            if p is not None and p.exists():
                parts.append(p.read_text(errors="replace"))
        return "".join(parts)

    def describe(self) -> str:
        res = self.result.describe() if self.result else f"$ {' '.join(self.args)}"
        return f"{res}\n--- daemon log {self.log_file} ---\n{self.log_text()[-20000:]}"

    # -- actions ---------------------------------------------------------------

    def umount(
        self, *, check: bool = True, timeout: float = UMOUNT_TIMEOUT, lazy=False
    ) -> CliResult:
        """``lindifuse umount`` (which waits for the daemon to exit)."""
        args = ["umount", self.path] + (["--lazy"] if lazy else [])
        res = run_cli(*args, timeout=timeout)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
            self._finish_foreground()
        if check:
            assert res.rc == 0, f"umount failed:\n{res.describe()}\n{self.describe()}"
            assert not self.is_mounted(), f"still mounted after umount\n{self.describe()}"
            assert not self.daemon_alive(), f"daemon alive after umount\n{self.describe()}"
        return res

    def kill(self, sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
        """Send ``sig`` to the daemon (crash tests); teardown then cleans up leniently."""
        pid = self.pid
        assert pid is not None, f"no daemon pid\n{self.describe()}"
        self.expect_unclean = True
        os.kill(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            wait_until(lambda: not pid_alive(pid, self._start_time), wait)
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(wait)
            _reap(pid)

    def _finish_foreground(self) -> None:
        if self.proc is not None and self.proc.returncode is not None and self.result is None:
            out = self._out_path.read_text(errors="replace") if self._out_path else ""
            err = self._err_path.read_text(errors="replace") if self._err_path else ""
            self.result = CliResult(self.proc.returncode, out, err, self.args)

    def cleanup(self) -> list[str]:
        """Unmount and stop the daemon by every means needed. Returns problems seen."""
        problems: list[str] = []
        pid = self.pid  # read before unmounting (the xattr needs the mount)
        if self.is_mounted():
            try:
                res = run_cli("umount", self.path, timeout=UMOUNT_TIMEOUT + 5)
                if res.rc != 0:
                    problems.append(f"`lindifuse umount` exited {res.rc}: {res.stderr.strip()}")
            except AssertionError as e:  # timed out
                problems.append(str(e).splitlines()[0])
        if self.is_mounted():
            problems.append("still mounted after `lindifuse umount`: used fusermount3 -u -z")
            if not force_unmount(self.path):
                problems.append("fusermount3 -u -z failed too")
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        # `lindifuse umount` promises the daemon has exited; give it a moment anyway
        if (
            pid is not None
            and pid_alive(pid, self._start_time)
            and not wait_until(lambda: not pid_alive(pid, self._start_time), 2.0)
        ):
            how = terminate_pid(pid, self._start_time)
            if how:
                problems.append(f"daemon {pid} outlived the unmount: stopped with {how}")
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self._finish_foreground()
        if self.expect_unclean:
            return []
        return problems


class MountFactory:
    """Callable behind the ``mount`` fixture; remembers every mount for teardown."""

    def __init__(self, tmp_factory, env: dict | None = None):
        self._tmp = tmp_factory
        self._env = env
        self.mounts: list[Mount] = []

    def __call__(
        self,
        source,
        mountpoint=None,
        *extra,
        check: bool = True,
        timeout: float = MOUNT_TIMEOUT,
        env: dict | None = None,
    ) -> Mount:
        """Mount ``source`` (path or URL) at ``mountpoint`` (default: a new empty tmp dir).

        ``extra`` are more CLI arguments (``"--read-only"``, ``"-o", "allow_other"``,
        ``"-f"``, ``"--log-level", "DEBUG"``...). The command returns once the mount
        answers. With ``check`` (default) a failure fails the test with the command's
        output and the daemon log; with ``check=False`` look at ``m.result``.
        With ``-f``/``--foreground`` the daemon runs as our child (``m.proc``) and the
        call returns once the mount point appears in /proc/mounts.
        """
        reason = fuse_available()
        if reason:
            import pytest

            if IN_CI:
                pytest.fail(f"FUSE unavailable in CI: {reason}")
            pytest.skip(f"FUSE unavailable: {reason}")
        mp = Path(mountpoint) if mountpoint is not None else self._tmp.mktemp("mnt")
        work = self._tmp.mktemp("mountlog")
        log_file, pid_file = work / "lindifuse.log", work / "lindifuse.pid"
        args = cli_args(
            "mount",
            source,
            mp,
            "--log-file",
            log_file,
            "--pid-file",
            pid_file,
            *extra,
        )
        m = Mount(source, mp, log_file, pid_file, args)
        self.mounts.append(m)  # registered before running: teardown always sees it
        run_env = env if env is not None else self._env
        if "-f" in extra or "--foreground" in extra:
            self._start_foreground(m, work, run_env, timeout)
        else:
            m.result = run(args, timeout=timeout, env=run_env)
        if check:
            if m.proc is None:
                assert m.result.rc == 0, f"mount failed:\n{m.describe()}"
            assert m.is_mounted(), f"mount command returned but nothing is mounted:\n{m.describe()}"
            m.pid  # noqa: B018 - read and remember the PID while mounted
        elif m.is_mounted():
            m.pid  # noqa: B018
        return m

    def _start_foreground(self, m: Mount, work: Path, env, timeout: float) -> None:
        m._out_path, m._err_path = work / "stdout", work / "stderr"
        with open(m._out_path, "wb") as out, open(m._err_path, "wb") as err:
            m.proc = subprocess.Popen(
                m.args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
            )
        ok = wait_until(lambda: m.is_mounted() or m.proc.poll() is not None, timeout)
        if m.proc.poll() is not None:
            m._finish_foreground()
        elif not ok:
            m.result = CliResult(-1, "", f"not mounted after {timeout}s", m.args)

    def cleanup(self) -> list[str]:
        problems = []
        for m in reversed(self.mounts):
            for p in m.cleanup():
                problems.append(f"{m.path}: {p}")
        return problems


# -- reference fixtures made by lindi ---------------------------------------------------


class LindiFiles:
    """The files made by ``lindi_gen.py fixtures DIR`` and lindi's view of them.

    ``dir``, ``h5`` (example.h5), ``json``, ``tar``, ``d`` (example.lindi.*,
    references into example.h5 only), ``amended_tar``, ``amended_d`` (the same
    plus datasets written by lindi in r+ mode: blobs inside the container).
    ``sources`` maps each lindi file name to its path.
    """

    NAMES = (
        "example.lindi.json",
        "example.lindi.tar",
        "example.lindi.d",
        "amended.lindi.tar",
        "amended.lindi.d",
    )

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.h5 = self.dir / "example.h5"
        self.json = self.dir / "example.lindi.json"
        self.tar = self.dir / "example.lindi.tar"
        self.d = self.dir / "example.lindi.d"
        self.amended_tar = self.dir / "amended.lindi.tar"
        self.amended_d = self.dir / "amended.lindi.d"
        self.sources = {n: self.dir / n for n in self.NAMES}
        self._refs: dict[tuple[str, str], dict[str, bytes]] = {}
        self._arrays: dict[str, dict] = {}

    def _name(self, source) -> str:
        name = Path(str(source).rstrip("/")).name
        if name not in self.sources:
            raise KeyError(f"not a lindi fixture: {source} (have {', '.join(self.NAMES)})")
        return name

    def _load(self, name: str, kind: str) -> dict[str, bytes]:
        if (name, kind) not in self._refs:
            raw = json.loads((self.dir / "reference" / f"{name}.{kind}.json").read_text())
            self._refs[(name, kind)] = {k: base64.b64decode(v) for k, v in raw.items()}
        return self._refs[(name, kind)]

    def reference(self, source) -> dict[str, bytes]:
        """{key: bytes} exactly as lindi's store serves each key of ``source``
        (a name like "example.lindi.tar" or a path/copy with that basename).

        lindi 0.4 zero-pads every short chunk of a numeric array, compressed or
        not; a mount pads only uncompressed ones: compare a mount with ``expected``.
        """
        return self._load(self._name(source), "store")

    def raw(self, source) -> dict[str, bytes]:
        """{key: the referenced bytes as stored}, before any padding."""
        return self._load(self._name(source), "raw")

    def expected(self, source) -> dict[str, bytes]:
        """{key: bytes a mount must serve}: lindi's padding applied only to chunks
        of arrays with no compressor and no filters; other keys as stored."""
        name = self._name(source)
        if (name, "expected") not in self._refs:
            padded, raw = self.reference(name), self.raw(name)
            out = {}
            for key, data in raw.items():
                parent = key.rpartition("/")[0]
                zarray = raw.get(f"{parent}/.zarray" if parent else ".zarray")
                meta = json.loads(zarray) if zarray is not None else {}
                plain = meta.get("compressor") is None and not meta.get("filters")
                out[key] = padded[key] if plain else data
            self._refs[(name, "expected")] = out
        return self._refs[(name, "expected")]

    def arrays(self, source) -> dict:
        """{dataset path: numpy array} as lindi's h5py-like API reads ``source``.
        Strings come back as numpy unicode arrays, compound data as record arrays,
        scalars as 0-d arrays."""
        import numpy as np

        name = self._name(source)
        if name not in self._arrays:
            with np.load(self.dir / "reference" / f"{name}.arrays.npz") as z:
                self._arrays[name] = {k: z[k] for k in z.files}
        return self._arrays[name]

    def refs_json(self, source) -> dict:
        """The raw reference file system (lindi.json) of ``source``."""
        name = self._name(source)
        p = self.dir / name
        if name.endswith(".json"):
            return json.loads(p.read_text())
        if name.endswith(".d"):
            return json.loads((p / "lindi.json").read_text())
        import tarfile

        with tarfile.open(p) as tf:
            return json.loads(tf.extractfile("lindi.json").read())

    def copy(self, source, dest_dir) -> Path:
        """A private copy of a fixture (for tests that write: never write the shared one)."""
        name = self._name(source)
        dest = Path(dest_dir) / name
        src = self.dir / name
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
        return dest


# -- small assertions shared by the fault tests ----------------------------------------------


def mount_stats(m) -> dict:
    """The live counters of mount ``m`` (its ``user.lindifuse.stats`` attribute)."""
    return json.loads(os.getxattr(m.path, "user.lindifuse.stats"))


def expect_eio(path) -> float:
    """Reading ``path`` fails with EIO; returns how long that took (seconds)."""
    import pytest

    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        Path(path).read_bytes()
    assert e.value.errno == errno.EIO, e.value
    return time.monotonic() - t0
