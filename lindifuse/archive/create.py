"""A new, empty (or pre-filled) archive: what ``lindifuse create`` writes, lindi's empty root
group by default (:data:`~lindifuse.archive.base.EMPTY_RFS`). Refuses to overwrite."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from lindifuse.archive.base import EMPTY_RFS, atomic_write
from lindifuse.formats import tarfmt
from lindifuse.formats.tarfmt import (
    BLOCK,
    ENTRY_NAME,
    ENTRY_SIZE,
    INDEX_NAME,
    INITIAL_INDEX_SIZE,
    LINDI_JSON_NAME,
    TRAILER,
    Member,
    padded,
)

# ----------------------------------------------------------------------------------------------
# create / compact


def is_dir_path(path: str) -> bool:
    return os.path.isdir(path) or path.rstrip("/").endswith(".d")


def create(path: str, rfs: dict[str, Any] | None = None, *, durable: bool = True) -> None:
    """Create a new archive at ``path`` (a ``.lindi.d`` folder when the name ends in ``.d``).

    ``rfs`` defaults to lindi's empty file (an empty root group). The tar layout is
    byte-identical to lindi's ``LindiTarFile.create``: entry, an 8 KiB index at 1536, then
    lindi.json padded by lindi's growth rule, then the trailer. Raises FileExistsError.
    """
    if rfs is None:
        rfs = json.loads(json.dumps(EMPTY_RFS))
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, f"{path}: already exists")
    text = tarfmt.dump_lindi_json(rfs)
    if is_dir_path(path):
        os.makedirs(path)
        atomic_write(os.path.join(path, LINDI_JSON_NAME), text, durable)
        return
    entry = Member(ENTRY_NAME, 0, BLOCK, ENTRY_SIZE)
    index = Member(INDEX_NAME, BLOCK + ENTRY_SIZE, 2 * BLOCK + ENTRY_SIZE, INITIAL_INDEX_SIZE)
    lj_data = tarfmt.padded_json(text)
    lj = Member(LINDI_JSON_NAME, index.end, index.end + BLOCK, len(lj_data))
    raw_index = tarfmt.encode_index([entry, index, lj])
    if len(raw_index) > index.s:  # pragma: no cover - three members always fit 8 KiB
        raise AssertionError("initial index too large")
    image = b"".join(
        [
            tarfmt.encode_header(ENTRY_NAME, ENTRY_SIZE),
            tarfmt.encode_entry(index),
            tarfmt.encode_header(INDEX_NAME, index.s),
            tarfmt.padded_json(raw_index, index.s),
            tarfmt.encode_header(LINDI_JSON_NAME, lj.s),
            lj_data,
            b"\0" * (padded(lj.s) - lj.s),
            TRAILER,
        ]
    )
    atomic_write(path, image, durable)
