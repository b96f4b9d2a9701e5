"""Mutation fuzzer for the loaders (issue 9, item 5): valid ``.lindi.tar``, ``.lindi.json`` and
``.lindi.d`` files (tests/plain_lindi.py) with bytes flipped, cut off, spliced, inserted or
deleted are fed to everything that reads a SOURCE:

- ``containers.open_container`` (what ``lindifuse mount`` and ``info`` load), then the key
  namespace (``Tree.from_keys``) and every reference decoded (``refs.decode_value``);
- ``archive_open.open_archive`` read-only, and writable (its crash *recovery*, on a copy);
- ``archive_check.check`` (``lindifuse check``).

Each must end in a result or the project's own one-line error (``LindiError``), never another
exception, a hang or a message with a newline. A failure prints the seed and case number that
reproduce it. Short run in CI (``tests/test_fuzz.py``); long run::

    .venv/bin/python tests/fuzz_loaders.py --cases 10000 --seed 1

(prints the outcome counts; exit 1 on any failure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plain_lindi import make_plain  # noqa: E402

MUTATIONS = ("flip", "flip-many", "truncate", "splice", "insert", "delete", "zero-block")


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random mutation of ``data`` and its description."""
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), "fill-empty"
    kind = rng.choice(MUTATIONS)
    b = bytearray(data)
    n = len(b)
    if kind == "flip":
        i = rng.randrange(n)
        b[i] ^= 1 << rng.randrange(8)
    elif kind == "flip-many":
        for _ in range(rng.randrange(2, 32)):
            b[rng.randrange(n)] = rng.randrange(256)
    elif kind == "truncate":
        b = b[: rng.randrange(n)]
    elif kind == "splice":
        a = rng.randrange(n)
        length = rng.randrange(1, min(2048, n - a) + 1)
        piece = b[a : a + length]
        dst = rng.randrange(n)
        b[dst : dst + len(piece)] = piece
    elif kind == "insert":
        at = rng.randrange(n + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
    elif kind == "delete":
        a = rng.randrange(n)
        b[a : a + rng.randrange(1, 600)] = b""
    else:  # zero-block: a 512-byte block (tar header, entry sector) zeroed
        a = rng.randrange(0, max(1, n // 512)) * 512
        b[a : a + 512] = bytes(min(512, n - a))
    return bytes(b), kind


@dataclass
class Outcome:
    cases: int = 0
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def _one_line(e: BaseException) -> bool:
    return "\n" not in str(e) and bool(str(e))


async def _load(path: str) -> str:
    """open_container + tree + every reference decoded: 'mounted' or 'error'."""
    from lindifuse.errors import LindiError, RefError
    from lindifuse.formats.container import open_container
    from lindifuse.fs.tree import Tree
    from lindifuse.refs import decode_value
    from lindifuse.sources.local import LocalFiles

    # A local SOURCE never touches the HTTP client (its references are only resolved here).
    http, local = None, LocalFiles()
    try:
        try:
            c = await open_container(path, http, local)
        except LindiError as e:
            if not _one_line(e):
                raise AssertionError(f"multi-line or empty error: {e!r}") from None
            return "error"
        Tree.from_keys(c.rset.refs.keys())
        for key, value in c.rset.refs.items():
            try:
                ref = decode_value(key, value)
            except RefError:
                continue
            if hasattr(ref, "target"):
                with contextlib.suppress(RefError):
                    c.resolve(ref.target)
        return "mounted"
    finally:
        local.close()


def check_case(path: Path) -> list[str]:
    """Run every loader on ``path``; the outcome labels (raises on a defect)."""
    import trio

    from lindifuse.archive import check as archive_check
    from lindifuse.archive import open as archive_open
    from lindifuse.errors import LindiError

    labels = [trio.run(_load, str(path))]
    if path.suffix == ".json":
        return labels
    for writable in (False, True):
        work = path
        if writable:  # recovery may change the file: work on a copy
            work = path.with_name("w-" + path.name)
            if path.is_dir():
                shutil.copytree(path, work, symlinks=True)
            else:
                shutil.copyfile(path, work)
        try:
            a = archive_open.open_archive(str(work), writable=writable)
        except LindiError as e:
            if not _one_line(e):
                raise AssertionError(f"multi-line or empty error: {e!r}") from None
            labels.append("error")
        else:
            a.close()
            labels.append("opened")
        finally:
            if writable:
                shutil.rmtree(work, ignore_errors=True) if work.is_dir() else work.unlink()
    problems = archive_check.check(str(path))
    assert all(isinstance(p, str) and "\n" not in p for p in problems), problems
    labels.append("check-clean" if not problems else "check-problems")
    return labels


def _seeds(folder: Path) -> dict[str, Path]:
    plain = make_plain(folder / "seed")
    return {k.rsplit(".", 1)[1]: p for k, p in plain.sources.items()}


def run(cases: int, seed: int, workdir: Path | None = None, log=print) -> Outcome:
    rng = random.Random(seed)
    out = Outcome()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        base = Path(tmp)
        seeds = _seeds(base)
        for i in range(cases):
            kind = rng.choice(sorted(seeds))
            src = seeds[kind]
            case = base / f"case{i % 4}"
            shutil.rmtree(case, ignore_errors=True)
            case.mkdir()
            if kind == "d":
                dst = case / src.name
                shutil.copytree(src, dst)
                files = sorted(p for p in dst.rglob("*") if p.is_file())
                victim = rng.choice(files)
                data, how = mutate(victim.read_bytes(), rng)
                victim.write_bytes(data)
                how = f"{how} of {victim.relative_to(dst)}"
            else:
                dst = case / src.name
                data, how = mutate(src.read_bytes(), rng)
                dst.write_bytes(data)
            try:
                labels = check_case(dst)
            except Exception:
                out.failures.append(
                    f"case {i} (seed {seed}, {kind}, {how}):\n{traceback.format_exc()}"
                )
                labels = ["FAILED"]
            out.cases += 1
            out.counts[(kind, labels[0])] += 1
            for lab in labels[1:]:
                out.counts[(kind, lab)] += 1
            if log is not None and (i + 1) % 1000 == 0:
                log(f"{i + 1} cases, {len(out.failures)} failures")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    t0 = time.monotonic()
    out = run(args.cases, args.seed)
    for f in out.failures[:20]:
        print(f)
    print(
        json.dumps(
            {
                "cases": out.cases,
                "failures": len(out.failures),
                "seconds": round(time.monotonic() - t0, 1),
                "outcomes": {f"{k}/{v}": n for (k, v), n in sorted(out.counts.items())},
            },
            indent=2,
        )
    )
    return 1 if out.failures else 0


if __name__ == "__main__":
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.gettempdir())
    sys.exit(main())
