"""Walk an HDF5 file and describe it as a LINDI reference file system (lindi's ``refs``).

``index_file(h5, url, options)`` returns the same keys with the same content that lindi 0.4.x's
``LindiH5ZarrStore.to_reference_file_system()`` writes for the file, except where
``docs/semantics.md`` lists a deliberate difference (objects lindi refuses or crashes on are
described or reported by name instead of failing the whole file).

Chunk locations come from ``DatasetID.chunk_iter`` (one B-tree walk per dataset, never one call
per chunk). Blocking: call from a worker thread. ``progress(objects, chunks)``, when given, is
called every few hundred chunks and after every object.
"""

from __future__ import annotations

import base64
import gc
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from lindifuse import __version__
from lindifuse.formats.hdf5.convert import (
    InlineArray,
    Unsupported,
    codecs_for,
    encode_fill,
    is_numeric,
    should_inline,
    zarr_attr,
    zarray_meta,
)
from lindifuse.formats.hdf5.options import IndexOptions, Progress

log = logging.getLogger(__name__)


@dataclass
class IndexResult:
    rfs: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    objects: int = 0
    chunks: int = 0
    external_links: int = 0


def inline_value(content: bytes) -> str:
    """lindi's encoding of an inlined key: ASCII text as is, anything else ``base64:``."""
    if not content.startswith(b"base64:"):
        try:
            return content.decode("ascii")
        except UnicodeDecodeError:
            pass
    return "base64:" + base64.b64encode(content).decode("ascii")


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _text(v: Any) -> Any:
    return v.decode("utf-8") if isinstance(v, bytes) else v


