"""CAR framing: headers (CARv1, CARv2), the section scan and the CARv2 index.

CARv1: ``varint(len) + DAG-CBOR {"version": 1, "roots": [CID...]}``, then sections
``varint(len) + CID + block bytes`` to the end of the file. CARv2: an 11-byte pragma, a 40-byte
header (characteristics, data offset, data size, index offset; little-endian u64s), the inner
CARv1 payload at the data offset and, optionally, an index after it.

Pure: functions take bytes (with the absolute offset they start at) and return positions, so
the same code serves a local file, an HTTP source and the unit tests. A block is located by
its *section* extent (start of its varint .. end of its bytes); the reader fetches the whole
section and parses its CID again (:func:`split_section`), so a located block is always checked
against the CID it carries as well as the link that asked for it.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from lindifuse.formats.car import dagcbor
from lindifuse.formats.car.cid import Cid, cid_from_bytes, parse_cid, read_varint, varint

CARV2_PRAGMA = bytes.fromhex("0aa16776657273696f6e02")
V2_HEADER_END = len(CARV2_PRAGMA) + 40
MAX_HEADER = 16 * 2**20  # a CARv1 header (roots) larger than this is refused
MAX_SECTION = 1 << 40  # a section length beyond this is nonsense
MULTIHASH_INDEX_SORTED = 0x0401
INDEX_SORTED = 0x0400


class CarError(ValueError):
    """A structural problem of the CAR bytes (the caller adds the file name)."""


class NeedMore(Exception):
    """``need`` bytes from the start of the buffer are required to go on."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


@dataclass(frozen=True, slots=True)
class CarHeader:
    version: int  # 1 or 2
    roots: tuple[Cid, ...]
    payload: int  # absolute offset of the (inner) CARv1 header
    first_section: int  # absolute offset of the first section
    payload_end: int | None  # CARv2: end of the inner CARv1; CARv1: None (the file's end)
    index_offset: int  # CARv2 index offset (0: none)


def looks_like_car(head: bytes) -> bool:
    """Content detection: the CARv2 pragma, or a CARv1 header (a varint then a DAG-CBOR map
    with ``version`` 1 and a ``roots`` list) within ``head``."""
    if head.startswith(CARV2_PRAGMA):
        return True
    try:
        _parse_v1(head, 0)
    except (CarError, NeedMore):
        return False
    return True


def _parse_v1(buf: bytes | memoryview, pos: int) -> tuple[tuple[Cid, ...], int]:
    """(roots, offset after the header) of the CARv1 header at ``pos`` of ``buf``."""
    try:
        length, p = read_varint(buf, pos)
    except ValueError:
        if len(buf) - pos < 9:
            raise NeedMore(pos + 9) from None
        raise CarError("not a CAR file (bad header length)") from None
    if length == 0 or length > MAX_HEADER:
        raise CarError(f"not a CAR file (header length {length})")
    end = p + length
    if end > len(buf):
        raise NeedMore(end)
    try:
        header = dagcbor.decode(bytes(buf[p:end]))
    except ValueError as e:
        raise CarError(f"not a CAR file (header: {e})") from None
    if not isinstance(header, dict) or "roots" not in header or "version" not in header:
        raise CarError("not a CAR file (header is not a {version, roots} map)")
    if header["version"] != 1:
        raise CarError(f"unsupported CAR version {header['version']!r}")
    roots = header["roots"]
    if not isinstance(roots, list) or not all(isinstance(r, dagcbor.Link) for r in roots):
        raise CarError("CAR header: roots is not a list of CIDs")
    try:
        return tuple(cid_from_bytes(r) for r in roots), end
    except ValueError as e:
        raise CarError(f"CAR header: bad root CID ({e})") from None


def parse_header(buf: bytes | memoryview, size: int) -> CarHeader:
    """The header of a CAR of ``size`` bytes whose first bytes are ``buf``. NeedMore when
    ``buf`` is too short (read that many bytes from the start and call again)."""
    if bytes(buf[: len(CARV2_PRAGMA)]) == CARV2_PRAGMA:
        if len(buf) < V2_HEADER_END:
            if size < V2_HEADER_END:
                raise CarError("truncated CARv2 header")
            raise NeedMore(V2_HEADER_END)
        data_offset, data_size, index_offset = struct.unpack_from("<QQQ", buf, 11 + 16)
        if data_offset < V2_HEADER_END or data_offset + data_size > size:
            raise CarError(
                f"CARv2 data payload {data_offset}+{data_size} lies outside the file ({size} bytes)"
            )
        if index_offset and not (data_offset + data_size <= index_offset < size):
            raise CarError(f"CARv2 index offset {index_offset} lies outside the file")
        if len(buf) < data_offset:
            raise NeedMore(data_offset + 4096)
        try:
            roots, first = _parse_v1(buf, data_offset)
        except NeedMore as e:
            if e.need > data_offset + data_size:
                raise CarError("truncated CARv2 inner header") from None
            raise
        return CarHeader(2, roots, data_offset, first, data_offset + data_size, index_offset)
    try:
        roots, first = _parse_v1(buf, 0)
    except NeedMore as e:
        if e.need > size:
            raise CarError("truncated CAR header") from None
        raise
    return CarHeader(1, roots, 0, first, None, 0)


