"""Shared helpers for the benchmarks: mounts, page-cache drops, machine facts, RESULTS.md sections.

Every mount made here is unmounted in a ``finally`` (``lindifuse umount``, then ``fusermount3 -u
-z``) and its daemon is ended by its PID, never by name.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lindifuse.service.unmount import pid_alive

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
WORK = BENCH_DIR / "_work"
RESULTS = BENCH_DIR / "RESULTS.md"


_COMPILED: set[Path] = set()


def compile_package(package_dir: Path) -> None:
    """Write the bytecode of ``package_dir`` (once per run). With PYTHONDONTWRITEBYTECODE set,
    as here, imports never write it: every daemon start would compile each module edited since
    ``make setup`` (or every module of a baseline copy) again, 100-150 ms of each mount."""
    package_dir = package_dir.resolve()
    if package_dir not in _COMPILED:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(package_dir)], check=True)
        _COMPILED.add(package_dir)


def lindifuse_cmd() -> list[str]:
    compile_package(REPO / "lindifuse")
    exe = REPO / ".venv" / "bin" / "lindifuse"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "lindifuse"]


def lindi_python() -> str | None:
    """Interpreter of the separate lindi (zarr<3) environment, or None."""
    for cand in (
        os.environ.get("LINDI_PYTHON"),
        str(REPO / ".venv-lindi" / "bin" / "python"),
        "/tmp/lv/bin/python",
    ):
        if cand and os.path.exists(cand):
            return cand
    return None


# -- timing ------------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float], nd: int = 2, group: str = "") -> str:
    """Median (range) of ``xs``, NaNs left out: ``0.88 (0.80-0.95)``; ``group=","`` writes
    6,486."""
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a"
    f = f"{group}.{nd}f"
    return f"{median(xs):{f}} ({min(xs):{f}}-{max(xs):{f}})"


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


# -- page cache --------------------------------------------------------------------------------

_drop_warned: list[str] = []


def drop_caches() -> bool:
    """sync + ``echo 3 > /proc/sys/vm/drop_caches``; False (and one note) when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        if not _drop_warned:
            _drop_warned.append(str(e))
            print(f"note: cannot drop the page cache ({e}); reads may be warm", file=sys.stderr)
        return False


# -- mounts ------------------------------------------------------------------------------------


