#!/bin/sh
# Fit-only variants of the default method on the first N items of a task at budget 64, seed 0: the same
# sparse_k masks, so with --reuse-scores they cost no surrogate pass once the base run has scored them
# (only each variant's top-k removal mask is new). Usage: scripts/eval_refit_sweep.sh TASK N
set -e
TASK=${1:?task (mmlu or hotpotqa)}
N=${2:?number of items}
case $TASK in mmlu) FILE=mmlu_decisive_dev.jsonl ;; hotpotqa) FILE=hotpotqa_dev.jsonl ;; *) exit 2 ;; esac
DATA=${DATA:-../shared/data/$FILE}
TARGET=${TARGET:-nll}  # the target the reports in docs/results ran with (the default is now kl with loo_pairs)
SAMPLER=${SAMPLER:-sparse_k}  # and the sampler (likewise)
OUT=${OUT:-docs/results/refit}
mkdir -p "$OUT"
run() { name=$1; shift; ropelime eval "$TASK" --data "$DATA" --limit "$N" --methods ropelime --budget 64 --seed 0 \
        --target "$TARGET" --sampler "$SAMPLER" --reuse-scores "$@" --json "$OUT/${TASK}_n${N}_$name.json" > /dev/null; }
run base
for target in logit_prob kl js; do run "target_$target" --target "$target"; done
for kernel in cosine uniform; do run "kernel_$kernel" --kernel "$kernel"; done
for width in 0.1 0.25 1.0 2.0; do run "rwmd_width_$width" --kernel-width "$width"; done
run rwmd_cost_cosine --kernel-cost cosine
run rwmd_cost_cosine_raw --kernel-cost cosine --no-kernel-normalise
for width in 5 10 20; do run "rwmd_raw_width_$width" --no-kernel-normalise --kernel-width "$width"; done
run solver_ols --solver ols
run solver_lasso --solver lasso
for alpha in 0.1 10; do run "ridge_alpha_$alpha" --alpha "$alpha"; done
