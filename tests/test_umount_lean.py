"""``lindifuse umount`` starts fast and still commits: it loads none of the mount machinery.

Its interpreter start is part of every unmount's wall time (the zarr write benchmark ends with
it), so ``lindifuse.service.unmount`` and the command-line path to it import no trio, pyfuse3,
dataclasses, logging, shutil, typing or mount modules (a named command builds only its own
parser). The unmount itself is checked on a real writable mount: it commits durably, and
returns only once the daemon has exited (waited for through a pidfd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import pid_alive, run_cli

from lindifuse.archive.tar import TarArchive
from lindifuse.service import unmount

HEAVY = (
    "trio",
    "pyfuse3",
    "dataclasses",
    "logging",
    "shutil",
    "typing",
    "lindifuse.service.mount",
    "lindifuse.service.mountopts",
    "lindifuse.service.lifecycle",
    "lindifuse.fs",
    "lindifuse.formats",
    "lindifuse.archive",
    "lindifuse.cli.mount",
    "lindifuse.cli.info",
)

# Runs `lindifuse umount ARGS` in-process (as the console script does) and prints the modules it
# loaded on stdout; argparse's help formatter imports shutil (terminal width) before ours run,
# so what the parser itself pulls in is allowed to be there.
PROBE = """
import json, sys
from lindifuse.cli import main
rc = main(["umount", *sys.argv[1:]])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def probe(*args: str) -> tuple[int, set[str]]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120
    )
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["rc"], set(out["modules"])


def heavy_in(modules: set[str], allow: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        m
        for m in modules
        if any(m == h or m.startswith(h + ".") for h in HEAVY)
        and not any(m == a or m.startswith(a + ".") for a in allow)
    )


def test_umount_of_nothing_mounted_loads_nothing_heavy(tmp_path):
    rc, modules = probe(str(tmp_path))
    assert rc == 1
    # shutil comes with argparse's help formatter (terminal width), not with lindifuse
    assert heavy_in(modules, allow=("shutil",)) == []


def test_umount_of_a_writable_mount_commits_waits_and_stays_lean(mount, tmp_path):
    arch = tmp_path / "w.lindi.tar"
    assert run_cli("create", arch).rc == 0
    m = mount(arch)
    data = os.urandom(3 * 2**20)
    (Path(m.path) / "blob").write_bytes(data)
    pid = m.pid
    rc, modules = probe(str(m.path))
    assert rc == 0
    assert not pid_alive(pid), "umount returned before the daemon exited"
    assert heavy_in(modules, allow=("shutil",)) == []
    with TarArchive.open(str(arch)) as a:  # committed durably by the unmount
        assert a.rfs["refs"]["blob"][0].startswith("./blobs/blob")
        assert a.read_member(a.rfs["refs"]["blob"][0][2:]) == data


def test_wait_pid_exit_wakes_at_exit_and_times_out():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        t0 = time.monotonic()
        assert unmount.wait_pid_exit(p.pid, 30)
        assert time.monotonic() - t0 < 10
        p.wait()
    finally:
        p.kill()
        p.wait()
    q = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        t0 = time.monotonic()
        assert not unmount.wait_pid_exit(q.pid, 0.2)
        assert 0.15 < time.monotonic() - t0 < 5
    finally:
        q.kill()
        q.wait()
    assert unmount.wait_pid_exit(q.pid, 1)  # reaped: gone at once


def test_wait_pid_exit_without_pidfd(monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        p.wait()  # reaped: no such process any more
        assert unmount.wait_pid_exit(p.pid, 1)
    finally:
        p.kill()


@pytest.mark.parametrize("name", ["fusermount3", "sh"])
def test_which_finds_what_shutil_finds(name):
    import shutil

    assert unmount._which(name) == shutil.which(name)
