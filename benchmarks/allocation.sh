#!/usr/bin/env bash
# Allocation of the cut for the one-shot methods: one global ranking, every group alike, or capped at
# 75% of a group; seed 0, 50 retraining steps. Writes benchmarks/results/real_text_r8_allocation.{md,json,png}.
set -euo pipefail
cd "$(dirname "$0")"
python real_text.py --tag allocation --methods l1 taylor random --targets 0.5 0.75 --seeds 0 --search-steps 0 \
    --total-steps 50 --eval-every 50 \
    --variant 'global={"allocation": "global"}' --variant 'uniform={"allocation": "uniform"}' \
    --variant 'global, cap-0.75={"allocation": "global", "max_ratio": 0.75}'
