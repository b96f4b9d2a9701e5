"""Life cycle of a daemon as systemd and administrators see it (issue 8):

* sd_notify on our own NOTIFY_SOCKET: READY=1 once the mount answers, STATUS= lines a person
  can read, STOPPING=1 on SIGTERM; the daemon exits 0 and leaves nothing mounted.
* SIGHUP reopens the log file (logrotate), SIGINT commits pending writes and unmounts.
* A dead mount left by SIGKILL is cleared by the next ``mount`` with a message.
* ``umount`` of a busy mount names the process and exits 1; ``--lazy`` detaches.
* Logs: under the journal (JOURNAL_STREAM) ``<N>`` priorities and no timestamps; one line per
  mount and unmount, none per read; a failing server gives one retry line per storm.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from harness import cli_args, force_unmount, is_mounted, pid_alive, run, run_cli, wait_until
from plain_lindi import make_plain


@pytest.fixture
def plain(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return make_plain(d)


def _recv_all(sock: socket.socket, until: str, timeout: float) -> list[str]:
    """Datagrams until one contains ``until`` (or the timeout)."""
    msgs: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msgs.append(sock.recv(65536).decode())
        except TimeoutError:
            break
        if until in msgs[-1]:
            break
    return msgs


def test_sd_notify_ready_status_stopping(mount, plain, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        env = dict(os.environ, NOTIFY_SOCKET=path)
        m = mount(plain.sources["plain.lindi.tar"], None, "-f", "--read-only", env=env)
        msgs = _recv_all(sock, "READY=1", 30)
        assert msgs and msgs[-1] == "READY=1", msgs
        # READY=1 is sent once the daemon's own listdir went through the kernel
        assert sorted(os.listdir(m.path)) == [".zattrs", ".zgroup", "g"]
        msgs = _recv_all(sock, "STATUS=", 10)
        status = msgs[-1]
        assert status.startswith("STATUS=Serving "), msgs
        assert f"at {m.path}: 22 keys, read-only" in status
        assert "memory cache" in status and "MiB" in status
        os.kill(m.pid, signal.SIGTERM)
        msgs = _recv_all(sock, "STOPPING=1", 30)
        assert any(x.startswith("STOPPING=1") for x in msgs), msgs
        assert m.proc.wait(30) == 0
    assert not m.is_mounted()
    text = m.log_text()
    assert "SIGTERM: unmounting" in text and "unmounted " in text


def test_no_notify_socket_no_messages(mount, plain):
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    m = mount(plain.sources["plain.lindi.tar"], None, "--read-only", env=env)
    assert os.listdir(m.path)
    m.umount()


def test_sighup_reopens_the_log_file(mount, plain):
    m = mount(plain.sources["plain.lindi.tar"], None, "--read-only")
    rotated = m.log_file.with_name("lindifuse.log.1")
    m.log_file.rename(rotated)  # what logrotate does before its postrotate kill -HUP
    os.kill(m.pid, signal.SIGHUP)
    assert wait_until(lambda: "reopened 1 log file" in m.log_text(), 10), m.log_text()
    assert m.daemon_alive() and m.is_mounted()
    assert (m.path / "g/text/0").read_bytes() == b"hello world"
    assert "reopened" not in rotated.read_text()
    assert "mounted " in rotated.read_text()
    m.umount()
    assert "unmounted " in m.log_text()


def test_sigint_commits_pending_writes_and_unmounts(mount, plain, tmp_path, run_cli):
    src = plain.sources["plain.lindi.tar"]
    m = mount(src)
    (m.path / "g" / "notes").mkdir()
    (m.path / "g" / "notes" / "a.txt").write_bytes(b"written just before SIGINT")
    pid = m.pid
    os.kill(pid, signal.SIGINT)
    assert wait_until(lambda: not pid_alive(pid), 60), m.log_text()
    assert not m.is_mounted(), "a clean stop must not leave a (dead) mount behind"
    assert run_cli("check", src).rc == 0
    m2 = mount(src, None, "--read-only")
    assert (m2.path / "g/notes/a.txt").read_bytes() == b"written just before SIGINT"
    m2.umount()


def test_dead_mount_is_cleared_by_the_next_mount(mount, plain, tmp_path):
    src = plain.sources["plain.lindi.tar"]
    m = mount(src, None, "--read-only")
    m.kill(signal.SIGKILL)
    assert is_mounted(m.path)
    with pytest.raises(OSError) as e:
        os.statvfs(m.path)
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    m2 = mount(src, m.path, "--read-only")
    assert "cleared a dead mount left by a killed daemon" in m2.result.stderr
    assert (m2.path / "g/text/0").read_bytes() == b"hello world"
    m2.umount()


def test_busy_umount_names_the_holder_and_lazy_detaches(mount, plain):
    m = mount(plain.sources["plain.lindi.tar"], None, "--read-only")
    holder = subprocess.Popen(["sleep", "60"], cwd=m.path / "g")
    try:
        res = run_cli("umount", m.path)
        assert res.rc == 1
        line = res.stderr.strip()
        assert len(line.splitlines()) == 1, line
        assert f"pid {holder.pid} (sleep): {m.path}/g" in line
        assert f"lindifuse umount --lazy {m.path}" in line
        assert m.is_mounted() and m.daemon_alive()
        pid = m.pid
        res = run_cli("umount", "--lazy", m.path, timeout=30)
        assert res.rc == 0, res.describe()
        assert "detached" in res.stderr and str(holder.pid) in res.stderr
        assert not m.is_mounted()
    finally:
        holder.kill()
        holder.wait()
    assert wait_until(lambda: not pid_alive(pid), 30), "daemon did not exit after the last close"


def _settled(path, quiet: float = 0.5, timeout: float = 10.0) -> list[str]:
    """The lines of ``path`` once it has not changed for ``quiet`` seconds."""
    last, since = path.read_text(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = path.read_text()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last.splitlines()


def test_journal_format_and_one_line_per_mount_not_per_read(plain, tmp_path):
    """Under systemd (stderr is the journal stream): <N> priorities, no timestamps; reading
    every file twice adds no log line."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        env.pop("NOTIFY_SOCKET", None)
        args = cli_args("mount", "-f", "--read-only", plain.sources["plain.lindi.tar"], mp)
        proc = subprocess.Popen(args, stdout=err, stderr=err, env=env, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: is_mounted(mp), 30), err_path.read_text()
        assert wait_until(lambda: "mounted " in err_path.read_text(), 10)
        # start-up lines may still follow "mounted" (the kernel read-ahead is tuned once the
        # mount answers): take the log once it has been still for half a second
        before = _settled(err_path)
        for _ in range(2):
            for key in plain.expected["plain.lindi.tar"]:
                (mp / key).read_bytes()
        time.sleep(0.3)
        assert err_path.read_text().splitlines() == before
        assert run_cli("umount", mp).rc == 0
        assert proc.wait(30) == 0
    finally:
        if is_mounted(mp):
            force_unmount(mp)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err_path.read_text().splitlines()
    assert lines, "no log output"
    for line in lines:
        assert re.match(r"<[0-7]>", line), line
        assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line), line
    assert sum(line.startswith("<6>lindifuse: mounted ") for line in lines) == 1
    assert sum(line.startswith("<6>lindifuse: unmounted ") for line in lines) == 1


