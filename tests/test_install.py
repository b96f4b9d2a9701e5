"""The system install and the administrator's ways to mount (issue 8).

* ``make install`` / ``make uninstall`` into a temporary prefix (the same recipe as the default
  /opt/lindifuse), on the system interpreter; ``lindifuse --version``; ``python -m build`` wheel.
* ``mount -t fuse.lindifuse SRC MNT -o ...`` and fstab lines through ``mount --fstab FILE MNT``,
  then ``umount MNT``: local tar read-only and read-write, HTTP json and tar (loopback server).
  mount(8) finds the helper only in /sbin, so /sbin/mount.fuse.lindifuse points at the
  temporary install for the duration of each test (restored afterwards).
* ``systemd-analyze verify`` of the installed template unit.
* An ordinary user (useradd, runuser) mounts, reads, writes its own archive and unmounts
  through fusermount3; allow_other is refused unless /etc/fuse.conf has user_allow_other; with
  it, default_permissions decides from the uid/gid/umask shown.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from harness import IN_CI, REPO, fuse_mounts, is_mounted, run, run_cli
from plain_lindi import make_plain
from sysinstall import (
    Install,
    as_user,
    chown_tree,
    dev_fuse_open_to_all,
    fuse_conf_user_allow_other,
    new_install_root,
    read_pid,
    sbin_helpers,
    stop_mount,
    system_lock,
    temp_user,
    wait_daemon_exit,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount(8), /sbin, useradd)")

VERSION = next(
    line.split('"')[1]
    for line in (REPO / "pyproject.toml").read_text().splitlines()
    if line.startswith("version")
)


@pytest.fixture
def plain(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return make_plain(d)


@pytest.fixture
def helpers(installed):
    """/sbin/mount.{fuse.,}lindifuse -> the temporary install (the session-wide ``installed``
    fixture of conftest.py), under the system lock."""
    with system_lock(), sbin_helpers(installed):
        yield installed


def _check_files(mp: Path, expected: dict[str, bytes]) -> None:
    for key, data in expected.items():
        assert (mp / key).read_bytes() == data, key


def _opts(tmp_path: Path, *more: str) -> tuple[str, Path, Path]:
    pid, log = tmp_path / "daemon.pid", tmp_path / "daemon.log"
    extra = [f"pid_file={pid}", f"log_file={log}", f"cache_dir={tmp_path / 'cache'}"]
    return ",".join([*more, *extra]), pid, log


def _mount_entry(mp: Path) -> tuple[str, str, str]:
    return next(m for m in fuse_mounts() if m[1] == str(mp))


def _umount8(mp: Path, pid: Path, log: Path) -> None:
    res = run(["umount", mp], timeout=60)
    assert res.rc == 0, res.describe()
    assert not is_mounted(mp)
    assert wait_daemon_exit(pid), f"daemon still running after umount\n{log.read_text()}"
    lines = log.read_text().splitlines()
    assert sum(" lindifuse: mounted " in ln for ln in lines) == 1, lines
    assert sum(" lindifuse: unmounted " in ln for ln in lines) == 1, lines


# -- install -------------------------------------------------------------------------------------


def test_install_uses_the_system_interpreter_and_links(installed):
    cfg = (installed.prefix / "pyvenv.cfg").read_text()
    want = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else None
    if want:
        assert f"executable = {want}" in cfg, cfg
    assert "/root/" not in cfg, "the venv must not be built on an interpreter under /root"
    for link in (
        installed.bindir / "lindifuse",
        installed.sbindir / "mount.lindifuse",
        installed.sbindir / "mount.fuse.lindifuse",
    ):
        assert link.is_symlink() and os.readlink(link) == str(installed.prefix / "bin/lindifuse")
    # every user can run it: world-readable and -executable all the way down
    for p in (installed.prefix / "bin" / "lindifuse", installed.python):
        assert os.stat(p).st_mode & 0o005 == 0o005, p
    res = run([installed.lindifuse, "--version"])
    assert res.rc == 0 and res.stdout.strip() == f"lindifuse {VERSION}"
    # not the editable dev install: the package lives inside the prefix
    res = run([installed.python, "-c", "import lindifuse; print(lindifuse.__file__)"], cwd="/")
    assert res.stdout.startswith(str(installed.prefix)), res.stdout
    unit = (installed.unitdir / "lindifuse@.service").read_text()
    assert f"ExecStart={installed.bindir}/lindifuse mount -f" in unit
    assert "/usr/local/bin" not in unit


def test_wheel_builds_and_runs(tmp_path):
    """``python -m build --wheel`` into a temp dir; the wheel holds the package and the entry
    point, and its code runs (dependencies from the test venv)."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv*", ".git", "build", "*.egg-info", "__pycache__", "_work", "demo", ".*_cache"
        ),
    )
    out = tmp_path / "dist"
    res = run([sys.executable, "-m", "build", "--wheel", "--outdir", out, src], timeout=600)
    assert res.rc == 0, res.describe()
    (wheel,) = out.glob("lindifuse-*.whl")
    assert wheel.name.startswith(f"lindifuse-{VERSION}-py3")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        ep = next(n for n in names if n.endswith("entry_points.txt"))
        assert "lindifuse = lindifuse.cli:main" in z.read(ep).decode()
    assert "lindifuse/service/mountopts.py" in names and "lindifuse/cli/app.py" in names
    assert "lindifuse/formats/hdf5/indexer.py" in names  # subpackages are packaged too
    target = tmp_path / "site"
    res = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-t", target, wheel])
    assert res.rc == 0, res.describe()
    env = dict(os.environ, PYTHONPATH=str(target))
    res = run([sys.executable, "-m", "lindifuse", "--version"], env=env, cwd=tmp_path)
    assert res.stdout.strip() == f"lindifuse {VERSION}"
    res = run(
        [sys.executable, "-c", "import lindifuse; print(lindifuse.__file__)"],
        env=env,
        cwd=tmp_path,
    )
    assert res.stdout.startswith(str(target))


