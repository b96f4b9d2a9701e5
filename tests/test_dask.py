"""lindifuse.dask: one mount per node for a Dask cluster, on a real cluster engine.

One ``distributed.LocalCluster`` (4 worker processes, one thread each) serves the module: workers
a0, a1 have LINDIFUSE_NODE=a in their environment, b2, b3 have LINDIFUSE_NODE=b, so a plugin whose
mount point names ``$LINDIFUSE_NODE`` gives two "nodes" of two workers each, with their own mount
and persistent cache; a plugin with a fixed mount point makes the four workers one node.

The recording is an NWB file written by pynwb (tests/dask_gen.py, in the lindi venv) and lindi's
.lindi.tar of it, served by the loopback RangeServer: ``rec.nwb`` (mounted as HDF5 with
--xarray) and ``rec.lindi.tar`` whose chunk references point at ``data.nwb`` (the same bytes under
another name, so requests are counted per mount kind). Every worker reads every chunk; the server's
log gives, for each byte of each chunk, how many requests fetched it: exactly once per node.
Values are compared with h5py reading the source file in this process.

The last section tests the node's reference count and lock (``NodeMount``) in this process, and
the pure helpers.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from harness import (
    force_unmount,
    fuse_available,
    is_mounted,
    pid_alive,
    process_start_time,
    run,
    run_cli,
    terminate_pid,
    wait_until,
)
from httpserver import RangeServer, parse_range

distributed = pytest.importorskip("distributed")
xr = pytest.importorskip("xarray")
h5py = pytest.importorskip("h5py")

from lindifuse.dask import (  # noqa: E402
    LindifuseMount,
    NodeMount,
    default_cache_dir,
    ensure_mounted,
    mount_args,
    parse_mountinfo,
)

DASK_GEN = str(Path(__file__).resolve().parent / "dask_gen.py")
ES = "acquisition/es"
NODE_VAR = "LINDIFUSE_NODE"

pytestmark = pytest.mark.timeout(240)


# -- fixtures ---------------------------------------------------------------------------------------


@dataclass
class Recording:
    server: RangeServer
    www: Path
    data: np.ndarray  # acquisition/es/data as h5py reads it
    chunks: list[tuple[int, int]]  # (offset, size) of every chunk of it in the file

    def url(self, name: str) -> str:
        return self.server.url(name)

    def chunk_fetches(self, name: str) -> list[np.ndarray]:
        """For each chunk, how many logged GETs of ``name`` covered each of its bytes."""
        size = (self.www / name).stat().st_size
        hits = np.zeros(size, dtype=np.int32)
        for r in self.server.requests_for(name):
            if r.method != "GET":
                continue
            rng = parse_range(r.range, size)
            if rng is None:
                hits += 1
            elif isinstance(rng, tuple):
                hits[rng[0] : rng[1] + 1] += 1
        return [hits[o : o + s] for o, s in self.chunks]


@pytest.fixture(scope="module")
def recording(lindi_python, tmp_path_factory):
    www = tmp_path_factory.mktemp("dask_www")
    with RangeServer(www) as srv:
        res = run([lindi_python, DASK_GEN, www, srv.url("data.nwb")], timeout=300)
        assert res.rc == 0, res.describe()
        shutil.copyfile(www / "rec.nwb", www / "data.nwb")
        with h5py.File(www / "rec.nwb", "r") as f:
            ds = f[f"{ES}/data"]
            data = ds[()]
            chunks = []
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                chunks.append((info.byte_offset, info.size))
        assert len(chunks) == 32
        yield Recording(srv, www, data, chunks)


@pytest.fixture(scope="module")
def client():
    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE unavailable: {reason}")
    cluster = distributed.LocalCluster(
        n_workers=0,
        processes=True,
        threads_per_worker=1,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        for i, node in enumerate("aabb"):
            spec = copy.deepcopy(cluster.new_spec)
            spec["options"]["env"] = {NODE_VAR: node}
            cluster.worker_spec[f"{node}{i}"] = spec
        cluster.sync(cluster._correct_state)
        with distributed.Client(cluster) as c:
            c.wait_for_workers(4, timeout=120)
            yield c
    finally:
        cluster.close(timeout=60)


@contextlib.contextmanager
def registered(client, plugin: LindifuseMount, mountpoints: list[Path]):
    """Register ``plugin``; always unregister it and, whatever happened, leave no mount at
    ``mountpoints`` and no daemon of theirs running (stopped by PID)."""
    pids: dict[Path, tuple[int, int | None]] = {}
    try:
        client.register_plugin(plugin)
        for mp in mountpoints:
            pid = daemon_pid(mp)
            pids[mp] = (pid, process_start_time(pid))
        yield pids
    finally:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(plugin.name)
        for mp in mountpoints:
            pid = None
            with contextlib.suppress(OSError, ValueError):
                pid = daemon_pid(mp)
            if is_mounted(mp):
                run_cli("umount", mp, timeout=60)
            if is_mounted(mp):
                force_unmount(mp)
            for p, start in [pids.get(mp, (None, None)), (pid, None)]:
                if p is not None:
                    terminate_pid(p, start)


def daemon_pid(mp: Path) -> int:
    return int(os.getxattr(mp, "user.lindifuse.pid"))


def on_workers(client, node: str | None = None) -> list[str]:
    info = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(a for a, w in info.items() if node is None or w["name"].startswith(node))


# functions run on the workers (module-level: pickled by reference, the workers import tests/)


def read_every_chunk(path: str) -> float:
    """Open the series with xarray on this worker and read every chunk; a checksum."""
    ds = xr.open_zarr(path, zarr_format=2, consolidated=False)
    return float(ds["data"].values.astype(np.float64).sum())


def open_series(path: str):
    return xr.open_zarr(path, zarr_format=2, consolidated=False)


def check_reduction(client, path: Path, want: np.ndarray) -> None:
    """Open on a worker (the client needs no mount), reduce over every chunk on the workers."""
    ds = client.submit(open_series, str(path), pure=False).result()
    data = ds["data"]
    assert data.chunks[0] == (256,) * 32, data.chunks  # one dask task per HDF5 chunk
    peak = data.max(dim="num_times").compute().values
    total = data.astype(np.float64).sum(dim="num_times").compute().values
    assert np.array_equal(peak, want.max(axis=0))
    np.testing.assert_allclose(total, want.astype(np.float64).sum(axis=0), rtol=1e-12)


# -- the cluster ------------------------------------------------------------------------------------


def test_four_workers_share_one_mount_and_fetch_each_chunk_once(recording, client, tmp_path):
    """One node: the four workers mount rec.nwb (--xarray) once, all read every chunk, the
    reduction on the cluster equals numpy, each chunk byte comes from the origin once; the
    last worker's teardown unmounts and its daemon exits."""
    mp = tmp_path / "node" / "mnt"
    plugin = LindifuseMount(
        recording.url("rec.nwb"),
        str(mp),
        cache_dir=str(tmp_path / "node" / "cache"),
        state_dir=str(tmp_path / "state"),
        xarray=True,
    )
    with registered(client, plugin, [mp]) as pids:
        node = NodeMount(plugin.source, str(mp), state_dir=str(tmp_path / "state"))
        assert node.state() == "alive"
        assert len(node.holders()) == 4, node.holders()
        recording.server.reset_log()  # the HDF5 index was read at mount time
        want = recording.data.astype(np.float64).sum()
        sums = client.run(read_every_chunk, str(mp / ES))
        assert len(sums) == 4 and all(s == pytest.approx(want, rel=1e-12) for s in sums.values())
        check_reduction(client, mp / ES, recording.data)
        for i, hits in enumerate(recording.chunk_fetches("rec.nwb")):
            assert hits.min() == 1 and hits.max() == 1, f"chunk {i}: fetched {hits.max()} times"
        pid, start = pids[mp]
    # unregistered: the last worker unmounted, and `lindifuse umount` waited for the daemon
    assert not is_mounted(mp)
    assert not pid_alive(pid, start)
    assert node.holders() == []


