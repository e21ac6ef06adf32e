#!/usr/bin/env bash
# The bundled engine's GPU measurements, as one run (no training): what issue 7 still needs from a GPU.
#
#   scripts/gpu_measure.sh OUT [MEASURE_SECONDS] [SPEED_SECONDS]
#
# 1. the held-out table with the default consistency step (nonlinear CG), both samplers, all four
#    bundled denoisers, slice by slice over the 14 held-out slices until MEASURE_SECONDS have passed;
# 2. the speed tables: K = 16 of a whole 512 x 512 slice with the default step, every denoiser and
#    sampler (target: all <= 5 s), then K = 32 raw samples of 512 / 1024 px slices.
# Writes OUT/results.tar (JSON, tables, logs) after every stage. Tables afterwards, on any machine:
#   scripts/measure_exact_invariances.py --from-json --out exact_invariances_ncg_gpu.json --readme \
#       --markers exact-invariances-gpu-table
#   scripts/raw_table_by_anatomy.py measure.log --consistent
# Needs: the repository's Python dependencies, or the decoded-volume cache of the shared data in
# $CTINVARIANCES_CACHE (see README, "Training on a GPU").
set -u
OUT=${1:?usage: gpu_measure.sh OUT [MEASURE_SECONDS] [SPEED_SECONDS]}
MEASURE_S=${2:-300}
SPEED_S=${3:-150}
HERE=$(cd "$(dirname "$0")/.." && pwd)
RES=${WORK:-$(mktemp -d)}/results
mkdir -p "$RES" "$OUT"
export PYTHONPATH="$HERE/CTInvariances${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
stamp() { echo "== $(date +%T) $*"; (cd "$RES" && tar cf "$OUT/results.tar" .); }

stamp "machine"
nvidia-smi -L 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp "held-out table (bundled engine, default consistency step)"
timeout $(( MEASURE_S + 120 )) $PY "$HERE/scripts/measure_exact_invariances.py" --device "$DEV" \
    --batch-size 16 --deadline "$MEASURE_S" --out "$RES/exact_invariances_ncg_gpu.json" \
    > "$RES/measure.log" 2>&1
tail -12 "$RES/measure.log"

stamp "speed: K = 16 with the consistency step, then K = 32 raw"
timeout "$SPEED_S" $PY "$HERE/benchmarks/bench_consistency.py" speed --device "$DEV" --samplers noise cinn \
    > "$RES/speed_gpu.md" 2>&1
timeout 60 $PY "$HERE/benchmarks/bench_consistency.py" raw --device "$DEV" > "$RES/raw_speed_gpu.md" 2>&1
cat "$RES/speed_gpu.md" "$RES/raw_speed_gpu.md"

stamp "done"
