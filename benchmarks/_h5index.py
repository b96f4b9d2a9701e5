"""Time one index of an HDF5 file in-process (imports excluded), as `lindifuse index` does it.

.venv/bin/python benchmarks/_h5index.py SOURCE [--all-chunks]
-> {"seconds": s, "keys": n, "requests": h5py-block requests}  (one JSON line)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

import lindifuse.formats.hdf5.indexer  # noqa: E402,F401  (imported before the clock starts, like lindi)
from lindifuse.cache.memory import MemoryCache  # noqa: E402
from lindifuse.formats.container import HDF5Settings, open_container  # noqa: E402
from lindifuse.formats.hdf5.options import IndexOptions  # noqa: E402
from lindifuse.fs.fetch import Fetcher  # noqa: E402
from lindifuse.sources.http import HttpClient
from lindifuse.sources.local import LocalFiles  # noqa: E402


async def _timed(source: str, options: IndexOptions) -> tuple[float, int]:
    http, local = HttpClient(), LocalFiles()
    fetcher = Fetcher(http, MemoryCache(256 * 2**20), None)
    try:
        t0 = time.perf_counter()
        c = await open_container(
            source, http, local, fetch=fetcher.get, hdf5=HDF5Settings(options=options)
        )
        return time.perf_counter() - t0, len(c.rset.refs)
    finally:
        await http.aclose()
        local.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("--all-chunks", action="store_true")
    a = p.parse_args()
    options = IndexOptions(chunk_threshold=None if a.all_chunks else 1000)
    seconds, keys = trio.run(_timed, a.source, options)
    print(json.dumps({"seconds": seconds, "keys": keys}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
