#!/bin/sh
# Quality against budget per sampler on the first N items of a task, seed 0. Bernoulli masks at a
# smaller budget are a prefix of those at a larger one, so with --reuse-scores they are scored once.
# Usage: scripts/eval_budget_sweep.sh TASK N
set -e
TASK=${1:?task (mmlu or hotpotqa)}
N=${2:?number of items}
case $TASK in mmlu) FILE=mmlu_decisive_dev.jsonl ;; hotpotqa) FILE=hotpotqa_dev.jsonl ;; *) exit 2 ;; esac
DATA=${DATA:-../shared/data/$FILE}
TARGET=${TARGET:-nll}  # the target the reports in docs/results ran with (the default is now kl with loo_pairs)
SAMPLER=${SAMPLER:-sparse_k}  # and the sampler (likewise)
OUT=${OUT:-docs/results/budget}
mkdir -p "$OUT"
for budget in 16 32 64; do
  ropelime eval "$TASK" --data "$DATA" --limit "$N" --methods ropelime,contextcite --sampler bernoulli \
    --budget "$budget" --seed 0 --target "$TARGET" --reuse-scores --json "$OUT/${TASK}_n${N}_bernoulli_b$budget.json" > /dev/null
done
for budget in 16 32 64 d; do
  ropelime eval "$TASK" --data "$DATA" --limit "$N" --methods ropelime,loo --budget "$budget" --seed 0 \
    --target "$TARGET" --sampler "$SAMPLER" --reuse-scores --json "$OUT/${TASK}_n${N}_sparse_k_b$budget.json" > /dev/null
done
