"""CIDs and multihashes: the byte-level parts a CAR reader needs, and the text form.

A CID names a block: ``version``, the block's ``codec`` (raw, dag-pb, dag-cbor...) and its
multihash (hash function ``code`` and ``digest``). CAR sections store a CID without a length
prefix, so its extent is found from its own varints (:func:`parse_cid`); that is framing, done
here. Validation and the text form (base32 ``bafy...``, base58btc ``Qm...``) come from
``libipld`` (Rust), imported only when a CAR is opened.

Blocks are looked up by their multihash (``Cid.mh``): CARv2 indexes key blocks that way, and
two CIDs with the same multihash name the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lindifuse.errors import FormatError

RAW = 0x55
DAG_PB = 0x70
DAG_CBOR = 0x71
CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}

MAX_VARINT_BYTES = 9  # the multiformats unsigned-varint limit (63 bits)
MAX_DIGEST = 128  # larger digests are refused (none of the functions in use comes close)


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos``: (value, position after it). ValueError when it runs
    past the end of ``buf``, is longer than 9 bytes or is not minimal."""
    value = 0
    shift = 0
    start = pos
    n = len(buf)
    while True:
        if pos >= n:
            raise ValueError("varint runs past the end")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and pos - start > 1:
                raise ValueError("varint is not minimal")
            return value, pos
        shift += 7
        if pos - start >= MAX_VARINT_BYTES:
            raise ValueError("varint longer than 9 bytes")


def varint(value: int) -> bytes:
    """The unsigned varint encoding of ``value``."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass(frozen=True, slots=True)
class Cid:
    """A parsed CID. ``raw`` is its binary form, ``mh`` its multihash (code, length, digest)."""

    version: int
    codec: int
    code: int  # multihash function code
    digest: bytes
    raw: bytes
    mh: bytes

    def __str__(self) -> str:
        import libipld

        return libipld.encode_cid(self.raw)

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.codec, f"0x{self.codec:x}")


def parse_cid(buf: bytes | memoryview, pos: int = 0) -> tuple[Cid, int]:
    """The binary CID at ``pos`` of ``buf``: (Cid, position after it). ValueError if malformed.

    CIDv0 is a bare sha2-256 multihash (``0x12 0x20`` + 32 bytes) and means dag-pb; CIDv1 is
    ``0x01`` + codec varint + multihash (code varint, length varint, digest)."""
    if len(buf) - pos >= 34 and buf[pos] == 0x12 and buf[pos + 1] == 0x20:
        raw = bytes(buf[pos : pos + 34])
        return Cid(0, DAG_PB, 0x12, raw[2:], raw, raw), pos + 34
    version, p = read_varint(buf, pos)
    if version != 1:
        raise ValueError(f"unsupported CID version {version}")
    codec, p = read_varint(buf, p)
    mh_start = p
    code, p = read_varint(buf, p)
    length, p = read_varint(buf, p)
    if length > MAX_DIGEST:
        raise ValueError(f"multihash digest of {length} bytes")
    end = p + length
    if end > len(buf):
        raise ValueError("CID runs past the end")
    raw = bytes(buf[pos:end])
    return Cid(1, codec, code, raw[p - pos :], raw, raw[mh_start - pos :]), end


def cid_from_bytes(raw: bytes) -> Cid:
    """A whole binary CID (nothing may follow it)."""
    cid, end = parse_cid(raw, 0)
    if end != len(raw):
        raise ValueError("trailing bytes after the CID")
    return cid


def cid_from_link(value: bytes) -> Cid:
    """The CID of a DAG-CBOR link (tag 42 content: a 0x00 multibase prefix + binary CID)."""
    if not value or value[0] != 0:
        raise ValueError("a DAG-CBOR link must start with the 0x00 prefix")
    return cid_from_bytes(value[1:])


def cid_from_string(text: str) -> Cid:
    """Parse ``bafy...`` / ``Qm...`` (as given to ``--root``). FormatError if invalid."""
    import libipld

    try:
        info = libipld.decode_cid(text.strip())
    except ValueError as e:
        raise FormatError(f"{text!r}: not a CID ({e})") from None
    code = info["hash"]["code"]
    digest = bytes(info["hash"]["digest"])
    mh = varint(code) + varint(len(digest)) + digest
    raw = mh if info["version"] == 0 else varint(1) + varint(info["codec"]) + mh
    return cid_from_bytes(raw)
