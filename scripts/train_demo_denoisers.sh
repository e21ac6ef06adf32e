#!/usr/bin/env bash
# Re-train the bundled demo denoisers (CPU, demo scale) and record their held-out metrics.
# Usage: scripts/train_demo_denoisers.sh [arch ...]   (default: all four; runs/ keeps checkpoints,
# so an interrupted run resumes where it stopped). Needs ../shared/data (or CTINVARIANCES_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=".venv/bin/ctinvariances"
DEST="CTInvariances/Resources/Models/denoisers"
mkdir -p "$DEST" runs
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

train() {  # arch width steps lr batch finetune-steps
  local arch=$1 width=$2 steps=$3 lr=$4 batch=$5 ft_steps=$6
  local wopt=(); [ "$width" != "-" ] && wopt=(--width "$width")
  local common=(--arch "$arch" "${wopt[@]}" --batch-size "$batch" --patch 64 --dose 0.25
                --realisations 3 --seed 0 --device cpu)
  # stage 1: from the identity, MSE then (last 40 %) noise-normalised MSE
  "$CLI" train denoiser "${common[@]}" --steps "$steps" --lr "$lr" --out "runs/$arch"
  # stage 2: noise-normalised MSE at a third of the rate, fresh optimiser
  "$CLI" train denoiser "${common[@]}" --steps "$ft_steps" --lr 1e-4 --relative-from 0 \
      --init "runs/$arch/$arch.safetensors" --out "runs/$arch-finetune"
  cp "runs/$arch-finetune/$arch.safetensors" "runs/$arch-finetune/$arch.json" "$DEST/"
  "$CLI" evaluate --denoiser "$arch" --dose 0.25 --window soft-tissue --update-card \
      --json "runs/$arch-finetune/eval.json"
}

for arch in "${@:-cnn10 wganvgg redcnn dugan}"; do
  for a in $arch; do
    case $a in
      cnn10)   train cnn10   -  6000 3e-4 16 2000 ;;
      wganvgg) train wganvgg -  3000 3e-4 16 300 ;;
      redcnn)  train redcnn  32 2500 3e-4 16 600 ;;
      dugan)   train dugan   32 1500 3e-4 16 300 ;;
      *) echo "unknown denoiser $a" >&2; exit 2 ;;
    esac
  done
done
