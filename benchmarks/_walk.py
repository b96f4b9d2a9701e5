"""Walk a tree and stat every file; prints one JSON line {"seconds", "files", "dirs", "bytes"}.

    python benchmarks/_walk.py ROOT

Run as a subprocess so that the benchmark can bound a slow file system with a timeout.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    root = sys.argv[1]
    t0 = time.perf_counter()
    files = dirs = nbytes = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        dirs += 1
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            files += 1
            nbytes += st.st_size
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "files": files, "dirs": dirs, "bytes": nbytes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
