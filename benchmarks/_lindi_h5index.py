"""Time lindi's own index of an HDF5 file in-process (imports excluded). Run with lindi's venv.

.venv-lindi/bin/python benchmarks/_lindi_h5index.py SOURCE [--all-chunks]
-> {"seconds": s, "keys": n}  (one JSON line)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import lindi


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("--all-chunks", action="store_true")
    a = p.parse_args()
    opts = lindi.LindiH5ZarrStoreOpts(num_dataset_chunks_threshold=None if a.all_chunks else 1000)
    url = a.source if "://" in a.source else os.path.abspath(a.source)
    t0 = time.perf_counter()
    with lindi.LindiH5ZarrStore.from_file(a.source, opts=opts, url=url) as store:
        rfs = store.to_reference_file_system()
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "keys": len(rfs["refs"])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
