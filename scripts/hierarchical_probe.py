"""Would paragraphs first, then the sentences of the strongest paragraphs (AttriBoT's hierarchy), find HotpotQA's
evidence with fewer masks than removing every sentence? (docs/EVALUATION.md §8.18: no.)

    python scripts/hierarchical_probe.py --surrogate gemma3-270m --limit 11 --json OUT.json
    python scripts/hierarchical_probe.py --analyse OUT.json

Per item the surrogate scores, through the persistent score cache, the removal of each paragraph and of each
sentence (KL target, as the default). The analysis then ranks the sentences of the top paragraphs by their own
KL, and every other sentence by its paragraph's KL shared equally among its sentences, and pairs that ranking's
AUROC with the default's (every sentence's own KL), for several ways of choosing the paragraphs to refine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ropelime.explain import default_cache, load_surrogate
from ropelime.research.evaluate import DATA_FILES, agreement, gold_labels, load_items, mean_ci
from ropelime.samples import resolve_config
from ropelime.schema import Cost, ExplainConfig, Feature
from ropelime.scoring import prepare, score_masks
from ropelime.targets import target_vector

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / DATA_FILES["hotpotqa"]


def score_items(surrogate_name: str, limit: int, data: Path) -> list[dict]:
    """Each item's paragraph-removal and sentence-removal KLs, its sentences' paragraphs and gold labels."""
    surrogate = load_surrogate(surrogate_name)
    surrogate.keep_divergences = True  # as `ropelime eval --reuse-scores`: the cached masks serve its refits too
    rows = []
    for item in load_items("hotpotqa", data, limit=limit):
        features = [Feature(index=i, start=a, end=b, text=item.prompt[a:b]) for i, (a, b) in enumerate(item.segments)]
        config = resolve_config(ExplainConfig(granularity="segments", segments=item.segments), len(features))
        span = (item.prompt.find(item.explain), item.prompt.find(item.explain) + len(item.explain))
        prepared = prepare(item.prompt, item.answer, system=None, span=span, features=features, config=config,
                           surrogate=surrogate)
        d = len(features)
        paragraph = np.array([item.prompt[span[0]:a].count("\n\n") for a, _ in item.segments])
        groups = np.ones((paragraph.max() + 1, d), dtype=bool)
        groups[paragraph, np.arange(d)] = False
        masks = np.vstack([np.ones((1, d), dtype=bool), groups, ~np.eye(d, dtype=bool)])
        _, scores, _, _ = score_masks(prepared.encoded, item.answer, masks, config=config, surrogate=surrogate,
                                      cache=default_cache(), cost=Cost())
        kl = target_vector(scores, "kl")
        kl = kl - kl[0]  # each removal's change from the unperturbed prompt, as the default's `differences` reads it
        rows.append({"id": item.id, "paragraph": paragraph.tolist(), "paragraph_kl": kl[1:len(groups) + 1].tolist(),
                     "sentence_kl": kl[len(groups) + 1:].tolist(),
                     "gold": gold_labels(features, item.gold_spans).tolist()})
        print(item.id, f"{d} sentences, {len(groups)} paragraphs", flush=True)
    return rows


def hierarchical(row: dict, chosen: np.ndarray) -> tuple[float, int]:
    """AUROC of the hierarchical ranking refining the `chosen` paragraphs, and the masks it would score."""
    paragraph, group_kl = np.array(row["paragraph"]), np.array(row["paragraph_kl"])
    refined = np.isin(paragraph, chosen)
    size = np.bincount(paragraph, minlength=len(group_kl))
    scores = np.where(refined, row["sentence_kl"], group_kl[paragraph] / size[paragraph])
    return agreement(scores, np.array(row["gold"]))["auroc"], len(group_kl) + int(refined.sum())


def analyse(rows: list[dict]) -> None:
    flat = [agreement(np.array(r["sentence_kl"]), np.array(r["gold"]))["auroc"] for r in rows]
    print(f"{len(rows)} items; every sentence's own KL (the default's ranking): AUROC {np.mean(flat):.3f}, "
          f"{np.mean([len(r['gold']) for r in rows]):.1f} masks (one per sentence)")
    gold_paragraphs = [agreement(np.array(r["paragraph_kl"]), np.isin(np.arange(len(r["paragraph_kl"])),
                                                                       np.array(r["paragraph"])[r["gold"]]))["auroc"]
                       for r in rows]
    print(f"paragraphs holding evidence, ranked by their removal's KL: AUROC {np.mean(gold_paragraphs):.3f}")
    rules = {f"top {m} paragraphs": (lambda r, m=m: np.argsort(-np.array(r["paragraph_kl"]))[:m])
             for m in (1, 2, 3, 4, 5)}
    for share in (0.5, 0.7, 0.9):
        def rule(r: dict, share: float = share) -> np.ndarray:
            kl = np.clip(r["paragraph_kl"], 0, None)
            order = np.argsort(-kl)
            return order[:int(np.searchsorted(np.cumsum(kl[order]) / max(kl.sum(), 1e-12), share)) + 1]
        rules[f"paragraphs up to {share:.0%} of the KL"] = rule
    for name, rule in rules.items():
        results = [hierarchical(r, rule(r)) for r in rows]
        diff = mean_ci(a - b for (a, _), b in zip(results, flat))
        print(f"- {name}: AUROC {np.mean([a for a, _ in results]):.3f}, Δ {diff['mean']:+.3f} "
              f"[{diff['low']:+.3f}, {diff['high']:+.3f}], {np.mean([m for _, m in results]):.1f} masks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogate", default="gemma3-270m")
    parser.add_argument("--limit", type=int, default=11)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="write the per-item KLs here")
    parser.add_argument("--analyse", type=Path, help="analyse the per-item KLs of an earlier run instead")
    args = parser.parse_args()
    if args.analyse:
        analyse(json.loads(args.analyse.read_text(encoding="utf-8")))
        return
    rows = score_items(args.surrogate, args.limit, args.data)
    if args.json:
        args.json.write_text(json.dumps(rows), encoding="utf-8")
    analyse(rows)


if __name__ == "__main__":
    main()
