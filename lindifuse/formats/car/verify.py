"""Block verification: a block's bytes must hash to the digest its CID names.

Every byte lindifuse serves from a content-addressed block passes :func:`check` first, the
first time the block is read from the source and before any of it is cached or served; a
block in the persistent cache was checked on entry and is trusted by its key. Supported
multihash functions: identity (``0x00``: the digest *is* the data), sha2-256 (``0x12``),
sha2-512 (``0x13``) and blake2b-256 (``0xb220``); a CID naming any other function cannot be
verified, so its block is never served (:class:`UnverifiableBlock`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from lindifuse.errors import RefError
from lindifuse.formats.car.cid import Cid

IDENTITY = 0x00
SHA2_256 = 0x12
SHA2_512 = 0x13
BLAKE2B_256 = 0xB220

HASH_NAMES = {IDENTITY: "identity", SHA2_256: "sha2-256", SHA2_512: "sha2-512",
              BLAKE2B_256: "blake2b-256"}  # fmt: skip

_DIGESTS: dict[int, tuple[Callable[[bytes], bytes], int]] = {
    SHA2_256: (lambda b: hashlib.sha256(b).digest(), 32),
    SHA2_512: (lambda b: hashlib.sha512(b).digest(), 64),
    BLAKE2B_256: (lambda b: hashlib.blake2b(b, digest_size=32).digest(), 32),
}


class BlockMismatch(RefError):
    """A block's bytes do not hash to its CID: the archive is corrupt or was tampered with."""

    def __init__(self, cid: Cid) -> None:
        super().__init__(f"block {cid} does not match its hash")
        self.cid = cid


class UnverifiableBlock(RefError):
    """A CID names a hash function lindifuse cannot compute: its block is never served."""


def supported(code: int) -> bool:
    return code == IDENTITY or code in _DIGESTS


def hash_name(code: int) -> str:
    return HASH_NAMES.get(code, f"0x{code:x}")


def check(cid: Cid, data: bytes | memoryview) -> None:
    """Raise BlockMismatch unless ``data`` hashes to ``cid``'s digest (UnverifiableBlock for
    a hash function not in the table, or a digest of the wrong length for its function)."""
    if cid.code == IDENTITY:
        if bytes(data) != cid.digest:
            raise BlockMismatch(cid)
        return
    entry = _DIGESTS.get(cid.code)
    if entry is None:
        raise UnverifiableBlock(f"block {cid}: unsupported hash function {hash_name(cid.code)}")
    fn, size = entry
    if len(cid.digest) != size:
        raise UnverifiableBlock(
            f"block {cid}: {hash_name(cid.code)} digest of {len(cid.digest)} bytes"
        )
    if not hmac.compare_digest(fn(bytes(data) if isinstance(data, memoryview) else data),
                               cid.digest):  # fmt: skip
        raise BlockMismatch(cid)


def check_section(data: bytes) -> bool | None:
    """For ``lindifuse cache verify``: None when ``data`` is not exactly one CAR section
    (varint + CID of a known codec and hash function + block bytes, nothing else), else
    whether the block matches its CID. A persistent-cache entry of a CAR block is its whole
    section, so it carries the CID it is checked against."""
    from lindifuse.formats.car.cid import CODEC_NAMES, parse_cid, read_varint

    try:
        length, p = read_varint(data, 0)
        if p + length != len(data):
            return None
        cid, q = parse_cid(data, p)
    except ValueError:
        return None
    if cid.codec not in CODEC_NAMES or not supported(cid.code) or q > len(data):
        return None
    try:
        check(cid, memoryview(data)[q:])
    except (BlockMismatch, UnverifiableBlock):
        return False
    return True