def test_systemd_unit_verifies(installed, tmp_path):
    if shutil.which("systemd-analyze") is None:
        if IN_CI:
            pytest.fail("systemd-analyze missing in CI (.ci/run installs the systemd package)")
        pytest.skip("systemd-analyze not installed")
    d = tmp_path / "units"
    d.mkdir()
    shutil.copy(installed.unitdir / "lindifuse@.service", d)
    (d / "lindifuse@session.service").symlink_to("lindifuse@.service")
    res = run(["systemd-analyze", "verify", "--man=no", d / "lindifuse@session.service"])
    assert res.rc == 0 and res.stderr.strip() == "", res.describe()
    # the check is real: a unit naming a missing program fails it
    bad = d / "lindifuse@.service"
    bad.write_text(bad.read_text().replace(str(installed.bindir), "/nonexistent"))
    res = run(["systemd-analyze", "verify", "--man=no", d / "lindifuse@session.service"])
    assert res.rc != 0 and "/nonexistent/lindifuse" in res.stderr


# -- mount(8) and fstab ----------------------------------------------------------------------------


def test_mount_t_fuse_lindifuse_local_tar_read_only(helpers, plain, tmp_path):
    src = plain.sources["plain.lindi.tar"]
    mp = tmp_path / "mnt"
    mp.mkdir()
    opts, pid, log = _opts(tmp_path, "ro", "nofail", "_netdev", "x-systemd.automount", "noatime")
    try:
        res = run(["mount", "-t", "fuse.lindifuse", src, mp, "-o", opts], timeout=60)
        assert res.rc == 0, res.describe()
        source, _, fstype = _mount_entry(mp)
        assert (source, fstype) == (str(src), "fuse.lindifuse")
        _check_files(mp, plain.expected["plain.lindi.tar"])
        with pytest.raises(OSError) as e:
            (mp / "new").write_text("x")
        assert e.value.errno == errno.EROFS
        _umount8(mp, pid, log)
    finally:
        assert stop_mount(mp, pid) == []


def test_mount_t_lindifuse_read_write_then_lindifuse_reads_it_back(helpers, plain, tmp_path):
    """``mount -t lindifuse`` (the mount.lindifuse helper) read-write: zarr writes an array,
    umount(8) commits it, the archive checks clean and a new mount reads it back."""
    src = plain.sources["plain.lindi.tar"]
    mp = tmp_path / "mnt"
    mp.mkdir()
    opts, pid, log = _opts(tmp_path, "rw", "defaults")
    code = (
        "import sys, zarr, numpy as np;"
        "g = zarr.open_group(sys.argv[1], mode='r+', zarr_format=2);"
        "g.create_array('derived', data=np.arange(100, dtype='i4'), chunks=(30,))"
    )
    try:
        res = run(["mount", "-t", "lindifuse", src, mp, "-o", opts], timeout=60)
        assert res.rc == 0, res.describe()
        assert run([sys.executable, "-c", code, mp]).rc == 0
        _umount8(mp, pid, log)
        res = run_cli("check", src)
        assert res.rc == 0, res.describe()
        res = run(["mount", "-t", "fuse.lindifuse", src, mp, "-o", opts.replace("rw", "ro")])
        assert res.rc == 0, res.describe()
        read = "import sys, zarr; print(zarr.open_array(sys.argv[1], mode='r')[:].sum())"
        res = run([sys.executable, "-c", read, mp / "derived"])
        assert res.stdout.strip() == str(sum(range(100))), res.describe()
        assert "ro" in _proc_mounts_line(mp).split()[3].split(",")
        _check_files(mp, plain.expected["plain.lindi.tar"])
        res = run(["umount", mp])
        assert res.rc == 0 and wait_daemon_exit(pid)
    finally:
        assert stop_mount(mp, pid) == []


