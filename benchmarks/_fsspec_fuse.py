"""Mount a kerchunk/lindi reference JSON with fsspec's own FUSE layer (fusepy), in the foreground.

    python benchmarks/_fsspec_fuse.py REFS.json MOUNTPOINT [--remote-protocol file]

The benchmark runs this as a subprocess and ends it by its PID after unmounting. fsspec's
``FUSEr`` joins its root (always ending in "/") with the kernel's path, so it asks the reference
file system for "/g0/..." which ``ReferenceFileSystem`` does not know; the only change here is
an empty root so that paths reach it as "g0/...". Needs libfuse2 (``apt-get install libfuse2``).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("refs")
    p.add_argument("mountpoint")
    p.add_argument("--remote-protocol", default="file")
    p.add_argument("--threads", action="store_true")
    args = p.parse_args()

    import fsspec
    from fsspec.fuse import FUSEr, run

    class RootlessFUSEr(FUSEr):
        def __init__(self, fs, path, ready_file=False):
            super().__init__(fs, path, ready_file=ready_file)
            self.root = ""

    fs = fsspec.filesystem("reference", fo=args.refs, remote_protocol=args.remote_protocol)
    print("loaded", flush=True)
    run(fs, "", args.mountpoint, foreground=True, threads=args.threads, ops_class=RootlessFUSEr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
