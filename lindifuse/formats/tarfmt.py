"""The byte layout of a ``.lindi.tar``: ustar headers, entry, index and lindi.json encoding.

Pure functions, no I/O, so that both the read path (which fetches byte ranges, possibly over HTTP)
and the local writer (:mod:`lindifuse.archive`) share one definition of the format, unit-tested in
microseconds. Everything here matches what ``lindi`` 0.4.6 (``lindi/tar/``) reads and writes:

- Headers are 512-byte POSIX ustar blocks, mode 0644, uid/gid 0, mtime 0, empty uname/gname,
  checksum as six octal digits + NUL + space. lindi itself only handles names of at most 100
  bytes (longer names make its header longer than 512 bytes and it fails an assertion); for
  longer names we use the ustar ``prefix`` field the way Python's ``tarfile`` does (lindi's
  rename clears the prefix, so a renamed header stays coherent), and for names that ustar cannot
  hold at all a PAX ``x`` header precedes the ustar header. Such a member's data then starts more
  than 512 bytes after its first header: the index's ``o`` is the offset of the first header
  block of the member and ``d`` the offset of its data. lindi only uses ``d`` to read, so it
  reads these members fine.
- ``.tar_entry.json`` is member 1 (header at 0, data at 512, 1024 bytes):
  ``json.dumps({"index": {"n", "o", "d", "s"}}, indent=2, sort_keys=True)`` padded with spaces.
- ``.tar_index.json`` is ``json.dumps({"files": [...]}, indent=2, sort_keys=True)`` padded with
  spaces; it lists itself and the entry, and lindi refuses the file when those disagree.
- ``lindi.json`` is ``json.dumps(rfs, indent=2, sort_keys=True)`` padded with spaces; a new padded
  member starts at 8 KiB and doubles until it is at least 4x the JSON length.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from lindifuse.errors import FormatError

BLOCK = 512
"""Tar block size: headers are one block, data is padded to a multiple of it."""

ENTRY_NAME = ".tar_entry.json"
INDEX_NAME = ".tar_index.json"
LINDI_JSON_NAME = "lindi.json"
ENTRY_SIZE = 1024
"""Size of ``.tar_entry.json``'s data (lindi's ``TAR_ENTRY_JSON_SIZE``)."""
INITIAL_INDEX_SIZE = 8 * 1024
INITIAL_LINDI_JSON_SIZE = 8 * 1024
INLINE_THRESHOLD = 1000
"""lindi keeps chunks of fewer than this many bytes inline in lindi.json."""
TRAILER = b"\0" * (2 * BLOCK)
"""End-of-archive marker: two zero blocks."""

_MAX_OCTAL_SIZE = 0o77777777777  # 11 octal digits: the largest size a ustar header holds


class Member(NamedTuple):
    """One member of the archive as the index describes it.

    ``o`` is the offset of the member's first header block, ``d`` the offset of its data (``o +
    512`` for a plain ustar member, more when PAX headers precede it) and ``s`` its size in bytes.
    """

    name: str
    o: int
    d: int
    s: int

    @property
    def end(self) -> int:
        """Offset just past the member's padded data (where the next header starts)."""
        return self.d + padded(self.s)

    def as_json(self) -> dict[str, Any]:
        """The index form, ``{"n", "o", "d", "s"}``."""
        return {"n": self.name, "o": self.o, "d": self.d, "s": self.s}


class TarHeader(NamedTuple):
    """The fields of one decoded header block that lindifuse cares about."""

    name: str
    size: int
    typeflag: bytes
    mode: int
    mtime: int
    linkname: str
    is_ustar: bool


def padded(n: int) -> int:
    """``n`` rounded up to a multiple of 512 (the room a member's data takes in the archive)."""
    return (n + BLOCK - 1) // BLOCK * BLOCK


# ----------------------------------------------------------------------------------------------
# headers


def _checksum(block: bytes | bytearray) -> int:
    """Unsigned byte sum of a header with the checksum field taken as 8 spaces."""
    return sum(block[:148]) + 8 * 32 + sum(block[156:512])


def _signed_checksum(block: bytes | bytearray) -> int:
    s = 8 * 32
    for b in (*block[:148], *block[156:512]):
        s += b - 256 if b > 127 else b
    return s


def _set_checksum(h: bytearray) -> bytes:
    h[148:156] = b"%06o\0 " % _checksum(h)
    return bytes(h)


