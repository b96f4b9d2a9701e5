"""Dandiset mounts (`lindifuse mount dandi://...`) and `lindifuse info dandi://...` against a
fake DANDI archive on 127.0.0.1 (tests/fake_dandi.py): the API, a bucket the asset downloads
redirect to, and a LINDI index server that has indexes for some assets.

Dandiset 000001 (published 0.240101.0001 and a draft with one more asset):
  sub-01/sub-01_ses-1_ecephys.nwb   NWB with a LINDI index (made by lindi, refs = download URL)
  sub-02/sub-02_ses-1_ecephys.nwb   NWB without an index (404): indexed from the HDF5 file
  stimuli/movie.bin                 a plain file (random bytes)
  sub-03/sub-03_sample.ome.zarr     a Zarr asset: skipped
  sub-04/sub-04_broken.nwb          a bad index and a blob that is not HDF5: EIO
Dandiset 000002: 10,000 NWB assets (one shared small blob), published.
Dandiset 000003: embargoed.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import random
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from fake_dandi import FakeArchive
from harness import run_cli

PUB = "0.240101.0001"
PUB2 = "0.240201.0001"
A_IDX = "sub-01/sub-01_ses-1_ecephys.nwb"
A_H5 = "sub-02/sub-02_ses-1_ecephys.nwb"
A_FILE = "stimuli/movie.bin"
A_ZARR = "sub-03/sub-03_sample.ome.zarr"
A_BAD = "sub-04/sub-04_broken.nwb"
A_DRAFT = "sub-05/sub-05_draft-only.bin"
N_MANY = 10_000

ARRAYS = [
    "acquisition/position/data",
    "acquisition/position/timestamps",
    "acquisition/speed/data",
    "acquisition/ephys/data",
    "processing/behavior/smoothed/data",
    "units/spike_times",
]


class Archive:
    def __init__(self, fa: FakeArchive, root: Path) -> None:
        self.fa = fa
        self.root = root
        self.files: dict[str, Path] = {}
        self.assets: dict[str, dict] = {}
        self.movie = b""

    def args(self, cache_dir: Path, *more: str) -> list[str]:
        return [
            "--dandi-api",
            self.fa.api_url,
            "--lindi-url-template",
            self.fa.template,
            "--cache-dir",
            str(cache_dir),
            *more,
        ]


@pytest.fixture(scope="session")
def archive(tmp_path_factory, lindi_gen):
    root = tmp_path_factory.mktemp("dandi")
    with FakeArchive(root / "srv") as fa:
        ar = Archive(fa, root)
        fa.add_dandiset("000001", published=[PUB])
        for name in ("a.nwb", "b.nwb"):
            lindi_gen("make-nwb-full", root / name)
        lindi_gen("make-nwb", root / "small.nwb")
        ar.files = {A_IDX: root / "a.nwb", A_H5: root / "b.nwb"}
        ar.assets[A_IDX] = fa.add_asset("000001", A_IDX, root / "a.nwb")
        ar.assets[A_H5] = fa.add_asset("000001", A_H5, root / "b.nwb")
        ar.movie = random.Random(1).randbytes(300_000)
        ar.assets[A_FILE] = fa.add_asset("000001", A_FILE, ar.movie)
        ar.assets[A_ZARR] = fa.add_asset("000001", A_ZARR, zarr=True)
        ar.assets[A_BAD] = fa.add_asset("000001", A_BAD, b"this is not an HDF5 file\n" * 100)
        ar.assets[A_DRAFT] = fa.add_asset("000001", A_DRAFT, b"draft only\n", versions=["draft"])
        # lindi's own index of asset A, its chunk refs naming the asset's download URL
        idx = root / "a.nwb.lindi.json"
        lindi_gen("to-lindi", root / "a.nwb", idx, "--url", fa.download_url(ar.assets[A_IDX]))
        fa.set_index("000001", ar.assets[A_IDX], idx)
        bad = root / "bad.lindi.json"
        bad.write_text('{"refs": {".zgroup": ')
        fa.set_index("000001", ar.assets[A_BAD], bad)
        # 10,000 assets sharing one small NWB blob
        fa.add_dandiset("000002", published=[PUB2])
        blob = fa.add_blob(root / "small.nwb")
        for i in range(N_MANY):
            fa.add_asset(
                "000002", f"sub-{i // 100:03d}/sub-{i // 100:03d}_ses-{i % 100:02d}.nwb", blob=blob
            )
        # an index with an _EXTERNAL_ARRAY_LINK (a dataset of 1,100 chunks)
        fa.add_dandiset("000004", published=[PUB])
        lindi_gen("make-h5", root / "ext.nwb", "--external-link")
        ar.files["ext"] = root / "ext.nwb"
        ext = fa.add_asset("000004", "sub-01/ext.nwb", root / "ext.nwb")
        ext_idx = root / "ext.lindi.json"
        lindi_gen("to-lindi", root / "ext.nwb", ext_idx, "--url", fa.download_url(ext))
        fa.set_index("000004", ext, ext_idx)
        fa.add_dandiset("000003", published=[], embargoed=True)
        fa.add_asset("000003", "sub-01/secret.bin", b"embargoed bytes")
        ar.files["small"] = root / "small.nwb"
        yield ar


@pytest.fixture
def fa(archive):
    archive.fa.down = False
    archive.fa.reset_logs()
    yield archive.fa
    archive.fa.down = False


def _same_as_h5(asset_dir: Path, h5path: Path, names=ARRAYS) -> None:
    g = zarr.open_group(str(asset_dir), mode="r", zarr_format=2)
    with h5py.File(h5path, "r") as f:
        for name in names:
            want = f[name][()]
            got = g[name][...]
            assert np.array_equal(np.asarray(got), want), name
            assert np.asarray(got).dtype == want.dtype, name


def _bucket_paths(fa: FakeArchive) -> set[str]:
    return {r.path for r in fa.bucket.log}


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_mount_dandiset_nwb_assets_as_zarr(archive, fa, mount, tmp_path):
    m = mount("dandi://000001", None, *archive.args(tmp_path / "cache"))
    mp = m.path
    # the published version is chosen; only the listing was requested
    assert sorted(os.listdir(mp)) == ["stimuli", "sub-01", "sub-02", "sub-04"]
    assert not (mp / "sub-05").exists()  # draft-only asset
    assert (mp / A_IDX).is_dir() and (mp / A_H5).is_dir() and (mp / A_BAD).is_dir()
    assert (mp / A_FILE).stat().st_size == len(archive.movie)
    assert fa.count("assets") == 1 and fa.count("dandiset") == 1 and fa.count("download") == 0
    assert len(fa.indexes.log) == 0 and len(fa.bucket.log) == 0
    assert "Zarr asset skipped" in m.log_text() and A_ZARR in m.log_text()

    # the asset with an index: one GET of it, no HDF5 metadata reads
    _same_as_h5(mp / A_IDX, archive.files[A_IDX])
    idx_path = fa.index_path("000001", archive.assets[A_IDX])
    assert fa.indexes.count(idx_path) == 1
    # the asset without one: the index URL answers 404, the HDF5 file is indexed instead
    _same_as_h5(mp / A_H5, archive.files[A_H5])
    assert fa.indexes.count(fa.index_path("000001", archive.assets[A_H5])) == 1
    log = m.log_text()
    assert f"{A_IDX}: " in log and "keys from its LINDI index" in log
    assert "no LINDI index" in log and "keys from the HDF5 file" in log
    # the chunk bytes are the HDF5 file's ranges, through the API's redirect to the bucket
    ref = json.loads(os.getxattr(mp / A_H5 / "acquisition/ephys/data/0.0", "user.lindi.ref"))
    assert ref[0] == fa.download_url(archive.assets[A_H5])
    with open(archive.files[A_H5], "rb") as f:
        f.seek(ref[1])
        assert (mp / A_H5 / "acquisition/ephys/data/0.0").read_bytes() == f.read(ref[2])
    # the plain file: range requests of its blob
    assert (mp / A_FILE).read_bytes() == archive.movie
    with open(mp / A_FILE, "rb") as f:
        f.seek(123_456)
        assert f.read(1000) == archive.movie[123_456:124_456]
    assert os.getxattr(mp / A_FILE, "user.lindi.ref")
    # downloads resolved once per asset (then the signed URL is reused)
    assert fa.count("download") <= 3
    stats = json.loads(os.getxattr(mp, "user.lindifuse.stats"))
    d = stats["dandiset"]
    assert (d["version"], d["published"], d["assets"], d["nwb_assets"]) == (PUB, True, 5, 3)
    assert (d["loaded"], d["from_index"], d["from_hdf5"], d["skipped"]) == (2, 1, 1, 1)
    res = run_cli("stats", mp)
    assert res.rc == 0 and "requests" in res.stdout, res.describe()
    m.umount()


def _last_json(text: str) -> dict:
    return json.loads([x for x in text.splitlines() if x.startswith("{")][-1])


def test_pynwb_reads_mounted_assets_through_lindi(archive, fa, mount, tmp_path, lindi_gen):
    m = mount(f"dandi://000001@{PUB}", None, *archive.args(tmp_path / "cache"))
    want = _last_json(lindi_gen("dump-nwb", archive.files[A_IDX]).stdout)
    assert len(want["units"]["spike_times"]) == 5
    for asset in (A_IDX, A_H5):
        got = _last_json(lindi_gen("dump-nwb", m.path / asset, "--zarr-dir").stdout)
        assert got == want, asset
    m.umount()


def test_broken_asset_is_eio_the_rest_works(archive, fa, mount, tmp_path):
    m = mount("dandi://000001", None, *archive.args(tmp_path / "cache"))
    with pytest.raises(OSError) as e:
        os.listdir(m.path / A_BAD)
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        os.stat(m.path / A_BAD / ".zgroup")
    assert e.value.errno == errno.EIO
    log = m.log_text()
    assert "LINDI index unusable" in log
    assert f"{A_BAD}: " in log and "cannot open as HDF5" in log
    _same_as_h5(m.path / A_H5, archive.files[A_H5], ARRAYS[:2])
    assert (m.path / A_FILE).read_bytes()[:10] == archive.movie[:10]
    m.umount()


def test_concurrent_first_lookups_load_each_asset_once(archive, fa, mount, tmp_path):
    m = mount(f"dandi://000002@{PUB2}", None, *archive.args(tmp_path / "cache"))
    names = [f"sub-000/sub-000_ses-{i:02d}.nwb" for i in range(6)]
    barrier = threading.Barrier(24)

    def look(name: str) -> list[str]:
        barrier.wait()
        return sorted(os.listdir(m.path / name / "acquisition/ts"))

    fa.indexes.latency = 1.0  # each index request is answered a second after it arrives
    with concurrent.futures.ThreadPoolExecutor(24) as ex:
        results = list(ex.map(look, [n for n in names for _ in range(4)]))
    fa.indexes.latency = 0.0
    # different assets load in parallel: every index request arrived before the first answer
    arrivals = [r.time for r in fa.indexes.log]
    assert max(arrivals) - min(arrivals) < 1.0, arrivals
    assert all(r == results[0] for r in results) and "data" in results[0]
    # one index request per asset (404), one HDF5 index each
    lines = m.log_text().splitlines()
    for n in names:
        assert sum(1 for ln in lines if f"{n}: " in ln and "keys from the HDF5" in ln) == 1, n
    assert len(fa.indexes.log) == len(names)
    m.umount()


def test_ten_thousand_assets_list_without_loading(archive, fa, mount, tmp_path, capsys):
    small = mount(f"dandi://000001@{PUB}", None, *archive.args(tmp_path / "cache0"))
    rss_small = _rss_kib(small.pid)  # a 5-asset dandiset: the daemon's own footprint
    small.umount()
    fa.reset_logs()
    m = mount(f"dandi://000002@{PUB2}", None, *archive.args(tmp_path / "cache"))
    rss0 = _rss_kib(m.pid)
    # list every folder and stat every asset, not entering the NWB directories
    seen = 0
    for folder in sorted(os.listdir(m.path)):
        with os.scandir(m.path / folder) as it:
            for e in it:
                assert e.is_dir() and e.name.endswith(".nwb")
                e.stat()
                seen += 1
    assert seen == N_MANY
    assert fa.count("assets") == N_MANY // 1000 and fa.count("download") == 0
    assert len(fa.indexes.log) == 0 and len(fa.bucket.log) == 0
    rss_listed = _rss_kib(m.pid)

    # open 100 assets (8 at a time): memory grows with what was opened
    names = [f"sub-{i:03d}/sub-{i:03d}_ses-00.nwb" for i in range(100)]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda n: os.listdir(m.path / n / "acquisition/ts"), names))
    rss_opened = _rss_kib(m.pid)
    full = json.loads(os.getxattr(m.path, "user.lindifuse.stats"))
    stats = full["dandiset"]
    assert stats["loaded"] == 100 and stats["assets"] == N_MANY
    with capsys.disabled():
        print(
            f"\n[dandiset RSS] 5-asset dandiset mounted {rss_small} KiB; 10,000-asset dandiset "
            f"mounted {rss0} KiB, after listing {N_MANY} assets {rss_listed} "
            f"KiB, after opening 100 {rss_opened} KiB (memory cache "
            f"{full['memory_cache']['bytes'] // 1024} KiB, {stats['keys']} keys)"
        )
    m.umount()


def test_external_array_link_inside_an_asset(archive, fa, mount, tmp_path):
    m = mount(f"dandi://000004@{PUB}", None, *archive.args(tmp_path / "cache"))
    asset = m.path / "sub-01/ext.nwb"
    zattrs = json.loads((asset / "acquisition/many_chunks/.zattrs").read_text())
    assert "_EXTERNAL_ARRAY_LINK" in zattrs
    names = os.listdir(asset / "acquisition/many_chunks")
    assert len([n for n in names if n.isdigit()]) == 1100
    _same_as_h5(asset, archive.files["ext"], ["acquisition/many_chunks", "acquisition/ts/data"])
    assert "chunks from external HDF5 dataset" in m.log_text()
    m.umount()


def test_published_listing_and_indexes_cached_offline(archive, fa, mount, tmp_path):
    cache = tmp_path / "cache"
    m = mount(f"dandi://000001@{PUB}", None, *archive.args(cache))
    _same_as_h5(m.path / A_IDX, archive.files[A_IDX], ARRAYS[:1])
    _same_as_h5(m.path / A_H5, archive.files[A_H5], ARRAYS[:1])
    m.umount()
    fa.reset_logs()
    fa.down = True  # the API answers 503: a second mount must not need it
    fa.indexes.forbid.update(fa.index_path("000001", archive.assets[a]) for a in (A_IDX, A_H5))
    try:
        m2 = mount(f"dandi://000001@{PUB}", None, *archive.args(cache))
        assert (m2.path / A_IDX).is_dir()
        try:
            _same_as_h5(m2.path / A_IDX, archive.files[A_IDX], ARRAYS[:1])
        except OSError:
            print(m2.log_text())
            raise
        _same_as_h5(m2.path / A_H5, archive.files[A_H5], ARRAYS[:1])
        assert fa.count() == 0 and len(fa.indexes.log) == 0 and len(fa.bucket.log) == 0
        assert "from the cache" in m2.log_text()
        m2.umount()
    finally:
        fa.indexes.forbid.clear()
        fa.down = False


def test_draft_listing_is_revalidated(archive, fa, mount, tmp_path):
    cache = tmp_path / "cache"
    m = mount("dandi://000001@draft", None, *archive.args(cache))
    assert (m.path / A_DRAFT).read_bytes() == b"draft only\n"
    assert not (m.path / "sub-06").exists()
    m.umount()
    added = fa.add_asset("000001", "sub-06/new.bin", b"new\n", versions=["draft"])
    try:
        fa.reset_logs()
        m2 = mount("dandi://000001@draft", None, *archive.args(cache))
        assert (m2.path / "sub-06/new.bin").read_bytes() == b"new\n"
        assert fa.count("assets") == 1
        m2.umount()
    finally:
        ds = fa.dandisets["000001"]
        ds.versions["draft"].remove(added)


def test_folder_and_web_url(archive, fa, mount, tmp_path):
    m = mount(f"dandi://000001@{PUB}/sub-02", None, *archive.args(tmp_path / "c1"))
    assert os.listdir(m.path) == ["sub-02_ses-1_ecephys.nwb"]
    assert fa.log[-1].query.get("path") == "sub-02/"
    _same_as_h5(m.path / "sub-02_ses-1_ecephys.nwb", archive.files[A_H5], ARRAYS[:1])
    m.umount()
    web = f"http://{fa.host}/dandiset/000001/draft/files?location=stimuli"
    m2 = mount(web, None, *archive.args(tmp_path / "c2"))
    assert os.listdir(m2.path) == ["movie.bin"]
    m2.umount()


def test_no_lindi_index_option(archive, fa, mount, tmp_path):
    m = mount(f"dandi://000001@{PUB}", None, *archive.args(tmp_path / "cache", "--no-lindi-index"))
    _same_as_h5(m.path / A_IDX, archive.files[A_IDX], ARRAYS[:2])
    assert len(fa.indexes.log) == 0
    assert "keys from the HDF5 file" in m.log_text()
    m.umount()


@pytest.mark.parametrize(
    "source, env_key, expect",
    [
        ("dandi://000009", None, "dandiset 000009: not found"),
        ("dandi://000001@0.999999.9999", None, "version 0.999999.9999: not found"),
        ("dandi://000003", None, "DANDI_API_KEY"),
        ("dandi://000001@latest", None, "bad version 'latest'"),
        ("dandi://000001@draft/nowhere", None, "no assets under 'nowhere'"),
    ],
)
def test_errors_one_line_nothing_mounted(archive, fa, mount, tmp_path, source, env_key, expect):
    m = mount(source, None, *archive.args(tmp_path / "cache"), check=False)
    assert m.result.rc == 1
    lines = m.result.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and lines[0].startswith("lindifuse: ")
    assert not m.is_mounted()


def test_api_down_is_one_line(archive, fa, mount, tmp_path):
    fa.down = True
    m = mount("dandi://000001", None, *archive.args(tmp_path / "cache"), check=False)
    assert m.result.rc == 1
    lines = m.result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not answer" in lines[0] and "HTTP 503" in lines[0]
    assert not m.is_mounted()


def test_embargoed_with_key_sends_it_to_the_api_only(archive, fa, mount, tmp_path):
    env = dict(os.environ, DANDI_API_KEY=fa.api_key)
    m = mount("dandi://000003", None, *archive.args(tmp_path / "cache"), env=env)
    assert (m.path / "sub-01/secret.bin").read_bytes() == b"embargoed bytes"
    assert all(r.authorization == f"token {fa.api_key}" for r in fa.log)
    assert fa.bucket.log and all(r.authorization is None for r in fa.bucket.log)
    m.umount()


def test_info_dandiset_and_check_indexes(archive, fa, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    rc, out, err = run_cli(
        "info",
        "dandi://000001",
        "--dandi-api",
        fa.api_url,
        "--lindi-url-template",
        fa.template,
        "--check-indexes",
        "--json",
        env=env,
    )
    assert rc == 0, err
    s = json.loads(out)
    assert (s["version"], s["assets"], s["nwb_assets"], s["zarr_assets"]) == (PUB, 5, 3, 1)
    sizes = sum(archive.assets[a]["size"] for a in (A_IDX, A_H5, A_FILE, A_ZARR, A_BAD))
    assert s["total_size"] == sizes
    by_path = {r["path"]: r["index"] for r in s["indexes"]}
    assert by_path == {A_IDX: True, A_H5: False, A_BAD: True}
    heads = [r for r in fa.indexes.log if r.method == "HEAD"]
    assert len(heads) == 3 and len(fa.indexes.log) == 3
    # the text form, through the env var for the API root
    env["LINDIFUSE_DANDI_API"] = fa.api_url
    rc, out, err = run_cli("info", f"dandi://000001@{PUB}", env=env)
    assert rc == 0, err
    assert f"version:     {PUB} (published)" in out and "assets:      5 (3 NWB" in out
    rc, out, err = run_cli("info", "dandi://000009", env=env)
    assert rc == 1 and err.strip().splitlines() == [
        "lindifuse: dandiset 000009: not found (HTTP 404)"
    ]
