"""The command line: mount (background and -f), umount (waits for the daemon), info (text and
--json, local and remote), --help of every subcommand."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from harness import pid_alive, run_cli
from plain_lindi import make_plain, walk_files, write_json, write_tar

SUBCOMMANDS = {
    "mount": ["SOURCE", "MOUNTPOINT", "-f", "--foreground", "--read-only", "-o", "--log-file"],
    "umount": ["MOUNTPOINT", "--lazy", "--timeout"],
    "info": ["SOURCE", "--json"],
    "create": ["TARGET", "--from"],
    "check": ["ARCHIVE", "--repair"],
    "compact": ["IN", "OUT"],
    "stats": ["MOUNTPOINT", "--json"],
    "cache": [],
    "index": [
        "SOURCE",
        "-o",
        "--all-chunks",
        "--chunk-threshold",
        "--split-size",
        "--url",
        "--strict",
    ],
}


# -- help ----------------------------------------------------------------------------------------


def test_top_level_help_lists_every_subcommand():
    rc, out, err = run_cli("--help")
    assert rc == 0 and err == ""
    assert out.startswith("usage: lindifuse")
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in out, name
    assert "exit status" in out and "docs/semantics.md" in out
    rc, out, _ = run_cli("--version")
    assert rc == 0 and out.startswith("lindifuse ")


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name):
    rc, out, err = run_cli(name, "--help")
    assert rc == 0, err
    assert out.startswith(f"usage: lindifuse {name}")
    assert "Traceback" not in out + err
    for word in SUBCOMMANDS[name]:
        assert word in out, (name, word)
    # every option the usage line shows is documented below it
    usage = out.split("\n\n")[0]
    for opt in {w.strip("[]|") for w in usage.split() if w.strip("[]").startswith("-")}:
        assert out.count(opt) >= 2, (name, opt)


def test_mount_help_documents_every_option():
    _, out, _ = run_cli("mount", "--help")
    for opt in (
        "--read-only",
        "--foreground",
        "--log-file",
        "--log-level",
        "--pid-file",
        "--memory-cache",
        "-o OPT",
    ):
        assert opt in out, opt
    assert "read-only" in out.lower() and "0444" in out


# -- mount / umount life cycle ------------------------------------------------------------------


def test_background_mount_answers_as_soon_as_the_command_returns(mount, lindi_files):
    m = mount(lindi_files.tar, None, "--read-only")
    # no waiting, no retry: the very first listdir after the command works
    assert sorted(os.listdir(m.path)) == sorted(
        {k.split("/")[0] for k in lindi_files.expected("example.lindi.tar")}
    )
    assert m.result.rc == 0 and m.result.stderr == ""
    # the daemon is a different, detached process that keeps running
    pid = m.xattr_pid()
    assert pid == m.pid and pid_alive(pid)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert int(fields[3]) == pid  # detached: leads its own session
    res = m.umount()
    assert res.rc == 0
    assert not pid_alive(pid)  # right after umount returns, without waiting


def test_background_mount_of_a_slow_remote_source_still_answers_at_once(mount, http_lindi):
    http_lindi.server.latency = 0.3
    t0 = time.monotonic()
    m = mount(http_lindi.url("amended.lindi.tar"), None, "--no-cache")
    assert time.monotonic() - t0 >= 0.9  # three requests were needed before it returned
    assert ".zgroup" in os.listdir(m.path)
    assert (m.path / ".zgroup").read_bytes() == b'{"zarr_format": 2}'
    m.umount()


def test_foreground_mount(mount, lindi_files, tmp_path):
    m = mount(lindi_files.json, None, "-f")
    assert m.proc is not None
    assert m.proc.poll() is None  # stays in the foreground while mounted
    assert walk_files(m.path) == lindi_files.expected("example.lindi.json")
    pid = m.pid
    assert pid == m.proc.pid == m.xattr_pid()
    time.sleep(0.2)
    assert m.proc.poll() is None
    res = m.umount()
    assert res.rc == 0
    assert m.proc.returncode == 0, m.describe()
    assert not pid_alive(pid)
    assert "Traceback" not in m.output()


def test_foreground_mount_logs_to_stderr_without_log_file(lindi_files, tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    err = tmp_path / "stderr"
    with open(err, "wb") as e:
        proc = subprocess.Popen(
            [*_cli(), "mount", lindi_files.json, mp, "-f"], stderr=e, stdout=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 30
        while not _mounted(mp) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _mounted(mp), err.read_text()
        assert (mp / ".zgroup").read_bytes() == b'{"zarr_format": 2}'
        rc, _, uerr = run_cli("umount", mp)
        assert rc == 0, uerr
        assert proc.wait(30) == 0
        assert not _mounted(mp)
    finally:
        if proc.poll() is None:
            run_cli("umount", mp)
            proc.kill()
            proc.wait()
    assert "mounted" in err.read_text()


def test_foreground_mount_failure_exits_non_zero(tmp_path):
    bad = tmp_path / "bad.lindi.json"
    bad.write_text("{")
    mp = tmp_path / "mp"
    mp.mkdir()
    # with --log-file, stderr holds exactly the one error line
    res = run_cli("mount", bad, mp, "-f", "--log-file", tmp_path / "log", timeout=60)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.rc == 1 and len(lines) == 1, res.describe()
    assert lines[0].startswith("lindifuse: ") and "bad.lindi.json" in lines[0]
    assert "Traceback" not in res.stderr + (tmp_path / "log").read_text()
    # without it the log goes to stderr too, but the error is still one line, no traceback
    res = run_cli("mount", bad, mp, "-f", timeout=60)
    assert res.rc == 1 and "Traceback" not in res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("lindifuse: ")] == lines
    assert not _mounted(mp)


def test_pid_file_and_xattr(mount, lindi_files):
    m = mount(lindi_files.d, None, "--read-only")
    assert int(m.pid_file.read_text()) == m.xattr_pid()
    assert "user.lindifuse.pid" in os.listxattr(m.path)
    m.umount()


def _cli():
    import sys

    return [sys.executable, "-m", "lindifuse"]


def _mounted(mp: Path) -> bool:
    from harness import is_mounted

    return is_mounted(mp)


# -- info ------------------------------------------------------------------------------------------


def _summary_of(rfs: dict, source: Path | str, kind: str) -> dict:
    """What `lindifuse info` must report, computed from the lindi.json itself."""
    refs = rfs["refs"]
    templates = rfs.get("templates", {})
    inline = container = external = 0
    ext: dict[str, list[int]] = {}
    for v in refs.values():
        if isinstance(v, str):
            inline += len(base64.b64decode(v[7:]) if v.startswith("base64:") else v.encode())
        elif isinstance(v, dict):
            inline += len(json.dumps(v).encode())
        else:
            target, size = v[0], (v[2] if len(v) == 3 else 0)
            for n, t in templates.items():
                target = target.replace("{{" + n + "}}", t)
            if target.startswith("./") and kind in ("tar", "dir"):
                container += size
            else:
                if target.startswith("./"):
                    target = str(Path(source).parent / target[2:])
                external += size
                e = ext.setdefault(target, [0, 0])
                e[0] += 1
                e[1] += size
    return {
        "kind": kind,
        "keys": len(refs),
        "groups": sum(k.rsplit("/", 1)[-1] == ".zgroup" for k in refs),
        "arrays": sum(k.rsplit("/", 1)[-1] == ".zarray" for k in refs),
        "bytes": {"inline": inline, "container": container, "external": external},
        "external": [{"target": t, "refs": n, "bytes": b} for t, (n, b) in sorted(ext.items())],
    }


KINDS = {".json": "json", ".tar": "tar", ".d": "dir"}


@pytest.mark.parametrize(
    "name", ["example.lindi.json", "example.lindi.tar", "example.lindi.d", "amended.lindi.tar"]
)
def test_info_json_of_lindi_files(lindi_files, name):
    path = lindi_files.sources[name]
    rc, out, err = run_cli("info", path, "--json")
    assert rc == 0 and err == ""
    got = json.loads(out)
    want = _summary_of(lindi_files.refs_json(name), path, KINDS[path.suffix])
    for field, value in want.items():
        assert got[field] == value, field
    assert got["source"] == str(path) and got["remote"] is False
    assert got["external"][0]["target"] == str(lindi_files.h5)


def test_info_text(lindi_files):
    rc, out, err = run_cli("info", lindi_files.amended_d)
    assert rc == 0 and err == ""
    want = _summary_of(lindi_files.refs_json("amended.lindi.d"), lindi_files.amended_d, "dir")
    lines = dict(ln.split(":", 1) for ln in out.splitlines() if ":" in ln and ln[0] != " ")
    assert lines["kind"].strip() == "dir"
    assert int(lines["keys"]) == want["keys"]
    assert int(lines["groups"]) == want["groups"]
    assert int(lines["arrays"]) == want["arrays"]
    b = want["bytes"]
    assert lines["bytes"].split() == [
        "inline",
        f"{b['inline']},",
        "in",
        "container",
        f"{b['container']},",
        "external",
        str(b["external"]),
    ]
    assert f"  {lindi_files.h5}  ({want['external'][0]['refs']} refs," in out


def test_info_of_remote_sources(http_lindi, remote_tar_url):
    rc, out, err = run_cli("info", remote_tar_url, "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["kind"] == "tar" and got["remote"] is True and got["source"] == remote_tar_url
    assert got["bytes"]["container"] > 0
    targets = [e["target"] for e in got["external"]]
    assert http_lindi.url("example.h5") in targets
    # a remote tar is never downloaded whole for info either
    for r in http_lindi.server.requests_for(remote_tar_url.rsplit("/", 1)[1]):
        assert r.range is not None
    rc, out, _ = run_cli("info", http_lindi.url("example.remote.lindi.json"))
    assert rc == 0 and "kind:        json (remote)" in out
    assert http_lindi.url("example.h5") in out


@pytest.fixture
def remote_tar_url(http_lindi, tmp_path) -> str:
    p = make_plain(tmp_path / "p")
    rfs = json.loads(json.dumps(p.refs["plain.lindi.tar"]))
    rfs["templates"] = {"data": http_lindi.url("example.h5")}  # any URL will do for info
    blobs = {"blobs/g/ramp/2": b"x" * 8, "blobs/g/squares/0": b"y" * 10}
    blobs["blobs/g/matrix/all"] = b"m" * 384
    write_tar(http_lindi.server.root / "info.lindi.tar", rfs, blobs)
    return http_lindi.url("info.lindi.tar")


def test_info_of_every_form(tmp_path):
    """Whole-target refs count 0 bytes (their size is not fetched), relative paths and ./ of a
    plain .lindi.json are external files next to it, templates are expanded."""
    (tmp_path / "d.bin").write_bytes(b"0" * 100)
    refs = {
        ".zgroup": {"zarr_format": 2},
        "a/.zarray": {"x": 1},
        "a/0": ["{{t}}", 0, 10],
        "a/1": [str(tmp_path / "d.bin"), 10, 20],
        "a/2": ["./d.bin", 30, 5],
        "t": "text",
        "b": "base64:" + base64.b64encode(b"12345").decode(),
        "w": ["http://example.invalid/whole.bin"],
    }
    src = tmp_path / "f.lindi.json"
    write_json(src, {"version": 1, "templates": {"t": str(tmp_path / "d.bin")}, "refs": refs})
    rc, out, err = run_cli("info", src, "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["keys"] == 8 and got["groups"] == 1 and got["arrays"] == 1
    assert got["bytes"] == {
        "inline": len(b'{"zarr_format": 2}') + len(b'{"x": 1}') + 4 + 5,
        "container": 0,
        "external": 35,
    }
    assert got["external"] == [
        {"target": str(tmp_path / "d.bin"), "refs": 3, "bytes": 35},
        {"target": "http://example.invalid/whole.bin", "refs": 1, "bytes": 0},
    ]


def test_info_of_a_bad_source(tmp_path):
    rc, out, err = run_cli("info", tmp_path / "nothere.lindi.json")
    assert rc == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "nothere.lindi.json" in lines[0] and "Traceback" not in err


def test_info_of_rejected_keys(tmp_path):
    src = tmp_path / "r.lindi.json"
    write_json(src, {"refs": {"ok": "1", "a/../b": "2"}})
    rc, out, _ = run_cli("info", src)
    assert rc == 0 and "rejected key 'a/../b'" in out
