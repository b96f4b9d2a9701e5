"""Every shell command shown in README.md and docs/ runs (issue 8), so the docs cannot rot.

Fenced blocks are classified by their info string:

* ```` ```sh test ````: run here, in order, each with ``bash -euo pipefail`` in one shared empty
  directory, with the system install of conftest's ``installed`` fixture first on ``PATH``
  (its mount(8) helpers linked into /sbin for the duration), ``python3`` from the test venv
  (zarr), ``$URL`` the loopback RangeServer's address of ``session.lindi.tar`` in that
  directory (made by the quick start), and XDG dirs inside it.
* ```` ```sh norun ````: not run; the text next to the block says why (it needs the internet,
  a running systemd, writes /opt, or is the CI itself).

A shell block with any other info string fails ``test_every_shell_block_is_classified``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from harness import REPO, force_unmount, fuse_mounts_under, run
from httpserver import RangeServer
from sysinstall import sbin_helpers, system_lock

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"sh", "bash", "shell", "console", "shell-session"}
FENCE = re.compile(r"^```(.*)$")


def blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line number, info string, body) of every fenced block."""
    out, info, start, body = [], None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if info is None and m:
            info, start, body = m.group(1).strip(), n, []
        elif info is not None and line.strip() == "```":
            out.append((start, info, "\n".join(body) + "\n"))
            info = None
        elif info is not None:
            body.append(line)
    assert info is None, f"{path}: unclosed fence at line {start}"
    return out


def test_every_shell_block_is_classified():
    bad = []
    for doc in DOCS:
        for line, info, _ in blocks(doc):
            words = info.split()
            if (not words and _looks_like_shell(_)) or (
                words and words[0] in SHELL_LANGS and words[1:] not in (["test"], ["norun"])
            ):
                bad.append(f"{doc.name}:{line}: ```{info}")
    assert not bad, "shell blocks must be ```sh test or ```sh norun:\n" + "\n".join(bad)


def _looks_like_shell(body: str) -> bool:
    return bool(re.search(r"^\s*(lindifuse|mount|make|python3?|sudo|systemctl) ", body, re.M))


def test_norun_blocks_are_few_and_explained():
    """Each not-run block has text next to it that says why (a word from the list below)."""
    for doc in DOCS:
        text = doc.read_text().splitlines()
        for line, info, body in blocks(doc):
            if info.split()[1:] == ["norun"]:
                end = line + body.count("\n")
                before = " ".join(text[max(0, line - 8) : line - 1] + text[end : end + 20]).lower()
                assert any(w in before for w in ("not run", "docs test", "temporary", "wheel")), (
                    f"{doc.name}:{line}: say why this block is not run"
                )


@pytest.fixture
def docs_env(installed, tmp_path):
    work = tmp_path / "docs"
    work.mkdir()
    with system_lock(), sbin_helpers(installed), RangeServer(work) as srv:
        env = {
            "PATH": os.pathsep.join(
                [str(installed.bindir), str(Path(sys.executable).parent), "/usr/sbin:/usr/bin"]
                + ["/sbin:/bin"]
            ),
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "URL": srv.url("session.lindi.tar"),
            "XDG_CACHE_HOME": str(work / ".cache"),
            "XDG_STATE_HOME": str(work / ".state"),
        }
        try:
            yield work, env
        finally:
            for mp in fuse_mounts_under(work):
                run([installed.lindifuse, "umount", mp], timeout=60)
                force_unmount(mp)
            leaked = fuse_mounts_under(work)
            assert not leaked, f"docs left mounts: {leaked}"


# What some blocks must print (a substring of stdout+stderr), found by a line of the block.
EXPECT = {
    "print(zarr.open_array": "66",  # quick start: sum(range(12))
    "print(g.tree())": "x",  # remote data: the quick start's array
    "lindifuse info amended.lindi.tar": "keys",
    "kill -9": "cleared a dead mount left by a killed daemon",
    "exec sleep 30": "busy, still in use by pid",
}


@pytest.mark.parametrize("doc", [d.name for d in DOCS])
def test_doc_blocks_run(doc, docs_env):
    work, env = docs_env
    path = next(d for d in DOCS if d.name == doc)
    runnable = [(line, body) for line, info, body in blocks(path) if info == "sh test"]
    if not runnable:
        pytest.skip(f"{doc} has no runnable shell blocks")
    for line, body in runnable:
        res = run(["bash", "-euo", "pipefail", "-c", body], timeout=180, env=env, cwd=work)
        assert res.rc == 0, f"{doc}:{line}: block failed\n{body}\n{res.describe()}"
        out = res.stdout + res.stderr
        assert "Traceback" not in out, f"{doc}:{line}\n{out}"
        for marker, want in EXPECT.items():
            if marker in body:
                assert want in out, f"{doc}:{line}: expected {want!r} in the output\n{out}"
