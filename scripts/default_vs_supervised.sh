#!/usr/bin/env bash
# The README's accuracy claim: `fastssl train` with its defaults (FixMatch, offline digits, 2 labels per
# class) against the supervised-only baseline on the same labeled split. Usage:
#   bash scripts/default_vs_supervised.sh [SEED ...]        (default: seed 0; writes runs/default-*/)
set -euo pipefail
seeds=("${@:-0}")
for seed in "${seeds[@]}"; do
  for algo in fixmatch supervised; do
    out="runs/default-${algo}-seed${seed}"
    rm -rf "$out"
    start=$(date +%s)
    fastssl train --algo.name="$algo" --train.seed="$seed" --train.out="$out" --train.progress=false >/dev/null
    echo "$algo seed=$seed wall=$(( $(date +%s) - start ))s $(cat "$out/summary.json" | tr -d '\n ')"
  done
done
