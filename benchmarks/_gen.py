"""Benchmark data: a big uncompressed array in a ``.lindi.tar``, and many-key ``.lindi.json`` files.

The tar is written directly in lindi's layout (see shared docs, lindi-format.md section 2) with
``lindifuse.tarfmt`` for the ustar headers: ``.tar_entry.json`` first (header at 0, data at 512,
1024 bytes), then ``.tar_index.json`` and ``lindi.json`` (both space-padded), then one
``blobs/x/<i>`` member per chunk, then two zero blocks. lindi opens it (the benchmark reads it
with lindi's own reader).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lindifuse.formats import tarfmt

BLOCK = tarfmt.BLOCK
ENTRY_SIZE = tarfmt.ENTRY_SIZE


def _pad_json(obj: object, size: int) -> bytes:
    raw = json.dumps(obj, indent=2, sort_keys=True).encode()
    if len(raw) > size:
        raise ValueError("JSON does not fit its padded member")
    return raw + b" " * (size - len(raw))


def expected_values(start: int, count: int) -> np.ndarray:
    """The array's values ``start .. start+count``: float32 of (index mod 2**24), exact."""
    return (np.arange(start, start + count, dtype=np.uint32) & 0xFFFFFF).astype(np.float32)


@dataclass
class ArrayTar:
    path: Path
    nbytes: int  # bytes of array data
    chunk_bytes: int
    nchunks: int
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    refs: dict  # the lindi.json refs ("./blobs/..." targets)
    members: dict[str, tuple[int, int]]  # member name -> (data offset, size)

    def ranges(self) -> list[tuple[str, int, int]]:
        """(key, absolute offset in the tar, size) of every chunk."""
        return [
            (f"x/{i}", self.members[f"blobs/x/{i}"][0], self.chunk_bytes)
            for i in range(self.nchunks)
        ]

    def url_refs(self, url: str) -> dict:
        """The refs with ``./`` targets rewritten to byte ranges of ``url`` (for fsspec)."""
        out = {}
        for k, v in self.refs.items():
            if isinstance(v, list):
                d, _ = self.members[v[0][2:]]
                out[k] = [url, d + v[1], v[2]]
            elif isinstance(v, dict):
                out[k] = json.dumps(v)
            else:
                out[k] = v
        return {"version": 1, "refs": out}


def build_array_tar(path: Path, nbytes: int, chunk_bytes: int) -> ArrayTar:
    """A float32 1-D array ``x`` of ``nbytes`` in uncompressed chunks of ``chunk_bytes``,
    stored as ``./blobs/x/<i>`` members of a ``.lindi.tar``."""
    itemsize = 4
    assert nbytes % chunk_bytes == 0 and chunk_bytes % itemsize == 0
    n = nbytes // itemsize
    chunk_n = chunk_bytes // itemsize
    nchunks = nbytes // chunk_bytes
    refs: dict = {
        ".zgroup": {"zarr_format": 2},
        ".zattrs": {},
        "x/.zarray": {
            "chunks": [chunk_n],
            "compressor": None,
            "dtype": "<f4",
            "fill_value": 0.0,
            "filters": None,
            "order": "C",
            "shape": [n],
            "zarr_format": 2,
        },
        "x/.zattrs": {"description": "lindifuse benchmark array"},
    }
    for i in range(nchunks):
        refs[f"x/{i}"] = [f"./blobs/x/{i}", 0, chunk_bytes]
    rfs = {"generationMetadata": {"generatedBy": "lindifuse benchmarks"}, "refs": refs}
    lj_raw_len = len(json.dumps(rfs, indent=2, sort_keys=True).encode())
    lj_size = tarfmt.grown_size(lj_raw_len)

    names = [".tar_entry.json", ".tar_index.json", "lindi.json"] + [
        f"blobs/x/{i}" for i in range(nchunks)
    ]
    # Upper bound of the index length (offsets written with 13 digits), then its padded size.
    big = 10**12
    probe = {"files": [{"n": nm, "o": big, "d": big, "s": big} for nm in names]}
    idx_size = tarfmt.grown_size(len(json.dumps(probe, indent=2, sort_keys=True)))
    sizes = {".tar_entry.json": ENTRY_SIZE, ".tar_index.json": idx_size, "lindi.json": lj_size}
    sizes.update({f"blobs/x/{i}": chunk_bytes for i in range(nchunks)})
    files = []
    pos = 0
    for nm in names:
        files.append({"n": nm, "o": pos, "d": pos + BLOCK, "s": sizes[nm]})
        pos += BLOCK + tarfmt.padded(sizes[nm])
    index = {"files": files}
    entry = {"index": files[1]}
    members = {f["n"]: (f["d"], f["s"]) for f in files}

    tmp = path.with_suffix(".tmp")
    base = np.arange(chunk_n, dtype=np.uint32)
    with open(tmp, "wb") as out:
        out.write(
            tarfmt.encode_header(".tar_entry.json", ENTRY_SIZE) + _pad_json(entry, ENTRY_SIZE)
        )
        out.write(tarfmt.encode_header(".tar_index.json", idx_size) + _pad_json(index, idx_size))
        out.write(tarfmt.encode_header("lindi.json", lj_size) + _pad_json(rfs, lj_size))
        for i in range(nchunks):
            data = ((base + np.uint32(i * chunk_n)) & 0xFFFFFF).astype(np.float32).tobytes()
            out.write(tarfmt.encode_header(f"blobs/x/{i}", chunk_bytes))
            out.write(data)
            out.write(b"\0" * (tarfmt.padded(len(data)) - len(data)))
        out.write(b"\0" * (2 * BLOCK))
        assert out.tell() == pos + 2 * BLOCK
    os.replace(tmp, path)
    return ArrayTar(path, nbytes, chunk_bytes, nchunks, (n,), (chunk_n,), refs, members)


