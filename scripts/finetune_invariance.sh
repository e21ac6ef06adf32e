#!/usr/bin/env bash
# Fine-tune the bundled spatial cINNs with the invariance term, then look where their consistent
# diversity went: one folder that the sampler reads like the bundled engine (`--cvae OUT`).
#
#   scripts/finetune_invariance.sh OUT [MINUTES] [DENOISERS...]
#
# Per denoiser (default all four): `train cinn --init <bundled cINN> --invariance-weight W
# --power-weight P` for MINUTES (default 9) on 64 px crops on this machine's CPU (DEVICE=cuda: 128 px
# crops, batch 64), its output calibration refitted at the end; then
# scripts/diversity_diagnostics.py (noise and cinn samplers, held-out slice SLICE, K = SAMPLES) into
# OUT/diversity-<denoiser>.json and .log. The bundled cVAE is copied beside the cINNs.
# W, P, S, M, CALIB, FIT, SLICE, SAMPLES: environment variables (defaults 8, 10, spectrum weight 0,
# moment weight 0, 512 crops for the calibration refit (0: none), that refit's --calibration-fit all,
# 2 = abdomen k 16, 4). INIT: a folder whose cinn-<denoiser>.safetensors to start from (default
# the bundled cINNs; another fine-tune's OUT continues it with a fresh optimiser). STEPS: train
# exactly this many steps instead of for MINUTES (the same run whatever else the machine does).
set -eu
OUT=${1:?usage: finetune_invariance.sh OUT [MINUTES] [DENOISERS...]}
MIN=${2:-9}
shift $(( $# > 1 ? 2 : 1 ))
DENOISERS=${*:-cnn10 redcnn wganvgg dugan}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BUNDLED=$HERE/CTInvariances/Resources/Models/invariance/spatial
PY=${PYTHON:-$HERE/.venv/bin/python}
DEV=${DEVICE:-cpu}
if [ -n "${STEPS:-}" ]; then LENGTH="--steps $STEPS"; else LENGTH="--steps 100000 --time-limit $MIN"; fi
export PYTHONPATH="$HERE/CTInvariances${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DEV" = cpu ]; then SIZE="--patch 64 --batch-size 32 --invariance-batch 4"; else SIZE="--batch-size 64"; fi
mkdir -p "$OUT"
cp "$BUNDLED/cvae.safetensors" "$BUNDLED/cvae.json" "$OUT/"
for d in $DENOISERS; do
    $PY -m CTInvariancesLib.cli.main train cinn --denoiser "$d" --cvae "$BUNDLED" --out "$OUT" \
        --init "${INIT:-$BUNDLED}/cinn-$d.safetensors" $LENGTH $SIZE \
        --invariance-weight "${W:-8}" --power-weight "${P:-10}" --spectrum-weight "${S:-0}" \
        --moment-weight "${M:-0}" \
        --calibration-crops "${CALIB:-512}" --calibration-fit "${FIT:-all}" \
        --checkpoint-every 25 --device "$DEV" 2>&1 | tail -1
    $PY "$HERE/scripts/diversity_diagnostics.py" --denoiser "$d" --slice "${SLICE:-2}" \
        --samples "${SAMPLES:-4}" --samplers noise cinn --cvae "$OUT" --device "$DEV" \
        --out "$OUT/diversity-$d.json" > "$OUT/diversity-$d.log" 2>&1
    grep "^| \(noise\|cinn\) |" "$OUT/diversity-$d.log"
done
