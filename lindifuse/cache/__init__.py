"""Caches of fetched bytes: ``memory`` (a bytes-bounded LRU with single-flight fetching, per
mount) and ``disk`` (the persistent SQLite-indexed cache shared by processes). Neither knows
where bytes come from: ``lindifuse.fs.fetch`` puts them together with the sources."""