def is_mounted(mnt: str | os.PathLike) -> bool:
    target = os.path.abspath(mnt)
    with open("/proc/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == target for line in f if line.strip())


def end_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``, a process we started (by its PID)."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def force_unmount(mnt: str | os.PathLike) -> None:
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


@dataclass
class Mount:
    path: Path
    pid: int
    mount_seconds: float  # from starting `lindifuse mount` to `ls` answering
    log_file: Path | None = None
    cmd: list[str] | None = None  # the lindifuse that mounted (None: this checkout's)
    env: dict[str, str] | None = None

    def load_seconds(self) -> float | None:
        """Seconds from the daemon's first log line to its "mounted" line (source loading,
        tree building; not the interpreter start), when the log holds only this mount."""
        if self.log_file is None or not self.log_file.exists():
            return None
        stamps = []
        for line in self.log_file.read_text().splitlines():
            try:
                ts = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            except ValueError:
                continue
            stamps.append((ts, line))
            if " mounted " in line:
                return (ts - stamps[0][0]).total_seconds()
        return None

    def stats(self) -> dict:
        return json.loads(os.getxattr(self.path, "user.lindifuse.stats"))

    def writer_stats(self) -> dict:
        return self.stats().get("writer") or {}

    def umount(self) -> float:
        """``lindifuse umount`` (final flush included), by the lindifuse that mounted; returns
        its seconds."""
        t0 = time.perf_counter()
        r = subprocess.run(
            [*(self.cmd or lindifuse_cmd()), "umount", str(self.path), "--timeout", "600"],
            capture_output=True,
            text=True,
            env=self.env,
        )
        if r.returncode != 0:
            raise RuntimeError(f"lindifuse umount {self.path}: {r.stderr.strip()}")
        return time.perf_counter() - t0


@contextlib.contextmanager
def lindifuse_mount(
    source: str | os.PathLike,
    mnt: str | os.PathLike,
    *,
    log_file: str | os.PathLike,
    extra=(),
    read_only: bool = True,
    umount_timeout: float = 30,
    cmd: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Mount]:
    """Mount (read-only unless told), time it until ``ls`` answers, and always unmount
    (``lindifuse umount``, then ``fusermount3 -u -z``) and end the daemon by PID. ``cmd`` and
    ``env`` run another lindifuse (benchmarks/bench_seq.py compares two checkouts)."""
    lf = cmd or lindifuse_cmd()
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    if is_mounted(mnt):
        raise RuntimeError(f"{mnt}: already mounted")
    pid_file = Path(str(log_file) + ".pid")
    pid_file.unlink(missing_ok=True)
    pid = None
    try:
        t0 = time.perf_counter()
        res = subprocess.run(
            [
                *lf,
                "mount",
                str(source),
                str(mnt),
                *(["--read-only"] if read_only else []),
                "--log-file",
                str(log_file),
                "--pid-file",
                str(pid_file),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        if res.returncode != 0:
            raise RuntimeError(f"lindifuse mount {source} failed: {res.stderr.strip()}")
        os.listdir(mnt)  # `ls` answers
        seconds = time.perf_counter() - t0
        pid = int(pid_file.read_text())
        yield Mount(mnt, pid, seconds, Path(log_file), cmd, env)
    finally:
        if pid is None and is_mounted(mnt):
            with contextlib.suppress(OSError, ValueError):
                pid = int(os.getxattr(mnt, "user.lindifuse.pid"))
        if is_mounted(mnt):
            r = subprocess.run(
                [*lf, "umount", str(mnt), "--timeout", str(umount_timeout)],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode != 0:
                print(f"warning: lindifuse umount {mnt}: {r.stderr.strip()}", file=sys.stderr)
                force_unmount(mnt)
        if pid is not None:
            end_pid(pid)


# -- reporting ---------------------------------------------------------------------------------


def fmt(x: float | None, nd: int = 2) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:.{nd}f}"


def aim(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**MISSED**")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Report:
    """Collects markdown tables and notes; prints them as they come."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.notes: list[str] = []
        self.aims: list[tuple[str, str, str]] = []

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        text = "\n".join(lines) + "\n"
        self.parts.append(text)
        print("\n" + text, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def aim(self, what: str, figure: str, ok: bool | None) -> None:
        self.aims.append((what, figure, aim(ok)))
        print(f"aim: {what}: {figure} -> {aim(ok)}", flush=True)

    def publish(
        self, name: str, title: str, cmd: str, elapsed: float, *, extra=(), write: bool = True
    ) -> None:
        """Print the aims and replace the ``name`` section of RESULTS.md (unless not ``write``)."""
        head = [
            f"## {title}",
            "",
            f"- date: {now()}",
            f"- machine: {machine()}",
            f"- git commit: {git_commit()}",
            f"- command: `{cmd}` (run from the repository root; took {elapsed:.0f} s)",
            *extra,
            "",
        ]
        aims = ["### Aims", "", "| aim | figure | result |", "|---|---|---|"]
        aims += [f"| {a} | {f} | {ok} |" for a, f, ok in self.aims]
        body = "\n".join(head) + "\n" + "\n".join(aims) + "\n\n" + "\n".join(self.parts)
        if self.notes:
            body += "\nNotes:\n\n" + "\n".join(f"- {n}" for n in self.notes) + "\n"
        print("\n" + "\n".join(aims))
        if write:
            update_results(name, body)
            print(f"\nupdated {RESULTS.relative_to(REPO)}")


def parse_parts(p, text: str, parts) -> list[str]:
    """The ``--only`` list: comma-separated names among ``parts`` (a usage error otherwise)."""
    only = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in only if x not in parts]
    if bad:
        p.error(f"unknown part(s): {bad}")
    return only


def command_line(script: str, argv: list[str] | None) -> str:
    """How this benchmark was run, relative to the repository root (for RESULTS.md)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(
        [os.path.relpath(sys.executable, REPO), os.path.relpath(script, REPO)]
        + [shlex.quote(a) for a in args]
    )


# -- the loopback HTTP server --------------------------------------------------------------------


@contextlib.contextmanager
def range_server(root: Path, latency: float) -> Iterator[Callable[[str], str]]:
    """benchmarks/_server.py in a subprocess; yields ask(command) -> reply line."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "_server.py"), str(root), "--latency", str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        first = proc.stdout.readline().split()
        if len(first) != 2 or first[0] != "port":
            raise RuntimeError(f"range server did not start: {first}")

        def ask(cmd: str) -> str:
            proc.stdin.write(cmd + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            return proc.stdout.readline().strip()  # type: ignore[union-attr]

        ask.port = int(first[1])  # type: ignore[attr-defined]
        ask.pid = proc.pid  # type: ignore[attr-defined]
        yield ask
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            end_pid(proc.pid)
            proc.wait(10)


# -- machine facts and RESULTS.md --------------------------------------------------------------


def machine() -> str:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"{mem_kb / 2**20:.1f} GiB RAM, {cpu or platform.processor()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def git_commit() -> str:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "lindifuse")
    return rev + (" (lindifuse/ modified)" if dirty else "")


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def update_results(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if start in text and end in text:
        before = text[: text.index(start)]
        after = text[text.index(end) + len(end) :].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def which(name: str) -> str | None:
    return shutil.which(name)