def split_ustar_name(name: str) -> tuple[str, str] | None:
    """Split ``name`` into ustar ``(prefix, name)`` fields, or None when ustar cannot hold it.

    Same rule as Python's ``tarfile`` (``_posix_split_name``): a name of at most 100 bytes goes
    whole in ``name``; otherwise it is split at the first ``/`` that leaves at most 155 bytes of
    prefix and 100 of name.
    """
    if len(name.encode("utf-8")) <= 100:
        return "", name
    parts = name.split("/")
    for i in range(1, len(parts)):
        prefix, rest = "/".join(parts[:i]), "/".join(parts[i:])
        if len(prefix.encode("utf-8")) <= 155 and len(rest.encode("utf-8")) <= 100:
            return prefix, rest
    return None


def _field(s: str, width: int, what: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) > width:
        raise ValueError(f"tar header {what} too long: {s!r}")
    return raw + b"\0" * (width - len(raw))


def encode_header(
    name: str, size: int, *, mode: int = 0o644, mtime: int = 0, typeflag: bytes = b"0"
) -> bytes:
    """A 512-byte ustar header, byte-identical to lindi's ``create_tar_header`` for short names.

    Names longer than 100 bytes use the ustar prefix field (see :func:`split_ustar_name`).
    Raises ValueError when ustar cannot hold the name or the size (use :func:`encode_headers`).
    """
    if size < 0 or size > _MAX_OCTAL_SIZE:
        raise ValueError(f"size {size} does not fit a ustar header")
    parts = split_ustar_name(name)
    if parts is None:
        raise ValueError(f"name does not fit a ustar header: {name!r}")
    prefix, short = parts
    h = bytearray()
    h += _field(short, 100, "name")
    h += b"%07o\0" % mode
    h += b"0000000\0"  # uid
    h += b"0000000\0"  # gid
    h += b"%011o\0" % size
    h += b"%011o\0" % mtime
    h += b" " * 8  # checksum, computed below
    h += typeflag
    h += b"\0" * 100  # linkname
    h += b"ustar\x0000"
    h += b"\0" * 32  # uname
    h += b"\0" * 32  # gname
    h += b"\0" * 8  # devmajor
    h += b"\0" * 8  # devminor
    h += _field(prefix, 155, "prefix")
    h += b"\0" * 12
    assert len(h) == BLOCK
    return _set_checksum(h)


def _pax_record(key: str, value: str) -> bytes:
    """One PAX record ``"%d %s=%s\\n"`` where the length counts itself."""
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def encode_headers(name: str, size: int, *, mode: int = 0o644, mtime: int = 0) -> bytes:
    """All header blocks for a member: the ustar header, preceded by a PAX header if needed.

    The PAX header (typeflag ``x``, name ``././@PaxHeader`` like Python's ``tarfile``) carries
    ``path`` when ustar cannot hold the name and ``size`` when it exceeds 8 GiB; the ustar header
    then holds a truncated name. The result is 512 bytes in the common case.
    """
    records = b""
    ustar_name, ustar_size = name, size
    if split_ustar_name(name) is None:
        records += _pax_record("path", name)
        raw = name.encode("utf-8")[-100:]
        ustar_name = raw.decode("utf-8", "ignore")
    if size > _MAX_OCTAL_SIZE:
        records += _pax_record("size", str(size))
        ustar_size = 0
    main = encode_header(ustar_name, ustar_size, mode=mode, mtime=mtime)
    if not records:
        return main
    pax = encode_header("././@PaxHeader", len(records), mode=mode, mtime=mtime, typeflag=b"x")
    return pax + records + b"\0" * (padded(len(records)) - len(records)) + main


