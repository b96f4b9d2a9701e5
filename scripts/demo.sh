#!/usr/bin/env bash
# Demo: make a small .lindi.tar with lindi, mount it with lindifuse, look at it
# with ls, read an array with zarr-python 3; then mount the HDF5 file itself and
# write its LINDI index with `lindifuse index`; unmount (always, even on failure).
#
#   make demo            (sets up both venvs first)
#   bash scripts/demo.sh (venvs must exist: .venv and .venv-lindi or $LINDI_PYTHON)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
LINDI_PY=${LINDI_PYTHON:-.venv-lindi/bin/python}
DEMO=demo
MNT=$DEMO/mnt
LOG=$DEMO/lindifuse.log

for p in "$PY" "$LINDI_PY"; do
    [[ -x $p ]] || { echo "demo: $p missing: run 'make setup'" >&2; exit 1; }
done

mounted() { grep -qs " $(realpath "$MNT") fuse" /proc/mounts; }

cleanup() {
    local rc=$?
    if mounted; then
        echo "--- unmounting $MNT"
        "$PY" -m lindifuse umount "$MNT" || fusermount3 -u -z "$MNT" || true
    fi
    if ((rc != 0)) && [[ -f $LOG ]]; then
        echo "--- demo failed (exit $rc); daemon log:" >&2
        tail -n 30 "$LOG" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT

mkdir -p "$MNT"
if mounted; then  # left over from an interrupted run
    "$PY" -m lindifuse umount "$MNT" || fusermount3 -u -z "$MNT"
fi
rm -rf "$DEMO/example.h5" "$DEMO/example.lindi.tar" "$DEMO/example.lindi.json" "$LOG"

echo "--- 1. an HDF5 file (h5py) converted to $DEMO/example.lindi.tar by lindi"
"$LINDI_PY" - "$DEMO" <<'EOF'
import os, sys
from importlib.metadata import version
import h5py, lindi, numpy as np

demo = sys.argv[1]
h5 = os.path.abspath(os.path.join(demo, "example.h5"))
with h5py.File(h5, "w") as f:
    f.attrs["description"] = "lindifuse demo"
    g = f.create_group("acquisition/ephys")
    g.attrs["neurodata_type"] = "TimeSeries"
    d = g.create_dataset("data", data=np.arange(1200, dtype=np.int16).reshape(100, 12),
                         chunks=(25, 12), compression="gzip")
    d.attrs["unit"] = "volts"
    g.create_dataset("timestamps", data=np.linspace(0, 9.9, 100))
with lindi.LindiH5pyFile.from_hdf5_file(h5, url=h5) as f:
    f.write_lindi_file(os.path.join(demo, "example.lindi.tar"))
print(f"lindi {version('lindi')} wrote", os.path.join(demo, "example.lindi.tar"))
EOF

echo "--- 2. lindifuse mount $DEMO/example.lindi.tar $MNT"
"$PY" -m lindifuse mount "$DEMO/example.lindi.tar" "$MNT" --read-only --log-file "$LOG"

echo "--- 3. ls -lAR $MNT | head -n 40"
ls -lAR "$MNT" | head -n 40

echo "--- 4. zarr-python 3 reads the mount as a Zarr v2 directory"
"$PY" - "$MNT" "$DEMO/example.h5" <<'EOF'
import sys
import h5py, numpy as np, zarr

mnt, h5 = sys.argv[1], sys.argv[2]
root = zarr.open_group(mnt, mode="r", zarr_format=2)
print("zarr", zarr.__version__, "| root attrs:", dict(root.attrs))
data = root["acquisition/ephys/data"]
print("acquisition/ephys/data:", data.shape, data.dtype, "chunks", data.chunks)
print(data[:3])
ts = root["acquisition/ephys/timestamps"][:]
print("timestamps[:5]:", ts[:5])
with h5py.File(h5, "r") as f:
    assert np.array_equal(data[:], f["acquisition/ephys/data"][:])
    assert np.array_equal(ts, f["acquisition/ephys/timestamps"][:])
print("OK: the mounted Zarr equals the HDF5 original")
EOF
"$PY" -m lindifuse umount "$MNT"

echo "--- 5. the HDF5 file itself: lindifuse mount $DEMO/example.h5 $MNT (indexed on first mount)"
"$PY" -m lindifuse mount "$DEMO/example.h5" "$MNT" --log-file "$LOG" --no-cache
ls "$MNT/acquisition/ephys" "$MNT/acquisition/ephys/data"
"$PY" - "$MNT" "$DEMO/example.h5" <<'EOF'
import sys
import h5py, numpy as np, zarr

mnt, h5 = sys.argv[1], sys.argv[2]
data = zarr.open_group(mnt, mode="r", zarr_format=2)["acquisition/ephys/data"]
with h5py.File(h5, "r") as f:
    assert np.array_equal(data[:], f["acquisition/ephys/data"][:])
print("OK: zarr-python 3 on the mounted HDF5 file equals h5py:", data.shape, data.dtype)
EOF
"$PY" -m lindifuse umount "$MNT"

echo "--- 6. lindifuse index $DEMO/example.h5 -o $DEMO/example.lindi.json (what lindi opens)"
"$PY" -m lindifuse index "$DEMO/example.h5" -o "$DEMO/example.lindi.json"
echo "--- 7. done"
