#!/usr/bin/env bash
# The spatial-latent engine's recipe at GPU scale, and the GPU measurements, as one run.
#
#   scripts/gpu_recipe.sh OUT [CVAE_MINUTES] [CINN_MINUTES] [MEASURE_SECONDS]
#
# 1. trains the spatial cVAE (conditioned on the four bundled denoisers) for CVAE_MINUTES, then the
#    four cINNs side by side for CINN_MINUTES each (the same recipe as scripts/train_spatial_engine.sh,
#    larger batches); meanwhile the exact-invariance table of the bundled tiled engine is measured
#    (its seconds per slice are therefore not timings);
# 2. measures the new engine on the held-out slices (noise and cinn samplers, K = 16, default
#    consistency step) until MEASURE_SECONDS have passed, slice by slice over all four denoisers;
# 3. where the new engine's consistent diversity goes (scripts/diversity_diagnostics.py, redcnn, one
#    slice); raw sampling of 512 / 1024 px slices with the new engine, and the GPU speed table (K = 16,
#    whole 512 x 512 slice, default consistency step) for the noise sampler and the bundled cinn.
# CVAE_ARGS passes further options to `train cvae` (e.g. "--adv-weight 1 --adv-start 1000");
# SKIP_TILED=1 leaves out the bundled tiled engine's table and the speed table.
# Writes OUT/engine.tar (models, cards, logs) and OUT/results.tar (JSON, tables, log).
# Needs: the repository's Python dependencies, or the decoded-volume cache of the shared data in
# $CTINVARIANCES_CACHE (see README, "Training on a GPU").
set -u
OUT=${1:?usage: gpu_recipe.sh OUT [CVAE_MINUTES] [CINN_MINUTES] [MEASURE_SECONDS]}
CVAE_MIN=${2:-2}
CINN_MIN=${3:-1.5}
MEASURE_S=${4:-80}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d)}
RUN=$WORK/engine
RES=$WORK/results
mkdir -p "$RUN" "$RES" "$OUT"
export PYTHONPATH="$HERE/CTInvariances${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
CLI="$PY -m CTInvariancesLib.cli.main"
stamp() { echo "== $(date +%T) $*"; (cd "$RES" && tar cf "$OUT/results.tar" .); }

stamp "machine"
nvidia-smi -L 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp "data (simulated pairs, f(x) of the four denoisers)"
$PY - <<'EOF'
from CTInvariancesLib.datasets import make_pairs
from CTInvariancesLib.evaluation import HOLDOUT_SEED
make_pairs("train", 0.25, 2, 0)
make_pairs("holdout", 0.25, realisations=2, seed=HOLDOUT_SEED)
make_pairs("holdout", 0.25, realisations=1, seed=HOLDOUT_SEED)
EOF

BG=
if [ -z "${SKIP_TILED:-}" ]; then
stamp "bundled tiled engine: exact-invariance table (in the background)"
timeout $(( ${CVAE_MIN%.*} * 60 + 200 )) $PY "$HERE/scripts/measure_exact_invariances.py" --device "$DEV" \
    --batch-size 16 --deadline $(( ${CVAE_MIN%.*} * 60 + 60 )) --out "$RES/exact_invariances_tiled_gpu.json" \
    > "$RES/measure_tiled.log" 2>&1 &
BG=$!
fi

stamp "train the spatial cVAE"
# CVAE_ARGS: further `train cvae` options, e.g. "--adv-weight 1 --adv-start 1000" (the paper's
# conditional critic; the bundled spatial cVAE has none, see README, spatial engine item 6)
$CLI train cvae --size spatial --out "$RUN" --steps 40000 --time-limit "$CVAE_MIN" --batch-size 32 \
    --checkpoint-every 1000 --device "$DEV" ${CVAE_ARGS:-} 2>&1 | tail -3

stamp "train four cINNs side by side"
for d in cnn10 redcnn wganvgg dugan; do
    $CLI train cinn --denoiser $d --cvae "$RUN" --out "$RUN" --steps 40000 --time-limit "$CINN_MIN" \
        --batch-size 64 --checkpoint-every 1000 --device "$DEV" > "$RES/train_cinn_$d.log" 2>&1 &
done
wait $(jobs -p | grep -v "^${BG:-none}$") 2>/dev/null
for d in cnn10 redcnn wganvgg dugan; do tail -1 "$RES/train_cinn_$d.log"; done
if [ -n "$BG" ]; then wait "$BG"; tail -2 "$RES/measure_tiled.log"; fi
(cd "$RUN" && tar cf "$OUT/engine.tar" --exclude='checkpoint*.pt' --exclude='*.sha256' .)

stamp "spatial engine: held-out table"
timeout $(( MEASURE_S + 90 )) $PY "$HERE/scripts/measure_exact_invariances.py" --device "$DEV" \
    --batch-size 16 --cvae "$RUN" --deadline "$MEASURE_S" --out "$RES/exact_invariances_spatial_gpu.json" \
    > "$RES/measure_spatial.log" 2>&1
tail -12 "$RES/measure_spatial.log"

stamp "engine diagnostics"
timeout 60 $PY "$HERE/scripts/engine_diagnostics.py" --device "$DEV" --cvae "$RUN" \
    --patches 128 --out "$RES/engine_diagnostics_gpu.json" > "$RES/diagnostics.log" 2>&1
tail -20 "$RES/diagnostics.log"

stamp "where the consistent diversity goes (redcnn, abdomen k 16, K = 4)"
timeout 90 $PY "$HERE/scripts/diversity_diagnostics.py" --device "$DEV" --cvae "$RUN" --denoiser redcnn \
    --slice 2 --samples 4 --out "$RES/diversity_diagnostics_gpu.json" > "$RES/diversity.log" 2>&1
tail -9 "$RES/diversity.log" | head -8

stamp "speed tables"
timeout 40 $PY "$HERE/benchmarks/bench_consistency.py" raw --device "$DEV" --cvae "$RUN" \
    > "$RES/raw_gpu_spatial.md" 2>&1
[ -z "${SKIP_TILED:-}" ] && timeout 100 $PY "$HERE/benchmarks/bench_consistency.py" speed --device "$DEV" --samplers noise cinn \
    > "$RES/speed_gpu.md" 2>&1
cat "$RES"/raw_gpu_spatial.md "$RES"/speed_gpu.md 2>/dev/null

stamp "done"
(cd "$RES" && tar cf "$OUT/results.tar" .)
