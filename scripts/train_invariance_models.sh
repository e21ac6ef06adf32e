#!/usr/bin/env bash
# Trains the bundled compact invariance engine on a CPU: one cVAE conditioned on the four bundled
# denoisers, then one cINN per denoiser, then measures them on the held-out slices and copies
# weights + cards into CTInvariances/Resources/Models/invariance/. Rerunnable and resumable (each
# stage resumes from runs/invariance/*/checkpoint.pt). On a GPU machine pass --device cuda via
# DEVICE=cuda; with several GPUs prefix the train commands with `torchrun --nproc_per_node N`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CLI=.venv/bin/ctinvariances
RUNS=${RUNS:-runs/invariance}
DEVICE=${DEVICE:-cpu}
CVAE_STEPS=${CVAE_STEPS:-2500}
CINN_STEPS=${CINN_STEPS:-1500}
mkdir -p "$RUNS"

# The compact decoder is residual (x^ = f(x) + D(z, f(x))); the KL weight is 1e-3 instead of the
# paper's 0.575, which at this patch size let the KL fall to ~2 nats (z ignored). A first,
# non-residual run reconstructed held-out patches with 14.7 HU RMSE, twice the low-dose noise.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} $CLI train cvae --out "$RUNS/cvae" --size compact \
  --steps "$CVAE_STEPS" --batch-size 16 --lr 2e-4 --kl-weight 1e-3 --adv-weight 0.1 --adv-start 500 \
  --device "$DEVICE"

# two cINNs at a time, one core each
for pair in "cnn10 redcnn" "wganvgg dugan"; do
  for d in $pair; do
    OMP_NUM_THREADS=1 $CLI train cinn --denoiser "$d" --cvae "$RUNS/cvae" --out "$RUNS/cinn-$d" \
      --steps "$CINN_STEPS" --batch-size 64 --lr 2e-4 --device "$DEVICE" > "$RUNS/cinn-$d.out" 2>&1 &
  done
  wait
done

$PY scripts/measure_invariance_models.py --runs "$RUNS" --install