def build_keys_json(path: Path, nkeys: int, per_group: int = 1000, chunk: int = 16) -> int:
    """A ``.lindi.json`` with ``nkeys`` chunk keys ``g<k>/a/<j>`` (``k = i // per_group``):
    even chunks inline (``base64:``), odd ones byte ranges of a local blob file; one uint8
    array per group. Metadata values are JSON strings so fsspec's reference file system reads
    the same file. Written like lindi writes (indent=2, sorted keys). Returns its size."""
    blob = path.with_name(path.name.replace(".lindi.json", "") + ".blob")
    ngroups = (nkeys + per_group - 1) // per_group
    nblob = (nkeys + 1) // 2
    with open(blob, "wb") as f:
        f.write(bytes(range(256)) * (nblob * chunk // 256 + 1))
    blob_s = str(blob.resolve())
    payload = "base64:" + base64.b64encode(bytes(range(chunk))).decode()
    refs: dict = {".zgroup": json.dumps({"zarr_format": 2}), ".zattrs": "{}"}
    for k in range(ngroups):
        n_in = min(per_group, nkeys - k * per_group)
        refs[f"g{k}/.zgroup"] = json.dumps({"zarr_format": 2})
        refs[f"g{k}/a/.zarray"] = json.dumps(
            {
                "chunks": [chunk],
                "compressor": None,
                "dtype": "|u1",
                "fill_value": 0,
                "filters": None,
                "order": "C",
                "shape": [n_in * chunk],
                "zarr_format": 2,
            }
        )
        for j in range(n_in):
            i = k * per_group + j
            refs[f"g{k}/a/{j}"] = payload if i % 2 == 0 else [blob_s, (i // 2) * chunk, chunk]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"refs": refs, "version": 1}, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path.stat().st_size


def plain_array_copy(t: ArrayTar, work: Path) -> Path:
    """The keys of ``t`` as plain files on local disk (zarr 2's own floor), written from the
    tar's bytes under ``work``, in a folder named by the array's size: a copy made for another
    size (a ``--quick`` run's 64 MiB) is never measured as this one."""
    out = work / f"plain-{t.nbytes}.zarr"
    done = out / ".complete"
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    with open(t.path, "rb") as tar:
        for key, v in t.refs.items():
            path = out / key
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(v, list):
                offset, _ = t.members[v[0][2:]]  # "./blobs/x/<i>"
                data = os.pread(tar.fileno(), v[2], offset + v[1])
            else:
                data = json.dumps(v).encode()
            path.write_bytes(data)
    done.write_bytes(b"")
    return out


def materialize_tree(json_path: Path, out: Path) -> None:
    """Write every key of a ``build_keys_json`` file as a plain file under ``out`` (the local
    disk baseline of the walk benchmark). Reused when ``out`` is complete."""
    done = out / ".complete"
    if done.exists():
        return
    with open(json_path) as f:
        refs = json.load(f)["refs"]
    blobs: dict[str, bytes] = {}
    made: set[Path] = set()
    for key, v in refs.items():
        path = out / key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        if isinstance(v, list):
            if v[0] not in blobs:
                blobs[v[0]] = Path(v[0]).read_bytes()
            data = blobs[v[0]][v[1] : v[1] + v[2]]
        elif v.startswith("base64:"):
            data = base64.b64decode(v[7:])
        else:
            data = v.encode()
        path.write_bytes(data)
    done.write_bytes(b"")
