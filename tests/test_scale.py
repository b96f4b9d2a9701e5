"""A 1,000,000-key source mounts under 600 MiB RSS (issue 9, item 6), and every key is listed.

The references point at an unreachable URL: nothing is read, only the namespace is built and
walked (readdir, sizes from the references and the padding rule)."""

from __future__ import annotations

import os

import orjson

KEYS = 1_000_000
RSS_LIMIT = 600 * 2**20


def vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def test_million_keys_mount_under_600_mib(mount, tmp_path):
    zarray = {
        "chunks": [10],
        "compressor": None,
        "dtype": "<f8",
        "fill_value": 0,
        "filters": None,
        "order": "C",
        "shape": [9990],
        "zarr_format": 2,
    }
    refs: dict = {".zgroup": {"zarr_format": 2}}
    for a in range(KEYS // 1000):
        refs[f"g{a % 100}/arr{a}/.zarray"] = zarray
        for c in range(999):
            refs[f"g{a % 100}/arr{a}/{c}"] = [
                "http://unreachable.invalid/d.h5",
                a * 80_000 + c * 80,
                80,
            ]
    assert len(refs) == KEYS + 1
    src = tmp_path / "big.lindi.json"
    src.write_bytes(orjson.dumps({"refs": refs}))
    del refs
    m = mount(src, None, "--no-cache")
    after_mount = vm(m.pid, "VmHWM")
    n = sum(len(files) for _dirs, _sub, files in os.walk(m.path))
    assert n == KEYS + 1
    assert os.stat(m.path / "g7/arr7/998").st_size == 80
    peak = vm(m.pid, "VmHWM")
    print(f"\n1,000,000 keys: peak RSS {peak / 2**20:.0f} MiB ({after_mount / 2**20:.0f} at mount)")
    m.umount()
    assert peak < RSS_LIMIT, peak
