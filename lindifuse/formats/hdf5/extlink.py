"""Chunk references of HDF5 datasets, for arrays that lindi stores as ``_EXTERNAL_ARRAY_LINK``.

lindi leaves the chunks of datasets with more than ~1000 chunks out of ``refs`` and records
``{"link_type": "hdf5_dataset", "url": ..., "name": ...}`` in the array's ``.zattrs`` instead.
A directory view that listed no chunk files for such an array would silently show fill values,
so the mount asks the HDF5 file (h5py; remfile for URLs) for each chunk's byte range when the
array's directory is first used, and serves those as ordinary ``[url, offset, size]`` refs.

Blocking (h5py): call ``chunk_refs`` from a worker thread.
"""

from __future__ import annotations

import json
from typing import Any

from lindifuse.refs import EXTERNAL_LINK_ATTR


def find_link(zattrs_value: Any) -> dict[str, str] | None:
    """The external array link in a raw ``.zattrs`` reference value, if any.

    Only inline values are inspected (lindi always writes ``.zattrs`` inline); the cheap
    substring test keeps the scan of a million-key set fast.
    """
    if isinstance(zattrs_value, str):
        if EXTERNAL_LINK_ATTR not in zattrs_value:
            return None
        try:
            zattrs_value = json.loads(zattrs_value)
        except ValueError:
            return None
    if not isinstance(zattrs_value, dict):
        return None
    link = zattrs_value.get(EXTERNAL_LINK_ATTR)
    if (
        isinstance(link, dict)
        and link.get("link_type") == "hdf5_dataset"
        and isinstance(link.get("url"), str)
        and isinstance(link.get("name"), str)
    ):
        return link
    return None


def chunk_refs(
    location: str, remote: bool, ref_target: str, name: str, opener: Any = None
) -> dict[str, list[Any]]:
    """``{chunk_name: [ref_target, byte_offset, size]}`` for every allocated chunk of dataset
    ``name`` in the HDF5 file at ``location`` (a path, or a URL when ``remote``). ``opener``,
    when given, is the file object to read a remote file through (else remfile)."""
    import h5py

    if opener is not None:
        fileobj: Any = opener
        f = h5py.File(fileobj, "r")
    elif remote:
        import remfile

        fileobj = remfile.File(location)
        f = h5py.File(fileobj, "r")
    else:
        fileobj = None
        f = h5py.File(location, "r")
    try:
        ds = f[name if name.startswith("/") else "/" + name]
        if not isinstance(ds, h5py.Dataset) or ds.chunks is None:
            raise ValueError(f"{name} is not a chunked dataset")
        from lindifuse.formats.hdf5.indexer import add_chunk_refs

        out: dict[str, list[Any]] = {}
        add_chunk_refs(out, "", ds, tuple(ds.chunks), ref_target)
        return out
    finally:
        f.close()
        if fileobj is not None:
            fileobj.close()
