"""HDF5 and NWB sources: an HDF5 file described as a LINDI reference file system.

``convert`` holds the per-value rules (attributes, dtypes, fill values, filters, the bytes of
inlined arrays), ``blockfile`` the file object h5py reads a remote file through, ``indexer``
the walk over a file that produces the ``refs``, ``load`` the async glue with the on-disk cache of
finished indexes keyed by source and version, and ``extlink`` the chunk listing of arrays that a
LINDI file stores as ``_EXTERNAL_ARRAY_LINK``. The conventions are lindi 0.4.x's (``LindiH5ZarrStore``);
where this package deliberately differs, ``docs/semantics.md`` says so and why.

Nothing here imports pyfuse3, and only ``load`` imports trio: the indexer is plain blocking code
that the daemon and the ``index`` command run in a worker thread.
"""
