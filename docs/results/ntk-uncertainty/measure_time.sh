#!/usr/bin/env bash
# Time one run of each kind for the pre-registration's sizing (issue 18).
# MLP protocol: whole runs (16 rounds) of each strategy available on this branch; CNN protocol:
# 2 query rounds (3 trainings, 2 selections) per strategy, enough for the per-round costs.
# Usage: OMP_NUM_THREADS=1 bash docs/results/ntk-uncertainty/measure_time.sh OUT_DIR [DATA_DIR]
set -euo pipefail
out=${1:?output folder}; data=${2:-/usr/share/datasets/fashion-mnist}
seed=341849089   # entk_al.report.bench.derive_seed(18, 0): not a study seed (the study uses base_seed 180)
common=(--dataset fashion-mnist --data-dir "$data" --initial 100 --query 20 --subset 4000 --retrain warm
        --loss mse --epochs 10 --batch-size 64 --lr 0.05 --threads 1 --seed "$seed" --device cpu -q)
for s in random margin badge lookahead max_herding uncertainty_herding; do
  python -m entk_al run --strategy "$s" --model mlp --width 128 --rounds 15 --min-steps 200 \
    --stop kappa,change --stop-action log "${common[@]}" --out "$out/mlp-$s"
done
for s in random lookahead badge max_herding uncertainty_herding; do
  python -m entk_al run --strategy "$s" --model cnn --width 16 --rounds 2 --min-steps 100 \
    --stop kappa --stop-action log "${common[@]}" --out "$out/cnn-$s"
done
