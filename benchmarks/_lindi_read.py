"""Read a whole dataset with lindi's own reader; run with the lindi (zarr<3) interpreter.

    $LINDI_PYTHON benchmarks/_lindi_read.py URL_OR_PATH DATASET

Prints one JSON line: {"open_s", "dataset_s", "read_s", "shape", "ok"} where ``ok`` checks the values against
the benchmark array's pattern (float32 of index mod 2**24).
"""

from __future__ import annotations

import json
import sys
import time

import lindi
import numpy as np


def main() -> int:
    src, name = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    f = lindi.LindiH5pyFile.from_lindi_file(src)
    t1 = time.perf_counter()
    ds = f[name]
    ta = time.perf_counter()
    data = ds[:]
    t2 = time.perf_counter()
    f.close()
    expected = (np.arange(data.size, dtype=np.uint32) & 0xFFFFFF).astype(np.float32)
    ok = bool(np.array_equal(data.ravel(), expected))
    print(
        json.dumps(
            {
                "open_s": t1 - t0,
                "dataset_s": ta - t1,
                "read_s": t2 - ta,
                "shape": list(data.shape),
                "ok": ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