def parse_pax(data: bytes) -> dict[str, str]:
    """Parse PAX extended-header records. Raises FormatError on malformed records."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # padding
            break
        sp = data.find(b" ", pos)
        try:
            n = int(data[pos:sp])
        except ValueError:
            raise FormatError("malformed PAX header record") from None
        rec = data[sp + 1 : pos + n]
        if n <= 0 or not rec.endswith(b"\n") or b"=" not in rec:
            raise FormatError("malformed PAX header record")
        k, _, v = rec[:-1].partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "surrogateescape")
        pos += n
    return out


def _parse_number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        n = int.from_bytes(field[1:], "big")
        return -n if field[0] & 0x40 else n
    s = field.split(b"\0", 1)[0].strip(b" ")
    return int(s, 8) if s else 0


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def decode_header(block: bytes) -> TarHeader | None:
    """Decode a 512-byte header block. None for an all-zero block (end of archive).

    Raises FormatError (without a file name: the caller adds it and the offset) when the block
    is short, its checksum is wrong (signed or unsigned sums are accepted, as tar does) or its
    numeric fields are not numbers.
    """
    if len(block) < BLOCK:
        raise FormatError("truncated tar header")
    block = block[:BLOCK]
    if block == b"\0" * BLOCK:
        return None
    try:
        stored = _parse_number(block[148:156])
        size = _parse_number(block[124:136])
        mode = _parse_number(block[100:108])
        mtime = _parse_number(block[136:148])
    except ValueError:
        raise FormatError("bad tar header (not a header block)") from None
    if stored not in (_checksum(block), _signed_checksum(block)):
        raise FormatError("bad tar header checksum")
    if size < 0:
        raise FormatError("negative size in tar header")
    is_ustar = block[257:262] == b"ustar"
    name = _cstr(block[0:100])
    if is_ustar:
        prefix = _cstr(block[345:500])
        if prefix:
            name = prefix + "/" + name
    return TarHeader(
        name=name,
        size=size,
        typeflag=block[156:157] or b"0",
        mode=mode,
        mtime=mtime,
        linkname=_cstr(block[157:257]),
        is_ustar=is_ustar,
    )


def rename_header(block: bytes, new_name: str) -> bytes:
    """``block`` with its name replaced by ``new_name`` and the checksum fixed.

    Like lindi's ``_change_name_of_file``: the name field is rewritten and the prefix field is
    cleared (or set, when the new name needs the ustar prefix). Raises ValueError when ustar
    cannot hold ``new_name``.
    """
    parts = split_ustar_name(new_name)
    if parts is None:
        raise ValueError(f"name does not fit a ustar header: {new_name!r}")
    prefix, short = parts
    h = bytearray(block[:BLOCK])
    h[0:100] = _field(short, 100, "name")
    h[345:500] = _field(prefix, 155, "prefix")
    return _set_checksum(h)


# ----------------------------------------------------------------------------------------------
# entry and index


def _int_field(obj: dict[str, Any], k: str) -> int | None:
    v = obj.get(k)
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v


def _member_from_json(obj: Any, path: str, what: str, total_size: int | None) -> Member:
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: {what}: member is not an object")
    name = obj.get("n")
    if not isinstance(name, str) or not name:
        raise FormatError(f"{path}: {what}: member without a name")
    o, d, s = (_int_field(obj, k) for k in ("o", "d", "s"))
    if o is None or d is None or s is None:
        raise FormatError(f"{path}: {what}: member {name!r} lacks integer o/d/s")
    if o < 0 or s < 0:
        raise FormatError(f"{path}: {what}: member {name!r} has a negative offset or size")
    if o % BLOCK or d < o + BLOCK or (d - o) % BLOCK:
        raise FormatError(
            f"{path}: {what}: member {name!r} has inconsistent header/data offsets (o={o}, d={d})"
        )
    if total_size is not None and d + s > total_size:
        raise FormatError(
            f"{path}: {what}: member {name!r} runs past the end of the file "
            f"({d + s} > {total_size})"
        )
    return Member(name, o, d, s)


def parse_entry(raw: bytes, path: str) -> Member:
    """Parse the 1024 data bytes of ``.tar_entry.json``; return where ``.tar_index.json`` is.

    Raises FormatError naming ``path`` when the data is short, not JSON, or does not hold an
    ``index`` object with a name ``.tar_index.json`` and sane integer ``o``/``d``/``s``.
    """
    if len(raw) < ENTRY_SIZE:
        raise FormatError(f"{path}: truncated .tar_entry.json ({len(raw)} of {ENTRY_SIZE} bytes)")
    try:
        obj = json.loads(raw[:ENTRY_SIZE])
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{path}: .tar_entry.json is not valid JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("index"), dict):
        raise FormatError(f"{path}: .tar_entry.json has no 'index' object")
    m = _member_from_json(obj["index"], path, ".tar_entry.json", None)
    if m.name != INDEX_NAME:
        raise FormatError(f"{path}: .tar_entry.json points to {m.name!r}, not {INDEX_NAME!r}")
    return m


def encode_entry(index: Member) -> bytes:
    """The 1024 data bytes of ``.tar_entry.json`` pointing at ``index`` (as lindi writes them).

    The JSON is about 100 bytes, so only the first 512-byte sector of the data ever changes:
    rewriting the entry is a single-sector write (the commit point of :mod:`lindifuse.archive`).
    """
    text = json.dumps({"index": index.as_json()}, indent=2, sort_keys=True).encode()
    assert len(text) <= BLOCK
    return text + b" " * (ENTRY_SIZE - len(text))


def parse_index_doc(
    raw: bytes, entry: Member, path: str, total_size: int | None
) -> tuple[dict[str, Member], dict[str, Any]]:
    """Like :func:`parse_index` but also return the whole parsed JSON document.

    The document may carry keys other than ``files`` (lindifuse keeps its spare members under
    ``lindifuse``); lindi preserves unknown keys when it rewrites the index.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{path}: .tar_index.json is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise FormatError(f"{path}: .tar_index.json has no 'files' list")
    members: dict[str, Member] = {}
    for obj in doc["files"]:
        m = _member_from_json(obj, path, ".tar_index.json", total_size)
        members[m.name] = m  # lindi's lookup: a later duplicate wins
    ent = members.get(ENTRY_NAME)
    if ent is None:
        raise FormatError(f"{path}: .tar_index.json does not list {ENTRY_NAME}")
    if (ent.o, ent.d, ent.s) != (0, BLOCK, ENTRY_SIZE):
        raise FormatError(
            f"{path}: .tar_index.json lists {ENTRY_NAME} at o={ent.o} d={ent.d} s={ent.s}, "
            f"expected o=0 d=512 s=1024"
        )
    idx = members.get(INDEX_NAME)
    if idx is None:
        raise FormatError(f"{path}: .tar_index.json does not list itself")
    if idx != entry:
        raise FormatError(
            f"{path}: .tar_index.json lists itself at o={idx.o} d={idx.d} s={idx.s} but "
            f".tar_entry.json says o={entry.o} d={entry.d} s={entry.s}"
        )
    return members, doc


