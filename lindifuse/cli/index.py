"""``lindifuse index SOURCE [-o OUT.lindi.json]``: write the LINDI index of an HDF5/NWB file.

The output is the reference file system lindi's ``LindiH5ZarrStore`` writes for the file (same
keys, same content; ``docs/semantics.md`` lists the deliberate differences), so lindi, kerchunk
readers and ``lindifuse mount`` all open it. A remote file is read through the same fetcher and
persistent cache as a mount, in blocks, so indexing costs a few range requests, not one per
HDF5 metadata read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from lindifuse.cli.args import size
from lindifuse.errors import SourceError

# (orjson, tempfile and the rest are imported when the command runs: `lindifuse mount` builds
# this parser too, and its start-up time counts)

DESCRIPTION = """\
Index the HDF5 or NWB file SOURCE (a local path, an http(s) URL, or a DANDI asset URL) and write
its LINDI reference file system: every group and dataset becomes Zarr metadata (.zgroup, .zarray,
.zattrs) and every chunk a reference to its byte range in SOURCE, following lindi 0.4's
conventions (_SCALAR, _COMPOUND_DTYPE, _REFERENCE, _SOFT_LINK, _EXTERNAL_ARRAY_LINK). lindi, pynwb
through lindi, and `lindifuse mount` open the result. Nothing of the data is copied.

Objects LINDI cannot represent (external links, region references, complex numbers, filters
numcodecs has no codec for) are left out and listed as warnings on stderr, each naming the
object; --strict makes them an error."""

EPILOG = """\
examples:
  lindifuse index session.nwb                      # writes session.nwb.lindi.json here
  lindifuse index https://example.org/f.nwb -o f.lindi.json
  lindifuse index big.h5 --all-chunks -o big.lindi.json   # list every chunk, no external links
  lindifuse index local-copy.nwb --url https://example.org/f.nwb -o f.lindi.json
  lindifuse index session.nwb --hashes             # + a sha256 per chunk, checked by mounts

exit status: 0 on success, 1 when SOURCE cannot be read (or, with --strict, when something was
left out), 2 on a usage error."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "index",
        help="write the LINDI index (.lindi.json) of an HDF5/NWB file",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="HDF5/NWB file: path or http(s) URL")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output file (default: the source's file name + .lindi.json in the current "
        "directory; - for standard output)",
    )
    p.add_argument(
        "--url",
        metavar="URL",
        help="name this URL (instead of SOURCE) in the chunk references: index a local copy of "
        "a remote file",
    )
    p.add_argument(
        "--all-chunks",
        action="store_true",
        help="list the chunks of every dataset (default: a dataset with more than "
        "--chunk-threshold chunks is written as an _EXTERNAL_ARRAY_LINK, like lindi)",
    )
    p.add_argument(
        "--chunk-threshold",
        type=int,
        default=1000,
        metavar="N",
        help="chunk count above which a dataset becomes an external array link (default 1000, "
        "lindi's)",
    )
    p.add_argument(
        "--split-size",
        type=size,
        default=20_000_000,
        metavar="SIZE",
        help="describe an uncompressed one-piece dataset larger than SIZE as row blocks of about "
        "SIZE bytes (default 20000000, lindi's; 0 keeps it one chunk)",
    )
    p.add_argument(
        "--hashes",
        action="store_true",
        help="read every referenced chunk once and record its sha256 in the index (the "
        "top-level member lindifuse_chunk_hashes, which lindi ignores); a mount of the index "
        "then checks each chunk on fetch and fails with EIO on a mismatch. Chunks of datasets "
        "written as _EXTERNAL_ARRAY_LINK are not listed, hence not hashed (see --all-chunks)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if anything was left out")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="persistent chunk cache for remote reads (default $XDG_CACHE_HOME/lindifuse)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not use the persistent cache")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary line")


def default_output(source: str) -> str:
    name = os.path.basename(source.split("?")[0].rstrip("/")) or "index"
    return name + ".lindi.json"


