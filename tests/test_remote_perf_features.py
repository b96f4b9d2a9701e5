"""Remote read scheduling through real mounts: concurrent neighbouring reads merge into fewer
requests, sequential reads trigger read-ahead (and --no-readahead turns it off), and DANDI asset
URLs are resolved once, reused until expiry, re-resolved on 403, with the API key sent to the
API host only and cache keys on the stable asset URL."""

from __future__ import annotations

import json
import os
import random
import threading
import time

import pytest
from httpserver import RangeServer
from remote_data import build_tar, chunk_bytes

CHUNK = 8192


def stats(m):
    return json.loads(os.getxattr(m.path, "user.lindifuse.stats"))


def read_chunks(m, data, order):
    for i in order:
        assert (m.path / "x" / str(i)).read_bytes() == data.expected(i), f"chunk {i}"


@pytest.fixture
def tar(http_server):
    data = build_tar(http_server.root / "d.lindi.tar", 64, CHUNK)
    return data, http_server.url("d.lindi.tar")


def test_sequential_reads_trigger_readahead(mount, http_server, tar):
    data, url = tar
    m = mount(url, None, "--no-cache")
    http_server.reset_log()
    read_chunks(m, data, range(data.nchunks))
    s = stats(m)["fetch"]
    assert s["readahead_windows"] >= 1 and s["readahead_chunks"] >= data.nchunks - 2
    # one request for chunk 0, then whole windows of siblings per request
    assert http_server.count() <= 4, [r.range for r in http_server.log]


def test_no_readahead_flag(mount, http_server, tar):
    data, url = tar
    m = mount(url, None, "--no-cache", "--no-readahead")
    http_server.reset_log()
    read_chunks(m, data, range(16))
    assert http_server.count() == 16
    assert stats(m)["fetch"]["readahead_windows"] == 0


def test_random_reads_do_not_read_ahead(mount, http_server, tar):
    data, url = tar
    m = mount(url, None, "--no-cache")
    order = list(range(2, data.nchunks, 5))
    random.Random(4).shuffle(order)
    http_server.reset_log()
    read_chunks(m, data, order)
    assert stats(m)["fetch"]["readahead_windows"] == 0
    assert http_server.count() == len(order)


def test_concurrent_neighbouring_reads_are_merged(mount, http_server, tar):
    data, url = tar
    m = mount(url, None, "--no-cache", "--no-readahead")
    http_server.latency = 0.1  # requests pile up while the first ones are in flight
    http_server.reset_log()
    barrier = threading.Barrier(16)
    errors = []

    def reader(i):
        try:
            barrier.wait(10)
            read_chunks(m, data, [i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16, 32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    s = stats(m)["fetch"]
    assert s["merged_requests"] >= 1
    assert http_server.count() < 16, [r.range for r in http_server.log]


# -- DANDI ---------------------------------------------------------------------------------------

ASSET = "api/assets/3f7c/download/"


@pytest.fixture
def dandi(tmp_path):
    """An "API" server redirecting an asset URL to a pre-signed URL on an "S3" server, and a
    local lindi.json whose chunk refs are byte ranges of the asset URL."""
    (tmp_path / "s3").mkdir()
    (tmp_path / "api").mkdir()
    n = 12
    blob = b"".join(chunk_bytes(i, CHUNK) for i in range(n))
    (tmp_path / "s3" / "asset.bin").write_bytes(blob)
    with RangeServer(tmp_path / "s3") as s3, RangeServer(tmp_path / "api") as api:
        asset = api.url(ASSET)
        refs = {
            ".zgroup": {"zarr_format": 2},
            "x/.zarray": {
                "chunks": [CHUNK],
                "compressor": None,
                "dtype": "|u1",
                "fill_value": 0,
                "filters": None,
                "order": "C",
                "shape": [CHUNK * n],
                "zarr_format": 2,
            },
        }
        for i in range(n):
            refs[f"x/{i}"] = [asset, i * CHUNK, CHUNK]
        src = tmp_path / "dandi.lindi.json"
        src.write_text(json.dumps({"refs": refs}))
        env = dict(os.environ)
        env["LINDIFUSE_DANDI_API_HOSTS"] = f"127.0.0.1:{api.port}"
        env["DANDI_API_KEY"] = "s3cret"

        def sign(expires: int) -> None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            api.add_redirect(
                ASSET,
                s3.url(
                    f"asset.bin?X-Amz-Date={stamp}&X-Amz-Expires={expires}"
                    f"&X-Amz-Signature={os.urandom(4).hex()}"
                ),
            )

        sign(3600)
        yield api, s3, src, env, sign


def test_dandi_resolve_once_api_key_expiry_403_and_stable_cache_keys(mount, dandi, tmp_path):
    api, s3, src, env, sign = dandi
    cache = tmp_path / "cache"

    def expect(m, i):
        assert (m.path / "x" / str(i)).read_bytes() == chunk_bytes(i, CHUNK)

    m = mount(src, None, "--cache-dir", cache, "--no-readahead", env=env)
    for i in range(4):
        expect(m, i)
    assert api.count() == 1  # resolved once, then the signed URL is reused
    assert all(r.authorization == "token s3cret" for r in api.log)
    assert s3.log and all(r.authorization is None for r in s3.log)
    assert all("X-Amz-Signature" in r.query for r in s3.log)

    # the signed URL is refused (revoked or expired early): resolve again, then succeed
    s3.fail_next("asset.bin", 403)
    expect(m, 4)
    assert api.count() == 2
    assert stats(m)["dandi"]["forbidden"] == 1

    # a short-lived signature is re-resolved once it expires
    sign(1)
    s3.fail_next("asset.bin", 403)
    expect(m, 5)  # 403 -> resolve -> the new, 1-second URL
    assert api.count() == 3
    time.sleep(1.1)
    expect(m, 6)
    assert api.count() == 4 and stats(m)["dandi"]["expired"] >= 1
    m.umount()

    # cache keys use the asset URL, not the signed one: a new signature still hits the disk
    sign(3600)
    s3.reset_log()
    m2 = mount(src, None, "--cache-dir", cache, "--no-readahead", env=env)
    for i in range(7):
        expect(m2, i)
    data_requests = [r for r in s3.log if r.range != "bytes=0-0"]
    assert data_requests == [], [r.range for r in s3.log]
    assert stats(m2)["disk_cache"]["hits"] == 7
