"""The interface of a byte source, and how a target names one.

A target is a string: an ``http(s)://`` URL (``is_url``) or an absolute local path. A source
answers byte ranges of the targets it serves; it knows nothing of references, caches or Zarr.
Formats, the fetcher and the content service above take sources as parameters, so a new
source (another transport, a test double for fault injection) is one class implementing
:class:`ByteSource` in a module of this package.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


def is_url(target: str) -> bool:
    """True for the targets the HTTP source serves (``http://`` or ``https://``)."""
    return target.startswith(("http://", "https://"))


@runtime_checkable
class ByteSource(Protocol):
    """What every source implements.

    ``read(target, offset, size)`` returns exactly ``size`` bytes at ``offset`` (fewer only at
    the end of the object) or raises ``lindifuse.errors.RefError`` with a one-line cause naming
    the target; it never returns bytes of another version of the object than the one it first
    served (the HTTP source checks validators). ``length(target)`` is the object's size in
    bytes. Both are trio coroutines and may be called concurrently.
    """

    async def read(self, target: str, offset: int, size: int) -> bytes: ...

    async def length(self, target: str) -> int: ...
