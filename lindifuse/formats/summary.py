"""``lindifuse info``: what a LINDI source holds and where its bytes live."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

from lindifuse.errors import RefError
from lindifuse.formats.container import load_container
from lindifuse.refs import Inline, decode_value, expand_templates


async def summarize(source: str) -> dict[str, Any]:
    c = await load_container(source)
    refs = c.rset.refs
    inline = container = external = 0
    ext: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    groups = arrays = 0
    for key, value in refs.items():
        last = key.rsplit("/", 1)[-1]
        groups += last == ".zgroup"
        arrays += last == ".zarray"
        try:
            ref = decode_value(key, value)
        except RefError:
            continue
        if isinstance(ref, Inline):
            inline += len(ref.data)
            continue
        size = ref.size or 0
        target = expand_templates(ref.target, c.rset.templates)
        if target.startswith("./") and c.kind in ("tar", "dir"):
            container += size
        else:
            # A plain .lindi.json has no container: its ./ and relative targets are files (or
            # URLs) next to it; list them where they resolve, like the mount reads them.
            with contextlib.suppress(RefError):
                target = c.resolve(target).where
            external += size
            e = ext[target]
            e[0] += 1
            e[1] += size
    extra: dict[str, Any] = {}
    if c.kind == "hdf5":
        meta = c.rset.extra.get("generationMetadata") or {}
        extra["left_out"] = list(meta.get("warnings") or [])
    return {
        **extra,
        "source": c.source,
        "kind": c.kind,
        "remote": c.remote,
        "keys": len(refs),
        "groups": groups,
        "arrays": arrays,
        "bytes": {"inline": inline, "container": container, "external": external},
        "external": [{"target": t, "refs": n, "bytes": b} for t, (n, b) in sorted(ext.items())],
        "rejected_keys": c.rset.rejected,
    }
