"""The ``--xarray`` view: what a mount serves differently so that xarray opens it directly.

Built once at mount time, only when ``--xarray`` is given (nothing here runs otherwise):

* every array's ``.zattrs`` gains ``_ARRAY_DIMENSIONS`` (names from the embedded NWB schema,
  see ``lindifuse.fs.nwbdims``); an array without ``.zattrs`` gets one;
* ``.zarray`` files change in two ways zarr-python 3 and xarray need (see ``zarray_for_xarray``):
  a zero ``fill_value`` becomes ``null`` (xarray masks values equal to the fill value, so real
  zeros would read as NaN), and lindi's JSON-encoded object arrays (``|O`` + ``json2``, which
  zarr 3 cannot open) become ``vlen-utf8`` string arrays or, for numeric compound types,
  structured arrays; their chunks are converted on first read (``content.Derived``);
* arrays that are neither (an object dtype with another codec, unreadable metadata) are left
  out of the tree, one log line each.

The schema logic is pure (``nwbdims``); this module reads metadata through the content service
and installs the result as overrides of the content service plus a few tree edits.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numcodecs
import numpy as np

from lindifuse.errors import RefError
from lindifuse.fs.content import ContentService, Derived
from lindifuse.fs.nwbdims import ArrayInfo, Schema, Spec, assign_group
from lindifuse.fs.tree import Node, Tree
from lindifuse.refs import is_chunk_name

log = logging.getLogger(__name__)

ZERO_FILLS = (0, "", False)
READABLE_OBJECT_CODECS = ("vlen-utf8", "vlen-bytes")
JSON_CODECS = ("json2", "json")
_NUMERIC = "biuf"


# -- pure conversions -------------------------------------------------------------------------


def decode_chunk(meta: dict[str, Any], raw: bytes) -> np.ndarray:
    """The flat values of one stored chunk of a Zarr v2 array described by ``meta``."""
    data: Any = raw
    if meta.get("compressor"):
        data = numcodecs.get_codec(dict(meta["compressor"])).decode(data)
    for f in reversed(meta.get("filters") or []):
        data = numcodecs.get_codec(dict(f)).decode(data)
    if isinstance(data, np.ndarray) and data.dtype == object:
        return data.reshape(-1)
    return np.frombuffer(bytes(data), dtype=np.dtype(meta["dtype"])).reshape(-1)


def object_codec(meta: dict[str, Any]) -> str | None:
    """The id of the object codec of an ``|O`` array (its first filter), else None."""
    if meta.get("dtype") != "|O":
        return None
    filters = meta.get("filters") or []
    return str(filters[0].get("id")) if filters and isinstance(filters[0], dict) else ""


def reference_path(value: Any) -> str | None:
    """The target path of lindi's ``{"_REFERENCE": {"path": ...}}`` object, else None."""
    if isinstance(value, dict) and isinstance(value.get("_REFERENCE"), dict):
        path = value["_REFERENCE"].get("path")
        return path if isinstance(path, str) else ""
    return None


def as_text(value: Any) -> str:
    """An element of a JSON-encoded array as text: strings as they are, references as the
    path of their target, None as "", anything else (numbers, lists) as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    path = reference_path(value)
    if path is not None:
        return path
    return json.dumps(_plain(value), separators=(",", ":"))


def _plain(value: Any) -> Any:
    path = reference_path(value)
    if path is not None:
        return path
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def compound_dtype(fields: Any) -> np.dtype | None:
    """A numpy structured dtype for lindi's ``_COMPOUND_DTYPE`` when every field is numeric."""
    if not isinstance(fields, list) or not fields:
        return None
    out = []
    try:
        for name, t in fields:
            dt = np.dtype(t)
            if dt.kind not in _NUMERIC:
                return None
            out.append((str(name), dt.newbyteorder("<") if dt.itemsize > 1 else dt))
    except (TypeError, ValueError):
        return None
    return np.dtype(out)


@dataclass
class Conversion:
    """How one JSON-encoded object array is served: its new ``.zarray`` and chunk converter."""

    zarray: dict[str, Any]
    kind: str  # "strings", "references", "compound (structured)", "compound (JSON text)"
    source_meta: dict[str, Any]
    dtype: np.dtype | None = None  # structured dtype, for numeric compounds
    fields: list[str] = field(default_factory=list)

    def convert(self, raw: bytes) -> bytes:
        values = decode_chunk(self.source_meta, raw)
        if self.dtype is not None:
            rows = [tuple(0 if v is None else v for v in row) for row in values]
            return np.array(rows, dtype=self.dtype).tobytes()
        if self.fields:
            texts = [
                json.dumps(dict(zip(self.fields, _plain(row), strict=False)), separators=(",", ":"))
                if isinstance(row, list)
                else as_text(row)
                for row in values
            ]
        else:
            texts = [as_text(v) for v in values]
        return bytes(numcodecs.VLenUTF8().encode(np.array(texts, dtype=object)))


