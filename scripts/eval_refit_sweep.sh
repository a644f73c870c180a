#!/bin/sh
# Fit-only variants of the default method on the first N MMLU items at budget 64, seed 0: the same
# sparse_k masks, so with --reuse-scores they cost no surrogate pass once the base run has scored them
# (only each variant's top-k removal mask is new). Usage: scripts/eval_refit_sweep.sh N
set -e
N=${1:?number of items}
DATA=${DATA:-../shared/data/mmlu_decisive_dev.jsonl}
OUT=${OUT:-docs/results/refit}
mkdir -p "$OUT"
run() { name=$1; shift; ropelime eval mmlu --data "$DATA" --limit "$N" --methods ropelime --budget 64 --seed 0 \
        --reuse-scores "$@" --json "$OUT/mmlu_n${N}_$name.json" > /dev/null; }
run base
for target in logit_prob kl js; do run "target_$target" --target "$target"; done
for kernel in cosine uniform; do run "kernel_$kernel" --kernel "$kernel"; done
for width in 0.25 1.0; do run "rwmd_width_$width" --kernel-width "$width"; done
run solver_ols --solver ols
run solver_lasso --solver lasso
for alpha in 0.1 10; do run "ridge_alpha_$alpha" --alpha "$alpha"; done