def write_atomic(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it). A path that
    exists and is not a regular file (``/dev/null``, a FIFO, a terminal) is written to as it
    is: renaming over it would replace the device with a file."""
    import stat
    import tempfile

    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(path, "wb") as f:
            f.write(data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lindifuse-index-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


async def _index(args: argparse.Namespace, progress: Any) -> Any:
    from lindifuse.cache.memory import MemoryCache
    from lindifuse.formats.container import HDF5Settings, open_container
    from lindifuse.formats.hdf5.options import IndexOptions
    from lindifuse.fs.fetch import Fetcher
    from lindifuse.service.parts import open_disk_cache
    from lindifuse.sources.http import HttpClient
    from lindifuse.sources.local import LocalFiles

    options = IndexOptions(
        chunk_threshold=None if args.all_chunks else args.chunk_threshold,
        split_size=args.split_size or None,
    )
    http, local = HttpClient(), LocalFiles()
    disk = await open_disk_cache(args)
    fetcher = Fetcher(http, MemoryCache(256 * 2**20), disk)
    try:
        c = await open_container(
            args.source,
            http,
            local,
            fetch=fetcher.get,
            hdf5=HDF5Settings(options=options, progress=progress),
        )
        if c.kind != "hdf5":
            raise SourceError(f"{args.source}: not an HDF5 file (it is a LINDI {c.kind} source)")
        if getattr(args, "hashes", False):
            await _add_hashes(c, http, local)
        c.index.http_requests = http.stats.requests
        return c
    finally:
        if disk is not None:
            await disk.aclose()
        await http.aclose()
        local.close()


async def _add_hashes(c: Any, http: Any, local: Any) -> None:
    """Record the sha256 of every chunk reference (read straight from the source, not through
    the cache: these reads check the file, they must not trust a copy)."""
    from lindifuse.formats import hashes
    from lindifuse.refs import expand_templates

    read = hashes.direct_reader(http, local, f"{c.source}: ")
    rset = c.rset
    digests = await hashes.compute(
        rset.refs, read, lambda t: c.resolve(expand_templates(t, rset.templates)).where
    )
    c.index.rfs[hashes.MEMBER] = {"algorithm": hashes.ALGORITHM, "chunks": digests}


def _rename_url(rfs: dict[str, Any], old: str, new: str) -> None:
    for name, value in list(rfs.get("templates", {}).items()):
        if value == old:
            rfs["templates"][name] = new
    for value in rfs["refs"].values():
        if isinstance(value, list) and value and value[0] == old:
            value[0] = new
        elif isinstance(value, dict) and "_EXTERNAL_ARRAY_LINK" in value:
            link = value["_EXTERNAL_ARRAY_LINK"]
            if isinstance(link, dict) and link.get("url") == old:
                link["url"] = new


def run(args: argparse.Namespace) -> int:
    import orjson
    import trio

    from lindifuse.progress import ProgressLine

    line = ProgressLine(f"indexing {os.path.basename(args.source)}")
    if args.quiet:
        line.enabled = False
    t0 = time.monotonic()
    try:
        c = trio.run(_index, args, line.update)
    finally:
        line.close()
    loaded = c.index
    rfs = loaded.rfs
    if args.url:
        _rename_url(rfs, c.source, args.url)
    result = loaded.result
    for w in result.warnings:
        print(f"lindifuse: warning: {w}", file=sys.stderr)
    data = orjson.dumps(rfs, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    out = args.output or default_output(args.source)
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            write_atomic(out, data)
        except OSError as e:
            raise SourceError(f"{out}: cannot write: {e.strerror or e}") from None
    if not args.quiet:
        remote = ""
        if c.remote:
            remote = f", {loaded.http_requests} HTTP requests, {loaded.bytes_read:,} bytes read"
        print(
            f"indexed {args.source}: {result.objects:,} objects, {result.chunks:,} chunks, "
            f"{result.external_links} external array links, {len(result.warnings)} left out"
            f"{remote}, {time.monotonic() - t0:.2f}s -> {out}",
            file=sys.stderr,
        )
    return 1 if args.strict and result.warnings else 0