def test_retry_storm_is_one_line(mount, http_lindi):
    """A server failing every request: many failed reads, one retry line and one read-failure
    line in the log (per minute), not one per read."""
    srv = http_lindi.server
    m = mount(
        http_lindi.url(http_lindi.REMOTE_JSON), None, "--no-cache", "--no-readahead", "--read-only"
    )
    srv.fail_next("example.h5", 500, 10_000)
    chunks = ["0.0", "1.1", "2.2"]
    for c in chunks:
        with pytest.raises(OSError) as e:
            (m.path / "acquisition/ts/data" / c).read_bytes()
        assert e.value.errno == errno.EIO
    assert srv.count("example.h5") >= 2 * len(chunks)  # each read really retried
    text = m.log_text()
    assert sum("retry" in line for line in text.splitlines()) == 1, text
    assert sum("read failed" in line for line in text.splitlines()) == 1, text
    srv.reset()
    m.umount()


def test_stop_under_systemd_leaves_no_dead_mount_unit_file_paths():
    """The shipped unit stops with `lindifuse umount` and SIGTERM, and reloads with SIGHUP."""
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "lindifuse@.service").read_text()
    assert "Type=notify" in unit
    assert "ExecStop=/usr/local/bin/lindifuse umount ${MOUNTPOINT}" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "KillSignal=SIGTERM" in unit


def test_o_options_reach_the_daemon(mount, plain):
    """``-o`` spellings mean what the long options mean: seen in the live stats and attributes."""
    m = mount(
        plain.sources["plain.lindi.tar"],
        None,
        "-o",
        "ro,no_cache,no_readahead,memory_cache=1M,uid=1234,gid=99,umask=027,nofail,_netdev",
    )
    stats = json.loads(os.getxattr(m.path, "user.lindifuse.stats"))
    assert stats["disk_cache"]["enabled"] is False
    assert stats["fetch"]["readahead"] is False
    assert stats["memory_cache"]["max_bytes"] == 2**20
    st = os.stat(m.path / "g/text/0")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 99, 0o440)
    st = os.stat(m.path / "g")
    assert stat.S_IMODE(st.st_mode) == 0o550
    with pytest.raises(OSError) as e:
        (m.path / "x").write_text("x")
    assert e.value.errno == errno.EROFS
    m.umount()


def test_mount_fuse3_form_without_subcommand(plain, tmp_path):
    """``lindifuse SOURCE MOUNTPOINT -o OPTIONS``, exactly as mount.fuse3 runs it."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    pid_file = tmp_path / "pid"
    opts = f"ro,pid_file={pid_file},log_file={tmp_path / 'log'},x-systemd.automount"
    res = run(cli_args(plain.sources["plain.lindi.tar"], mp, "-o", opts), timeout=60)
    try:
        assert res.rc == 0, res.describe()
        assert (mp / "g/text/0").read_bytes() == b"hello world"
        assert "ro" in _mount_options(mp)
        pid = int(pid_file.read_text())
        assert run_cli("umount", mp).rc == 0
        assert not is_mounted(mp) and not pid_alive(pid)
    finally:
        if is_mounted(mp):
            force_unmount(mp)


def _mount_options(mp: Path) -> list[str]:
    with open("/proc/mounts") as f:
        line = next(ln for ln in f if f" {mp} " in ln)
    return line.split()[3].split(",")
