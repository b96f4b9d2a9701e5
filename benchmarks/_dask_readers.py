"""Readers that bench_dask.py's Dask workers import by name (not pickled by value): what each
worker process keeps between tasks must live in a module, not in the benchmark's __main__.

``RemoteH5`` is the h5py + remfile peer: a dask.array source whose ``__getitem__`` reads a slab
through the worker's own ``h5py.File(remfile.File(url))``, opened once per worker process and
kept (remfile's chunk cache is then per worker, as a Dask user who opens the file in each
worker gets it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_FILES: dict[str, Any] = {}


def _h5(url: str):
    f = _FILES.get(url)
    if f is None:
        import h5py
        import remfile

        f = _FILES[url] = h5py.File(remfile.File(url), "r")
    return f


def close_all() -> None:
    """Close the files this process opened (h5py over a Python file object can crash at
    interpreter exit if left to the garbage collector)."""
    while _FILES:
        _, f = _FILES.popitem()
        f.close()


class RemoteH5:
    """``dataset`` of the HDF5 file at ``url``, read with h5py + remfile in the worker."""

    def __init__(self, url: str, dataset: str, shape: tuple[int, ...], dtype: str) -> None:
        self.url = url
        self.dataset = dataset
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return _h5(self.url)[self.dataset][index]


WARM = ("xarray", "zarr", "numcodecs", "fsspec", "aiohttp", "h5py", "remfile", "dask.array")


def warm_imports() -> list[str]:
    """Import every reader's libraries in this worker (those that are installed); returns
    their names. A worker of a real analysis session has imported them long before the data
    is read, and a fresh ``LocalCluster`` per reader would otherwise charge each reader its
    own imports (about 0.3 s for xarray alone) inside the figures it is compared on."""
    import importlib

    done = []
    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        done.append(name)
    return done


def open_zarr(path: str):
    """xarray over a lindifuse mount, opened on a worker (the client needs no mount)."""
    import xarray as xr

    return xr.open_zarr(path, zarr_format=2, consolidated=False)
