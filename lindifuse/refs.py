"""The reference file system: keys, reference values, templates, ``gen`` and lindi's padding rule.

Pure logic, no I/O. A reference set is loaded once (``ReferenceSet.from_json``), validated as a
whole so that a bad SOURCE fails before anything is mounted, and then decoded lazily key by key:
a 1,000,000-key set keeps the raw JSON values and only builds objects for keys that are touched.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lindifuse.errors import FormatError, RefError

_TEMPLATE_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NUMERIC_KINDS = ("i", "u", "f")


@dataclass(frozen=True, slots=True)
class Inline:
    """Content stored in the reference file itself."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Range:
    """``size`` bytes at ``offset`` of ``target`` (URL, path or ``./member``); size None = whole."""

    target: str
    offset: int
    size: int | None


Ref = Inline | Range


# The ``.zattrs`` attribute in which lindi records an array it left as a link to an HDF5
# dataset (served by ``lindifuse.formats.hdf5.extlink``).
EXTERNAL_LINK_ATTR = "_EXTERNAL_ARRAY_LINK"


def normalize_key(key: str) -> str | None:
    """Return the canonical form of a Zarr key, or None when it must be rejected.

    One leading slash is tolerated (some writers emit it). Keys with empty parts, ``.`` or ``..``
    parts or NUL bytes would escape or alias the directory tree, so they are refused.
    """
    if key.startswith("/"):
        key = key[1:]
    if not key or "\0" in key:
        return None
    for part in key.split("/"):
        if part in ("", ".", ".."):
            return None
    return key


def decode_value(key: str, value: Any) -> Ref:
    """Decode one raw JSON value into a Ref. Raises RefError for content that cannot be decoded."""
    if isinstance(value, str):
        if value.startswith("base64:"):
            try:
                return Inline(base64.b64decode(value[7:]))
            except (binascii.Error, ValueError) as e:
                raise RefError(f"{key}: invalid base64 content ({e})") from None
        return Inline(value.encode("utf-8"))
    if isinstance(value, dict):
        # Byte-identical to lindi: json.dumps with default separators.
        return Inline(json.dumps(value).encode("utf-8"))
    if isinstance(value, list):
        if len(value) == 3:
            return Range(value[0], value[1], value[2])
        return Range(value[0], 0, None)
    raise RefError(f"{key}: unsupported reference value of type {type(value).__name__}")


def _check_value(key: str, value: Any, templates: Mapping[str, str], where: str) -> None:
    """Validate a raw reference value; raise FormatError naming the key."""
    if isinstance(value, str | dict):
        return
    if not isinstance(value, list) or len(value) not in (1, 3):
        raise FormatError(
            f"{where}: key {key!r}: reference must be a string, an object or "
            f"[url] / [url, offset, size], got {json.dumps(value)[:80]}"
        )
    target = value[0]
    if not isinstance(target, str) or not target:
        raise FormatError(f"{where}: key {key!r}: reference target must be a non-empty string")
    if len(value) == 3:
        offset, size = value[1], value[2]
        if type(offset) is not int or type(size) is not int:
            raise FormatError(f"{where}: key {key!r}: offset and size must be integers")
        if offset < 0:
            raise FormatError(f"{where}: key {key!r}: negative offset {offset}")
        if size < 0:
            raise FormatError(f"{where}: key {key!r}: negative size {size}")
    if "{{" in target:
        for name in _TEMPLATE_RE.findall(target):
            if name not in templates:
                raise FormatError(f"{where}: key {key!r}: unknown template {{{{{name}}}}}")


def _all_canonical(keys: Collection[str]) -> bool:
    """True when every key is canonical (``normalize_key(k) == k``), tested on all keys at once.

    Joined with ``/`` between and around them, the keys hold ``//``, ``/./`` or ``/../`` exactly
    when one key is empty, has a leading or trailing ``/``, or an empty, ``.`` or ``..`` part: a
    key's ends are part boundaries too, so no match can straddle two good keys. Four substring
    searches in C replace a Python test per key (7 ms instead of about 20 for 100,000 keys)."""
    if not keys:
        return True
    joined = "/" + "/".join(keys) + "/"
    return not ("//" in joined or "/./" in joined or "/../" in joined or "\0" in joined)


def _plain_values(values: Iterable[Any]) -> bool:
    """True when every value is an inline string or object, or ``[url, offset, size]`` with a
    non-empty url free of templates and non-negative integers: what ``_validate`` accepts
    without a closer look. Interns the urls as ``_validate`` does (see there)."""
    targets: dict[str, str] = {}
    intern = targets.setdefault
    for value in values:
        tv = type(value)
        if tv is list:
            if len(value) != 3:
                return False
            t, o, n = value
            if not (
                type(t) is str and t and type(o) is int and type(n) is int and o >= 0 and n >= 0
            ):
                return False
            if "{{" in t:
                return False
            value[0] = intern(t, t)
        elif tv is not str and tv is not dict:
            return False
    return True