def plan_json_array(meta: dict[str, Any], attrs: dict[str, Any]) -> Conversion:
    """The conversion of a lindi JSON-encoded (``json2``) object array."""
    base = {**meta, "compressor": None, "fill_value": None}
    fields = attrs.get("_COMPOUND_DTYPE")
    if fields is not None:
        dt = compound_dtype(fields)
        if dt is not None:
            z = {**base, "dtype": [[n, dt.fields[n][0].str] for n in dt.names], "filters": None}
            return Conversion(z, "compound (structured)", meta, dtype=dt)
        names = [str(f[0]) for f in fields if isinstance(f, list | tuple) and f]
        z = {**base, "filters": [{"id": "vlen-utf8"}]}
        return Conversion(z, "compound (JSON text)", meta, fields=names)
    return Conversion({**base, "filters": [{"id": "vlen-utf8"}]}, "strings", meta)


def zarray_for_xarray(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with a zero ``fill_value`` replaced by null (other fills are kept)."""
    fv = meta.get("fill_value")
    if fv is not None and not isinstance(fv, list | dict) and fv in ZERO_FILLS:
        return {**meta, "fill_value": None}
    return meta


# -- assembly ---------------------------------------------------------------------------------


@dataclass
class XarrayView:
    """What ``build`` decided: overrides for the content service and a summary for the log."""

    overrides: dict[str, Any] = field(default_factory=dict)
    named: int = 0  # arrays given _ARRAY_DIMENSIONS
    from_schema: int = 0  # of them, with at least one name from the schema
    converted: dict[str, str] = field(default_factory=dict)  # array key -> kind
    hidden: dict[str, str] = field(default_factory=dict)  # array key -> reason
    problems: list[str] = field(default_factory=list)


async def _read_json(content: ContentService, node: Node) -> Any:
    size = await content.size(node)
    return json.loads(await content.read(node, 0, size))


async def _meta(content: ContentService, dirnode: Node, name: str) -> dict[str, Any] | None:
    node = dirnode.children.get(name) if dirnode.children else None
    if node is None or node.children is not None:
        return None
    value = await _read_json(content, node)
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not a JSON object")
    return value


async def _load_schema(content: ContentService, tree: Tree, view: XarrayView) -> Schema | None:
    spec_root = tree.by_key("specifications")
    if spec_root is None or not spec_root.children:
        view.problems.append("no embedded schema (no specifications group): fallback names")
        return None
    docs: dict[tuple[str, str, str], str] = {}
    for ns, ns_node in spec_root.children.items():
        for version, v_node in (ns_node.children or {}).items():
            for source, s_node in (v_node.children or {}).items():
                where = f"specifications/{ns}/{version}/{source}"
                try:
                    text = await _read_text(content, s_node)
                except Exception as e:  # codecs raise many kinds; a bad document never stops us
                    view.problems.append(f"{where}: unreadable ({e})")
                    continue
                if text is not None:
                    docs[(ns, version, source)] = text
    schema = Schema.from_documents(docs)
    view.problems.extend(schema.problems)
    if not schema.types:
        view.problems.append("embedded schema defines no types: fallback names")
    return schema


async def _read_text(content: ContentService, node: Node) -> str | None:
    """The text of a scalar (or one-element) string array, as lindi stores spec documents."""
    if node.children is None or ".zarray" not in node.children:
        return None
    meta = await _meta(content, node, ".zarray")
    assert meta is not None
    chunk = node.children.get("0")
    if chunk is None:
        raise ValueError("no chunk 0")
    raw = await content.read(chunk, 0, await content.size(chunk))
    values = decode_chunk(meta, raw)
    if not len(values):
        raise ValueError("empty")
    v = values[0]
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _is_array(node: Node) -> bool:
    return node.children is not None and ".zarray" in node.children


async def build(tree: Tree, content: ContentService) -> XarrayView:
    """Decide the whole view (reads metadata; does not change the tree or the content yet)."""
    view = XarrayView()
    schema = await _load_schema(content, tree, view)
    root_attrs = await _safe_meta(content, tree.root, ".zattrs", view) or {}
    root_chain = (
        schema.chain(_str(root_attrs.get("neurodata_type")), _str(root_attrs.get("namespace")))
        if schema
        else []
    )
    stack: list[tuple[Node, list[Spec]]] = [(tree.root, root_chain)]
    while stack:
        group, chain = stack.pop()
        infos: list[ArrayInfo] = []
        attrs_of: dict[str, dict[str, Any]] = {}
        for name, child in sorted((group.children or {}).items()):
            if child.children is None:
                continue
            if not _is_array(child):
                gattrs = await _safe_meta(content, child, ".zattrs", view) or {}
                gtype = _str(gattrs.get("neurodata_type"))
                if schema is None:
                    sub: list[Spec] = []
                elif gtype:
                    sub = schema.chain(gtype, _str(gattrs.get("namespace")))
                else:
                    sub = schema.subgroup_chain(chain, name)
                stack.append((child, sub))
                continue
            try:
                meta = await _meta(content, child, ".zarray")
                attrs = await _meta(content, child, ".zattrs") or {}
                assert meta is not None
                shape = tuple(int(n) for n in meta["shape"])
            except (RefError, ValueError, TypeError, KeyError) as e:
                view.hidden[child.key] = f"unreadable metadata ({e})"
                continue
            codec = object_codec(meta)
            if codec is not None and codec not in READABLE_OBJECT_CODECS:
                if codec not in JSON_CODECS:
                    view.hidden[child.key] = f"object array with codec {codec or 'none'!r}"
                    continue
                conv = plan_json_array(meta, attrs)
                view.converted[child.key] = conv.kind
                view.overrides[f"{child.key}/.zarray"] = conv.zarray
                for cname, cnode in (child.children or {}).items():
                    if cnode.children is None and is_chunk_name(cname):
                        value = content.value_of(cnode.key)
                        view.overrides[cnode.key] = Derived(value, conv.convert)
            else:
                new_meta = zarray_for_xarray(meta)
                if new_meta is not meta:
                    view.overrides[f"{child.key}/.zarray"] = new_meta
            existing = attrs.get("_ARRAY_DIMENSIONS")
            attrs_of[name] = attrs
            infos.append(
                ArrayInfo(
                    name,
                    shape,
                    existing if isinstance(existing, list) else None,
                    _str(attrs.get("neurodata_type")),
                    _str(attrs.get("namespace")),
                )
            )
        for name, dims in assign_group(schema, chain, infos).items():
            key = f"{group.key}/{name}" if group.key else name
            view.overrides[f"{key}/.zattrs"] = {**attrs_of[name], "_ARRAY_DIMENSIONS": dims}
            view.named += 1
            if any(not d.startswith(f"{name}_dim_") for d in dims) or not dims:
                view.from_schema += 1
    return view


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


async def _safe_meta(
    content: ContentService, node: Node, name: str, view: XarrayView
) -> dict[str, Any] | None:
    try:
        return await _meta(content, node, name)
    except (RefError, ValueError, TypeError) as e:
        view.problems.append(f"{node.key or '/'}/{name}: unreadable ({e})")
        return None


def _drop(tree: Tree, node: Node) -> None:
    for child in list((node.children or {}).values()):
        _drop(tree, child)
    tree.remove(node)


def apply(tree: Tree, content: ContentService, view: XarrayView) -> None:
    """Install ``view``: hide arrays, add missing ``.zattrs`` files, serve the overrides."""
    for key in view.hidden:
        node = tree.by_key(key)
        if node is not None:
            _drop(tree, node)
    for key in view.overrides:
        node = tree.by_key(key)
        if node is None:
            parent = tree.by_key(key.rpartition("/")[0])
            if parent is None or parent.children is None:
                continue
            node = tree.add_file(parent, key.rpartition("/")[2])
        # Metadata read while building was cached in the nodes: forget it.
        node.extra = None
        node.size = -1
        if node.parent is not None and node.name == ".zarray":
            content.forget_dir_meta(node.parent)
    content.set_overrides(view.overrides)


async def install(tree: Tree, content: ContentService) -> XarrayView:
    """Build and apply the view; log one line per problem, hidden array and a summary."""
    tree.fill_all()  # the view reads and edits the whole tree
    view = await build(tree, content)
    apply(tree, content, view)
    for p in view.problems:
        log.warning("xarray view: %s", p)
    for key, why in sorted(view.hidden.items()):
        log.warning("xarray view: %s left out: %s", key, why)
    for key, kind in sorted(view.converted.items()):
        log.info("xarray view: %s served as %s", key, kind)
    log.info(
        "xarray view: %d arrays given dimension names (%d from the schema), %d converted, "
        "%d left out",
        view.named,
        view.from_schema,
        len(view.converted),
        len(view.hidden),
    )
    return view