def scan(
    buf: bytes | memoryview, base: int, pos: int, limit: int
) -> tuple[list[tuple[bytes, int, int]], int, str | None]:
    """``scan_into`` as (multihash, start, end) per section, for callers that want tuples."""
    mhs: list[bytes] = []
    starts = array("Q")
    nxt, problem = scan_into(buf, base, pos, limit, mhs, starts)
    ends = [*starts[1:], nxt] if starts else []
    return list(zip(mhs, starts, ends, strict=True)), nxt, problem


def scan_into(
    buf: bytes | memoryview,
    base: int,
    pos: int,
    limit: int,
    mhs: list[bytes],
    starts: array,
) -> tuple[int, str | None]:
    """Append the multihash and start of each section whose varint and CID lie in ``buf``
    (which holds the bytes from absolute offset ``base``), from absolute ``pos`` on, up to
    ``limit`` (the payload's end), to ``mhs`` and ``starts``.

    Returns (next position, problem). Sections follow each other, so each one ends where the
    next starts and the last where the next position is: no end is stored. A section's block
    bytes need not be in ``buf``: its length is known from its varint, and the next position
    may lie past the buffer (the caller reads from there). ``problem`` (the scan stops there;
    the sections before it are kept) names a section that runs past ``limit``, a zero length
    or a malformed CID. The common case (one- or two-byte varints, then a CID of the shape of
    the one before it: a CIDv1 with one-byte codec and hash code, or a CIDv0) costs one
    ``startswith`` and one slice; anything else goes through ``parse_cid``."""
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    n = len(buf)
    stop = n - 40 if base + n < limit else n  # past it, a header may straddle the buffer end
    try:
        return _scan_loop(buf, base, pos, limit, n, stop, mhs, starts)
    except IndexError:  # a header cut short by the end of the data (or of a malformed section)
        # the sections appended so far are whole: go on (or stop) after the last one
        pos = _end_of_last(buf, base, starts, pos)
        if base + n < limit:
            return pos, None
        return pos, f"section at offset {pos}: header runs past the end of the data"


def _end_of_last(buf: bytes, base: int, starts: array, pos: int) -> int:
    """Where the section after the last one appended from ``buf`` starts (``pos`` if none)."""
    if not starts or starts[-1] < base:
        return pos
    length, p = read_varint(buf, starts[-1] - base)
    return base + p + length


def _scan_loop(
    buf: bytes,
    base: int,
    pos: int,
    limit: int,
    n: int,
    stop: int,
    mhs: list[bytes],
    starts: array,
) -> tuple[int, str | None]:
    add_mh = mhs.append
    add_start = starts.append
    extend_starts = starts.extend
    startswith = buf.startswith
    # The CID prefix (version, codec, hash code, digest length) seen last, and for it the bytes
    # before the multihash and the CID's length; to begin with, that of the CIDv1 01 00 00 00
    # (identity codec and hash, empty digest), which these parse rightly should it occur.
    first_shape = shape = b"\x01\x00\x00\x00"
    skip, width = 2, 4
    rel = pos - base
    while pos < limit and rel < stop:
        b0 = buf[rel]
        if b0 < 0x80:
            length, p = b0, rel + 1
        elif 0 < buf[rel + 1] < 0x80:
            length, p = (b0 & 0x7F) | buf[rel + 1] << 7, rel + 2
        else:
            try:
                length, p = read_varint(buf, rel)
            except ValueError:
                return pos, f"bad section length at offset {pos}"
        end = base + p + length
        if length == 0 or end > limit or length > MAX_SECTION:
            if length == 0:
                return pos, f"empty section at offset {pos}"
            return (
                pos,
                f"section at offset {pos} ({length} bytes) runs past the end of the data ({limit})",
            )
        if startswith(shape, p):
            q = p + width
            if q <= n and base + q <= end:
                # A run of sections like this one (same length, same CID shape) is taken in a
                # few C-level passes: a CAR of equal chunks is mostly such runs.
                size = end - pos
                most = min(
                    (stop - 1 - rel) // size + 1,  # headers that start before ``stop``
                    (n - q) // size + 1,  # multihashes that end within ``buf``
                    (limit - pos) // size,  # sections that end within ``limit``
                )
                taken = _take_run(buf, rel, p - rel + len(shape), size, p + skip, q, most, mhs)
                if taken:
                    extend_starts(range(pos, pos + taken * size, size))
                    pos += taken * size
                    rel = pos - base
                    continue
            mh = buf[p + skip : q]
        else:
            # a CID of another shape than the last: CIDv1 = 01 codec code len digest,
            # CIDv0 = 12 20 digest (inline when the varints are one byte each)
            c0 = buf[p]
            if c0 == 1 and buf[p + 1] < 0x80 and buf[p + 2] < 0x80 and buf[p + 3] < 0x80:
                shape, skip, width = buf[p : p + 4], 2, 4 + buf[p + 3]
            elif c0 == 0x12 and buf[p + 1] == 0x20:
                shape, skip, width = buf[p : p + 2], 0, 34
            else:  # a rare shape: parsed in full (and the shape to match is reset)
                try:
                    cid, q = parse_cid(buf, p)
                except ValueError as e:
                    return pos, f"section at offset {pos}: bad CID ({e})"
                width = -1
                mh = cid.mh
            if width >= 0:
                q = p + width
                mh = buf[p + skip : q]
            else:
                shape, skip, width = first_shape, 2, 4
        if q > n or base + q > end:
            if q > n:  # a CID cut by the buffer's end: let the caller read on
                break
            return pos, f"section at offset {pos}: CID longer than the section"
        add_mh(mh)
        add_start(pos)
        pos = end
        rel = pos - base
    return pos, None


