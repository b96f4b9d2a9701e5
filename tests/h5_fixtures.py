"""HDF5 fixtures built with h5py alone, one feature each, for the HDF5 source tests.

Importable from both virtual environments (it needs only h5py and numpy), so the test suite
and the lindi oracle (tests/lindi_gen.py, run in .venv-lindi) build byte-identical files.

``make_features(path)`` writes a file with every HDF5 feature ``lindifuse index`` covers; the
dataset names say what each one exercises. ``make_many_chunks(path, n)`` and
``make_many_objects(path, n)`` make the benchmark-sized files.
"""

from __future__ import annotations

import h5py
import numpy as np

OBJECT_ID = "f0000000-0000-4000-8000-000000000000"


def _oid(i: int) -> str:
    return f"a0000000-0000-4000-8000-{i:012d}"


def make_features(path: str) -> None:
    """Every feature of the HDF5 issue's list, in one small file (about 1 MiB)."""
    rng = np.random.default_rng(7)
    with h5py.File(path, "w", libver="earliest") as f:
        f.attrs["object_id"] = OBJECT_ID
        f.attrs["neurodata_type"] = "NWBFile"
        f.attrs["namespace"] = "core"
        f.attrs["nwb_version"] = "2.7.0"
        c = f.create_group("chunked")
        c.attrs["object_id"] = _oid(1)
        big = rng.integers(-100, 100, size=(300, 40)).astype("<i4")
        c.create_dataset(
            "gzip_shuffle", data=big, chunks=(64, 16), compression="gzip", shuffle=True
        )
        c.create_dataset(
            "gzip", data=big.astype("<f8"), chunks=(50, 40), compression="gzip", compression_opts=9
        )
        c.create_dataset("shuffle_only", data=big.astype("<i2"), chunks=(100, 10), shuffle=True)
        c.create_dataset("fletcher32", data=big.astype("<u2"), chunks=(60, 20), fletcher32=True)
        c.create_dataset(
            "gzip_fletcher32",
            data=big.astype("<i8"),
            chunks=(60, 20),
            compression="gzip",
            fletcher32=True,
        )
        c.create_dataset("nofilter", data=big.astype(">i4"), chunks=(128, 40))
        c.create_dataset(
            "float32_3d",
            data=rng.standard_normal((20, 30, 10)).astype("<f4"),
            chunks=(7, 11, 5),
            compression="gzip",
        )
        c.create_dataset(
            "uint8",
            data=rng.integers(0, 255, size=(5000,), dtype=np.uint8),
            chunks=(1024,),
            compression="gzip",
            shuffle=True,
        )
        c.create_dataset("bool", data=rng.integers(0, 2, size=(3000,)).astype(bool), chunks=(1000,))
        part = c.create_dataset(
            "partial",
            shape=(400, 30),
            dtype="<f4",
            chunks=(100, 10),
            compression="gzip",
            fillvalue=-1.5,
        )
        part[0:100, 0:10] = 3.25
        part[300:400, 20:30] = rng.standard_normal((100, 10)).astype("<f4")
        c.create_dataset("unallocated", shape=(1000,), dtype="<i8", chunks=(100,), fillvalue=42)
        c.create_dataset(
            "resizable",
            data=np.arange(2500, dtype="<f8"),
            chunks=(1000,),
            maxshape=(None,),
            compression="gzip",
        )
        c.create_dataset("nan_fill", shape=(2000,), dtype="<f8", chunks=(500,), fillvalue=np.nan)[
            0:500
        ] = np.arange(500)
        c.create_dataset("chunk_eq_shape", data=np.arange(3000, dtype="<i4"), chunks=(3000,))

        g = f.create_group("contiguous")
        g.create_dataset("f8", data=np.arange(5000, dtype="<f8") / 7)
        g.create_dataset("i2_2d", data=rng.integers(-9, 9, size=(700, 30)).astype("<i2"))
        g.create_dataset("u1", data=np.arange(4096, dtype=np.uint8))
        g.create_dataset("big_endian", data=np.arange(2000, dtype=">f4"))
        g.create_dataset("zero_size", shape=(0,), dtype="<f8")
        g.create_dataset("zero_size_2d", shape=(0, 5), dtype="<i4")
        g.create_dataset(
            "zero_size_chunked", shape=(0,), dtype="<f8", chunks=(10,), maxshape=(None,)
        )
        sp = g.create_dataset("split", data=np.arange(30000, dtype="<f8"))
        sp.attrs["note"] = "240,000 bytes: split into row blocks with a small --split-size"

        k = f.create_group("compact")
        _compact(k, "i4", np.arange(50, dtype="<i4") * 3)

        s = f.create_group("scalars")
        s.create_dataset("f8", data=np.float64(2.5))
        s.create_dataset("i4", data=np.int32(-7))
        s.create_dataset("u8", data=np.uint64(2**63 + 5))
        s.create_dataset("bool", data=np.bool_(True))
        s.create_dataset("vlen_str", data="hello wörld", dtype=h5py.string_dtype())
        s.create_dataset("vlen_bytes", data=b"ascii bytes", dtype=h5py.string_dtype("ascii"))
        s.create_dataset("fixed_str", data=np.bytes_("fixed"))
        s.create_dataset("nan", data=np.float64("nan"))
        s.create_dataset("inf", data=np.float64("inf"))

        t = f.create_group("strings")
        t.create_dataset("vlen", data=["alpha", "beta", "gamma δ", ""], dtype=h5py.string_dtype())
        t.create_dataset(
            "vlen_2d",
            data=np.array([["a", "b"], ["c", "d"]], dtype=object),
            dtype=h5py.string_dtype(),
        )
        t.create_dataset("fixed", data=np.array([b"ab", b"cde", b"f"], dtype="S3"))
        t.create_dataset(
            "fixed_chunked",
            data=np.array([b"x" * 5] * 300, dtype="S5"),
            chunks=(100,),
            compression="gzip",
        )
        t.create_dataset("vlen_ascii", data=[b"one", b"two"], dtype=h5py.string_dtype("ascii"))

        cp = f.create_group("compound")
        dt = np.dtype([("x", "<i4"), ("y", "<f8"), ("name", "S8")])
        cp.create_dataset(
            "table", data=np.array([(i, i / 3, b"n%d" % i) for i in range(6)], dtype=dt)
        )
        rdt = np.dtype([("idx_start", "<i4"), ("count", "<i4"), ("target", h5py.ref_dtype)])
        rows = np.array([(0, 5, f["chunked/gzip"].ref), (5, 3, f["contiguous/f8"].ref)], dtype=rdt)
        cp.create_dataset("with_refs", data=rows)

        r = f.create_group("references")
        r.create_dataset(
            "objrefs",
            data=[f["chunked"].ref, f["contiguous/f8"].ref, f["scalars"].ref],
            dtype=h5py.ref_dtype,
        )
        r.attrs["to_group"] = f["compact"].ref
        r.attrs["to_dataset"] = f["chunked/gzip"].ref
        f["chunked"].attrs["object_id"] = _oid(1)
        f["compact"].attrs["object_id"] = _oid(2)
        f["chunked/gzip"].attrs["object_id"] = _oid(3)

        a = f.create_group("attributes")
        a.attrs["int"] = 5
        a.attrs["i8"] = np.int8(-3)
        a.attrs["u64"] = np.uint64(2**63 + 1)
        a.attrs["float"] = 1.5
        a.attrs["f4"] = np.float32(0.1)
        a.attrs["nan"] = np.nan
        a.attrs["inf"] = np.inf
        a.attrs["ninf"] = -np.inf
        a.attrs["bool"] = True
        a.attrs["str"] = "text ü"
        a.attrs["bytes"] = np.bytes_(b"byte text")
        a.attrs["int_array"] = np.arange(4, dtype="<i2")
        a.attrs["float_array"] = np.array([1.0, np.nan, np.inf, -np.inf])
        a.attrs["bool_array"] = np.array([True, False])
        a.attrs["str_array"] = np.array(["a", "bc"], dtype=h5py.string_dtype())
        a.attrs["fixed_str_array"] = np.array([b"ab", b"c"], dtype="S2")
        a.attrs["int_2d"] = np.arange(6).reshape(2, 3)
        a.attrs["empty_array"] = np.zeros((0,), dtype="<f8")
        a.attrs.create("ascii_vlen", "ascii value", dtype=h5py.string_dtype("ascii"))
        d = a.create_dataset("with_attrs", data=np.arange(20, dtype="<f4"))
        d.attrs["unit"] = "volts"
        d.attrs["conversion"] = 0.001

        ln = f.create_group("links")
        ln["soft_group"] = h5py.SoftLink("/chunked")
        ln["soft_dataset"] = h5py.SoftLink("/contiguous/f8")
        ln.create_group("empty_group")
        f.create_group("deep/er/est").create_dataset("leaf", data=np.arange(3))