class _Indexer:
    def __init__(
        self, f: h5py.File, url: str, opts: IndexOptions, progress: Progress | None
    ) -> None:
        self.f = f
        self.url = url
        # every chunk reference names the same file: written as lindi's template "{{u1}}"
        # from the start and put back to the plain URL at the end if used fewer than 5 times
        self.target = "{{u1}}"
        self.opts = opts
        self.progress = progress
        self.refs: dict[str, Any] = {}
        self.result = IndexResult(rfs={})
        self._deref_cache: dict[Any, dict[str, Any]] = {}
        self._file_oid: Any = None
        self._next_report = 0

    # -- reporting ---------------------------------------------------------------------------

    def warn(self, message: str) -> None:
        """Something left out: reported by the caller (``index`` on stderr, a mount in its log)."""
        self.result.warnings.append(message)

    def _tick(self, force: bool = False) -> None:
        if self.progress is None:
            return
        if force or self.result.chunks >= self._next_report:
            self._next_report = self.result.chunks + 500
            self.progress(self.result.objects, self.result.chunks)

    # -- references --------------------------------------------------------------------------

    def deref(self, ref: Any) -> dict[str, Any]:
        """lindi's ``{"_REFERENCE": {...}}`` for an object reference."""
        hit = self._deref_cache.get(ref)
        if hit is not None:
            return hit
        if not ref:
            raise Unsupported("null object reference")
        try:
            obj = self.f[ref]
        except (KeyError, ValueError) as e:
            raise Unsupported(f"object reference that does not resolve ({e})") from None
        value = {
            "_REFERENCE": {
                "object_id": _text(obj.attrs.get("object_id", None)),
                "path": obj.name,
                "source": ".",
                "source_object_id": self._file_oid,
            }
        }
        self._deref_cache[ref] = value
        return value

    # -- walk --------------------------------------------------------------------------------

    def run(self) -> IndexResult:
        self._file_oid = _text(self.f.attrs.get("object_id", None))
        self._group("", self.f)
        self._tick(force=True)
        meta: dict[str, Any] = {"generatedBy": "lindifuse", "generatedByVersion": __version__}
        if self.result.warnings:
            meta["warnings"] = list(self.result.warnings)
        rfs: dict[str, Any] = {"generationMetadata": meta, "refs": self.refs, "version": 1}
        self._templates(rfs)
        self.result.rfs = rfs
        return self.result

    def _templates(self, rfs: dict[str, Any]) -> None:
        """lindi's ``use_templates_in_rfs`` for our one target: ``{{u1}}`` when it is used 5 or
        more times, else the URL itself."""
        ranges = [v for v in self.refs.values() if type(v) is list]
        if len(ranges) >= 5:
            rfs["templates"] = {"u1": self.url}
            return
        for v in ranges:
            v[0] = self.url

    def _attrs(self, key: str, obj: h5py.HLObject) -> dict[str, Any]:
        out: dict[str, Any] = {}
        attrs = obj.attrs
        for name in attrs:
            label = f"{obj.name} attribute {name!r}"
            try:
                value = attrs[name]
            except Exception as e:  # h5py cannot read some exotic types at all
                self.warn(f"{label}: cannot be read ({e}); left out")
                continue
            try:
                out[name] = zarr_attr(value, label, self.deref)
            except Unsupported as e:
                self.warn(f"{e}; left out")
        return out

    def _meta(self, key: str, value: dict[str, Any]) -> None:
        self.refs[key] = value

    def _group(self, key: str, g: h5py.Group) -> None:
        attrs = self._attrs(key, g)
        if attrs:
            self._meta(_join(key, ".zattrs"), dict(sorted(attrs.items())))
        self._meta(_join(key, ".zgroup"), {"zarr_format": 2})
        self.result.objects += 1
        for name in g:
            child = _join(key, name)
            try:
                link = g.get(name, getlink=True)
            except Exception as e:
                self.warn(f"/{child}: cannot read the link ({e}); left out")
                continue
            if isinstance(link, h5py.SoftLink):
                if g.get(name) is None:
                    self.warn(f"/{child}: soft link to {link.path} does not resolve; left out")
                    continue
                self._meta(_join(child, ".zattrs"), {"_SOFT_LINK": {"path": link.path}})
                self._meta(_join(child, ".zgroup"), {"zarr_format": 2})
                continue
            if isinstance(link, h5py.ExternalLink):
                self.warn(
                    f"/{child}: external link to {link.filename}:{link.path} is not "
                    "representable in LINDI; left out"
                )
                continue
            try:
                obj = g[name]
            except Exception as e:
                self.warn(f"/{child}: cannot be opened ({e}); left out")
                continue
            if isinstance(obj, h5py.Group):
                self._group(child, obj)
            elif isinstance(obj, h5py.Dataset):
                try:
                    self._dataset(child, obj)
                except Unsupported as e:
                    self._drop(child)
                    self.warn(f"{e}; left out")
            # committed datatypes have no Zarr counterpart (lindi skips them too)
            self._tick()

    def _drop(self, key: str) -> None:
        prefix = key + "/"
        for k in [k for k in self.refs if k.startswith(prefix)]:
            del self.refs[k]

    def _dataset(self, key: str, ds: h5py.Dataset) -> None:
        self.result.objects += 1
        name = ds.name
        shape = tuple(int(s) for s in ds.shape) if ds.shape is not None else None
        if shape is None:
            raise Unsupported(f"{name}: dataset with a null dataspace")
        dtype = ds.dtype
        attrs = self._attrs(key, ds)
        if should_inline(shape, dtype):
            try:
                data = ds[()]
            except Exception as e:
                raise Unsupported(f"{name}: cannot be read ({e})") from None
            inline = InlineArray(name, data, dtype, shape, self.deref)
            attrs.update(inline.attrs)
            if attrs:
                self._meta(_join(key, ".zattrs"), dict(sorted(attrs.items())))
            self._meta(_join(key, ".zarray"), inline.zarray)
            if inline.chunk is not None and inline.chunk_name is not None:
                self.refs[_join(key, inline.chunk_name)] = inline_value(inline.chunk)
            return
        if not is_numeric(dtype):
            raise Unsupported(f"{name}: datasets of dtype {dtype} are not representable in LINDI")
        filters = codecs_for(ds)
        layout = ds.id.get_create_plist().get_layout()
        chunks = tuple(int(c) for c in ds.chunks) if ds.chunks is not None else None
        nchunks = _grid_count(shape, chunks) if chunks else 0
        link = None
        if chunks and self.opts.chunk_threshold is not None and nchunks > self.opts.chunk_threshold:
            link = {"link_type": "hdf5_dataset", "url": self.url, "name": key}
            attrs["_EXTERNAL_ARRAY_LINK"] = link
        if attrs:
            self._meta(_join(key, ".zattrs"), dict(sorted(attrs.items())))
        fill = encode_fill(ds.fillvalue, dtype)
        size = math.prod(shape)
        # lindi's split of a large one-piece uncompressed dataset into row blocks
        split_rows = None
        if (
            self.opts.split_size is not None
            and not filters
            and (chunks is None or chunks == shape)
            and size * dtype.itemsize > self.opts.split_size
        ):
            row = math.prod(shape[1:]) * dtype.itemsize
            split_rows = max(self.opts.split_size // row, 1)
        if split_rows is not None:
            zchunks = (split_rows, *shape[1:])
        elif chunks is not None:
            zchunks = chunks
        else:
            zchunks = shape if size else tuple(1 for _ in shape)
        self._meta(_join(key, ".zarray"), zarray_meta(shape, zchunks, dtype, fill, filters))
        if link is not None:
            self.result.external_links += 1
            return
        if size == 0:
            return
        if layout == h5py.h5d.COMPACT:
            # bytes inside the object header: no file range to reference, so inline them
            data = np.ascontiguousarray(ds[()], dtype=dtype)
            self.refs[_join(key, ".".join("0" for _ in shape))] = inline_value(data.tobytes())
            self._count(1)
            return
        if chunks is None or split_rows is not None:
            if chunks is None:
                offset = ds.id.get_offset()
                nbytes = ds.id.get_storage_size()
            else:
                info = ds.id.get_chunk_info_by_coord((0,) * len(shape))
                offset, nbytes = info.byte_offset, info.size
            if offset is None:  # never written: no storage, the fill value shows
                return
            if split_rows is None:
                self.refs[_join(key, ".".join("0" for _ in shape))] = [self.target, offset, nbytes]
                self._count(1)
                return
            step = split_rows * math.prod(shape[1:]) * dtype.itemsize
            rest = ".0" * (len(shape) - 1)
            for i in range(-(-shape[0] // split_rows)):
                start = offset + i * step
                n = min(step, offset + nbytes - start)
                self.refs[f"{key}/{i}{rest}"] = [self.target, start, n]
            self._count(-(-shape[0] // split_rows))
            return
        self._chunks(key, ds, chunks)

    def _count(self, n: int) -> None:
        self.result.chunks += n
        self._tick()

    def _chunks(self, key: str, ds: h5py.Dataset, chunks: tuple[int, ...]) -> None:
        n, masked = add_chunk_refs(self.refs, key + "/", ds, chunks, self.target)
        self._count(n)
        if masked:
            self.warn(
                f"{ds.name}: {masked} chunks were stored with a filter skipped (HDF5 filter mask); "
                "a Zarr reader will fail to decode them"
            )


def add_chunk_refs(
    refs: dict[str, Any], prefix: str, ds: h5py.Dataset, chunks: tuple[int, ...], target: str
) -> tuple[int, int]:
    """Put ``prefix + chunk name: [target, offset, size]`` in ``refs`` for every allocated chunk
    of ``ds`` (one ``H5Dchunk_iter`` walk); returns (chunks, chunks stored with a filter skipped).

    ``list.append`` as the callback keeps h5py's C loop free of Python frames; the names are
    made afterwards in one pass (about 3x faster than formatting them in a callback)."""
    infos: list[Any] = []
    try:
        ds.id.chunk_iter(infos.append)
    except (AttributeError, NotImplementedError):  # HDF5 < 1.12.3: no H5Dchunk_iter
        infos = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    if len(chunks) == 1:
        c0 = chunks[0]
        for info in infos:
            refs[prefix + str(info.chunk_offset[0] // c0)] = [target, info.byte_offset, info.size]
    else:
        for info in infos:
            name = ".".join([str(o // c) for o, c in zip(info.chunk_offset, chunks, strict=True)])
            refs[prefix + name] = [target, info.byte_offset, info.size]
    return len(infos), sum(1 for info in infos if info.filter_mask)


def _grid_count(shape: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    return math.prod((s + c - 1) // c if c else 0 for s, c in zip(shape, chunks, strict=True))


def index_file(
    f: h5py.File, url: str, options: IndexOptions | None = None, progress: Progress | None = None
) -> IndexResult:
    """Describe the open HDF5 file ``f``; chunk references name ``url`` (a path or URL).

    The garbage collector is paused meanwhile: indexing creates a few objects per chunk and none
    of them form cycles, so collections would only rescan them (about 20% of the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Indexer(f, url, options or IndexOptions(), progress).run()
    finally:
        if enabled:
            gc.enable()
