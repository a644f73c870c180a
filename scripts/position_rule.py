"""Does the reliability verdict's position rule flag explanations that agree less with the closed model?

    python scripts/position_rule.py docs/results/fidelity/boolq_gemma3-270m_n150_refine3.json [...]

For each fidelity report (`ropelime eval fidelity --out`), GPT-4o's records with at least 4 features:
the Spearman correlation of the explanation's scores with |GPT-4o's leave-one-out|, split by whether
`ropelime.reliability.position_effect` flags the explanation (a top-3 feature in the last third that shares
no word with the question or the answer); prints both means and the difference with a bootstrap 95% interval.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from scipy.stats import spearmanr

from ropelime.reliability import position_effect
from ropelime.schema import FeatureScore

MODEL = "gpt-4o"


def flagged(scores: np.ndarray, prior: list[float]) -> bool:
    ranks = np.empty(len(scores), dtype=int)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    features = [FeatureScore(index=i, text=f"feature {i}", start=i, end=i + 1, score=float(s), ci_low=float(s),
                             ci_high=float(s), rank=int(ranks[i])) for i, s in enumerate(scores)]
    return position_effect(features, prior) is not None


def main() -> None:
    rng = np.random.default_rng(0)
    for path in sys.argv[1:]:
        groups: dict[bool, list[float]] = {True: [], False: []}
        for record in json.load(open(path))["records"]:
            loo = np.abs(np.array(record["loo"] or [], dtype=float))
            if record["closed_model"] != MODEL or not record.get("scores") or record["d"] < 4 or np.isnan(loo).any():
                continue
            scores = np.array(record["scores"])
            rho = spearmanr(scores, loo)[0]
            if not np.isnan(rho):
                groups[flagged(scores, record["prior"])].append(rho)
        yes, no = np.array(groups[True]), np.array(groups[False])
        draws = [rng.choice(no, len(no)).mean() - rng.choice(yes, len(yes)).mean() for _ in range(4000)]
        low, high = np.percentile(draws, [2.5, 97.5])
        print(f"{path}: flagged {len(yes)} mean {yes.mean():+.3f}, others {len(no)} mean {no.mean():+.3f}; "
              f"others − flagged {no.mean() - yes.mean():+.3f} [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main()
