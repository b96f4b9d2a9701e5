"""What turns bytes into a key tree: each format yields a reference set (``lindifuse.refs``).

- ``detect``: the kind of a SOURCE from its first bytes (tar magic, ``{``, the HDF5 signature);
  every format's detection lives there, the name is only a hint;
- ``container``: open a SOURCE of any kind as a :class:`~lindifuse.formats.container.Container`
  (refs + where container-relative targets live);
- ``tarfmt``: the byte layout of ``.lindi.tar`` (pure functions), shared by the read path and
  ``lindifuse.archive``;
- ``hdf5``: HDF5/NWB files indexed into the refs lindi would write;
- ``summary``: what ``lindifuse info`` reports about a container."""
