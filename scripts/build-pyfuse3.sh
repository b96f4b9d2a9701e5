#!/usr/bin/env bash
# Replace the venv's pyfuse3 by the same version built from its source distribution with
# patches/pyfuse3/<version>.patch applied (open/opendir without a round trip, cached directory
# listings: see patches/pyfuse3/README.md). Called by `make setup`; safe to run again.
#
#   scripts/build-pyfuse3.sh VENV_PYTHON
#
# Never fails the setup: when there is no patch for the installed version, or the download, the
# patch or the build fails, the stock pyfuse3 stays installed (lindifuse detects the patched
# features when it starts and works without them) and a warning says why. LINDIFUSE_PYFUSE3_PATCH=0
# skips it.
set -uo pipefail

py=${1:?usage: build-pyfuse3.sh VENV_PYTHON}
here=$(cd "$(dirname "$0")/.." && pwd)
warn() { echo "build-pyfuse3: $*; keeping the stock pyfuse3" >&2; exit 0; }

if [[ ${LINDIFUSE_PYFUSE3_PATCH:-1} == 0 ]]; then
    echo "build-pyfuse3: LINDIFUSE_PYFUSE3_PATCH=0: stock pyfuse3"
    exit 0
fi
ver=$("$py" -c 'import importlib.metadata as m; print(m.version("pyfuse3"))') \
    || warn "pyfuse3 is not installed in $py"
base=${ver%%+*}
patch_file=$here/patches/pyfuse3/$base.patch
[[ -f $patch_file ]] || warn "no patch for pyfuse3 $base (patches/pyfuse3/ has $(ls "$here/patches/pyfuse3")"
if [[ $ver == *+lindifuse* ]] && "$py" -c 'import pyfuse3, sys; sys.exit(not (pyfuse3.NOOPEN_PASSES_INODE and getattr(pyfuse3, "REQUEST_BURST", False) and getattr(pyfuse3, "FILE_RANGE", False)))' 2>/dev/null; then
    exit 0  # already the patched build
fi
command -v patch >/dev/null || warn "patch(1) is missing"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pipq=(-q --disable-pip-version-check --no-cache-dir)
echo "build-pyfuse3: building pyfuse3 $base with $(basename "$patch_file") (about 30 s)"
"$py" -m pip download "${pipq[@]}" --no-deps --no-binary pyfuse3 -d "$tmp" "pyfuse3==$base" \
    >"$tmp/log" 2>&1 || warn "download of the pyfuse3 $base source failed: $(tail -1 "$tmp/log")"
tar -xzf "$tmp"/pyfuse3-"$base".tar.gz -C "$tmp" || warn "cannot unpack the pyfuse3 source"
src=$tmp/pyfuse3-$base
patch -d "$src" -p1 --forward --quiet <"$patch_file" >"$tmp/log" 2>&1 \
    || warn "$(basename "$patch_file") does not apply: $(tail -1 "$tmp/log")"
rm -f "$src/src/pyfuse3/__init__.c"  # generated from the unpatched .pyx: Cython regenerates it
# A local version label tells the build apart (pip show pyfuse3) and keeps pyfuse3>=3.3 satisfied.
SETUPTOOLS_SCM_PRETEND_VERSION="$base+lindifuse3" \
    "$py" -m pip install "${pipq[@]}" --no-deps --force-reinstall "$src" >"$tmp/log" 2>&1 \
    || warn "build failed: $(grep -m1 -i error "$tmp/log" || tail -1 "$tmp/log")"
if ! "$py" -c 'import pyfuse3; assert pyfuse3.NOOPEN_PASSES_INODE and pyfuse3.REQUEST_BURST and pyfuse3.FILE_RANGE; pyfuse3.FileInfo(cache_readdir=True); pyfuse3.FileRange(0, 0, 1)' 2>"$tmp/log"; then
    "$py" -m pip install "${pipq[@]}" --no-deps --force-reinstall "pyfuse3==$base" >/dev/null 2>&1
    warn "the patched build does not import: $(tail -1 "$tmp/log")"
fi
echo "build-pyfuse3: pyfuse3 $base+lindifuse3 installed"