def _compact(group: h5py.Group, name: str, data: np.ndarray) -> None:
    space = h5py.h5s.create_simple(data.shape)
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    tid = h5py.h5t.py_create(data.dtype)
    dsid = h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=plist)
    dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, data)


def make_beyond_lindi(path: str) -> None:
    """What lindi 0.4 cannot index (it refuses or crashes on the whole file): LZF chunks
    (numcodecs has no LZF codec) and a compact dataset of 1,000 or more numbers (its bytes
    live in the object header, with no file offset to reference) a contiguous dataset that
    was never written (no storage allocated) and a scalar object reference."""
    rng = np.random.default_rng(8)
    with h5py.File(path, "w") as f:
        _compact(f, "compact_large", np.linspace(0, 1, 1200))
        f.create_dataset("contiguous_unwritten", shape=(2000,), dtype="<i4", fillvalue=9)
        f.create_dataset("scalar_ref", data=f["compact_large"].ref, dtype=h5py.ref_dtype)
        data = rng.integers(-100, 100, size=(300, 40)).astype("<i4")
        f.create_dataset("lzf", data=data, chunks=(64, 16), compression="lzf")
        f.create_dataset("lzf_shuffle", data=data, chunks=(64, 16), compression="lzf", shuffle=True)


def make_plugin_filters(path: str) -> None:
    """Chunks written with HDF5 plugin filters that this HDF5 build does not have (chunks are
    encoded here and written with write_direct_chunk): Zstandard (32015; numcodecs has a codec)
    and bitshuffle (32008; no numcodecs codec). Both datasets hold arange(1000) as int32."""
    import numcodecs

    data = np.arange(1000, dtype="<i4")
    zstd = numcodecs.Zstd(level=3)
    with h5py.File(path, "w") as f:
        for name, fid, vals in (("zstd", 32015, (3,)), ("bitshuffle", 32008, (0, 0, 4, 0, 2))):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((100,))
            dcpl.set_filter(fid, h5py.h5z.FLAG_OPTIONAL, vals)
            space = h5py.h5s.create_simple((1000,))
            dsid = h5py.h5d.create(f.id, name.encode(), h5py.h5t.STD_I32LE, space, dcpl=dcpl)
            for i in range(10):
                chunk = data[i * 100 : (i + 1) * 100]
                raw = bytes(zstd.encode(chunk)) if name == "zstd" else chunk.tobytes()
                dsid.write_direct_chunk((i * 100,), raw, filter_mask=0)


