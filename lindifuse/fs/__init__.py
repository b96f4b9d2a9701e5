"""What the kernel talks to: the FUSE operations and everything that answers them.

- ``ops``: the pyfuse3 operations (read-only and writable), a thin layer over the tree and content;
- ``tree``: the key namespace (every key a file, every prefix a directory), inodes;
- ``content``: a key's reference resolved to bytes (inline, archive member, local, remote);
- ``fetch``: remote reads through the memory and disk caches, merged into bounded requests;
- ``readahead`` (with the window policy ``seqwindow``): background fetches for sequential readers;
- ``writer``: staging and committing writes of a writable mount into its archive;
- ``xview`` (with ``nwbdims``): the ``--xarray`` view;
- ``filesystem``: one mount's parts put together (:class:`~lindifuse.fs.filesystem.FileSystem`);
- ``dandiset``: a dandiset's tree with NWB assets loaded on first use."""