def test_two_nodes_each_fetch_each_chunk_once(recording, client, tmp_path):
    """Two nodes of two workers (mount point and cache per $LINDIFUSE_NODE) on the .lindi.tar:
    two mounts, each with two holders; every chunk byte of data.nwb is fetched exactly twice in
    all — once per node, since each node's cache starts empty and must fetch it at least once."""
    template = str(tmp_path / f"${NODE_VAR}" / "mnt")
    mps = [tmp_path / n / "mnt" for n in "ab"]
    plugin = LindifuseMount(
        recording.url("rec.lindi.tar"),
        template,
        cache_dir=str(tmp_path / f"${NODE_VAR}" / "cache"),
        state_dir=str(tmp_path / "state"),
        xarray=True,
    )
    recording.server.reset_log()
    with registered(client, plugin, mps):
        for mp in mps:
            node = NodeMount(plugin.source, str(mp), state_dir=str(tmp_path / "state"))
            assert node.state() == "alive" and len(node.holders()) == 2, (mp, node.holders())
        assert daemon_pid(mps[0]) != daemon_pid(mps[1])
        for n, mp in zip("ab", mps, strict=True):
            sums = client.run(read_every_chunk, str(mp / ES), workers=on_workers(client, n))
            assert len(sums) == 2
            want = recording.data.astype(np.float64).sum()
            assert all(s == pytest.approx(want, rel=1e-12) for s in sums.values())
        check_reduction(client, mps[1] / ES, recording.data)
        for i, hits in enumerate(recording.chunk_fetches("data.nwb")):
            assert hits.min() == 2 and hits.max() == 2, f"chunk {i}: {hits.min()}..{hits.max()}"
    assert not any(is_mounted(mp) for mp in mps)


