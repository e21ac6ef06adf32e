#!/usr/bin/env bash
# The bundled engine's GPU measurements, as one bounded run (no training): what issue 7 needs from a GPU.
#
#   scripts/gpu_measure.sh OUT [TOTAL_SECONDS] [FIRST_SECONDS] [SPEED_SECONDS]
#
# 1. the held-out table with the default consistency step (nonlinear CG), both samplers, for the
#    denoisers FIRST (default "redcnn dugan", the rows still missing), slice by slice over the 14
#    held-out slices, starting no new slice after FIRST_SECONDS;
# 2. the speed table: K = 16 of a whole 512 x 512 slice with the default step, every denoiser and
#    sampler (target: all <= 5 s), bounded by SPEED_SECONDS;
# 3. the same held-out table for the other denoisers (REST, default "cnn10 wganvgg") until
#    TOTAL_SECONDS have passed since the start.
# Writes OUT/results.tar (JSON, tables, logs) after every stage. Tables afterwards, on any machine:
#   scripts/measure_exact_invariances.py --from-json --out exact_invariances_ncg_gpu.json --readme \
#       --markers exact-invariances-gpu-table
#   scripts/raw_table_by_anatomy.py measure_first.log measure_rest.log --consistent
# Needs: the repository's Python dependencies, or the decoded-volume cache of the shared data in
# $CTINVARIANCES_CACHE (see README, "Training on a GPU").
set -u
OUT=${1:?usage: gpu_measure.sh OUT [TOTAL_SECONDS] [FIRST_SECONDS] [SPEED_SECONDS]}
TOTAL_S=${2:-540}
FIRST_S=${3:-210}
SPEED_S=${4:-150}
FIRST=${FIRST:-redcnn dugan}
REST=${REST:-cnn10 wganvgg}
HERE=$(cd "$(dirname "$0")/.." && pwd)
RES=${WORK:-$(mktemp -d)}/results
mkdir -p "$RES" "$OUT"
export PYTHONPATH="$HERE/CTInvariances${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
SLICES="0 1 2 3 4 5 6 7 8 9 10 11 12 13"
stamp() { echo "== $(date +%T) (${SECONDS} s) $*"; (cd "$RES" && tar cf "$OUT/results.tar" .); }
table() {  # table NAME DEADLINE DENOISERS...
    local name=$1 deadline=$2; shift 2
    timeout $(( deadline + 90 )) $PY "$HERE/scripts/measure_exact_invariances.py" --device "$DEV" \
        --denoisers "$@" --slices $SLICES --batch-size 16 --deadline "$deadline" \
        --out "$RES/exact_invariances_ncg_gpu_$name.json" > "$RES/measure_$name.log" 2>&1
    tail -4 "$RES/measure_$name.log"
}

stamp "machine"
nvidia-smi -L 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp "held-out table, $FIRST (bundled engine, default consistency step)"
table first "$FIRST_S" $FIRST

stamp "speed: K = 16 with the default consistency step"
timeout "$SPEED_S" $PY "$HERE/benchmarks/bench_consistency.py" speed --device "$DEV" --samplers noise cinn \
    > "$RES/speed_gpu.md" 2>&1
cat "$RES/speed_gpu.md"

left=$(( TOTAL_S - SECONDS - 60 ))
if [ "$left" -gt 30 ]; then
    stamp "held-out table, $REST, ${left} s"
    table rest "$left" $REST
fi
stamp "done"
