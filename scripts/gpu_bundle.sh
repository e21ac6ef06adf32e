#!/usr/bin/env bash
# A small folder that lets the GPU scripts run on a machine with PyTorch but no network and no copy
# of the shared data (what scripts/gpu_recipe.sh, gpu_finetune_spatial.sh and gpu_measure.sh need):
#
#   scripts/gpu_bundle.sh DIR            (here, after the decoded-volume cache exists: any test run
#                                         or `make demo` with the shared data builds it)
#   # there:
#   export CTINVARIANCES_DATA=$PWD/DIR/data CTINVARIANCES_CACHE=$PWD/DIR/cache PYTHONPATH=$PWD/DIR/stubs
#   scripts/gpu_measure.sh OUT
#
# DIR/data holds the shared data's SHA256SUMS and an empty ct/ (the cache is keyed by the checksums),
# DIR/cache the decoded full-dose volumes (about 11 MB; the simulated pairs are made there, on the
# GPU, in seconds), DIR/stubs stand-ins for the I/O packages such an image lacks (pydicom,
# SimpleITK, pynrrd, slicerio, highdicom, pylibjpeg): they satisfy imports only, so nothing there may
# read or write DICOM or NRRD; the scripts above do not. Where pip works, install the requirements
# instead and leave PYTHONPATH alone.
set -eu
DIR=${1:?usage: gpu_bundle.sh DIR}
HERE=$(cd "$(dirname "$0")/.." && pwd)
DATA=${CTINVARIANCES_DATA:-$HERE/../shared/data}
CACHE=${CTINVARIANCES_CACHE:-$HOME/.cache/ctinvariances}
ls "$CACHE"/volume-*.npz > /dev/null 2>&1 || { echo "no decoded volumes in $CACHE: run make demo first" >&2; exit 1; }
rm -rf "$DIR"
mkdir -p "$DIR/data/ct" "$DIR/cache" "$DIR/stubs/pydicom" "$DIR/stubs/pylibjpeg"
cp "$DATA/SHA256SUMS" "$DIR/data/"
cp "$CACHE"/volume-*.npz "$DIR/cache/"
for m in nrrd slicerio highdicom; do
    echo "# stand-in (scripts/gpu_bundle.sh): imports only" > "$DIR/stubs/$m.py"
done
printf '# stand-in (scripts/gpu_bundle.sh): imports only\n\ndef __getattr__(name):\n    return lambda *a, **k: None\n' \
    > "$DIR/stubs/SimpleITK.py"
: > "$DIR/stubs/pylibjpeg/__init__.py"
: > "$DIR/stubs/pydicom/__init__.py"
printf 'class InvalidDicomError(Exception):\n    pass\n' > "$DIR/stubs/pydicom/errors.py"
printf 'class UID(str):\n    pass\n' > "$DIR/stubs/pydicom/uid.py"
du -sh "$DIR"
