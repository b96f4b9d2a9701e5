"""Request bursts (patched pyfuse3, ``set_request_burst``) against no bursts, on one build.

    .venv/bin/python benchmarks/bench_burst.py             # 6 alternations, RESULTS.md
    .venv/bin/python benchmarks/bench_burst.py --quick      # 1 rep, 5,000 files, 64 MiB, no write

``bench_ab.py`` with ``LINDIFUSE_REQUEST_BURST=0,16`` and the parts small, local and write
(see there): many readers of small files, where requests queue up; one sequential reader, where
they never do; writes. Results go to benchmarks/RESULTS.md between ``<!-- bench_burst:start -->``
and ``<!-- bench_burst:end -->``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ab  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return bench_ab.run(
        ["--only", "small,local,write", *args],
        setting="LINDIFUSE_REQUEST_BURST=0,16",
        name="bench_burst",
        title="Request bursts: one build, bursts on and off (bench_burst)",
        labels=["no bursts", "bursts of 16"],
    )


if __name__ == "__main__":
    sys.exit(main())
