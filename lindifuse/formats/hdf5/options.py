"""Options of the HDF5 indexer, apart from it so that a mount that finds its index in the cache
never imports h5py or numcodecs (each costs about 0.1 s at start-up)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

INDEX_FORMAT = 1  # bump when the output for the same file changes (invalidates cached indexes)


@dataclass(frozen=True)
class IndexOptions:
    """lindi's ``LindiH5ZarrStoreOpts``, same defaults.

    ``chunk_threshold``: a chunked dataset with more chunks than this (counting unallocated
    ones) is written as an ``_EXTERNAL_ARRAY_LINK`` instead of listing its chunks; None lists
    every chunk (``--all-chunks``). ``split_size``: an uncompressed numeric dataset stored as
    one piece and larger than this many bytes is described as row blocks of about this size;
    None keeps it one chunk.
    """

    chunk_threshold: int | None = 1000
    split_size: int | None = 20_000_000


Progress = Callable[[int, int], None]