def test_keep_leaves_the_mount_after_the_last_worker(recording, client, tmp_path):
    mp = tmp_path / "mnt"
    plugin = LindifuseMount(
        recording.url("rec.lindi.tar"),
        str(mp),
        keep=True,
        cache_dir=str(tmp_path / "cache"),
        state_dir=str(tmp_path / "state"),
        name="keep",
    )
    with registered(client, plugin, [mp]) as pids:
        client.unregister_worker_plugin("keep")
        assert is_mounted(mp) and pid_alive(*pids[mp])
        assert (mp / ".zgroup").exists()
        assert NodeMount(plugin.source, str(mp), state_dir=str(tmp_path / "state")).holders() == []
    assert not is_mounted(mp)  # the test's own cleanup unmounted it


def test_dead_mount_is_remounted_once(recording, client, tmp_path):
    """SIGKILL the node's daemon: every worker calls ensure_mounted(); one remounts (one warning
    in the workers' logs), the others find the new mount; the next computation is correct."""
    mp = tmp_path / "mnt"
    plugin = LindifuseMount(
        recording.url("rec.nwb"),
        str(mp),
        cache_dir=str(tmp_path / "cache"),
        state_dir=str(tmp_path / "state"),
        xarray=True,
    )
    with registered(client, plugin, [mp]) as pids:
        pid, start = pids[mp]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid, start), 10)
        with pytest.raises(OSError):
            os.statvfs(mp)  # ENOTCONN: the mount is dead
        since = time.time()
        got = client.run(ensure_mounted, str(mp))
        assert set(got.values()) == {str(mp)}
        new_pid = daemon_pid(mp)
        assert new_pid != pid and pid_alive(new_pid)
        pids[mp] = (new_pid, process_start_time(new_pid))
        logs = client.get_worker_logs()
        lines = [
            msg
            for entries in logs.values()
            for level, msg in entries
            if "remounting" in msg and str(mp) in msg
        ]
        assert len(lines) == 1, lines
        assert "died" in lines[0], lines[0]
        # a kill between tasks: the plugin's check before the next task remounts by itself
        os.kill(new_pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(new_pid), 10)
        check_reduction(client, mp / ES, recording.data)
        pids[mp] = (daemon_pid(mp), None)
        assert time.time() > since
    assert not is_mounted(mp)


# -- the node's reference count, in this process ------------------------------------------------------


def test_node_mount_counts_holders_and_prunes_crashed_ones(recording, tmp_path):
    """Two holders share one mount; a holder of a dead process (a worker killed without its
    teardown) is pruned; the last live holder unmounts."""
    kw = dict(cache_dir=str(tmp_path / "cache"), state_dir=str(tmp_path / "state"))
    a = NodeMount(recording.url("rec.lindi.tar"), str(tmp_path / "mnt"), **kw)
    b = NodeMount(recording.url("rec.lindi.tar"), str(tmp_path / "mnt"), **kw)
    pid = None
    try:
        ta = a.acquire()
        pid = daemon_pid(tmp_path / "mnt")
        tb = b.acquire()
        assert daemon_pid(tmp_path / "mnt") == pid  # found, not mounted again
        assert sorted(a.holders()) == sorted([ta, tb])
        crashed = f"{2**22 + 12345}.1.deadbeef"  # no such PID
        Path(a.holders_dir, crashed).touch()
        assert a.release(ta) is False and is_mounted(tmp_path / "mnt")
        assert b.release(tb) is True  # the crashed holder does not count
        assert not is_mounted(tmp_path / "mnt") and not pid_alive(pid)
        assert b.holders() == []
    finally:
        if is_mounted(tmp_path / "mnt"):
            run_cli("umount", tmp_path / "mnt", timeout=60)
        if pid is not None:
            terminate_pid(pid)


