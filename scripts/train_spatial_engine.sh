#!/usr/bin/env bash
# The spatial-latent engine's recipe: one cVAE conditioned on the four bundled denoisers, then one
# cINN per denoiser beside it, on the shared data's training slices (25 % dose, two realisations).
#
#   scripts/train_spatial_engine.sh OUT [DEVICE] [CVAE_MINUTES] [CINN_MINUTES]
#
# DEVICE cuda: the sizes of the bundled run (cVAE batch 32 of 128 px crops, cINNs batch 64, the four
# cINNs side by side on the one GPU); cpu: the same with batch 16 / 32 of 64 px crops, one cINN after
# the other. Training is resumable (run the same command again) and bounded by time (--time-limit:
# the step count is fitted to it, so the late learning-rate decay and the export still happen).
#
# How the bundled models were made (their cards say it too): the cVAE and a first set of cINNs
# without the noise-level condition by scripts/gpu_recipe.sh on one H200 (cVAE 5,528 steps in
# 100 s; cINNs 565 steps), then each cINN fine-tuned with the noise-level condition on a 2-core CPU:
#   ctinvariances train cinn --denoiser D --cvae OUT --out OUT --init GPU_RUN/cinn-D.safetensors \
#       --patch 64 --batch-size 32 --lr 1e-4 --time-limit 40 --steps 100000 --device cpu
# This script trains the noise-conditioned cINNs directly (the condition is on by default).
set -eu
OUT=${1:?usage: train_spatial_engine.sh OUT [DEVICE] [CVAE_MINUTES] [CINN_MINUTES]}
DEV=${2:-cpu}
CVAE_MIN=${3:-60}
CINN_MIN=${4:-30}
CLI=${CLI:-ctinvariances}
if [ "$DEV" = cpu ]; then CB=16; IB=32; PATCH="--patch 64"; else CB=32; IB=64; PATCH=""; fi
$CLI train cvae --size spatial --out "$OUT" --steps 100000 --time-limit "$CVAE_MIN" --batch-size $CB \
    --checkpoint-every 500 --device "$DEV"
for d in cnn10 redcnn wganvgg dugan; do
    if [ "$DEV" = cpu ]; then
        $CLI train cinn --denoiser $d --cvae "$OUT" --out "$OUT" --steps 100000 --time-limit "$CINN_MIN" \
            --batch-size $IB $PATCH --checkpoint-every 200 --device "$DEV"
    else
        $CLI train cinn --denoiser $d --cvae "$OUT" --out "$OUT" --steps 100000 --time-limit "$CINN_MIN" \
            --batch-size $IB --checkpoint-every 1000 --device "$DEV" &
    fi
done
wait
