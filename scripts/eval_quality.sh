#!/bin/sh
# The quality comparison of docs/EVALUATION.md section 5 for one surrogate on the first N items of a task,
# budget 64, seed 0, gold answer as the fixed output. The base run scores two mask sets per item (sparse_k for
# the default and LOO, Bernoulli-1/2 for the ContextCite style) and the held-out masks; every other run refits
# those cached scores with the KL target, Bernoulli masks with KL and ridge, or (MMLU) the answer's letter only
# (no new surrogate pass but the top-k removal masks).
# Every run names its target and sampler: these reports compare targets on the same sparse_k masks, and the
# default (KL with loo_pairs at every granularity, docs/EVALUATION.md 8.15-8.16) came after most of them.
# Usage: scripts/eval_quality.sh TASK N SURROGATE        e.g. scripts/eval_quality.sh mmlu 20 qwen2.5-coder-0.5b
set -e
TASK=${1:?task (mmlu or hotpotqa)}
N=${2:?number of items}
SURROGATE=${3:?surrogate name}
case $TASK in mmlu) FILE=mmlu_decisive_dev.jsonl ;; hotpotqa) FILE=hotpotqa_dev.jsonl ;; *) exit 2 ;; esac
DATA=${DATA:-../shared/data/$FILE}
OUT=${OUT:-docs/results/quality}
mkdir -p "$OUT"
run() { name=$1; shift; ropelime eval "$TASK" --data "$DATA" --limit "$N" --surrogate "$SURROGATE" --budget 64 \
        --seed 0 --reuse-scores --sampler sparse_k "$@" --json "$OUT/${TASK}_${SURROGATE}_n${N}_$name.json" > /dev/null; }
run base --methods ropelime,loo,contextcite --target nll
run target_kl --methods ropelime,loo --target kl
run bernoulli_kl --methods ropelime --sampler bernoulli --kernel uniform --target kl
if [ "$TASK" = mmlu ]; then run letter --answer-part letter --methods ropelime,loo,contextcite --target nll; fi
