"""LINDI files written with plain Python (no lindi, no lindifuse code) for the read-only tests.

``write_tar`` lays out a ``.lindi.tar`` the way lindi does (ustar headers, ``.tar_entry.json``
first with 1024 data bytes, ``.tar_index.json``, a space-padded ``lindi.json``, then blobs),
computing every offset itself; ``write_dir`` and ``write_json`` make the other two containers.
``make_plain(folder)`` writes one small Zarr hierarchy three times (json, tar, d) using every
reference form lindi understands, and returns what each key must read as.
"""

from __future__ import annotations

import base64
import json
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCK = 512


def _pad512(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    ti.uid = ti.gid = 0
    buf = ti.tobuf(format=tarfile.USTAR_FORMAT)
    assert len(buf) == BLOCK, name
    return buf


def write_tar(
    path,
    rfs: dict,
    blobs: dict[str, bytes] | None = None,
    *,
    index_size: int = 4096,
    json_size: int | None = None,
    tamper=None,
) -> dict[str, tuple[int, int, int]]:
    """Write a lindi-style tar holding ``rfs`` as lindi.json and ``blobs`` as members.

    Returns ``{name: (header_offset, data_offset, size)}`` for every member. ``tamper``, if
    given, is called with the index document (a dict) before it is written, to make broken
    archives.
    """
    blobs = dict(blobs or {})
    text = json.dumps(rfs, indent=2, sort_keys=True).encode()
    if json_size is None:
        json_size = max(8192, _pad512(len(text) * 2))
    assert len(text) <= json_size
    lindi_json = text + b" " * (json_size - len(text))
    datas: list[tuple[str, bytes | None, int]] = [
        (".tar_entry.json", None, 1024),
        (".tar_index.json", None, index_size),
        ("lindi.json", lindi_json, len(lindi_json)),
    ] + [(name, data, len(data)) for name, data in blobs.items()]
    layout: dict[str, tuple[int, int, int]] = {}
    pos = 0
    for name, _, size in datas:
        layout[name] = (pos, pos + BLOCK, size)
        pos += BLOCK + _pad512(size)
    files = [{"n": n, "o": o, "d": d, "s": s} for n, (o, d, s) in layout.items()]
    index_doc = {"files": files}
    if tamper is not None:
        tamper(index_doc)
    index = json.dumps(index_doc, indent=2).encode()
    assert len(index) <= index_size, "index_size too small"
    index += b" " * (index_size - len(index))
    io, idd, isz = layout[".tar_index.json"]
    entry = json.dumps({"index": {"n": ".tar_index.json", "o": io, "d": idd, "s": isz}}).encode()
    entry += b" " * (1024 - len(entry))
    with open(path, "wb") as f:
        for name, data, size in datas:
            if name == ".tar_entry.json":
                data = entry
            elif name == ".tar_index.json":
                data = index
            assert data is not None and len(data) == size
            f.write(_header(name, size))
            f.write(data)
            f.write(b"\0" * (_pad512(size) - size))
        f.write(b"\0" * 1024)
    return layout


def write_dir(path, rfs: dict, blobs: dict[str, bytes] | None = None) -> None:
    """A ``.lindi.d`` folder: lindi.json plus each blob as a file under it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, data in (blobs or {}).items():
        p = path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (path / "lindi.json").write_text(json.dumps(rfs, indent=2, sort_keys=True))


def write_json(path, rfs: dict) -> None:
    Path(path).write_text(json.dumps(rfs, indent=2, sort_keys=True))


def b64(data: bytes) -> str:
    return "base64:" + base64.b64encode(data).decode("ascii")


def zarray(shape, chunks, dtype, compressor=None, filters=None) -> dict:
    return {
        "chunks": list(chunks),
        "compressor": compressor,
        "dtype": dtype,
        "fill_value": 0,
        "filters": filters,
        "order": "C",
        "shape": list(shape),
        "zarr_format": 2,
    }


@dataclass
class Plain:
    """The plain-Python sources and what must be read from them."""

    dir: Path
    data: Path  # the external data file every container references
    sources: dict[str, Path]  # "plain.lindi.json" / ".tar" / ".d" -> path
    expected: dict[str, dict[str, bytes]]  # per source name: {key: bytes a mount serves}
    arrays: dict[str, np.ndarray]  # dataset path -> values
    refs: dict[str, dict] = field(default_factory=dict)  # per source name: its lindi.json


PLAIN_NAMES = ("plain.lindi.json", "plain.lindi.tar", "plain.lindi.d")


def make_plain(folder) -> Plain:
    """One Zarr hierarchy as plain.lindi.{json,tar,d}, using text, base64 and JSON-object
    values, ``[path, offset, size]`` refs with and without a template, ``./`` refs (tar and
    d), short chunks of uncompressed arrays (zero-padded) and of a zlib array (not padded)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.arange(10, dtype="<f4") * 1.5  # chunks (4,): 16, 16, 8 stored bytes (padded)
    ints = np.array([7, -3, 12, 999, -32000, 5], dtype="<i2")  # chunks (4,): 8, 4 bytes
    text = np.frombuffer(b"hello world", dtype="u1")
    squares = (np.arange(300, dtype="<i4") ** 2).astype("<i4")
    matrix = np.arange(30, dtype="<f8").reshape(5, 6) / 7.0  # chunks (3, 4)

    def mchunk(i: int, j: int) -> bytes:  # full-size edge chunks, as zarr stores them
        c = np.zeros((3, 4), "<f8")
        part = matrix[i * 3 : i * 3 + 3, j * 4 : j * 4 + 4]
        c[: part.shape[0], : part.shape[1]] = part
        return c.tobytes()

    mats = {f"{i}.{j}": mchunk(i, j) for i in range(2) for j in range(2)}
    zchunk = zlib.compress(squares.tobytes(), 6)
    assert len(zchunk) < squares.nbytes  # a "short" compressed chunk
    # the external data file: some garbage, then ramp chunks, then the rest
    rb = ramp.tobytes()
    pieces = [b"\xa5" * 100, rb[0:16], rb[16:32], rb[32:40], zchunk, *mats.values(), b"end"]
    offs = []
    pos = 0
    for p in pieces:
        offs.append(pos)
        pos += len(p)
    data = folder / "plain-data.bin"
    data.write_bytes(b"".join(pieces))
    matrix_blob = b"".join(mats.values())

    common = {
        ".zgroup": {"zarr_format": 2},
        ".zattrs": {"title": "plain", "unit": "\u00b5V", "nested": {"a": [1, 2.5, None, True]}},
        "g/.zgroup": '{"zarr_format": 2}',  # text form
        "g/.zattrs": b64(json.dumps({"kind": "base64 attrs"}).encode()),
        "g/ramp/.zarray": zarray((10,), (4,), "<f4"),
        "g/ramp/.zattrs": {"units": "m"},
        "g/ramp/0": ["{{data}}", offs[1], 16],  # template
        "g/ramp/1": [str(data), offs[2], 16],  # absolute path
        "g/ints/.zarray": zarray((6,), (4,), "<i2"),
        "g/ints/0": b64(ints[:4].tobytes()),
        "g/ints/1": b64(ints[4:].tobytes()),  # 4 of 8 bytes: padded
        "g/text/.zarray": zarray((11,), (11,), "|u1"),
        "g/text/0": "hello world",  # text chunk
        "g/squares/.zarray": zarray((300,), (300,), "<i4", {"id": "zlib", "level": 6}),
        "g/matrix/.zarray": zarray((5, 6), (3, 4), "<f8"),
        "g/matrix/.zattrs": {"_ARRAY_DIMENSIONS": ["y", "x"]},
    }
    internal = {  # for tar / d: ./ refs; for json: refs into the data file
        "g/ramp/2": ("blobs/g/ramp/2", rb[32:40], 0, 8, offs[3]),
        "g/squares/0": ("blobs/g/squares/0", zchunk, 0, len(zchunk), offs[4]),
    }
    for n, k in enumerate(mats):
        internal[f"g/matrix/{k}"] = ("blobs/g/matrix/all", matrix_blob, n * 96, 96, offs[5 + n])
    blobs: dict[str, bytes] = {}
    refs_internal, refs_external = dict(common), dict(common)
    for key, (member, blob, off, size, ext_off) in internal.items():
        blobs[member] = blob
        refs_internal[key] = [f"./{member}", off, size]
        refs_external[key] = ["{{data}}", ext_off, size]
    templates = {"data": str(data)}

    def doc(refs):
        return {"version": 1, "templates": templates, "refs": refs}

    sources = {n: folder / n for n in PLAIN_NAMES}
    write_json(sources["plain.lindi.json"], doc(refs_external))
    write_tar(sources["plain.lindi.tar"], doc(refs_internal), blobs)
    write_dir(sources["plain.lindi.d"], doc(refs_internal), blobs)

    def obj(key: str) -> bytes:  # the files are written with sort_keys=True
        return json.dumps(common[key], sort_keys=True).encode()

    exp = {
        ".zgroup": obj(".zgroup"),
        ".zattrs": obj(".zattrs"),
        "g/.zgroup": b'{"zarr_format": 2}',
        "g/.zattrs": json.dumps({"kind": "base64 attrs"}).encode(),
        "g/ramp/.zarray": obj("g/ramp/.zarray"),
        "g/ramp/.zattrs": b'{"units": "m"}',
        "g/ramp/0": rb[0:16],
        "g/ramp/1": rb[16:32],
        "g/ramp/2": rb[32:40] + b"\0" * 8,
        "g/ints/.zarray": obj("g/ints/.zarray"),
        "g/ints/0": ints[:4].tobytes(),
        "g/ints/1": ints[4:].tobytes() + b"\0" * 4,
        "g/text/.zarray": obj("g/text/.zarray"),
        "g/text/0": b"hello world",
        "g/squares/.zarray": obj("g/squares/.zarray"),
        "g/squares/0": zchunk,  # compressed: served as stored, never padded
        "g/matrix/.zarray": obj("g/matrix/.zarray"),
        "g/matrix/.zattrs": obj("g/matrix/.zattrs"),
        **{f"g/matrix/{k}": v for k, v in mats.items()},
    }
    assert set(exp) == set(refs_internal) == set(refs_external)
    return Plain(
        dir=folder,
        data=data,
        sources=sources,
        expected={n: exp for n in PLAIN_NAMES},
        arrays={
            "g/ramp": ramp,
            "g/ints": ints,
            "g/text": text,
            "g/squares": squares,
            "g/matrix": matrix,
        },
        refs={
            "plain.lindi.json": doc(refs_external),
            "plain.lindi.tar": doc(refs_internal),
            "plain.lindi.d": doc(refs_internal),
        },
    )


def walk_files(root) -> dict[str, bytes]:
    """{relative path: bytes} of every regular file under ``root``."""
    out = {}
    root = str(root)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out
