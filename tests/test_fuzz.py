"""The loaders under mutated input (issue 9, item 5): the short CI run of tests/fuzz_loaders.py
(the long run, >= 10,000 cases: ``.venv/bin/python tests/fuzz_loaders.py --cases 10000``), plus
real ``lindifuse mount`` of a few mutated files: each mounts (and unmounts cleanly) or fails
with exactly one line on stderr and nothing mounted."""

from __future__ import annotations

import os
import random
import shutil

import fuzz_loaders
from plain_lindi import make_plain

CI_CASES = int(os.environ.get("LINDIFUSE_FUZZ_CASES", "600"))


def test_mutated_sources_end_in_a_result_or_one_line_error(tmp_path):
    out = fuzz_loaders.run(CI_CASES, seed=20261129, workdir=tmp_path, log=None)
    assert out.cases == CI_CASES
    assert not out.failures, "\n".join(out.failures[:5])
    # the mutations reach both outcomes for every kind (the fuzzer is not idle)
    for kind in ("json", "tar", "d"):
        assert out.counts[(kind, "error")] > 0, out.counts
        assert out.counts[(kind, "mounted")] > 0, out.counts


def test_mutated_sources_through_real_mounts(mount, tmp_path):
    plain = make_plain(tmp_path / "seed")
    rng = random.Random(7)
    outcomes = []
    for i in range(9):
        name = sorted(plain.sources)[i % 3]
        src = plain.sources[name]
        dst = tmp_path / f"c{i}" / src.name
        dst.parent.mkdir()
        if src.is_dir():
            shutil.copytree(src, dst)
            victim = dst / "lindi.json"
        else:
            shutil.copyfile(src, dst)
            victim = dst
        data, _how = fuzz_loaders.mutate(victim.read_bytes(), rng)
        victim.write_bytes(data)
        m = mount(dst, None, "--read-only", check=False)
        if m.result.rc == 0:
            assert m.is_mounted()
            os.listdir(m.path)
            m.umount()
            outcomes.append("mounted")
        else:
            err = m.result.stderr.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("lindifuse: "), m.result.describe()
            assert "Traceback" not in m.result.stderr
            assert not m.is_mounted()
            outcomes.append("error")
    assert "error" in outcomes, outcomes