def _validate(
    items: Iterable[tuple[str, Any]], templates: Mapping[str, str], where: str
) -> tuple[dict[str, Any], list[str]]:
    """Check every (key, value); return the canonical refs and the rejected keys.

    The common cases (a canonical chunk key with a plain ``[url, offset, size]`` or an inline
    value) are tested inline: this loop runs once per key of sets with millions of keys.
    """
    refs: dict[str, Any] = {}
    rejected: list[str] = []
    # Most references of a file name the same few targets: keep one string object per distinct
    # target instead of one per reference (~80 bytes a key; 80 MB for 1,000,000 keys).
    targets: dict[str, str] = {}
    for key, value in items:
        if not key or key[0] in "/." or "/." in key or "//" in key or key[-1] == "/" or "\0" in key:
            norm = normalize_key(key)
            if norm is None:
                rejected.append(key)
                continue
            if norm != key:
                rejected.append("")  # marks the set as changed; dropped by the caller
            key = norm
        tv = type(value)
        if tv is list and len(value) == 3:
            t, o, n = value
            if type(t) is str:
                value[0] = targets.setdefault(t, t)
            if (
                not (
                    type(t) is str and t and type(o) is int and type(n) is int and o >= 0 and n >= 0
                )
                or "{{" in t
            ):
                _check_value(key, value, templates, where)
        elif tv is not str and tv is not dict:
            _check_value(key, value, templates, where)
        refs[key] = value
    return refs, rejected


def expand_templates(target: str, templates: Mapping[str, str]) -> str:
    """Replace ``{{name}}`` in a reference target by its template value."""
    if "{{" not in target:
        return target
    return _TEMPLATE_RE.sub(lambda m: templates[m.group(1)], target)


def expand_gen(
    gen: list[Any], templates: Mapping[str, str], where: str
) -> Iterator[tuple[str, Any]]:
    """Expand kerchunk v1 ``gen`` entries (jinja2 templates over dimension products)."""
    import jinja2  # only needed for the rare files that use gen

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    if not isinstance(gen, list):
        raise FormatError(f"{where}: 'gen' must be a list")
    for i, g in enumerate(gen):
        try:
            dims = {
                name: (
                    list(spec)
                    if isinstance(spec, list)
                    else range(spec.get("start", 0), spec["stop"], spec.get("step", 1))
                )
                for name, spec in g["dimensions"].items()
            }
            key_t = env.from_string(g["key"])
            url_t = env.from_string(g["url"])
            has_off, has_len = "offset" in g, "length" in g
            if has_off != has_len:
                raise FormatError(f"{where}: gen[{i}]: 'offset' and 'length' go together")
            off_t = env.from_string(str(g["offset"])) if has_off else None
            len_t = env.from_string(str(g["length"])) if has_len else None
            for combo in itertools.product(*dims.values()):
                ctx = {**templates, **dict(zip(dims.keys(), combo, strict=True))}
                url = url_t.render(**ctx)
                if off_t is not None and len_t is not None:
                    value: Any = [url, int(off_t.render(**ctx)), int(len_t.render(**ctx))]
                else:
                    value = [url]
                yield key_t.render(**ctx), value
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, jinja2.TemplateError) as e:
            raise FormatError(f"{where}: gen[{i}]: {type(e).__name__}: {e}") from None


