"""NWB files for the --xarray tests, written by pynwb and converted by lindi.

Run with the *lindi* venv's python (it has pynwb, hdmf and lindi; the main test environment has
neither): ``python tests/nwb_gen.py OUTDIR``. Writes, in OUTDIR:

  full.nwb, full.lindi.tar, full.lindi.json
      pynwb's NWBFile with: acquisition/ts (TimeSeries, float64 (25, 2), explicit
      timestamps); acquisition/es (ElectricalSeries, int16 (2000, 3) with many zeros in gzip
      chunks of (500, 3), rate 1 kHz, an electrodes DynamicTableRegion into a 4-row electrodes
      table with string and reference columns); acquisition/img (ImageSeries, uint8
      (20, 16, 12), contiguous); a units table with ragged spike_times (6 values) and a ragged
      text column 'tags' (3 values); a trials table (TimeIntervals with a 'timeseries' compound
      column holding object references); processing/behavior (ProcessingModule holding a
      TimeSeries 'speed'); processing/ophys/ImageSegmentation/cells (PlaneSegmentation with a
      ragged numeric compound pixel_mask (x, y, weight)). The two large arrays are referenced in the .nwb by lindi (template
      'u1'), everything else is inline.
  noschema.nwb, noschema.lindi.tar
      The same file written with cache_spec=False: no specifications group.
  badschema.nwb, badschema.lindi.tar
      The same with every cached spec document of the core namespace replaced by text that is
      not JSON (hdmf-common stays intact).
"""

from __future__ import annotations

import datetime
import os
import sys

import h5py
import lindi
import numpy as np


def build_nwbfile():
    from pynwb import NWBFile, TimeSeries
    from pynwb.ecephys import ElectricalSeries
    from pynwb.image import ImageSeries

    nwb = NWBFile(
        session_description="lindifuse xarray test",
        identifier="lindifuse-xarray-1",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        keywords=["alpha", "beta"],
    )
    ts = TimeSeries(
        name="ts",
        data=np.arange(50, dtype=np.float64).reshape(25, 2),
        unit="mV",
        timestamps=np.arange(25) * 0.1,
        description="two channels with timestamps",
    )
    nwb.add_acquisition(ts)
    dev = nwb.create_device(name="probe")
    grp = nwb.create_electrode_group(name="shank0", description="s", location="CA1", device=dev)
    for i in range(4):
        nwb.add_electrode(group=grp, location=f"CA{i}", x=float(i), y=0.5, z=0.0)
    region = nwb.create_electrode_table_region(region=[0, 1, 3], description="three")
    from hdmf.backends.hdf5 import H5DataIO

    # large enough that lindi references its chunks in the .nwb instead of inlining them;
    # gzip-compressed chunks, many exact zeros
    es_data = H5DataIO(
        (np.arange(6000, dtype=np.int16) % 7).reshape(2000, 3), chunks=(500, 3), compression="gzip"
    )
    nwb.add_acquisition(
        ElectricalSeries(name="es", data=es_data, electrodes=region, rate=1000.0, starting_time=0.0)
    )
    nwb.add_unit_column(name="tags", description="ragged text tags", index=True)
    nwb.add_unit(spike_times=[0.1, 0.2, 0.3], tags=["good"])
    nwb.add_unit(spike_times=[0.5], tags=["ok", "noisy"])
    nwb.add_unit(spike_times=[1.0, 1.5], tags=[])
    nwb.add_acquisition(
        ImageSeries(
            name="img",
            data=(np.arange(20 * 16 * 12) % 251).astype(np.uint8).reshape(20, 16, 12),
            unit="n.a.",
            rate=30.0,
        )
    )
    nwb.add_trial(start_time=0.0, stop_time=1.0, timeseries=[ts])
    nwb.add_trial(start_time=1.0, stop_time=2.0, timeseries=[ts])
    from pynwb.ophys import ImageSegmentation, OpticalChannel

    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=OpticalChannel("green", "green channel", 510.0),
        description="one plane",
        device=nwb.create_device(name="microscope"),
        excitation_lambda=920.0,
        imaging_rate=30.0,
        indicator="GCaMP6f",
        location="V1",
    )
    seg = ImageSegmentation()
    nwb.create_processing_module(name="ophys", description="optical physiology").add(seg)
    cells = seg.create_plane_segmentation(description="rois", imaging_plane=plane, name="cells")
    cells.add_roi(pixel_mask=[(1, 2, 0.5), (3, 4, 1.0)])  # compound (x, y, weight), ragged
    cells.add_roi(pixel_mask=[(5, 6, 0.25)])
    mod = nwb.create_processing_module(name="behavior", description="behaviour")
    mod.add(
        TimeSeries(
            name="speed",
            data=np.linspace(0.0, 1.0, 25),
            unit="m/s",
            timestamps=np.arange(25) * 0.1,
        )
    )
    return nwb


def write(path: str, cache_spec: bool = True) -> None:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(path, "w") as io:
        io.write(build_nwbfile(), cache_spec=cache_spec)


def break_schema(path: str) -> None:
    with h5py.File(path, "r+") as f:
        core = f["specifications/core"]
        for version in core:
            for source in list(core[version]):
                del core[version][source]
                core[version][source] = "this is { not JSON"


def to_lindi(nwb: str, out: str) -> None:
    with lindi.LindiH5pyFile.from_hdf5_file(nwb, url=os.path.abspath(nwb)) as f:
        f.write_lindi_file(out)


def main(outdir: str) -> int:
    import warnings

    warnings.simplefilter("ignore")
    os.makedirs(outdir, exist_ok=True)
    full = os.path.join(outdir, "full.nwb")
    write(full)
    to_lindi(full, os.path.join(outdir, "full.lindi.tar"))
    to_lindi(full, os.path.join(outdir, "full.lindi.json"))
    nos = os.path.join(outdir, "noschema.nwb")
    write(nos, cache_spec=False)
    to_lindi(nos, os.path.join(outdir, "noschema.lindi.tar"))
    bad = os.path.join(outdir, "badschema.nwb")
    write(bad)
    break_schema(bad)
    to_lindi(bad, os.path.join(outdir, "badschema.lindi.tar"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