def parse_index(raw: bytes, entry: Member, path: str, total_size: int | None) -> dict[str, Member]:
    """Parse ``.tar_index.json`` data into ``{name: Member}`` and check its invariants.

    ``entry`` is what :func:`parse_entry` returned. Checks (FormatError naming ``path``):
    valid JSON with a ``files`` list; every member has a name and integer ``o >= 0``
    (block-aligned), ``d >= o + 512`` with ``d - o`` a multiple of 512 (lindi writes exactly
    ``o + 512``; more means PAX headers), ``s >= 0`` and, when ``total_size`` is given,
    ``d + s <= total_size``; the entry is listed at o 0, d 512, s 1024; the index lists itself
    exactly where the entry says. A name listed twice resolves to the last listing, as in lindi.
    """
    return parse_index_doc(raw, entry, path, total_size)[0]


def _dump_index_file(m: Member) -> str:
    return (
        f'    {{\n      "d": {m.d},\n      "n": {json.dumps(m.name)},\n'
        f'      "o": {m.o},\n      "s": {m.s}\n    }}'
    )


def encode_index(members: Iterable[Member], extra: dict[str, Any] | None = None) -> bytes:
    """``json.dumps({"files": [...], **extra}, indent=2, sort_keys=True)`` as bytes, unpadded.

    Byte-identical to the json module's output, but formatted directly because the pure-Python
    indenting encoder is slow for an index of a million members. Members are listed in the
    order given.
    """
    files = ",\n".join(_dump_index_file(m) for m in members)
    body = {"files": None, **(extra or {})}
    parts = []
    for k in sorted(body):
        if k == "files":
            v = "[\n" + files + "\n  ]" if files else "[]"
        else:
            v = _reindent(json.dumps(body[k], indent=2, sort_keys=True), 1)
        parts.append(f"  {json.dumps(k)}: {v}")
    return ("{\n" + ",\n".join(parts) + "\n}").encode()


# ----------------------------------------------------------------------------------------------
# lindi.json


def _reindent(text: str, level: int) -> str:
    return text.replace("\n", "\n" + "  " * level) if level else text


