#!/usr/bin/env bash
# Run every benchmarks/bench_*.py in turn (each one prints its tables and updates its own
# section of benchmarks/RESULTS.md). Extra arguments go to every benchmark, e.g. --quick.
#
#   bash benchmarks/run_all.sh            # full runs
#   bash benchmarks/run_all.sh --quick    # smoke test
#
# Uses .venv/bin/python; LINDI_PYTHON names lindi's interpreter (default .venv-lindi/bin/python).
# fsspec's FUSE comparison needs libfuse2 (fusepy); as root it is installed here when missing.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
if [[ -z ${LINDI_PYTHON:-} && -x .venv-lindi/bin/python ]]; then
    export LINDI_PYTHON=$PWD/.venv-lindi/bin/python
fi

if ! ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2'; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "run_all: installing libfuse2 (fusepy, for the fsspec FUSE comparison)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfuse2 >/dev/null ||
            echo "run_all: could not install libfuse2; fsspec FUSE rows will be skipped" >&2
    else
        echo "run_all: libfuse2 missing; fsspec FUSE rows will be skipped" >&2
    fi
fi

status=0
for bench in benchmarks/bench_*.py; do
    echo
    echo "=== $bench $*"
    start=$(date +%s)
    if ! "$PY" "$bench" "$@"; then
        echo "run_all: $bench FAILED" >&2
        status=1
    fi
    echo "=== $bench: $(($(date +%s) - start)) s"
done
exit $status