def test_node_mount_never_unmounts_a_mount_it_did_not_make(recording, mount, tmp_path):
    (tmp_path / "mnt").mkdir()
    m = mount(recording.url("rec.lindi.tar"), tmp_path / "mnt", "--cache-dir", tmp_path / "c")
    node = NodeMount(recording.url("rec.lindi.tar"), str(m.path), state_dir=str(tmp_path / "s"))
    token = node.acquire()
    assert node.release(token) is False
    assert m.is_mounted() and m.daemon_alive()


def test_node_mount_refuses_another_source_at_the_mount_point(recording, mount, tmp_path):
    from lindifuse.dask import MountError

    (tmp_path / "mnt").mkdir()
    m = mount(recording.url("rec.lindi.tar"), tmp_path / "mnt", "--cache-dir", tmp_path / "c")
    node = NodeMount(recording.url("rec.nwb"), str(m.path), state_dir=str(tmp_path / "s"))
    with pytest.raises(MountError, match="already mounted from .*rec.lindi.tar"):
        node.acquire()
    assert node.holders() == []


def test_node_mount_reports_a_failed_mount_in_one_line(recording, tmp_path):
    from lindifuse.dask import MountError

    node = NodeMount(
        recording.url("missing.nwb"), str(tmp_path / "mnt"), state_dir=str(tmp_path / "s")
    )
    with pytest.raises(MountError) as e:
        node.acquire()
    msg = str(e.value)
    assert "\n" not in msg and "missing.nwb" in msg and "mounting" in msg, msg
    assert not is_mounted(tmp_path / "mnt")


# -- pure helpers --------------------------------------------------------------------------------------


def test_mount_args_maps_keywords_to_cli_flags():
    assert mount_args(
        {
            "xarray": True,
            "read_only": False,
            "memory_cache": "1G",
            "timeout": 10,
            "allowed_hosts": ["a.org", "b.org"],
            "o": "allow_other",
            "cache_size": None,
        }
    ) == [
        "--xarray",
        "--memory-cache",
        "1G",
        "--timeout",
        "10",
        "--allowed-hosts",
        "a.org,b.org",
        "-o",
        "allow_other",
    ]
    assert mount_args({"o": ["ro", "allow_other"]}) == ["-o", "ro", "-o", "allow_other"]


def test_default_cache_dir_is_node_local(tmp_path):
    assert default_cache_dir({"TMPDIR": str(tmp_path)}) == str(tmp_path / "lindifuse-cache")
    scratch = tmp_path / "local" / "scratch"
    scratch.mkdir(parents=True)
    got = default_cache_dir({}, candidates=(str(tmp_path / "nope"), str(scratch)))
    assert got == str(scratch / f"lindifuse-cache-{os.getuid()}")
    # $TMPDIR naming no directory is skipped
    got = default_cache_dir({"TMPDIR": str(tmp_path / "gone")}, candidates=(str(scratch),))
    assert got.startswith(str(scratch))


def test_parse_mountinfo_takes_the_top_mount_and_unescapes():
    text = (
        "36 25 0:32 / /mnt/a\\040b rw,nosuid - fuse.lindifuse http://x/y\\054z rw\n"
        "37 25 0:33 / /mnt/c rw - ext4 /dev/sda1 rw\n"
        "38 36 0:34 / /mnt/a\\040b rw shared:1 - fuse.other src rw\n"
    )
    assert parse_mountinfo(text, "/mnt/a b") == ("fuse.other", "src")
    assert parse_mountinfo(text.splitlines()[0], "/mnt/a b") == ("fuse.lindifuse", "http://x/y,z")
    assert parse_mountinfo(text, "/mnt/c") == ("ext4", "/dev/sda1")
    assert parse_mountinfo(text, "/mnt") is None