def make_external_link(path: str, other: str) -> None:
    """A file with an HDF5 external link (lindi cannot represent it)."""
    with h5py.File(other, "w") as g:
        g.create_dataset("x", data=np.arange(10))
    with h5py.File(path, "w") as f:
        f.create_dataset("ok", data=np.arange(5))
        f["ext"] = h5py.ExternalLink(other, "/x")


def make_region_ref(path: str) -> None:
    """A file with a region reference attribute (lindi cannot represent it)."""
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", data=np.arange(100))
        f.attrs["region"] = d.regionref[10:20]


def make_userblock(path: str, size: int = 2048) -> None:
    """A small file whose superblock follows a ``size``-byte user block."""
    with h5py.File(path, "w", userblock_size=size) as f:
        f.create_dataset("x", data=np.arange(2000, dtype="<i4"), chunks=(500,), compression="gzip")
        f.create_dataset("y", data=np.linspace(0, 1, 1500))
    with open(path, "r+b") as f:
        f.write(b"user block: not HDF5".ljust(64, b" "))


def make_many_chunks(path: str, n_chunks: int = 20000, chunk: int = 256) -> None:
    """One 1-D int32 dataset of ``n_chunks`` gzip chunks (``chunk`` values each)."""
    with h5py.File(path, "w") as f:
        data = (np.arange(n_chunks * chunk, dtype="<i4") * 7) % 1001
        f.create_dataset("data", data=data, chunks=(chunk,), compression="gzip", shuffle=True)


def make_many_objects(path: str, n_groups: int = 200, per_group: int = 3) -> None:
    """An NWB-shaped file with ``n_groups * (per_group + 1)`` objects and attributes on each."""
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.attrs["object_id"] = OBJECT_ID
        acq = f.create_group("acquisition")
        for i in range(n_groups):
            g = acq.create_group(f"series_{i:04d}")
            g.attrs["neurodata_type"] = "TimeSeries"
            g.attrs["object_id"] = _oid(100 + i)
            g.attrs["description"] = f"series {i}"
            for j in range(per_group):
                d = g.create_dataset(
                    f"d{j}",
                    data=rng.standard_normal((2000, 4)).astype("<f4"),
                    chunks=(500, 4),
                    compression="gzip",
                )
                d.attrs["unit"] = "volts"
                d.attrs["conversion"] = 1.0