def _take_run(
    buf: bytes, rel: int, head: int, size: int, at: int, q: int, most: int, mhs: list[bytes]
) -> int:
    """Append the multihashes (``buf[at:q]``, then every ``size`` bytes on) of the run of
    sections like the one at ``buf[rel]`` (the same ``head`` bytes: varint and CID shape), at
    most ``most``; how many were taken (0 when the run is a single section)."""
    if not buf.startswith(buf[rel : rel + head], rel + size):
        return 0
    count = run_length(buf, rel, size, head, most)
    if count < 2:
        return 0
    ends = range(q, q + count * size, size)
    mhs.extend(map(buf.__getitem__, map(slice, range(at, at + count * size, size), ends)))
    return count


def run_length(buf: bytes, rel: int, size: int, head: int, most: int) -> int:
    """How many sections of ``size`` bytes, from ``buf[rel]`` on (at most ``most``), begin
    with the ``head`` bytes the first one begins with (its varint and CID shape). One C-level
    ``lstrip`` per header byte over a strided slice; tried on 8, 64, 512, ... sections, so a
    short run costs little more than it holds."""
    try_n = 8
    while True:
        m = min(try_n, most)
        found = m
        for j in range(rel, rel + head):
            col = buf[j : j + (m - 1) * size + 1 : size]
            found = min(found, m - len(col.lstrip(buf[j : j + 1])))
        if found < m or m == most:
            return found
        try_n *= 8


def split_section(section: bytes, want: Cid | None = None) -> tuple[Cid, memoryview]:
    """(CID, block bytes) of one whole section (varint + CID + bytes, possibly followed by
    bytes of later sections, which are ignored). CarError when malformed, or when ``want`` is
    given and the section's CID names another multihash."""
    view = memoryview(section)
    try:
        length, p = read_varint(view, 0)
        cid, q = parse_cid(view, p)
    except ValueError as e:
        raise CarError(f"bad section ({e})") from None
    end = p + length
    if end > len(view) or q > end:
        raise CarError("section runs past its extent")
    if want is not None and cid.mh != want.mh:
        raise CarError(f"section holds block {cid}, not {want}")
    return cid, view[q:end]


def read_index(buf: bytes | memoryview) -> Iterator[tuple[bytes, int]]:
    """(multihash, section offset relative to the payload) pairs of a CARv2
    MultihashIndexSorted index (codec 0x0401). CarError for another codec or bad layout."""
    try:
        codec, p = read_varint(buf, 0)
    except ValueError:
        raise CarError("bad CARv2 index codec") from None
    if codec != MULTIHASH_INDEX_SORTED:
        raise CarError(f"CARv2 index codec 0x{codec:x} is not supported (only 0x0401)")
    n = len(buf)

    def u(fmt: str, at: int) -> int:
        if at + struct.calcsize(fmt) > n:
            raise CarError("truncated CARv2 index")
        return int(struct.unpack_from(fmt, buf, at)[0])

    codes = u("<I", p)
    p += 4
    for _ in range(codes):
        code = u("<Q", p)
        buckets = u("<I", p + 8)
        p += 12
        for _ in range(buckets):
            width = u("<I", p)
            nbytes = u("<Q", p + 4)
            p += 12
            if width <= 8 or nbytes % width or p + nbytes > n:
                raise CarError("bad CARv2 index bucket")
            dlen = width - 8
            prefix = varint(code) + varint(dlen)
            for at in range(p, p + nbytes, width):
                yield prefix + bytes(buf[at : at + dlen]), u("<Q", at + dlen)
            p += nbytes
