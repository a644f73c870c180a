"""Does the compute precision change the explanation? float32 against mixed and bf16, same items, one run.

    python benchmarks/precision.py mmlu --limit 8
    python benchmarks/precision.py hotpotqa --limit 2 --precisions float32 mixed

Each item is explained at each precision with default settings and a fresh score cache (so every
mask is scored again). Against float32, per other precision: the Spearman correlation of the
attributions, the largest attribution change and the largest change relative to that feature's own
95% interval half-width under float32 (below 1: the change is smaller than the sampling uncertainty
the result already reports), how many features moved by less than that half-width, top-3 overlap,
same top-1, features whose significance (interval excluding 0, and its sign) differs, and total
seconds (noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ropelime.cache import ScoreCache
from ropelime.research.evaluate import DATA_FILES, load_items
from ropelime.explain import explain
from ropelime.schema import ExplainConfig
from ropelime.loading import PRECISIONS
from ropelime.surrogate import Surrogate

ROOT = Path(__file__).resolve().parents[1]


def attributions(task: str, limit: int, precision: str, budget: int, surrogate_name: str | None
                 ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], float]:
    """(scores, interval low, interval high) per item in feature order, and the total seconds."""
    items = load_items(task, ROOT.parent / "shared" / "data" / DATA_FILES[task], limit=limit)
    surrogate = Surrogate.load(surrogate_name, dtype=precision)
    results, seconds = [], 0.0
    for item in items:
        config = ExplainConfig(granularity=item.granularity, segments=item.segments, budget=budget)
        with tempfile.TemporaryDirectory() as folder:
            cache = ScoreCache(Path(folder) / "scores.sqlite")
            start = time.perf_counter()
            result = explain(item.prompt, item.answer, explain=item.explain, config=config, surrogate=surrogate,
                             cache=cache)
            seconds += time.perf_counter() - start
            cache.close()
        features = sorted(result.features, key=lambda f: f.index)
        results.append(tuple(np.array([getattr(f, name) for f in features]) for name in ("score", "ci_low", "ci_high")))
        print(f"  {precision} item {item.id}: {len(features)} features", flush=True)
    return results, seconds


def significance(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """+1 / -1 where the interval excludes 0 on that side, else 0."""
    return np.where(low > 0, 1, np.where(high < 0, -1, 0))


def compare(reference: list, other: list) -> dict[str, float]:
    rho, largest, ratio, top3, top1, flips, within, total = [], 0.0, 0.0, [], 0, 0, 0, 0
    for (a, a_low, a_high), (b, b_low, b_high) in zip(reference, other):
        change = np.abs(a - b)
        half = np.maximum((a_high - a_low) / 2, 1e-12)
        rho.append(spearmanr(a, b)[0] if len(a) > 1 else 1.0)
        largest, ratio = max(largest, change.max()), max(ratio, (change / half).max())
        within += int((change <= half).sum())
        k = min(3, len(a))
        top3.append(len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k)
        top1 += int(np.argmax(a) == np.argmax(b))
        flips += int((significance(a_low, a_high) != significance(b_low, b_high)).sum())
        total += len(a)
    return {"spearman_mean": float(np.mean(rho)), "spearman_min": float(np.min(rho)), "max_change": largest,
            "max_change_over_half_width": ratio, "top3_overlap": float(np.mean(top3)), "same_top1": top1,
            "items": len(reference), "significance_differs": flips, "within_half_width": within, "features": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(DATA_FILES))
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--surrogate", help="a surrogate path or hub id (default: the embedded Gemma 3 270M)")
    args = parser.parse_args()
    precisions = ["float32"] + [p for p in args.precisions if p != "float32"]
    runs = {p: attributions(args.task, args.limit, p, args.budget, args.surrogate) for p in precisions}
    reference, base_seconds = runs["float32"]
    print(f"\n{args.task}, {args.limit} items, budget {args.budget}: float32 took {base_seconds:.0f} s")
    for precision in precisions[1:]:
        other, seconds = runs[precision]
        c = compare(reference, other)
        print(f"{precision:>8}: {seconds:.0f} s ({base_seconds / seconds:.2f}× float32); attribution Spearman "
              f"mean {c['spearman_mean']:.3f} (min {c['spearman_min']:.3f}); largest change {c['max_change']:.3f}, "
              f"{c['max_change_over_half_width']:.2f}× that feature's interval half-width; changes within the "
              f"float32 interval's half-width {c['within_half_width']}/{c['features']} features; top-3 overlap "
              f"{c['top3_overlap']:.2f}; same top-1 {c['same_top1']}/{c['items']}; significance differs "
              f"{c['significance_differs']}/{c['features']} features")


if __name__ == "__main__":
    main()
