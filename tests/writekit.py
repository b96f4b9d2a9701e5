"""Helpers for the tests of writable mounts (test_write*.py, test_admin_cli.py).

``ArchiveView`` reads a ``.lindi.tar`` or ``.lindi.d`` independently of lindifuse (entry ->
index -> lindi.json, members by their index offsets), so the tests judge what lindifuse wrote by
the format, not by lindifuse's own reader. Nothing here imports lindifuse.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

from harness import CliResult, run, run_cli

ENTRY = ".tar_entry.json"
INDEX = ".tar_index.json"
LINDI_JSON = "lindi.json"


class ArchiveView:
    """A snapshot of an archive on disk: ``kind`` ("tar"/"dir"), ``rfs``, ``refs``,
    ``index`` ({name: (o, d, s)}, tar only), ``index_doc``; ``content(key)`` gives a key's
    bytes as lindi would serve them (without lindi's zero padding), ``member(name)`` the bytes
    of a member / file of the container."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.index: dict[str, tuple[int, int, int]] = {}
        self.index_doc: dict[str, Any] = {}
        if self.path.is_dir():
            self.kind = "dir"
            self.rfs = json.loads((self.path / LINDI_JSON).read_text())
        else:
            self.kind = "tar"
            with open(self.path, "rb") as f:
                self._raw = f.read()
            entry = json.loads(self._raw[512:1536])["index"]
            assert entry["n"] == INDEX, entry
            self.index_doc = json.loads(self._raw[entry["d"] : entry["d"] + entry["s"]])
            for m in self.index_doc["files"]:
                assert m["n"] not in self.index, f"{m['n']} listed twice in the index"
                self.index[m["n"]] = (m["o"], m["d"], m["s"])
            assert self.index[INDEX] == (entry["o"], entry["d"], entry["s"])
            assert self.index[ENTRY] == (0, 512, 1024)
            self.rfs = json.loads(self.member(LINDI_JSON))
        self.refs: dict[str, Any] = self.rfs["refs"]

    def member(self, name: str) -> bytes:
        if self.kind == "dir":
            return (self.path / name).read_bytes()
        _o, d, s = self.index[name]
        assert d + s <= len(self._raw), f"member {name} runs past the end of the archive"
        return self._raw[d : d + s]

    def has_member(self, name: str) -> bool:
        if self.kind == "dir":
            return (self.path / name).is_file()
        return name in self.index

    def content(self, key: str) -> bytes:
        v = self.refs[key]
        if isinstance(v, dict):
            return json.dumps(v).encode()
        if isinstance(v, str):
            if v.startswith("base64:"):
                return base64.b64decode(v[7:])
            return v.encode()
        assert isinstance(v, list) and len(v) == 3, f"{key}: unexpected reference {v!r}"
        target, off, size = self.expand(v)
        if target.startswith("./"):
            data = self.member(target[2:])
            assert off + size <= len(data), f"{key}: {v} runs past its member"
            return data[off : off + size]
        assert not target.startswith(("http://", "https://")), "remote ref: read it elsewhere"
        with open(target, "rb") as f:
            f.seek(off)
            return f.read(size)

    def expand(self, v):
        """A reference with ``{{name}}`` templates replaced (lists only; others as they are)."""
        if not isinstance(v, list) or not v or not isinstance(v[0], str):
            return v
        target = v[0]
        for name, value in (self.rfs.get("templates") or {}).items():
            target = target.replace("{{" + name + "}}", value)
        return [target, *v[1:]]

    def blob_member(self, key: str) -> str | None:
        """The member name behind ``key`` when it is a ``./`` reference, else None."""
        v = self.expand(self.refs.get(key))
        if isinstance(v, list) and isinstance(v[0], str) and v[0].startswith("./"):
            return v[0][2:]
        return None

    def is_inline(self, key: str) -> bool:
        return isinstance(self.refs[key], str | dict)


def blob_name_ok(member: str, key: str) -> bool:
    """``member`` is ``blobs/<key>`` or ``blobs/<key>.vN`` (a rewrite of the same key)."""
    return re.fullmatch(re.escape("blobs/" + key) + r"(\.v\d+)?", member) is not None


def tar_list(path) -> list[str]:
    """``tar tf PATH``: must succeed without a warning."""
    res = run(["tar", "tf", str(path)])
    assert res.rc == 0 and not res.stderr.strip(), res.describe()
    return res.stdout.splitlines()


def tar_extract(path, dest) -> Path:
    """``tar xf PATH -C DEST`` (DEST created); returns DEST."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    res = run(["tar", "xf", str(path), "-C", str(dest)])
    assert res.rc == 0 and not res.stderr.strip(), res.describe()
    return dest


def tar_headers(path) -> dict[str, tuple[int, int, int]]:
    """{name: (header offset, data offset, size)} of every member, per Python's tarfile."""
    with tarfile.open(path) as tf:
        return {m.name: (m.offset, m.offset_data, m.size) for m in tf.getmembers()}


def assert_check_clean(path) -> CliResult:
    """``lindifuse check PATH`` exits 0."""
    res = run_cli("check", path)
    assert res.rc == 0, f"lindifuse check is not clean:\n{res.describe()}"
    return res


def assert_valid_archive(path) -> ArchiveView:
    """Everything a finished archive must satisfy: ``lindifuse check`` clean, the index agrees
    with the tar headers (per tarfile and GNU tar), every ``./`` reference inside its member."""
    assert_check_clean(path)
    view = ArchiveView(path)
    if view.kind == "tar":
        names = tar_list(path)
        headers = tar_headers(path)
        for name, (o, d, s) in view.index.items():
            assert headers.get(name) == (o, d, s), (
                f"index {name}: {(o, d, s)} vs {headers.get(name)}"
            )
            assert name in names
        assert names.count(LINDI_JSON) == 1 and names.count(INDEX) == 1
    for key in view.refs:
        member = view.blob_member(key)
        if member is not None:
            assert view.has_member(member), f"{key} -> missing member {member}"
            view.content(key)
    return view


def files_under(root) -> dict[str, bytes]:
    """{relative path: bytes} of every regular file under ``root``."""
    root = Path(root)
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def json_from_output(res: CliResult) -> Any:
    """The JSON object a lindi_gen command printed (lindi may print warnings around it)."""
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON in the output:\n{res.describe()}")


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None
