"""Byte sources: where bytes come from, and nothing about what they mean.

- ``base``: :func:`~lindifuse.sources.base.is_url` and the :class:`~lindifuse.sources.base.ByteSource`
  protocol that every source implements (``read`` a byte range, ``length``);
- ``local``: :class:`~lindifuse.sources.local.LocalFiles` (``pread`` in a worker thread, page
  cache hints);
- ``http``: :class:`~lindifuse.sources.http.HttpClient` (pooled range requests on trio with
  timeouts, retries, validators, allowed hosts, offline mode);
- ``dandi``: DANDI asset download URLs resolved once (pre-signed redirects);
- ``dandiset``: a DANDI dandiset named as a SOURCE, its versions and asset listing.

A new source (an object store API, a CAR served by a gateway, ...) is a module here that
implements ``ByteSource``; formats and the fetcher above take it as a parameter."""
