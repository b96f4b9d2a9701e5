"""Shared fixtures. See tests/README.md for the list and how to use them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, httpserver: any import mode

from harness import (  # noqa: E402
    IN_CI,
    LINDI_GEN,
    CliResult,
    LindiFiles,
    MountFactory,
    find_lindi_python,
    force_unmount,
    fuse_mounts_under,
    run,
)
from harness import (
    run_cli as _run_cli,
)
from httpserver import RangeServer  # noqa: E402

_FACTORIES: list[MountFactory] = []


# -- environment ---------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Point the daemon's XDG cache/state dirs at the session's tmp dir, so tests
    never share (or pollute) a real persistent cache."""
    base = tmp_path_factory.mktemp("xdg")
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "XDG_STATE_HOME")}
    os.environ["XDG_CACHE_HOME"] = str(base / "cache")
    os.environ["XDG_STATE_HOME"] = str(base / "state")
    yield base
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_fuse_mounts(tmp_path_factory):
    """At session end, fail loudly if a FUSE mount under this session's tmp dirs
    is still in /proc/mounts (and clean it up)."""
    basetemp = tmp_path_factory.getbasetemp()
    yield
    leaked = fuse_mounts_under(basetemp)
    if not leaked:
        return
    for f in _FACTORIES:  # stop daemons we know about, by PID
        f.cleanup()
    for mp in fuse_mounts_under(basetemp):
        force_unmount(mp)
    still = fuse_mounts_under(basetemp)
    pytest.fail(
        "LEAKED FUSE MOUNTS at session end (force-unmounted):\n  "
        + "\n  ".join(leaked)
        + (f"\nstill mounted: {still}" if still else ""),
        pytrace=False,
    )


# -- the lindi reference environment -------------------------------------------------


@pytest.fixture(scope="session")
def lindi_python() -> str:
    """Interpreter of the lindi venv ($LINDI_PYTHON, .venv-lindi, /tmp/lv).
    Missing: the test fails under CI, is skipped otherwise."""
    p = find_lindi_python()
    if p is None:
        msg = "no lindi environment: run `make setup` (makes .venv-lindi) or set LINDI_PYTHON"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def lindi_gen(lindi_python):
    """``lindi_gen(*args, timeout=300, check=True) -> CliResult``: run tests/lindi_gen.py
    with the lindi venv (make-h5, to-lindi, dump-store, read-arrays, fixtures)."""

    def gen(*args, timeout: float = 300, check: bool = True) -> CliResult:
        res = run([lindi_python, LINDI_GEN, *args], timeout=timeout)
        if check:
            assert res.rc == 0, f"lindi_gen failed:\n{res.describe()}"
        return res

    return gen


@pytest.fixture(scope="session")
def lindi_files(lindi_gen, tmp_path_factory) -> LindiFiles:
    """Session-wide example.h5 and its lindi conversions + lindi's reference bytes.
    Read-only: use ``lindi_files.copy(name, tmp_path)`` before writing."""
    d = tmp_path_factory.mktemp("lindi_files")
    lindi_gen("fixtures", d)
    return LindiFiles(d)


# -- HTTP ----------------------------------------------------------------------------


@pytest.fixture
def http_server(tmp_path):
    """A fresh RangeServer over ``tmp_path / "www"`` (``srv.root``) for one test."""
    root = tmp_path / "www"
    root.mkdir()
    with RangeServer(root) as srv:
        yield srv


class HttpLindi:
    """The lindi fixtures served over HTTP by one session-wide RangeServer.

    ``server`` (RangeServer, reset before each test), ``files`` (LindiFiles),
    ``url(name)``. Besides every file of ``files`` (example.h5, example.lindi.json,
    example.lindi.tar, amended.lindi.tar, the .lindi.d folders) it serves
    ``example.remote.lindi.json``, whose chunk refs are http URLs of example.h5 on
    this server. ``reference(name)`` gives lindi's bytes for any of them.
    """

    REMOTE_JSON = "example.remote.lindi.json"

    def __init__(self, server: RangeServer, files: LindiFiles):
        self.server = server
        self.files = files

    def url(self, name: str) -> str:
        return self.server.url(name)

    def reference(self, name: str) -> dict[str, bytes]:
        if Path(name).name == self.REMOTE_JSON:
            name = "example.lindi.json"  # same refs, other URL: same bytes
        return self.files.reference(name)


