#!/usr/bin/env bash
# What was tried to make UPop keep more of MiniLM-L6: one change of the search per row, 2x, seed 0,
# 100 search + 50 retrain steps. Writes benchmarks/results/real_text_r8_upop_ablation.{md,json,png}.
set -euo pipefail
cd "$(dirname "$0")"
python real_text.py --tag upop_ablation --methods upop --targets 0.5 --seeds 0 \
    --variant 'cosine-lr (monotone)={"schedule": "cosine", "monotone": true, "saliency": "abs"}' \
    --variant 'constant-lr (monotone)={"schedule": "constant", "monotone": true, "saliency": "abs"}' \
    --variant 'cap-0.75 (monotone)={"max_ratio": 0.75, "monotone": true, "saliency": "abs"}' \
    --variant 'uniform (monotone)={"allocation": "uniform", "monotone": true, "saliency": "abs"}' \
    --variant 'ema-0.9 (monotone)={"saliency_decay": 0.9, "monotone": true, "saliency": "abs"}' \
    --variant 'interval-5 (monotone)={"interval": 5, "monotone": true, "saliency": "abs"}' \
    --variant 'signed (monotone)={"saliency": "signed", "monotone": true}' \
    --variant 're-ranked, abs saliency={"monotone": false, "saliency": "abs"}' \
    --variant 're-ranked, taylor saliency={"saliency": "taylor", "monotone": false}'
