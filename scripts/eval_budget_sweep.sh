#!/bin/sh
# Quality against budget per sampler on the first N MMLU items, seed 0 (Bernoulli masks at a smaller
# budget are a prefix of those at a larger one, so with --reuse-scores they are scored once).
# Usage: scripts/eval_budget_sweep.sh N
set -e
N=${1:?number of items}
DATA=${DATA:-../shared/data/mmlu_decisive_dev.jsonl}
OUT=${OUT:-docs/results/budget}
mkdir -p "$OUT"
for budget in 16 32 64; do
  ropelime eval mmlu --data "$DATA" --limit "$N" --methods ropelime,contextcite --sampler bernoulli \
    --budget "$budget" --seed 0 --reuse-scores --json "$OUT/mmlu_n${N}_bernoulli_b$budget.json" > /dev/null
done
for budget in 16 32 64 d; do
  ropelime eval mmlu --data "$DATA" --limit "$N" --methods ropelime,loo --budget "$budget" --seed 0 \
    --reuse-scores --json "$OUT/mmlu_n${N}_sparse_k_b$budget.json" > /dev/null
done