@dataclass
class ReferenceSet:
    """A validated reference file system: ``refs`` maps normalized keys to raw JSON values."""

    refs: dict[str, Any]
    templates: dict[str, str]
    rejected: list[str]
    extra: dict[str, Any]  # other top-level members (version, generationMetadata), kept on rewrite
    # False when the file these came from cannot hold an ``_EXTERNAL_ARRAY_LINK`` attribute
    # (see ``may_hold_links``): the mount then skips its scan of every key for one.
    may_link: bool = True

    @classmethod
    def from_index(cls, obj: dict[str, Any]) -> ReferenceSet:
        """A reference set lindifuse's HDF5 indexer made (or read back from its own cache):
        well-formed by construction (HDF5 names have no empty, ``.`` or ``..`` parts), so the
        per-key validation of ``from_json`` is skipped; it costs as much as indexing chunks."""
        extra = {k: v for k, v in obj.items() if k != "refs"}
        return cls(refs=obj["refs"], templates=obj.get("templates") or {}, rejected=[], extra=extra)

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ReferenceSet:
        """Validate a parsed lindi.json / kerchunk v1 document. ``where`` names the file."""
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: not a reference file system (top level is not an object)")
        if "refs" not in obj:
            raise FormatError(f"{where}: not a reference file system (no 'refs' member)")
        raw = obj["refs"]
        if not isinstance(raw, dict):
            raise FormatError(f"{where}: 'refs' must be an object")
        version = obj.get("version", 1)
        if version != 1:
            raise FormatError(f"{where}: unsupported reference file system version {version!r}")
        templates = obj.get("templates") or {}
        if not isinstance(templates, dict) or not all(
            isinstance(v, str) for v in templates.values()
        ):
            raise FormatError(f"{where}: 'templates' must map names to strings")
        refs: dict[str, Any] = {}
        rejected: list[str] = []
        if "gen" in obj:
            items: Iterator[tuple[str, Any]] = itertools.chain(
                expand_gen(obj["gen"], templates, where), raw.items()
            )
            refs, rejected = _validate(items, templates, where)
        elif _all_canonical(raw) and _plain_values(raw.values()):
            refs = raw  # the common case, checked in bulk: keep the parsed dict, no copy
        else:
            refs, rejected = _validate(raw.items(), templates, where)
            if not rejected:
                refs = raw  # every key was canonical: keep the parsed dict, no copy
        rejected = [k for k in rejected if k]
        extra = {k: v for k, v in obj.items() if k not in ("refs", "gen")}
        return cls(refs=refs, templates=templates, rejected=rejected, extra=extra)


def inline_size(value: str) -> int | None:
    """Byte size of an inline string value as ``decode_value`` would decode it, computed without
    decoding; None when that cannot be told cheaply (base64 of a length that is not a multiple
    of 4, which ``decode_value`` rejects or repairs). Characters outside the base64 alphabet are
    not checked here: such a value still fails (EIO, logged) when the file is opened."""
    if value.startswith("base64:"):
        n = len(value) - 7
        eq = value.find("=", 7)
        if n % 4 or (eq >= 0 and eq < len(value) - 2):
            return None
        pad = 2 if value.endswith("==") else 1 if value.endswith("=") else 0
        return n // 4 * 3 - pad
    if value.isascii():
        return len(value)
    return len(value.encode("utf-8"))


# A JSON escape of one of the characters of EXTERNAL_LINK_ATTR ("_" and the letters of
# EXTERNALARYIK): only such an escape could spell the name without writing it out.
_LINK_ESCAPE = re.compile(rb"\\u00(?:5[fF2489]|4[159bBcCeE])")


def may_hold_links(raw: bytes) -> bool:
    """Whether a reference file's bytes could hold lindi's ``_EXTERNAL_ARRAY_LINK`` attribute:
    its name written out, or an escape that could spell it. lindi's files are full of ``\\u``
    escapes (binary inline chunks), but not of escaped letters. Two searches in C instead of a
    test of each key of the parsed set (7-16 ms for 100,000 keys)."""
    return EXTERNAL_LINK_ATTR.encode() in raw or _LINK_ESCAPE.search(raw) is not None


def is_chunk_name(name: str) -> bool:
    """lindi's test for a chunk key's last part: integers separated by dots (``0``, ``1.2.0``)."""
    if name.isdigit():
        return True  # the common case, without the split
    if not name:
        return False
    return all(p.isdigit() or (p.startswith("-") and p[1:].isdigit()) for p in name.split("."))


_SIMPLE_DTYPE = re.compile(r"[<>|=]?([biufc])(1|2|4|8|16)\Z")


def padded_chunk_size(zarray: Mapping[str, Any]) -> int | None:
    """Size to zero-pad short chunks of an array to, or None when no padding applies.

    lindi pads any short chunk of a numeric array. We pad only uncompressed, unfiltered arrays:
    padding compressed bytes is harmless for zlib/blosc but corrupts zstd streams, and a
    compressed chunk is never "short" in the contiguous-dataset sense the rule exists for.
    """
    if zarray.get("compressor") is not None or zarray.get("filters"):
        return None
    try:
        chunks = [int(c) for c in zarray["chunks"]]
        simple = _SIMPLE_DTYPE.match(zarray["dtype"]) if type(zarray["dtype"]) is str else None
        if simple is not None:
            # "<f4", "|u1", ...: no need for numpy (whose import costs a first read ~0.1 s)
            kind, itemsize = simple.group(1), int(simple.group(2))
        else:
            import numpy as np

            dtype = np.dtype(zarray["dtype"])
            kind, itemsize = dtype.kind, dtype.itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if kind not in _NUMERIC_KINDS:
        return None
    return math.prod(chunks) * itemsize
