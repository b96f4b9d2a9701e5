"""Small datasets for the remote-read tests: a .lindi.tar holding one uint8 array ``x`` whose
chunks are tar members (``./blobs/x/<i>``), written in lindi's layout with lindifuse.tarfmt.

Chunk ``i`` holds ``chunk_bytes(i, size, seed)``: changing ``seed`` gives an object of the same
size and layout but other bytes (a "replaced" object on the server).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lindifuse.formats import tarfmt

MARKER = "lindifuse-remote-test-marker"


def chunk_bytes(i: int, size: int, seed: int = 0) -> bytes:
    """Deterministic, distinct content for chunk ``i``."""
    head = f"chunk {i} seed {seed} ".encode()
    body = bytes((i * 31 + seed * 7 + k) % 251 for k in range(min(size, 997)))
    data = (head + body * (size // max(1, len(body)) + 1))[:size]
    return data


@dataclass
class TarData:
    path: Path
    nchunks: int
    chunk: int
    seed: int
    members: dict[str, tarfmt.Member]

    def keys(self) -> list[str]:
        return [f"x/{i}" for i in range(self.nchunks)]

    def expected(self, i: int) -> bytes:
        return chunk_bytes(i, self.chunk, self.seed)

    def offset(self, i: int) -> int:
        return self.members[f"blobs/x/{i}"].d


def build_tar(path: Path, nchunks: int, chunk: int, seed: int = 0) -> TarData:
    """Write the archive to ``path`` (atomically: a server never serves half of it)."""
    refs: dict = {
        ".zgroup": {"zarr_format": 2},
        ".zattrs": {},
        "x/.zarray": {
            "chunks": [chunk],
            "compressor": None,
            "dtype": "|u1",
            "fill_value": 0,
            "filters": None,
            "order": "C",
            "shape": [chunk * nchunks],
            "zarr_format": 2,
        },
        "x/.zattrs": {"marker": MARKER},
    }
    for i in range(nchunks):
        refs[f"x/{i}"] = [f"./blobs/x/{i}", 0, chunk]
    lindi_json = tarfmt.padded_json(json.dumps({"refs": refs}, indent=2, sort_keys=True).encode())
    names = [tarfmt.ENTRY_NAME, tarfmt.INDEX_NAME, tarfmt.LINDI_JSON_NAME] + [
        f"blobs/x/{i}" for i in range(nchunks)
    ]
    # The index lists offsets; size its member for the largest numbers it may hold.
    probe = tarfmt.encode_index(tarfmt.Member(n, 10**12, 10**12, 10**12) for n in names)
    index_size = len(tarfmt.padded_json(probe))
    sizes = {tarfmt.ENTRY_NAME: tarfmt.ENTRY_SIZE, tarfmt.INDEX_NAME: index_size}
    sizes[tarfmt.LINDI_JSON_NAME] = len(lindi_json)
    members: dict[str, tarfmt.Member] = {}
    pos = 0
    for n in names:
        size = sizes.get(n, chunk)
        members[n] = tarfmt.Member(n, pos, pos + tarfmt.BLOCK, size)
        pos += tarfmt.BLOCK + tarfmt.padded(size)
    index = tarfmt.padded_json(tarfmt.encode_index(members.values()), index_size)
    data = {
        tarfmt.ENTRY_NAME: tarfmt.encode_entry(members[tarfmt.INDEX_NAME]),
        tarfmt.INDEX_NAME: index,
        tarfmt.LINDI_JSON_NAME: lindi_json,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for n, m in members.items():
            payload = data[n] if n in data else chunk_bytes(int(n.rsplit("/", 1)[1]), chunk, seed)
            assert len(payload) == m.s, n
            f.write(tarfmt.encode_headers(n, m.s))
            f.write(payload + b"\0" * (tarfmt.padded(m.s) - m.s))
        f.write(tarfmt.TRAILER)
    os.replace(tmp, path)
    return TarData(path, nchunks, chunk, seed, members)
