"""tests/httpserver.py's RangeServer in its own process, driven over stdin/stdout.

Running it apart keeps the server's Python threads from competing for the GIL with an
in-process client (fsspec, zarr) under test. The benchmark talks to it line by line:

    -> "port 43210"           (printed once serving)
    <- "count x.lindi.tar"  -> "12"      requests seen for that path since the last reset
    <- "bytes x.lindi.tar"  -> "1234"    bytes the logged ranges asked for (206 answers)
    <- "reset"              -> "ok"      clears counters and the log (keeps the latency)
    <- "quit" or end of input            stops
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from httpserver import RangeServer, parse_range  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--latency", type=float, default=0.0)
    args = p.parse_args()
    srv = RangeServer(args.root)
    srv.start()
    srv.latency = args.latency
    print(f"port {srv.port}", flush=True)
    try:
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "count":
                print(srv.count(arg or None), flush=True)
            elif cmd == "bytes":
                size = (srv.root / arg).stat().st_size
                total = 0
                for r in srv.requests_for(arg):
                    rng = parse_range(r.range, size)
                    if isinstance(rng, tuple):
                        total += rng[1] - rng[0] + 1
                    elif rng is None:
                        total += size
                print(total, flush=True)
            elif cmd == "reset":
                srv.reset_log()
                print("ok", flush=True)
            elif cmd == "quit":
                break
            else:
                print(f"error unknown command {cmd!r}", flush=True)
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
