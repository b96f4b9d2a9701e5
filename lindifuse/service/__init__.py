"""Running a mount: assembling the parts for the options given, and the daemon's life cycle.

- ``daemon``: :func:`~lindifuse.service.daemon.build_filesystem`, the file system for one
  SOURCE (dispatching dandisets to ``dandiset``);
- ``parts``: the sources and caches the options ask for (shared by every kind of mount);
- ``dandiset``: a whole dandiset's file system;
- ``mount``: foreground/background start, readiness, signals, unmount;
- ``lifecycle``: dead and busy mounts, ``allow_other``, the systemd status line;
- ``mountopts``: the ``-o`` spelling of mount(8) and fstab;
- ``logsetup``: where log lines go (file, stderr, the journal)."""
