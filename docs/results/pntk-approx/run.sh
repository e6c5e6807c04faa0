#!/usr/bin/env bash
# Reproduces docs/results/pntk-approx/ (2 shared CPU cores, one thread per process, niced).
# Run from the repository root. CNN settings are smaller (N, evaluation set, widths): with the
# gram engine a CNN's eNTK costs ~O² = 100x its pNTK (see README.md).
set -euo pipefail
export OMP_NUM_THREADS=1
A="nice -n 10 entk-al approx --threads 1 --memory-gib 6 -q"
D=docs/results/pntk-approx
FM="--dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist"
CNN="--n-points 100 --eval-size 200 --cost-sizes 32,64"
# The committed digits-mlp/approx.json is the partial file this run saved after width 2048
# ("finished": false): we stopped it during width 4096 (about 50 min of shared CPU per width).
$A --dataset digits --model mlp --widths 32,64,128,256,512,1024,2048,4096 --out $D/digits-mlp
$A $FM --model mlp --widths 32,128,512,2048 --out $D/fashion-mlp
# digits-cnn was run as widths 8,16,32 and then 64 alone, merged with scripts/merge_approx.py
# (each width is measured independently from the same seeds, so this equals one run).
$A --dataset digits --model cnn --widths 8,16,32,64 $CNN --out $D/digits-cnn
$A $FM --model cnn --widths 8,16 $CNN --out $D/fashion-cnn
# stability in N: init only, two disjoint random test subsets per N
for n in 25 50 100 200; do
  $A --dataset digits --model mlp --widths 128 --checkpoints init --n-points $n --cost-sizes 64 \
     --out $D/n-stability/digits-mlp128-N$n
done
