"""CAR files for benchmarks/bench_car.py, written block by block (never held whole in memory).

``write_array_car(path, n_chunks, chunk_bytes)``: an ipldstore-layout CARv1 (a DAG-CBOR root map
``{".zgroup", "data": {".zarray", "0", "1", ...}}``, chunks as raw sha2-256 blocks) of one
uncompressed float32 array, and the byte range of every chunk's block inside the file, so that
a plain ``.lindi.json`` can reference the very same bytes without verification (the baseline).
Chunk ``i`` holds float32 values ``i * n .. i * n + n - 1`` (n = chunk_bytes / 4).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from carwriter import DAG_CBOR, RAW, dag_cbor, header, link, varint  # noqa: E402


def chunk(i: int, chunk_bytes: int) -> bytes:
    n = chunk_bytes // 4
    return (np.arange(n, dtype=np.float32) + np.float32(i * n)).tobytes()


def zarray(n_chunks: int, chunk_bytes: int) -> dict:
    n = chunk_bytes // 4
    return {
        "chunks": [n],
        "compressor": None,
        "dtype": "<f4",
        "fill_value": 0.0,
        "filters": None,
        "order": "C",
        "shape": [n * n_chunks],
        "zarr_format": 2,
    }


def write_array_car(path: Path, n_chunks: int, chunk_bytes: int) -> dict[str, tuple[int, int]]:
    """Write the CAR; returns {chunk key: (offset, size)} of each chunk's bytes in the file."""
    cids = []
    for i in range(n_chunks):
        d = hashlib.sha256(chunk(i, chunk_bytes)).digest()
        cids.append(varint(1) + varint(RAW) + b"\x12\x20" + d)
    data = {".zarray": zarray(n_chunks, chunk_bytes)}
    for i, c in enumerate(cids):
        data[str(i)] = link(c)
    root = dag_cbor({".zgroup": {"zarr_format": 2}, "data": data})
    root_cid = varint(1) + varint(DAG_CBOR) + b"\x12\x20" + hashlib.sha256(root).digest()
    where: dict[str, tuple[int, int]] = {}
    with open(path, "wb") as f:
        f.write(header([root_cid]))
        f.write(varint(len(root_cid) + len(root)) + root_cid + root)
        for i, c in enumerate(cids):
            body = chunk(i, chunk_bytes)
            f.write(varint(len(c) + len(body)) + c)
            where[f"data/{i}"] = (f.tell(), len(body))
            f.write(body)
    return where


def write_baseline_json(path: Path, car_url: str, n_chunks: int, chunk_bytes: int,
                        where: dict[str, tuple[int, int]]) -> None:  # fmt: skip
    """A .lindi.json whose chunk references are the byte ranges of the CAR's raw blocks."""
    refs: dict = {".zgroup": {"zarr_format": 2}, "data/.zarray": zarray(n_chunks, chunk_bytes)}
    for key, (off, size) in where.items():
        refs[key] = [car_url, off, size]
    path.write_text(json.dumps({"version": 1, "refs": refs}))
