"""``lindifuse create TARGET [--from SOURCE]``: a new ``.lindi.tar`` or ``.lindi.d``, empty or
holding the references of SOURCE with its container-relative targets made absolute (the
"amend" workflow: the new archive reads SOURCE's data where it lies). The bytes are written
by ``lindifuse.archive.create``."""

from __future__ import annotations

import argparse
from typing import Any

from lindifuse.errors import SourceError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "create",
        help="create a new .lindi.tar or .lindi.d",
        description="Create TARGET (a .lindi.tar, or a .lindi.d folder when the name ends in .d) "
        "holding an empty root group that lindi opens, or, with --from, the references of SOURCE "
        "(a local or remote lindi.json or .lindi.tar; the internal references of a remote tar "
        "become byte ranges of its URL). Mount TARGET to add data without copying SOURCE.",
        epilog="examples:\n"
        "  lindifuse create new.lindi.tar                 # empty root group\n"
        "  lindifuse create notes.lindi.d                 # a folder archive\n"
        "  lindifuse create amended.lindi.tar --from https://example.org/sub-01.nwb.lindi.tar\n"
        "  lindifuse create verified.lindi.tar --hashes    # written chunks record their sha256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--from", dest="source", metavar="SOURCE", help="start from these references")
    p.add_argument(
        "--hashes",
        action="store_true",
        help="keep a sha256 per chunk in the archive (the lindi.json member "
        "lindifuse_chunk_hashes, which lindi ignores): with --from, of every chunk SOURCE "
        "references (each is read once); then of every chunk written through a mount. Mounts "
        "check chunks against it on fetch (EIO on a mismatch) and `lindifuse check` finds a "
        "corrupted member by its content",
    )


def run(args: argparse.Namespace) -> int:
    import trio

    print(trio.run(create, args.target, args.source, getattr(args, "hashes", False)))
    return 0


def absolute_refs(c: Any) -> dict[str, Any]:
    """The reference set of ``c`` with container-relative targets made absolute.

    A remote ``.lindi.tar``'s internal references become byte ranges of the tar's URL, so a new
    archive created from it reads its data remotely and only stores what is added later.
    """
    from lindifuse.errors import FormatError, RefError
    from lindifuse.refs import Range, decode_value, expand_templates

    refs: dict[str, Any] = {}
    for key, value in c.rset.refs.items():
        if isinstance(value, list):
            ref = decode_value(key, value)
            assert isinstance(ref, Range)
            target = expand_templates(ref.target, c.rset.templates)
            try:
                loc = c.resolve(target)
            except RefError as e:
                raise FormatError(f"{c.source}: key {key!r}: {e}") from None
            if ref.size is None and loc.limit is None:
                value = [loc.where]
            else:
                size = ref.size if ref.size is not None else (loc.limit or 0) - ref.offset
                value = [loc.where, loc.base + ref.offset, size]
        refs[key] = value
    doc = {k: v for k, v in c.rset.extra.items() if k != "templates"}
    doc["refs"] = refs
    return doc


async def create(target: str, source: str | None, hashes: bool = False) -> str:
    import json

    from lindifuse.archive.base import EMPTY_RFS
    from lindifuse.archive.create import create as create_archive
    from lindifuse.formats import hashes as chunk_hashes
    from lindifuse.formats.container import load_container

    rfs = None
    if source is not None:
        rfs = absolute_refs(await load_container(source))
    if hashes:
        if rfs is None:
            rfs = json.loads(json.dumps(EMPTY_RFS))
        digests = await _hash_refs(rfs["refs"]) if source is not None else {}
        rfs[chunk_hashes.MEMBER] = chunk_hashes.new_member(digests)
    try:
        create_archive(target, rfs)
    except FileExistsError:
        raise SourceError(f"{target}: already exists") from None
    except OSError as e:
        raise SourceError(f"{target}: {e.strerror or e}") from None
    n = len(rfs["refs"]) if rfs else 1
    return f"created {target} with {n} keys"


async def _hash_refs(refs: dict[str, Any]) -> dict[str, str]:
    """sha256 of every ``[url or path, offset, size]`` reference (absolute already)."""
    from lindifuse.formats import hashes
    from lindifuse.sources.http import HttpClient
    from lindifuse.sources.local import LocalFiles

    http, local = HttpClient(), LocalFiles()
    read = hashes.direct_reader(http, local, "")
    try:
        return await hashes.compute(refs, read, lambda t: t)
    finally:
        await http.aclose()
        local.close()
