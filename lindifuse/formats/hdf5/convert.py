"""Per-value rules of the HDF5 → LINDI mapping, lindi 0.4.x's conventions made explicit.

lindi builds every ``.zarray``, ``.zattrs`` and inlined chunk by creating a throw-away zarr 2
array in a memory store and copying out what zarr wrote. That costs milliseconds per object and
ties it to zarr 2. This module writes the same JSON values and the same chunk bytes directly:

- attributes (``zarr_attr``): numbers, strings, arrays, booleans and object references, with NaN
  and ±Inf written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
- ``.zarray`` of referenced arrays (``zarray_meta``): HDF5's chunk grid, dtype and fill value,
  ``compressor: null`` and the HDF5 filter pipeline as numcodecs ``filters`` (``codecs_for``);
- inlined arrays (``inline_array``): scalars, numeric arrays of fewer than 1,000 elements and
  every non-numeric dataset (strings, booleans, compound, references), encoded exactly as zarr 2
  encodes them with its default compressor (Blosc lz4, level 5, byte shuffle) and, for object
  data, numcodecs' ``json2`` filter.

Everything raises ``Unsupported`` (with a message naming what) for a value LINDI cannot represent;
the indexer reports those by object name and leaves the object out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import h5py
import numcodecs
import numpy as np

# zarr 2's default compressor, which lindi's inlined arrays carry.
DEFAULT_COMPRESSOR: dict[str, Any] = {
    "blocksize": 0,
    "clevel": 5,
    "cname": "lz4",
    "id": "blosc",
    "shuffle": 1,
}
_BLOSC = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE, blocksize=0)
_JSON = numcodecs.JSON()
JSON_FILTER: dict[str, Any] = {
    k: (list(v) if isinstance(v, tuple) else v) for k, v in _JSON.get_config().items()
}

# HDF5 filter ids (H5Zpublic.h and the registered third-party filters).
H5Z_DEFLATE, H5Z_SHUFFLE, H5Z_FLETCHER32, H5Z_SZIP, H5Z_NBIT, H5Z_SCALEOFFSET = 1, 2, 3, 4, 5, 6
H5Z_LZF, H5Z_BLOSC, H5Z_LZ4, H5Z_BITSHUFFLE, H5Z_ZSTD = 32000, 32001, 32004, 32008, 32015
_BLOSC_NAMES = ("blosclz", "lz4", "lz4hc", "snappy", "zlib", "zstd")
# names of filters HDF5 may not know (not registered here), for the message that refuses them
_FILTER_NAMES = {
    H5Z_SZIP: "szip",
    H5Z_NBIT: "n-bit",
    H5Z_SCALEOFFSET: "scale-offset",
    H5Z_LZ4: "lz4 (HDF5 plugin framing)",
    H5Z_BITSHUFFLE: "bitshuffle",
    307: "bzip2",
    32013: "zfp",
    32017: "sz",
    32018: "fcidecomp",
    32026: "blosc2",
}

# Elements below which a numeric dataset is inlined (lindi: ``size < 1000``).
INLINE_MAX_ELEMENTS = 1000

Deref = Callable[[Any], dict[str, Any]]
"""Turns an ``h5py.Reference`` into lindi's ``{"_REFERENCE": {...}}`` value."""


class Unsupported(Exception):
    """A value, dtype or filter that a LINDI file cannot represent."""


# -- numbers ---------------------------------------------------------------------------------