@pytest.fixture(scope="session")
def _http_lindi_session(lindi_files, lindi_gen, tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    with RangeServer(root) as srv:
        srv.add_file("example.h5", lindi_files.h5)
        for name, path in lindi_files.sources.items():
            srv.add_file(name, path)
        lindi_gen(
            "to-lindi",
            lindi_files.h5,
            root / HttpLindi.REMOTE_JSON,
            "--url",
            srv.url("example.h5"),
        )
        yield HttpLindi(srv, lindi_files)


@pytest.fixture
def http_lindi(_http_lindi_session) -> HttpLindi:
    _http_lindi_session.server.reset()
    yield _http_lindi_session
    _http_lindi_session.server.reset()


# -- the system install (test_install.py, test_docs.py) ------------------------------------


@pytest.fixture(scope="session")
def installed():
    """``make install`` into a temporary, world-readable prefix (sysinstall.Install: .prefix,
    .bindir, .sbindir, .unitdir, .lindifuse, .python); ``make uninstall`` afterwards, checked."""
    import shutil

    from sysinstall import Install, new_install_root

    if os.geteuid() != 0:
        pytest.skip("make install tests need root")
    inst = Install(new_install_root())
    try:
        res = inst.make("install")
        assert res.returncode == 0, f"make install failed:\n{res.stdout}\n{res.stderr}"
        yield inst
        res = inst.make("uninstall", timeout=120)
        assert res.returncode == 0, res.stderr
        assert not inst.prefix.exists(), "make uninstall left the venv"
        assert not (inst.bindir / "lindifuse").is_symlink()
        assert not (inst.sbindir / "mount.fuse.lindifuse").is_symlink()
        assert not (inst.unitdir / "lindifuse@.service").exists()
    finally:
        shutil.rmtree(inst.root, ignore_errors=True)


# -- the CLI and mounts ----------------------------------------------------------------


@pytest.fixture
def run_cli():
    """``run_cli(*args, timeout=120, env=None, input=None) -> CliResult(rc, stdout, stderr)``
    for ``python -m lindifuse ARGS``. Do not use it for ``mount``: use ``mount``."""
    return _run_cli


@pytest.fixture
def mount(tmp_path_factory):
    """Factory: ``mount(source, mountpoint=None, *extra, check=True, timeout=60, env=None)``
    -> harness.Mount (``.path``, ``.pid``, ``.log_text()``, ``.umount()``, ``.kill()``, ...).

    Teardown always unmounts (``lindifuse umount``, then ``fusermount3 -u -z`` if
    needed) and stops the daemon by PID (SIGTERM, then SIGKILL). If any of that
    was needed beyond a clean ``lindifuse umount`` the test errors in teardown
    (unless the test itself killed the daemon with ``m.kill()``).
    """
    factory = MountFactory(tmp_path_factory)
    _FACTORIES.append(factory)
    try:
        yield factory
    finally:
        problems = factory.cleanup()
        _FACTORIES.remove(factory)
        if problems:
            logs = "\n".join(
                f"--- log of {m.path} ---\n{m.log_text()[-5000:]}" for m in factory.mounts
            )
            pytest.fail("unclean unmount in teardown:\n  " + "\n  ".join(problems) + "\n" + logs)


# -- HDF5 sources ----------------------------------------------------------------------


class H5Files:
    """HDF5 fixtures (tests/h5_fixtures.py) and lindi's own indexes of them.

    ``features`` (every feature lindi handles), ``beyond`` (what lindi refuses: LZF, a large
    compact dataset, an unwritten contiguous dataset, a scalar reference), ``lzf``,
    ``extlink`` (an HDF5 external link), ``region`` (a region reference attribute),
    ``plugins`` (Zstandard and bitshuffle plugin-filter chunks, written directly),
    ``many_chunks`` (one dataset of 2,000 chunks: over lindi's 1,000-chunk threshold),
    ``userblock`` (the superblock after a 2 KiB user block), ``nwb`` (pynwb's NWB file with
    TimeSeries, ElectricalSeries + electrodes region, units, links, a processing module).
    ``oracle(name, *opts)``: lindi's index of ``name`` (h5-oracle options), made once.
    """

    def __init__(self, root: Path, lindi_gen) -> None:
        import h5_fixtures as hf

        self.root = root
        self._gen = lindi_gen
        self._oracles: dict[tuple, Path] = {}
        self.features = root / "features.h5"
        hf.make_features(str(self.features))
        self.beyond = root / "beyond.h5"
        hf.make_beyond_lindi(str(self.beyond))
        self.extlink = root / "extlink.h5"
        hf.make_external_link(str(self.extlink), str(root / "extlink_target.h5"))
        self.region = root / "region.h5"
        hf.make_region_ref(str(self.region))
        self.plugins = root / "plugins.h5"
        hf.make_plugin_filters(str(self.plugins))
        self.many_chunks = root / "many_chunks.h5"
        hf.make_many_chunks(str(self.many_chunks), n_chunks=2000, chunk=64)
        self.userblock = root / "userblock.h5"
        hf.make_userblock(str(self.userblock))
        self.nwb = root / "full.nwb"
        lindi_gen("make-nwb-full", self.nwb)

    def oracle(self, name: str, *opts: str) -> Path:
        key = (name, *opts)
        if key not in self._oracles:
            out = self.root / f"oracle-{len(self._oracles)}-{Path(name).stem}.json"
            self._gen("h5-oracle", self.root / name, out, *opts)
            self._oracles[key] = out
        return self._oracles[key]


@pytest.fixture(scope="session")
def h5_files(lindi_gen, tmp_path_factory) -> H5Files:
    return H5Files(tmp_path_factory.mktemp("h5"), lindi_gen)