def test_fstab_lines_local_and_http(helpers, plain, tmp_path, http_lindi):
    """Four fstab lines (local tar ro and rw, HTTP json and HTTP tar), each mounted with
    ``mount --fstab FILE MOUNTPOINT`` and released with ``umount MOUNTPOINT``."""
    srv = http_lindi.server
    remote_tar = tmp_path / "remote.lindi.tar"
    res = run_cli("create", remote_tar, "--from", http_lindi.url(http_lindi.REMOTE_JSON))
    assert res.rc == 0, res.describe()
    srv.add_file("remote.lindi.tar", remote_tar)
    ref = http_lindi.files.expected("example.lindi.json")  # same refs, other URL
    cases = [
        ("local-ro", plain.sources["plain.lindi.tar"], "ro,nofail", None),
        ("local-rw", plain.sources["plain.lindi.tar"], "rw,nofail,noauto,user", None),
        (
            "http-json",
            http_lindi.url(http_lindi.REMOTE_JSON),
            "ro,_netdev,x-systemd.automount",
            ref,
        ),
        ("http-tar", srv.url("remote.lindi.tar"), "_netdev,x-systemd.mount-timeout=30", ref),
    ]
    fstab = tmp_path / "fstab"
    lines, work = [], {}
    for name, src, opts, _ in cases:
        mp, w = tmp_path / name, tmp_path / f"{name}.work"
        mp.mkdir()
        w.mkdir()
        o, pid, log = _opts(w, opts)
        work[name] = (mp, pid, log)
        lines.append(f"{src}  {mp}  fuse.lindifuse  {o}  0 0")
    fstab.write_text("# test fstab\n" + "\n".join(lines) + "\n")
    try:
        for name, src, _, reference in cases:
            mp, pid, log = work[name]
            res = run(["mount", "--fstab", fstab, mp], timeout=60)
            assert res.rc == 0, f"{name}\n{res.describe()}\n{log.read_text()}"
            assert _mount_entry(mp)[0] == str(src)
            if reference is None:
                _check_files(mp, plain.expected["plain.lindi.tar"])
            else:
                for key in (".zgroup", "acquisition/ts/data/.zarray", "acquisition/ts/data/0.0"):
                    assert (mp / key).read_bytes() == reference[key], (name, key)
                assert srv.count(http_lindi.REMOTE_JSON) + srv.count("remote.lindi.tar") > 0
            writable = name == "local-rw"
            try:
                (mp / "note.txt").write_text("hello")
                assert writable, f"{name}: write succeeded on a read-only mount"
            except OSError as e:
                assert not writable and e.errno == errno.EROFS, (name, e)
            _umount8(mp, pid, log)
        # the rw line's write was committed
        res = run_cli("info", plain.sources["plain.lindi.tar"], "--json")
        assert json.loads(res.stdout)["keys"] == len(plain.expected["plain.lindi.tar"]) + 1
    finally:
        problems = [p for mp, pid, _ in work.values() for p in stop_mount(mp, pid)]
        assert problems == []


def test_fake_mount_and_bad_option_through_mount8(helpers, plain, tmp_path):
    src = plain.sources["plain.lindi.tar"]
    mp = tmp_path / "mnt"
    mp.mkdir()
    res = run(["mount", "-f", "-t", "fuse.lindifuse", src, mp, "-o", "ro"])
    assert res.rc == 0 and not is_mounted(mp), res.describe()
    res = run(["mount", "-t", "fuse.lindifuse", src, mp, "-o", "ro,turbo"])
    assert res.rc != 0 and not is_mounted(mp)
    assert "unknown mount option 'turbo'" in res.stderr, res.describe()
    assert "Traceback" not in res.stderr


# -- ordinary users --------------------------------------------------------------------------------


