"""Unit tests of the pure pieces behind fstab/mount(8), logs and systemd status:
lindifuse.mountopts (-o parsing), lindifuse.logsetup (journal format, storms),
lindifuse.lifecycle (status line, allow_other rule, busy holders, /proc/mounts).

These import lindifuse (pure modules, no pyfuse3 calls); mounts are in test_install.py and
test_lifecycle.py.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys

import pytest

from lindifuse.cli import app as cli
from lindifuse.service import lifecycle, logsetup, mountopts
from lindifuse.service.mountopts import MountOptionError
from lindifuse.stormlog import StormLog


@pytest.fixture(scope="module")
def table():
    return cli.mount_option_table(cli.build_parser())


# -- mountopts ---------------------------------------------------------------------------------


def test_every_long_mount_option_has_an_o_spelling(table):
    names = set(table.options)
    for want in (
        "cache_dir",
        "cache_size",
        "no_cache",
        "no_readahead",
        "log_file",
        "log_level",
        "uid",
        "gid",
        "umask",
        "memory_cache",
        "pid_file",
        "foreground",
        "read_only",
        "xarray",
        "offline",
        "timeout",
        "allowed_hosts",
        "no_local_refs",
    ):
        assert want in names, want
    assert "ready_fd" not in names  # hidden, internal
    assert "help" not in names
    assert table.options["cache_dir"] == ("--cache-dir", True)
    assert table.options["no_cache"] == ("--no-cache", False)
    assert table.options["xarray"] == ("--xarray", False)


@pytest.mark.parametrize(
    "opts, args, fuse",
    [
        ("ro", ["--read-only"], []),
        ("rw", [], []),
        ("cache_dir=/var/c,cache_size=2G", ["--cache-dir", "/var/c", "--cache-size", "2G"], []),
        ("no_cache,no_readahead", ["--no-cache", "--no-readahead"], []),
        ("allow_other,default_permissions", [], ["allow_other", "default_permissions"]),
        ("allow_root,nosuid,nodev,noexec,noatime", [], ["allow_root", "nosuid", "nodev"]),
        ("uid=1000,gid=100,umask=027", ["--uid", "1000", "--gid", "100", "--umask", "027"], []),
        ("log_file=/var/log/x.log,log_level=debug", ["--log-file", "/var/log/x.log"], []),
        ("memory_cache=64M,pid_file=/run/x.pid", ["--memory-cache", "64M"], []),
        ("foreground", ["--foreground"], []),
    ],
)
def test_translate(table, opts, args, fuse):
    ex = mountopts.translate(mountopts.split_options(opts), table)
    assert ex.args[: len(args)] == args
    assert ex.fuse[: len(fuse)] == fuse
    assert not ex.ignored


def test_generic_options_are_ignored(table):
    items = (
        "defaults,dev,nodev,suid,nosuid,exec,noexec,auto,noauto,user,users,nofail,_netdev,"
        "x-systemd.automount,x-systemd.idle-timeout=60,x-systemd.mount-timeout=30,"
        "x-gvfs-show,x-gvfs-name=Session,comment=systemd.automount,relatime"
    )
    ex = mountopts.translate(mountopts.split_options(items), table)
    assert ex.args == []
    # the VFS flags go to libfuse (which applies them); the rest is ignored, like sshfs
    assert ex.fuse == ["dev", "nodev", "suid", "nosuid", "exec", "noexec"]
    assert "x-systemd.automount" in ex.ignored and "_netdev" in ex.ignored


@pytest.mark.parametrize(
    "opts, words",
    [
        ("bogus", "unknown mount option 'bogus'"),
        ("cache_dir", "needs a value"),
        ("cache_dir=", "empty value"),
        ("no_cache=1", "takes no value"),
        ("allow_other=1", "unknown mount option"),
        ("ro,nonempty", "unknown mount option 'nonempty'"),
    ],
)
def test_bad_options_are_one_line_errors(table, opts, words):
    with pytest.raises(MountOptionError) as e:
        mountopts.translate(mountopts.split_options(opts), table)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_split_honours_escaped_commas():
    assert mountopts.split_options(r"log_file=/a\,b.log,ro,,") == ["log_file=/a,b.log", "ro"]


def test_expand_argv_keeps_order_and_gathers_fuse_options(table):
    argv = ["SRC", "MNT", "-o", "ro,allow_other", "-f", "-ocache_size=1G", "--log-level", "DEBUG"]
    out = mountopts.expand_argv(argv, table)
    assert out == [
        "SRC",
        "MNT",
        "-f",
        "--log-level",
        "DEBUG",
        "--read-only",
        "--cache-size",
        "1G",
        "-o",
        "allow_other",
    ]
    with pytest.raises(MountOptionError):
        mountopts.expand_argv(["SRC", "MNT", "-o"], table)


def test_helper_argv_convention():
    call = mountopts.parse_helper_argv(["/d/s.tar", "/mnt/s", "-n", "-o", "ro,nofail", "-t", "x"])
    assert call.argv == ["/d/s.tar", "/mnt/s", "-o", "ro,nofail"] and not call.fake
    call = mountopts.parse_helper_argv(["-sfnv", "/d/s.tar", "/mnt/s"])
    assert call.fake and call.verbose
    with pytest.raises(MountOptionError):
        mountopts.parse_helper_argv(["/d/s.tar"])
    with pytest.raises(MountOptionError):
        mountopts.parse_helper_argv(["-q", "/d/s.tar", "/m"])


def test_normalize_argv_forms():
    assert cli.normalize_argv(["s.tar", "/m", "-o", "ro"], "lindifuse") == (
        ["mount", "s.tar", "/m", "-o", "ro"],
        False,
    )
    assert cli.normalize_argv(["info", "x"], "lindifuse") == (["info", "x"], False)
    assert cli.normalize_argv(["--version"], "lindifuse") == (["--version"], False)
    assert cli.normalize_argv(["s.tar", "/m", "-f"], "mount.fuse.lindifuse") == (
        ["mount", "s.tar", "/m"],
        True,
    )


def _cli(*args, prog="lindifuse"):
    """Run lindifuse.cli.main in a subprocess with a chosen argv[0] (helper mode)."""
    code = "import sys; from lindifuse.cli import main; sys.exit(main(sys.argv[2:], sys.argv[1]))"
    return subprocess.run(
        [sys.executable, "-c", code, prog, *args], capture_output=True, text=True, timeout=60
    )


def test_unknown_option_from_the_command_line_is_one_line(tmp_path):
    res = _cli(str(tmp_path / "x.lindi.tar"), str(tmp_path), "-o", "ro,frobnicate")
    assert res.returncode == 2
    assert res.stderr.startswith("lindifuse: unknown mount option 'frobnicate' (known: ")
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_helper_fake_mount_checks_arguments_and_mounts_nothing(tmp_path):
    res = _cli(str(tmp_path / "x.tar"), str(tmp_path), "-f", "-o", "ro", prog="mount.lindifuse")
    assert res.returncode == 0, res.stderr
    res = _cli(str(tmp_path / "x.tar"), str(tmp_path), "-f", "-o", "zz", prog="mount.lindifuse")
    assert res.returncode == 2 and "unknown mount option 'zz'" in res.stderr


def test_bad_uid_and_umask_are_usage_errors(tmp_path):
    res = _cli("x.tar", str(tmp_path), "-o", "uid=no-such-user-here")
    assert res.returncode == 2 and "no such user" in res.stderr
    res = _cli("x.tar", str(tmp_path), "-o", "umask=999")
    assert res.returncode == 2 and "octal" in res.stderr


# -- logsetup ------------------------------------------------------------------------------------


def test_journal_formatter_prefixes_priority_and_has_no_timestamp():
    f = logsetup.JournalFormatter("%(name)s: %(message)s")
    rec = logging.LogRecord("lindifuse", logging.WARNING, __file__, 1, "a\nb", None, None)
    assert f.format(rec) == "<4>lindifuse: a\n<4>b"
    rec = logging.LogRecord("lindifuse", logging.INFO, __file__, 1, "mounted", None, None)
    assert f.format(rec) == "<6>lindifuse: mounted"
    rec = logging.LogRecord("lindifuse", logging.ERROR, __file__, 1, "x", None, None)
    assert f.format(rec).startswith("<3>")


def test_under_journal_compares_device_and_inode(tmp_path):
    p = tmp_path / "stream"
    with open(p, "w") as s:
        st = os.fstat(s.fileno())
        assert logsetup.under_journal(s, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logsetup.under_journal(s, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logsetup.under_journal(s, {})
        assert not logsetup.under_journal(s, {"JOURNAL_STREAM": "garbage"})
    assert not logsetup.under_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_storm_log_one_line_then_a_summary_per_window():
    records: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("lindifuse.test.storm")
    logger.propagate = False
    logger.handlers[:] = [H()]
    now = [0.0]
    storm = StormLog(logger, window=60, clock=lambda: now[0])
    for i in range(500):  # 500 retries within 50 s: one line
        now[0] = i * 0.1
        storm.warning("host:80", "retry %d", i)
    assert records == ["retry 0"]
    storm.warning("other:80", "other host")  # keys are independent
    now[0] = 61.0
    storm.warning("host:80", "retry %d", 500)
    assert records == [
        "retry 0",
        "other host",
        "host:80: 499 more like this in the last 61 s (storm)",
        "retry 500",
    ]


# -- lifecycle -----------------------------------------------------------------------------------


def test_status_line_reads_like_a_sentence():
    stats = {
        "http": {"requests": 12, "bytes": 3 * 2**20, "errors": 1},
        "memory_cache": {"bytes": 5 * 2**20, "max_bytes": 256 * 2**20},
        "disk_cache": {"enabled": True, "max_bytes": 2**30},
        "writer": None,
    }
    line = lifecycle.status_line(stats, 1234, True)
    assert line == (
        "1234 keys, read-only; 12 HTTP requests, 3 MiB fetched; 1 HTTP errors; "
        "memory cache 5 MiB of 256 MiB; disk cache at most 1024 MiB"
    )
    assert lifecycle.status_line({}, 3, False) == "3 keys, read-write"


def test_allow_other_needs_user_allow_other_for_ordinary_users(tmp_path):
    conf = tmp_path / "fuse.conf"
    conf.write_text("# user_allow_other\nmount_max = 1000\n")
    msg = lifecycle.check_allow_other(["ro,allow_other"], 1000, str(conf))
    assert msg is not None and "user_allow_other" in msg and str(conf) in msg
    assert lifecycle.check_allow_other(["allow_other"], 0, str(conf)) is None  # root may
    assert lifecycle.check_allow_other(["ro"], 1000, str(conf)) is None
    conf.write_text("user_allow_other\n")
    assert lifecycle.check_allow_other(["allow_other"], 1000, str(conf)) is None
    assert lifecycle.check_allow_other(["allow_root"], 1000, str(tmp_path / "missing")) is not None


def test_mount_type_reads_escaped_mount_points(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "proc /proc proc rw 0 0\n"
        "/d/s.tar /mnt/my\\040dir fuse.lindifuse rw,nosuid 0 0\n"
        "x /mnt/b fuse.sshfs rw 0 0\n"
    )
    assert lifecycle.mount_type("/mnt/my dir", str(mounts)) == "fuse.lindifuse"
    assert lifecycle.mount_type("/mnt/b", str(mounts)) == "fuse.sshfs"
    assert lifecycle.mount_type("/mnt/none", str(mounts)) is None


def test_busy_holders_finds_cwd_and_open_files(tmp_path):
    d = tmp_path / "busy"
    d.mkdir()
    (d / "f").write_text("x")
    # one process sits in the directory, one holds a file open
    a = subprocess.Popen(["sleep", "30"], cwd=d)
    with open(d / "f") as fh:
        b = subprocess.Popen(["sleep", "30"], pass_fds=(fh.fileno(),))
    try:
        holders = lifecycle.busy_holders(str(d))
        by_pid = {h.pid: h for h in holders}
        assert by_pid[a.pid].path == str(d) and by_pid[a.pid].command == "sleep"
        assert b.pid in by_pid and by_pid[b.pid].path == str(d / "f")
        text = lifecycle.describe_holders(holders)
        assert f"pid {a.pid} (sleep): {d}" in text
        assert lifecycle.busy_holders(str(tmp_path / "nothing-here")) == []
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_dead_mount_check_on_a_plain_directory(tmp_path):
    assert not lifecycle.is_dead_mount(str(tmp_path))
    assert lifecycle.fix_command("/mnt/x") == "fusermount3 -u -z /mnt/x"


def test_sd_notify_sends_datagrams(tmp_path, monkeypatch):
    from lindifuse.service import mount as mountmod

    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        mountmod._sd_notify("STATUS=hello")
        assert s.recv(4096) == b"STATUS=hello"


@pytest.mark.parametrize(
    "command", ["mount", "umount", "info", "create", "check", "compact", "stats", "cache"]
)
def test_every_command_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    examples = out.split("examples:", 1)[1]
    assert f"lindifuse {command}" in examples or command == "mount"
    if command == "mount":
        for o in ("cache_dir=", "allow_other", "x-systemd.*", "_netdev", "uid=", "umask="):
            assert o in out, o
