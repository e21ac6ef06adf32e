#!/usr/bin/env bash
# Continue training the bundled spatial cINNs on a GPU, then measure them: one bounded GPU run.
#
#   scripts/gpu_finetune_spatial.sh OUT [CINN_MINUTES] [RAW_SECONDS] [CONSISTENT_SECONDS]
#
# 1. the four noise-conditioned cINNs, warm-started from the bundled ones (--init; INIT=none: from
#    scratch, the architecture of this checkout), trained side by side on one GPU for CINN_MINUTES
#    each beside the bundled spatial cVAE (batch 64, 128 px crops);
# 2. the raw table (K = 16, no consistency step) on the held-out slices, abdomen first, until
#    RAW_SECONDS have passed;
# 3. the consistent table (noise and cinn samplers, default step) until CONSISTENT_SECONDS, on the
#    held-out slices CONS_SLICES (indices as for measure_exact_invariances.py; default "2 0 1").
# CINN_ARGS passes further options to `train cinn`, e.g. "--invariance-weight 8 --power-weight 10"
# (the invariance fine-tune of scripts/finetune_invariance.sh at GPU scale; README, spatial engine 7).
# Writes OUT/engine.tar (cINNs, cards, logs) and OUT/results.tar (JSON, logs).
# Needs the repository's dependencies, or the decoded-volume cache (see scripts/gpu_recipe.sh).
set -u
OUT=${1:?usage: gpu_finetune_spatial.sh OUT [CINN_MINUTES] [RAW_SECONDS] [CONSISTENT_SECONDS]}
CINN_MIN=${2:-3.5}
RAW_S=${3:-50}
CONS_S=${4:-90}
INIT=${INIT:-bundled}
CONS_SLICES=${CONS_SLICES:-2 0 1}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d)}
RUN=$WORK/engine
RES=$WORK/results
mkdir -p "$RUN" "$RES" "$OUT"
export PYTHONPATH="$HERE/CTInvariances${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
CLI="$PY -m CTInvariancesLib.cli.main"
BUNDLED=$HERE/CTInvariances/Resources/Models/invariance/spatial
stamp() { echo "== $(date +%T) $*"; (cd "$RES" && tar cf "$OUT/results.tar" .); }

stamp "machine"
nvidia-smi -L 2>/dev/null
stamp "data"
$PY - <<'PYEOF'
from CTInvariancesLib.datasets import make_pairs
from CTInvariancesLib.evaluation import HOLDOUT_SEED
make_pairs("train", 0.25, 2, 0)
make_pairs("holdout", 0.25, realisations=2, seed=HOLDOUT_SEED)
from CTInvariancesLib.training.invariance import _data_tag, noise_maps_cached, training_slices
s = training_slices((), 0.25, 2, 0)
noise_maps_cached(s, _data_tag(s["names"]) + "0.25-2-0", "cuda" if __import__("torch").cuda.is_available() else "cpu")
PYEOF

cp "$BUNDLED"/cvae.* "$RUN"/
stamp "fine-tune four cINNs side by side"
for d in cnn10 redcnn wganvgg dugan; do
    init=(--init "$BUNDLED/cinn-$d.safetensors")
    [ "$INIT" = none ] && init=()
    $CLI train cinn --denoiser $d --cvae "$RUN" --out "$RUN" "${init[@]}" \
        --steps 40000 --time-limit "$CINN_MIN" --batch-size 64 --checkpoint-every 1000 \
        --device "$DEV" ${CINN_ARGS:-} > "$RES/train_cinn_$d.log" 2>&1 &
done
wait
for d in cnn10 redcnn wganvgg dugan; do tail -2 "$RES/train_cinn_$d.log"; done
(cd "$RUN" && tar cf "$OUT/engine.tar" --exclude='checkpoint*.pt' --exclude='*.sha256' .)

stamp "raw table"
timeout $(( RAW_S + 60 )) $PY "$HERE/scripts/measure_exact_invariances.py" --device "$DEV" \
    --cvae "$RUN" --samplers cinn --steps 0 --deadline "$RAW_S" --slices 0 1 2 3 4 5 9 13 7 6 8 10 11 12 \
    --out "$RES/spatial_raw_gpu.json" > "$RES/measure_raw.log" 2>&1
tail -20 "$RES/measure_raw.log"

stamp "consistent table"
timeout $(( CONS_S + 60 )) $PY "$HERE/scripts/measure_exact_invariances.py" --device "$DEV" \
    --batch-size 16 --cvae "$RUN" --deadline "$CONS_S" --slices $CONS_SLICES \
    --out "$RES/spatial_consistent_gpu.json" > "$RES/measure_consistent.log" 2>&1
tail -14 "$RES/measure_consistent.log"
stamp "done"