def _dump_scalar_list(v: list[Any], level: int) -> str | None:
    """Fast path for ``["url", offset, size]``-like lists of strings and ints."""
    items = []
    for x in v:
        if isinstance(x, str):
            items.append(json.dumps(x))
        elif isinstance(x, int) and not isinstance(x, bool):
            items.append(int.__repr__(x))
        else:
            return None
    if not items:
        return "[]"
    pad = "  " * (level + 1)
    return "[\n" + pad + (",\n" + pad).join(items) + "\n" + "  " * level + "]"


def _dump_value(v: Any, level: int) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        fast = _dump_scalar_list(v, level)
        if fast is not None:
            return fast
    return _reindent(json.dumps(v, indent=2, sort_keys=True), level)


def dump_lindi_json(rfs: dict[str, Any]) -> bytes:
    """``json.dumps(rfs, indent=2, sort_keys=True)`` as bytes (how lindi writes lindi.json).

    Byte-identical to the json module, formatted per reference so that a million-key reference
    set does not go through the slow pure-Python indenting encoder.
    """
    if not rfs:
        return b"{}"
    parts = []
    for k in sorted(rfs):
        v = rfs[k]
        if k == "refs" and isinstance(v, dict) and v:
            inner = ",\n".join(f"    {json.dumps(rk)}: {_dump_value(v[rk], 2)}" for rk in sorted(v))
            text = "{\n" + inner + "\n  }"
        else:
            text = _dump_value(v, 1)
        parts.append(f"  {json.dumps(k)}: {text}")
    return ("{\n" + ",\n".join(parts) + "\n}").encode()


def grown_size(n: int, initial: int = INITIAL_LINDI_JSON_SIZE) -> int:
    """lindi's room-for-growth rule: ``initial`` doubled until it is at least ``4 * n``."""
    total = initial
    while total < 4 * n:
        total *= 2
    return total


def padded_json(
    text: bytes, min_size: int | None = None, *, initial: int = INITIAL_LINDI_JSON_SIZE
) -> bytes:
    """``text`` padded with spaces, as lindi stores lindi.json and .tar_index.json.

    When ``min_size`` is given and ``text`` fits in it, the result is exactly ``min_size`` bytes
    (overwriting an existing member of that size in place). Otherwise the size follows lindi's
    growth rule (:func:`grown_size`, starting at ``initial``, 8 KiB for both JSON members).
    """
    if min_size is not None and len(text) <= min_size:
        size = min_size
    else:
        size = grown_size(len(text), initial)
    return text + b" " * (size - len(text))


# ----------------------------------------------------------------------------------------------
# inlining


_META_SUFFIXES = (".zattrs", ".zgroup", ".zarray", "zarr.json")


def lindi_inline_rule(key: str, nbytes: int) -> bool:
    """True when lindi would keep ``key`` inline in lindi.json rather than in a tar member.

    lindi's ``LindiTarStore.setitems``: keys whose last part starts with ``.`` (``.zattrs``,
    ``.zarray``, ``.zgroup``...) or ends with ``.json`` (``zarr.json``) are always inline;
    anything else (a chunk) is inline when it has fewer than 1000 bytes.
    """
    base = key.rsplit("/", 1)[-1]
    if base.startswith(".") or base.endswith(".json"):
        return True
    return nbytes < INLINE_THRESHOLD


def inline_value(key: str, data: bytes, *, exact: bool = False) -> str | dict[str, Any]:
    """The lindi.json value lindi stores for inline content ``data`` of ``key``.

    lindi stores ASCII content as a string and anything else as ``"base64:..."``
    (``LindiReferenceFileSystemStore.__setitem__``), then on writing turns keys ending in
    ``.zattrs``, ``.zgroup``, ``.zarray`` or ``zarr.json`` into JSON objects
    (``replace_meta_file_contents_with_dicts_in_rfs``). Readers serve an object as
    ``json.dumps(obj)``, which changes the bytes (spacing, key order) unless they already were
    in that form: with ``exact=True`` an object is only used when it reproduces ``data``
    exactly, so reading the key back gives the bytes written. We never store an object for a
    JSON value that is not an object (a list would read as a reference), and we base64-encode
    text starting with ``base64:`` (lindi would store it raw and then decode it on read).
    """
    if key.endswith(_META_SUFFIXES):
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict) and (not exact or json.dumps(obj).encode() == data):
            return obj
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None and not text.startswith("base64:"):
        return text
    return "base64:" + base64.b64encode(data).decode("ascii")
