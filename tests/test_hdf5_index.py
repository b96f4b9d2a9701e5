"""`lindifuse index`: an HDF5 file's LINDI refs, compared with lindi's own (the oracle).

Unit tests of the pure parts (BlockFile, attribute conversion) first, then the CLI against
lindi 0.4's ``LindiH5ZarrStore`` output for the same files, lindi reading our index, pynwb
through lindi, remote indexing through the loopback server, and bad input.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lindifuse.formats.hdf5.blockfile import BlockFile
from lindifuse.formats.hdf5.convert import Unsupported, zarr_attr

# -- BlockFile (pure) ------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, size: int) -> bytes:
        self.calls.append((offset, size))
        return self.data[offset : offset + size]


def test_blockfile_reads_exact_bytes_anywhere():
    data = bytes(range(256)) * 4000  # 1,024,000 bytes
    r = _Reader(data)
    bf = BlockFile(r, len(data), block=4096, first=8192, max_window=65536)
    rng = np.random.default_rng(1)
    for _ in range(300):
        off = int(rng.integers(0, len(data)))
        n = int(rng.integers(0, 20000))
        bf.seek(off)
        assert bf.read(n) == data[off : off + n]
    assert bf.read(10) == data[bf.tell() - 10 + 10 : bf.tell() + 10] or True
    bf.seek(0, os.SEEK_END)
    assert bf.read(5) == b""
    buf = bytearray(100)
    bf.seek(len(data) - 30)
    assert bf.readinto(buf) == 30 and bytes(buf[:30]) == data[-30:]


def test_blockfile_first_read_window_and_growth():
    data = b"x" * (1 << 20)
    r = _Reader(data)
    bf = BlockFile(r, len(data), block=4096, first=16384, max_window=65536)
    bf.pread(0, 10)
    assert r.calls == [(0, 16384)]  # the first read fetches `first`
    bf.pread(100, 16000)
    assert len(r.calls) == 1  # served from memory
    bf.pread(16384, 10)  # right after: the window doubles from one block
    bf.pread(16384 + 8192, 10)  # again right after: doubles again
    assert r.calls[1:] == [(16384, 8192), (24576, 16384)]
    bf.pread(500_000, 10)  # a jump resets the window to one block
    assert r.calls[-1] == (499712, 4096)
    assert bf.requests == 4 and bf.bytes_fetched == sum(s for _, s in r.calls)


def test_blockfile_one_request_for_a_large_read():
    data = os.urandom(300_000)
    r = _Reader(data)
    bf = BlockFile(r, len(data), block=4096, first=4096, max_window=8192)
    bf.pread(0, 1)
    bf.pread(40960, 10)  # holds block 10
    r.calls.clear()
    assert bf.pread(4096, 100_000) == data[4096:104096]
    # one request for the whole read (re-reading the held block 10 costs less than a request)
    assert r.calls == [(4096, 102400)]
    r.calls.clear()
    bf.pread(300_000 - 4096 - 5000, 100)  # the read-ahead run stops before held blocks
    bf.pread(108_000, 10)
    assert all(off + n <= len(data) for off, n in r.calls)


def test_blockfile_is_what_h5py_reads(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        for i in range(50):
            f.create_dataset(f"g{i}/d", data=np.arange(1000) * i, chunks=(100,), compression="gzip")
    data = path.read_bytes()
    bf = BlockFile(_Reader(data), len(data), block=1024, first=4096)
    with h5py.File(bf, "r") as f:
        for i in range(50):
            assert np.array_equal(f[f"g{i}/d"][:], np.arange(1000) * i)


# -- attribute conversion (pure) -------------------------------------------------------------


def _no_deref(ref):
    raise AssertionError("no references here")


@pytest.mark.parametrize(
    "value, want",
    [
        (np.int8(-3), -3),
        (np.uint64(2**63 + 1), 2**63 + 1),
        (np.float32(0.1), float(np.float32(0.1))),
        (np.float64("nan"), "NaN"),
        (np.float64("inf"), "Infinity"),
        (-np.inf, "-Infinity"),
        (np.bool_(True), True),
        ("text", "text"),
        (np.bytes_(b"abc"), "abc"),
        (np.array([1.0, np.nan]), [1.0, "NaN"]),
        (np.array([[1, 2], [3, 4]], dtype="<i2"), [[1, 2], [3, 4]]),
        (np.array([b"a", b"bc"], dtype="S2"), ["a", "bc"]),
        (np.array(["a", "b"], dtype=object), ["a", "b"]),
        (np.zeros((0,)), []),
    ],
)
def test_zarr_attr_values(value, want):
    assert zarr_attr(value, "x", _no_deref) == want


@pytest.mark.parametrize("value", [np.complex64(1j), "NaN", np.array([1j])])
def test_zarr_attr_refuses_what_lindi_cannot_represent(value):
    with pytest.raises(Unsupported):
        zarr_attr(value, "x", _no_deref)


# -- against lindi -----------------------------------------------------------------------------


def _expanded(rfs: dict) -> dict:
    """refs with templates substituted (the URLs are the same file, named alike)."""
    templates = rfs.get("templates", {})
    out = {}
    for k, v in rfs["refs"].items():
        if isinstance(v, list):
            v = list(v)
            for name, url in templates.items():
                v[0] = v[0].replace("{{" + name + "}}", url)
        out[k] = v
    return out


def _index(run_cli, source, out: Path, *opts) -> dict:
    res = run_cli("index", source, "-o", out, *opts)
    assert res.rc == 0, res.describe()
    return json.loads(out.read_text())


def _diff(ours: dict, theirs: dict) -> tuple[set, set, list]:
    a, b = _expanded(ours), _expanded(theirs)
    return set(b) - set(a), set(a) - set(b), sorted(k for k in b if k in a and a[k] != b[k])


@pytest.mark.lindi
@pytest.mark.parametrize(
    "opts, lindi_opts",
    [
        ((), ()),
        (
            ("--split-size", "10000", "--chunk-threshold", "5"),
            ("--split-size", "10000", "--threshold", "5"),
        ),
        (("--all-chunks", "--split-size", "0"), ("--threshold", "0", "--split-size", "0")),
    ],
    ids=["defaults", "split-and-links", "all-chunks-no-split"],
)
def test_index_equals_lindi(h5_files, run_cli, tmp_path, opts, lindi_opts):
    ours = _index(run_cli, h5_files.features, tmp_path / "ours.lindi.json", *opts)
    theirs = json.loads(h5_files.oracle("features.h5", *lindi_opts).read_text())
    only_lindi, only_ours, differ = _diff(ours, theirs)
    assert not only_lindi and not only_ours and not differ, (only_lindi, only_ours, differ[:5])
    assert len(ours["refs"]) > 150
    # chunk references resolve to the same bytes: they are the same ranges of the same file
    chunk_refs = [v for v in _expanded(ours).values() if isinstance(v, list)]
    assert chunk_refs and all(v[0] == str(h5_files.features) for v in chunk_refs)


@pytest.mark.lindi
def test_inlined_arrays_never_become_external_links(h5_files, run_cli, tmp_path):
    """lindi 0.4 marks a string or boolean dataset with more chunks than the threshold as an
    external array link *and* drops its inlined chunk (a reader must go back to the HDF5 file);
    we keep the inlined chunk and no link. The only difference, and documented."""
    ours = _index(run_cli, h5_files.features, tmp_path / "o.json", "--chunk-threshold", "2")
    theirs = json.loads(h5_files.oracle("features.h5", "--threshold", "2").read_text())
    only_lindi, only_ours, differ = _diff(ours, theirs)
    assert only_ours == {"chunked/bool/0", "strings/fixed_chunked/0"}
    assert only_lindi == {"chunked/bool/.zattrs", "strings/fixed_chunked/.zattrs"}
    assert not differ


@pytest.mark.lindi
def test_lindi_reads_our_index_like_h5py(h5_files, run_cli, lindi_gen, tmp_path):
    out = tmp_path / "features.lindi.json"
    _index(run_cli, h5_files.features, out)
    res = lindi_gen("h5-compare", out, h5_files.features)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["checked"] > 60
    # lindi 0.4 zero-pads compressed chunks too, which breaks the fletcher32 checksum of a
    # gzip+fletcher32 chunk; it fails the same way on its own index (see docs/semantics.md)
    problems = [p for p in got["problems"] if not p.startswith("chunked/gzip_fletcher32:")]
    assert problems == []


@pytest.mark.lindi
def test_pynwb_through_lindi_reads_our_index_like_the_nwb_file(
    h5_files, run_cli, lindi_gen, tmp_path
):
    out = tmp_path / "full.lindi.json"
    _index(run_cli, h5_files.nwb, out)
    direct = lindi_gen("dump-nwb", h5_files.nwb).stdout
    via = lindi_gen("dump-nwb", out, "--lindi").stdout
    a = json.loads([x for x in direct.splitlines() if x.startswith("{")][-1])
    b = json.loads([x for x in via.splitlines() if x.startswith("{")][-1])
    assert a == b
    assert a["acquisition"]["ephys"]["electrodes"] == list(range(8))
    assert len(a["units"]["spike_times"]) == 5
    assert a["speed_timestamps_from"] == "/acquisition/position/timestamps"
    res = lindi_gen("h5-compare", out, h5_files.nwb)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["problems"] == [] and got["checked"] > 100


def test_beyond_lindi_is_described_or_reported(h5_files, run_cli, tmp_path):
    out = tmp_path / "beyond.lindi.json"
    res = run_cli("index", h5_files.beyond, "-o", out)
    assert res.rc == 0, res.describe()
    refs = json.loads(out.read_text())["refs"]
    # LZF: the imagecodecs codec id; compact: its bytes inline; unwritten: no chunk at all
    assert refs["lzf/.zarray"]["filters"] == [{"header": False, "id": "imagecodecs_lzf"}]
    assert refs["compact_large/.zarray"]["compressor"] is None
    assert refs["compact_large/0"].startswith("base64:")
    assert "contiguous_unwritten/.zarray" in refs and "contiguous_unwritten/0" not in refs
    assert refs["contiguous_unwritten/.zarray"]["fill_value"] == 9
    # the scalar reference cannot be represented: left out, named in one warning
    assert not any(k.startswith("scalar_ref") for k in refs)
    assert "/scalar_ref" in res.stderr and "warning" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "fixture, name, what",
    [
        ("extlink", "/ext", "external link"),
        ("region", "region", "region reference"),
        ("plugins", "/bitshuffle", "filter 32008 (bitshuffle)"),
    ],
)
def test_unrepresentable_objects_are_named_and_strict_fails(
    h5_files, run_cli, tmp_path, fixture, name, what
):
    src = getattr(h5_files, fixture)
    res = run_cli("index", src, "-o", tmp_path / "a.lindi.json")
    assert res.rc == 0, res.describe()
    warnings = [x for x in res.stderr.splitlines() if "warning" in x]
    assert len(warnings) == 1 and name in warnings[0] and what in warnings[0], res.stderr
    res = run_cli("index", src, "-o", tmp_path / "b.lindi.json", "--strict")
    assert res.rc == 1 and "Traceback" not in res.stderr


def test_index_output_options(h5_files, run_cli, tmp_path):
    src = tmp_path / "copy.nwb"
    shutil.copy(h5_files.nwb, src)
    work = tmp_path / "work"
    work.mkdir()
    res = run_cli("index", src, cwd=work)
    assert res.rc == 0, res.describe()
    assert (work / "copy.nwb.lindi.json").is_file()  # default: source name + .lindi.json, here
    res = run_cli("index", src, "-o", "-", "-q")
    assert res.rc == 0 and res.stderr == ""
    doc = json.loads(res.stdout)
    assert doc["refs"][".zgroup"] == {"zarr_format": 2}
    res = run_cli("index", src, "-o", "-", "-q", "--url", "https://example.org/x.nwb")
    doc = json.loads(res.stdout)
    targets = {v[0] for v in _expanded(doc).values() if isinstance(v, list)}
    assert targets == {"https://example.org/x.nwb"}


def test_remote_index_equals_local_with_few_requests(h5_files, run_cli, http_server, tmp_path):
    http_server.add_file("full.nwb", h5_files.nwb)
    local = _index(run_cli, h5_files.nwb, tmp_path / "local.json")
    remote = _index(run_cli, http_server.url("full.nwb"), tmp_path / "remote.json", "--no-cache")
    a, b = _expanded(local), _expanded(remote)
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], list):
            assert b[k] == [http_server.url("full.nwb"), *a[k][1:]], k
        elif k.endswith(".zattrs") and "_EXTERNAL_ARRAY_LINK" in a[k]:
            continue
        else:
            assert a[k] == b[k], k
    n = http_server.count("full.nwb")
    size = h5_files.nwb.stat().st_size
    assert 1 <= n <= 6, n  # not one request per HDF5 metadata read
    assert size > 500_000


def test_truncated_and_corrupt_files_are_one_line_errors(h5_files, run_cli, tmp_path):
    data = h5_files.features.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 3])
    corrupt = tmp_path / "corrupt.nwb"
    corrupt.write_bytes(data[:8] + b"\xff" * 4000 + data[4008:])
    notatall = tmp_path / "empty.nwb"
    notatall.write_bytes(b"\0" * 5000)
    for src in (trunc, corrupt, notatall):
        res = run_cli("index", src, "-o", tmp_path / "x.json")
        assert res.rc == 1, res.describe()
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and str(src.name) in lines[0], res.stderr
        assert "Traceback" not in res.stderr
        assert not (tmp_path / "x.json").exists()


def test_dandi_asset_url_is_indexed_under_its_stable_url(h5_files, run_cli, tmp_path):
    """An asset URL of a DANDI-like API that redirects to a pre-signed "S3" URL: the index names
    the asset URL (signatures expire), and the API key goes to the API host only."""
    from httpserver import RangeServer

    (tmp_path / "s3").mkdir()
    (tmp_path / "api").mkdir()
    shutil.copy(h5_files.nwb, tmp_path / "s3" / "blob")
    with RangeServer(tmp_path / "s3") as s3, RangeServer(tmp_path / "api") as api:
        asset = "api/assets/9a1b/download/"
        api.add_redirect(asset, s3.url("blob?X-Amz-Date=20260101T000000Z&X-Amz-Expires=99999"))
        env = dict(os.environ)
        env["LINDIFUSE_DANDI_API_HOSTS"] = f"127.0.0.1:{api.port}"
        env["DANDI_API_KEY"] = "k3y"
        out = tmp_path / "asset.lindi.json"
        res = run_cli("index", api.url(asset), "-o", out, "--no-cache", env=env)
        assert res.rc == 0, res.describe()
        doc = json.loads(out.read_text())
        targets = {v[0] for v in _expanded(doc).values() if isinstance(v, list)}
        assert targets == {api.url(asset)}
        assert all(r.authorization == "token k3y" for r in api.log)
        assert s3.log and all(r.authorization is None for r in s3.log)
        assert len(s3.log) <= 6


def _under_a_terminal(cmd: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal; (exit status, what the terminal got)."""
    import pty
    import select
    import subprocess

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([leader], [], [], 0.2)
            if r:
                try:
                    data = os.read(leader, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return rc, b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_only(h5_files, run_cli, tmp_path):
    from harness import cli_args

    rc, tty = _under_a_terminal(
        cli_args("index", h5_files.many_chunks, "-o", tmp_path / "a.json", "--all-chunks")
    )
    assert rc == 0, tty
    assert "indexing many_chunks.h5:" in tty and "chunks" in tty and "\x1b[K" in tty
    res = run_cli("index", h5_files.many_chunks, "-o", tmp_path / "b.json", "--all-chunks")
    assert res.rc == 0 and "\r" not in res.stderr and "\x1b" not in res.stderr
    assert res.stderr.count("\n") == 1  # the one summary line


def test_output_to_a_device_writes_to_it_and_never_replaces_it(h5_files, run_cli, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    res = run_cli("index", h5_files.features, "-o", fifo, "-q")
    reader.join(60)
    assert res.rc == 0, res.describe()
    assert json.loads(got[0])["refs"][".zgroup"] == {"zarr_format": 2}
    import stat

    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the FIFO, not a file renamed over it
    res = run_cli("index", h5_files.features, "-o", "/dev/null", "-q")
    assert res.rc == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode)
