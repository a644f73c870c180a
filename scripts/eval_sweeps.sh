#!/bin/sh
# The sampler and perturbation sweeps of the default method on the first N items of a task, budget 64,
# seed 0 (scores go through the persistent cache: re-running costs only what is new).
# Usage: scripts/eval_sweeps.sh TASK N      (TASK = mmlu or hotpotqa)
set -e
TASK=${1:?task}
N=${2:?number of items}
case $TASK in mmlu) FILE=mmlu_decisive_dev.jsonl ;; hotpotqa) FILE=hotpotqa_dev.jsonl ;; *) exit 2 ;; esac
DATA=${DATA:-../shared/data/$FILE}
TARGET=${TARGET:-nll}  # the target the reports in docs/results ran with (the default is now kl with loo_pairs)
SAMPLER=${SAMPLER:-sparse_k}  # and the sampler (likewise)
OUT=${OUT:-docs/results/sweeps}
mkdir -p "$OUT"
run() { name=$1; shift; ropelime eval "$TASK" --data "$DATA" --limit "$N" --methods ropelime --budget 64 --seed 0 \
        --target "$TARGET" --sampler "$SAMPLER" --reuse-scores "$@" --json "$OUT/${TASK}_n${N}_$name.json" > /dev/null; }
for k in 1 2 4 8; do run "k_$k" --k "$k"; done
run sizes_harmonic --sizes harmonic
run perturb_placeholder --perturb placeholder
