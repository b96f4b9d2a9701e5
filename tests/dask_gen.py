"""The NWB recording of the cluster tests, written by pynwb and converted by lindi.

Run with the *lindi* venv's python (pynwb, hdmf, lindi):
``python tests/dask_gen.py OUTDIR DATA_URL [ROWS CHUNK_ROWS CHANNELS]``. Writes, in OUTDIR:

  rec.nwb         an NWBFile whose acquisition/es is an ElectricalSeries of float32
                  (ROWS, CHANNELS) in gzip chunks of (CHUNK_ROWS, CHANNELS), values a function of
                  the position (so a wrong chunk changes every reduction);
  rec.lindi.tar   lindi's index of rec.nwb whose chunk references point at DATA_URL (the same
                  bytes served under another name, so the server counts them apart).

Defaults: 8192 rows, chunks of 256 rows, 4 channels: 32 chunks of 4 KiB raw each.
"""

from __future__ import annotations

import datetime
import os
import sys
import warnings

import lindi
import numpy as np


def values(rows: int, channels: int) -> np.ndarray:
    i = np.arange(rows * channels, dtype=np.float64).reshape(rows, channels)
    return (np.sin(i * 0.001) * 100 + (i % 13)).astype(np.float32)


def write_nwb(path: str, rows: int, chunk_rows: int, channels: int) -> None:
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    nwb = NWBFile(
        session_description="lindifuse cluster test",
        identifier="lindifuse-dask-1",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    )
    dev = nwb.create_device(name="probe")
    grp = nwb.create_electrode_group(name="shank0", description="s", location="CA1", device=dev)
    for i in range(channels):
        nwb.add_electrode(group=grp, location="CA1", x=float(i), y=0.0, z=0.0)
    region = nwb.create_electrode_table_region(region=list(range(channels)), description="all")
    data = H5DataIO(values(rows, channels), chunks=(chunk_rows, channels), compression="gzip")
    nwb.add_acquisition(
        ElectricalSeries(name="es", data=data, electrodes=region, rate=1000.0, starting_time=0.0)
    )
    with NWBHDF5IO(path, "w") as io:
        io.write(nwb)


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")
    outdir, url = argv[0], argv[1]
    rows, chunk_rows, channels = (int(a) for a in argv[2:5]) if len(argv) >= 5 else (8192, 256, 4)
    os.makedirs(outdir, exist_ok=True)
    nwb = os.path.join(outdir, "rec.nwb")
    write_nwb(nwb, rows, chunk_rows, channels)
    with lindi.LindiH5pyFile.from_hdf5_file(nwb, url=url) as f:
        f.write_lindi_file(os.path.join(outdir, "rec.lindi.tar"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