def test_ordinary_user_mounts_reads_writes_and_unmounts(installed, tmp_path):
    """An unprivileged user with the system install: mount (fusermount3), read, write its own
    archive, umount; the mount is private (root is refused); allow_other needs user_allow_other;
    with it, default_permissions applies the uid/gid/umask the mount shows."""
    if shutil.which("runuser") is None or shutil.which("useradd") is None:
        pytest.fail("runuser/useradd missing") if IN_CI else pytest.skip("no runuser/useradd")
    with (
        system_lock(),
        temp_user("lfa") as user,
        temp_user("lfb") as other,
        dev_fuse_open_to_all(),
    ):
        home = Path(os.path.realpath(new_install_root()))  # /tmp/..., 0755
        try:
            _ordinary_user_session(installed, home, user, other)
        finally:
            for mp in (home / "mnt", home / "shared"):
                stop_mount(mp, home / "state" / f"{mp.name}.pid")
            shutil.rmtree(home, ignore_errors=True)


def _ordinary_user_session(inst: Install, home: Path, user: str, other: str) -> None:
    plain = make_plain(home / "data")
    for d in ("mnt", "shared", "state", "cache"):
        (home / d).mkdir()
    chown_tree(home, user)
    env = {"XDG_STATE_HOME": str(home / "state"), "XDG_CACHE_HOME": str(home / "cache")}
    src, mp = plain.sources["plain.lindi.tar"], home / "mnt"
    lf = str(inst.lindifuse)

    res = as_user(user, lf, "mount", src, mp, "--pid-file", home / "state/mnt.pid", env=env)
    assert res.rc == 0, res.describe()
    uid = int(run(["id", "-u", user]).stdout)
    line = _proc_mounts_line(mp)
    assert f"user_id={uid}" in line, line
    res = as_user(user, "cat", mp / "g/text/0")
    assert res.stdout == "hello world", res.describe()
    # private to its owner: even root is refused without allow_other
    with pytest.raises(PermissionError):
        os.listdir(mp)
    code = (
        "import sys, zarr, numpy as np;"
        "g = zarr.open_group(sys.argv[1], mode='r+', zarr_format=2);"
        "g.create_array('mine', data=np.arange(7, dtype='i2'))"
    )
    res = as_user(user, inst.python, "-c", code, mp, env=env)
    assert res.rc == 0, res.describe()
    res = as_user(user, lf, "umount", mp, env=env)
    assert res.rc == 0, res.describe()
    assert not is_mounted(mp)
    assert run_cli("check", src).rc == 0
    assert _has_key(src, "mine/.zarray")

    # allow_other without user_allow_other: one clear line, nothing mounted
    with fuse_conf_user_allow_other(False):
        res = as_user(user, lf, "mount", src, mp, "-o", "ro,allow_other", env=env)
    assert res.rc == 1 and not is_mounted(mp), res.describe()
    assert len(res.stderr.strip().splitlines()) == 1 and "user_allow_other" in res.stderr

    # with it: others reach the mount, and default_permissions applies the shown modes
    shared = home / "shared"
    with fuse_conf_user_allow_other(True):
        pidf = home / "state/shared.pid"
        opts = f"ro,allow_other,umask=077,pid_file={pidf}"
        res = as_user(user, lf, src, shared, "-o", opts, env=env)  # the mount.fuse3 form
        assert res.rc == 0, res.describe()
        st = os.stat(shared / "g/text/0")
        assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o400)
        res = as_user(other, "cat", shared / "g/text/0")
        assert res.rc != 0 and "Permission denied" in res.stderr, res.describe()
        assert (shared / "g/text/0").read_bytes() == b"hello world"  # root: DAC override
        assert as_user(user, lf, "umount", shared, env=env).rc == 0
        res = as_user(user, lf, src, shared, "-o", f"ro,allow_other,pid_file={pidf}", env=env)
        assert res.rc == 0, res.describe()
        res = as_user(other, "cat", shared / "g/text/0")
        assert res.stdout == "hello world", res.describe()
        assert as_user(user, lf, "umount", shared, env=env).rc == 0
    assert read_pid(pidf) is not None and wait_daemon_exit(pidf)


def _proc_mounts_line(mp: Path) -> str:
    with open("/proc/mounts") as f:
        return next(ln for ln in f if f" {mp} " in ln)


def _has_key(src: Path, key: str) -> bool:
    res = subprocess.run(["tar", "-xOf", str(src), "lindi.json"], capture_output=True)
    return key in json.loads(res.stdout)["refs"]
