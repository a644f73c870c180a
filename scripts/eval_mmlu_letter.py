"""MMLU: attribute the whole fixed answer ("B. <choice text>") or only its letter, from cached scores.

    python scripts/eval_mmlu_letter.py --limit 30

Run after `ropelime eval mmlu --limit N --methods ropelime,contextcite --budget 64 --seed 0 --reuse-scores`
(same N): each explanation's scored samples are read from the persistent cache once and fitted for the
whole answer and for `output_span` = the letter, so no surrogate pass is needed. Prints the mean AUROC against the decisive words, with its
bootstrap interval, per method and target span, and the paired difference letter − whole answer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ropelime.cache import ScoreCache
from ropelime.research.evaluate import BASELINES, DATA_FILES, agreement, gold_labels, load_items, mean_ci
from ropelime.explain import score
from ropelime.samples import fit_samples
from ropelime.schema import ExplainConfig
from ropelime.settings import cache_dir
from ropelime.surrogate import Surrogate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--budget", type=int, default=64)
    args = parser.parse_args()
    items = load_items("mmlu", Path("..") / "shared" / "data" / DATA_FILES["mmlu"], limit=args.limit)
    surrogate = Surrogate.load()
    cache = ScoreCache(cache_dir() / "scores.sqlite")
    base = ExplainConfig(granularity="word", budget=args.budget, seed=0)
    configs = {"ropelime": base, "contextcite": base.model_copy(update=BASELINES["contextcite"])}
    auroc: dict[tuple[str, str], dict[str, float]] = {}
    for item in items:
        for method, config in configs.items():
            samples = score(item.prompt, item.answer, explain=item.explain, config=config, surrogate=surrogate,
                            cache=cache, cached_only=True)
            for span_name, span in (("whole answer", None), ("letter", item.answer[0])):
                result = fit_samples(samples, output_span=span)
                features = sorted(result.features, key=lambda f: f.index)
                value = agreement(np.array([f.score for f in features]), gold_labels(features, item.gold_spans))["auroc"]
                if not np.isnan(value):
                    auroc.setdefault((method, span_name), {})[item.id] = value
    cache.close()
    for method in configs:
        whole, letter = auroc[(method, "whole answer")], auroc[(method, "letter")]
        for name, values in (("whole answer", whole), ("letter", letter)):
            stat = mean_ci(values.values())
            print(f"{method:>11} {name:>12}: AUROC {stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}] (n={stat['n']})")
        diff = mean_ci([letter[i] - whole[i] for i in letter if i in whole])
        print(f"{method:>11} letter − whole: {diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]")


if __name__ == "__main__":
    main()