def encode_float(v: float) -> float | str:
    """A float as lindi writes it in JSON: NaN and ±Inf become strings."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _encode_nested(x: Any) -> Any:
    if isinstance(x, list):
        return [_encode_nested(v) for v in x]
    if isinstance(x, float):
        return encode_float(x)
    return x


def _decode_nested_bytes(x: Any, label: str) -> Any:
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        return [_decode_nested_bytes(v, label) for v in x]
    raise Unsupported(f"{label}: unexpected element {x!r} in a string array")


def _all_strings(x: Any) -> bool:
    if isinstance(x, str):
        return True
    if isinstance(x, list):
        return all(_all_strings(v) for v in x)
    return False


# -- attributes ------------------------------------------------------------------------------


def zarr_attr(value: Any, label: str, deref: Deref) -> Any:
    """An h5py attribute value as lindi stores it in ``.zattrs`` (``h5_to_zarr_attr``)."""
    if isinstance(value, h5py.RegionReference):
        raise Unsupported(f"{label}: region references are not representable in LINDI")
    if isinstance(value, h5py.Reference):
        return deref(value)
    if isinstance(value, str):
        if value in ("NaN", "Infinity", "-Infinity"):
            raise Unsupported(f"{label}: the string {value!r} would read back as a float")
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return encode_float(float(value))
    if isinstance(value, complex | np.complexfloating):
        raise Unsupported(f"{label}: complex numbers are not representable in LINDI")
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        if kind in "iub":
            return value.tolist()
        if kind == "f":
            return _encode_nested(value.tolist())
        if kind in "SU":
            return _decode_nested_bytes(value.tolist(), label)
        if kind == "O":
            ref = h5py.check_dtype(ref=value.dtype)
            if ref is h5py.Reference and value.ndim == 1:
                return [zarr_attr(v, label, deref) for v in value]
            x = _decode_nested_bytes(value.tolist(), label) if ref is None else None
            if x is None or not _all_strings(x):
                raise Unsupported(f"{label}: object array attribute with non-string elements")
            return x
        raise Unsupported(f"{label}: attribute of dtype {value.dtype} is not representable")
    if isinstance(value, np.void):
        raise Unsupported(f"{label}: compound attributes are not representable in LINDI")
    if value is None:
        raise Unsupported(f"{label}: empty (null dataspace) attribute")
    raise Unsupported(f"{label}: attribute of type {type(value).__name__} is not representable")


# -- filters ---------------------------------------------------------------------------------


def codecs_for(ds: h5py.Dataset) -> list[dict[str, Any]]:
    """The dataset's HDF5 filter pipeline as numcodecs configs, in pipeline order.

    Raises Unsupported, naming the filter, for one numcodecs cannot describe (szip, n-bit,
    scale-offset, the HDF5 LZ4 and bitshuffle plugins' own framings, unknown ids). LZF is written
    as ``imagecodecs_lzf`` (the imagecodecs package's numcodecs codec).
    """
    dcpl = ds.id.get_create_plist()
    out: list[dict[str, Any]] = []
    itemsize = ds.dtype.itemsize
    for i in range(dcpl.get_nfilters()):
        code, _flags, values, name = dcpl.get_filter(i)
        values = tuple(int(v) for v in values)
        if code == H5Z_DEFLATE:
            out.append({"id": "zlib", "level": values[0] if values else 6})
        elif code == H5Z_SHUFFLE:
            out.append({"elementsize": itemsize, "id": "shuffle"})
        elif code == H5Z_FLETCHER32:
            out.append({"id": "fletcher32"})
        elif code == H5Z_LZF:
            out.append({"header": False, "id": "imagecodecs_lzf"})
        elif code == H5Z_ZSTD:
            out.append({"checksum": False, "id": "zstd", "level": values[0] if values else 0})
        elif code == H5Z_BLOSC and len(values) >= 7:
            out.append(
                {
                    "blocksize": values[3],
                    "clevel": values[4],
                    "cname": _BLOSC_NAMES[values[6]] if values[6] < len(_BLOSC_NAMES) else "lz4",
                    "id": "blosc",
                    "shuffle": values[5],
                }
            )
        else:
            label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            label = _FILTER_NAMES.get(code) or label or "unregistered"
            raise Unsupported(f"{ds.name}: HDF5 filter {code} ({label}) has no numcodecs codec")
    return out


# -- dtypes and fill values ------------------------------------------------------------------


def zarr_dtype(dtype: np.dtype) -> str:
    return dtype.str


def encode_fill(value: Any, dtype: np.dtype) -> Any:
    """A fill value as zarr 2 writes it in ``.zarray`` for a numeric or boolean dtype."""
    kind = dtype.kind
    if value is None:
        return None
    if kind == "f":
        return encode_float(float(value))
    if kind in "iu":
        return int(value)
    if kind == "b":
        return bool(value)
    raise Unsupported(f"fill value for dtype {dtype}")


def is_numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "iuf"


def zarray_meta(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype,
    fill_value: Any,
    filters: list[dict[str, Any]] | None,
    compressor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``.zarray`` object, keys sorted as zarr 2 (and therefore lindi) writes them."""
    return {
        "chunks": list(chunks),
        "compressor": compressor,
        "dtype": zarr_dtype(dtype),
        "fill_value": fill_value,
        "filters": filters or None,
        "order": "C",
        "shape": list(shape),
        "zarr_format": 2,
    }


# -- inlined arrays --------------------------------------------------------------------------


def should_inline(ds_shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """lindi's rule: scalars, small numeric arrays and every non-numeric dataset are inlined."""
    if ds_shape == ():
        return True
    if is_numeric(dtype):
        size = math.prod(ds_shape)
        return 0 < size < INLINE_MAX_ELEMENTS
    return True


def compound_dtype_attr(dtype: np.dtype) -> list[list[str]]:
    """``_COMPOUND_DTYPE``: ``[[field, numpy dtype name or "<REFERENCE>"], ...]``."""
    out = []
    for name in dtype.names or ():
        sub = dtype[name]
        out.append([name, "<REFERENCE>" if h5py.check_dtype(ref=sub) is not None else str(sub)])
    return out


def _json_value(v: Any, dtype: np.dtype, label: str, deref: Deref) -> Any:
    """One compound field value made JSON-serializable (lindi's ``_make_json_serializable``)."""
    kind = dtype.kind
    if h5py.check_dtype(ref=dtype) is not None:
        if isinstance(v, h5py.RegionReference):
            raise Unsupported(f"{label}: region references are not representable in LINDI")
        return deref(v)
    if kind in "iu":
        return int(v)
    if kind == "f":
        return float(v)
    if kind == "b":
        return bool(v)
    if kind == "S":
        return v.decode()
    if kind == "U":
        return str(v)
    if kind == "O" and isinstance(v, bytes | str):
        return v.decode() if isinstance(v, bytes) else v
    raise Unsupported(f"{label}: compound field of dtype {dtype} is not representable")


def _object_element(v: Any, label: str, deref: Deref) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, str):
        return v
    if isinstance(v, h5py.RegionReference):
        raise Unsupported(f"{label}: region references are not representable in LINDI")
    if isinstance(v, h5py.Reference):
        return deref(v)
    raise Unsupported(f"{label}: element of type {type(v).__name__} is not representable")


def _json_chunk(items: np.ndarray) -> bytes:
    """An object chunk as zarr 2 stores it: json2 filter, then the default Blosc."""
    return bytes(_BLOSC.encode(_JSON.encode(items)))


def _blosc(arr: np.ndarray) -> bytes:
    return bytes(_BLOSC.encode(np.ascontiguousarray(arr)))


class InlineArray:
    """The ``.zarray``, extra attributes and single chunk of a dataset that lindi inlines.

    ``data`` is the dataset's full content as h5py reads it (``ds[()]``).
    """

    def __init__(
        self, name: str, data: Any, dtype: np.dtype, shape: tuple[int, ...], deref: Deref
    ) -> None:
        self.attrs: dict[str, Any] = {}
        self.chunk_name: str | None = None
        self.chunk: bytes | None = None
        if dtype.kind == "c":
            raise Unsupported(f"{name}: complex numbers are not representable in LINDI")
        if shape == ():
            self._scalar(name, data, dtype, deref)
            return
        size = math.prod(shape)
        chunks = shape if size else tuple(max(s, 1) for s in shape)
        kind = dtype.kind
        if is_numeric(dtype) or kind == "b":
            arr = np.asarray(data, dtype=dtype)
            self.zarray = zarray_meta(
                shape, chunks, dtype, encode_fill(0, dtype), None, DEFAULT_COMPRESSOR
            )
            self._set_chunk(shape, _blosc(arr) if size else None)
        elif kind == "S":
            arr = np.asarray(data, dtype=dtype)
            self.zarray = zarray_meta(shape, chunks, dtype, "", None, DEFAULT_COMPRESSOR)
            self._set_chunk(shape, _blosc(arr) if size else None)
        elif kind == "O":
            flat = np.asarray(data, dtype=object).ravel()
            out = np.empty(len(flat), dtype=object)
            for i, v in enumerate(flat):
                out[i] = _object_element(v, name, deref)
            self._object(shape, chunks, out.reshape(shape), size)
        elif kind == "V" and dtype.names:
            flat = np.asarray(data).ravel()
            out = np.empty(len(flat), dtype=object)
            fields = [(f, dtype[f]) for f in dtype.names]
            for i, row in enumerate(flat):
                out[i] = tuple(
                    _json_value(row[f], fdt, f"{name}[{i}].{f}", deref) for f, fdt in fields
                )
            self._object(shape, chunks, out.reshape(shape), size)
            self.attrs["_COMPOUND_DTYPE"] = compound_dtype_attr(dtype)
        else:
            raise Unsupported(f"{name}: datasets of dtype {dtype} are not representable in LINDI")

    def _set_chunk(self, shape: tuple[int, ...], chunk: bytes | None) -> None:
        if chunk is not None:
            self.chunk_name = ".".join("0" for _ in shape) or "0"
            self.chunk = chunk

    def _object(
        self, shape: tuple[int, ...], chunks: tuple[int, ...], items: np.ndarray, size: int
    ) -> None:
        self.zarray = zarray_meta(
            shape, chunks, np.dtype(object), 0, [JSON_FILTER], DEFAULT_COMPRESSOR
        )
        self._set_chunk(shape, _json_chunk(items) if size else None)

    def _scalar(self, name: str, data: Any, dtype: np.dtype, deref: Deref) -> None:
        self.attrs["_SCALAR"] = True
        kind = dtype.kind
        if is_numeric(dtype) or kind == "b":
            arr = np.asarray([data[()] if isinstance(data, np.ndarray) else data])
        elif kind == "O":
            v = data[()] if isinstance(data, np.ndarray) else data
            if not isinstance(v, bytes | str):
                if isinstance(v, h5py.Reference):
                    raise Unsupported(
                        f"{name}: a scalar object reference is not representable "
                        "in LINDI (lindi 0.4 refuses it too)"
                    )
                raise Unsupported(f"{name}: scalar of type {type(v).__name__}")
            arr = np.asarray([v.decode() if isinstance(v, bytes) else v])
        elif kind == "S":
            arr = np.asarray([data[()] if isinstance(data, np.ndarray) else data])
        else:
            raise Unsupported(f"{name}: scalar dataset of dtype {dtype} is not representable")
        adt = arr.dtype
        fill = "" if adt.kind in "SU" else encode_fill(0, adt)
        self.zarray = zarray_meta((1,), (1,), adt, fill, None, DEFAULT_COMPRESSOR)
        self.chunk_name = "0"
        self.chunk = _blosc(arr)
