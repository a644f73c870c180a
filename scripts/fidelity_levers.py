"""Levers on fidelity, read from `ropelime eval fidelity` reports without scoring again: the surrogate's
scores, the question-overlap prior (`ropelime.priors`), and their combination z(score) + w·z(prior) for a
few weights w, against each closed model's own LOO (the comparison that fits the target).

The prompts are split in two halves in file order: choose w on the first (`tune`), read it on the second
(`check`). Paired differences (combination − each part) with 95% bootstrap intervals over records.

    python scripts/fidelity_levers.py docs/results/fidelity/boolq_gemma3-270m_n150_refine3.json \
        --data ../shared/data/fidelity/boolq_dev.jsonl.gz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ropelime.priors import question_overlap
from ropelime.records import Feature
from ropelime.research.evaluate import mean_ci
from ropelime.research.fidelity import compare, feature_segments, position_prior, read_prompts

WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)


def z(x: np.ndarray) -> np.ndarray:
    spread = x.std()
    return (x - x.mean()) / spread if spread > 0 else np.zeros_like(x)


def prior_of(record: dict, rows: dict[str, dict], segments: str) -> np.ndarray:
    if "prior" in record:
        return np.array(record["prior"], dtype=np.float64)
    row = rows[record["id"]]
    indices = feature_segments(row, segments)
    features = [Feature(index=n, text=row["segments"][i]["text"], start=row["segments"][i]["start"],
                        end=row["segments"][i]["end"]) for n, i in enumerate(indices)]
    return question_overlap(row["user"], features, row["response_text"][record["answer"]])


def rankings(record: dict, prior: np.ndarray) -> dict[str, np.ndarray]:
    scores = np.array(record["scores"], dtype=np.float64)
    tie = 1e-6 * position_prior(len(scores))
    out = {"surrogate": scores, "prior": prior + tie}
    for w in WEIGHTS:
        out[f"z(score) + {w:g}·z(prior)"] = z(scores) + w * z(prior) + tie
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--data", required=True, help="the fidelity data file the reports were made on")
    args = parser.parse_args()
    rows = {f"{r['benchmark']}:{r['prompt_idx']}": r for r in read_prompts(args.data)}
    for path in args.reports:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        records = [r for r in report["records"] if "error" not in r]
        order = list(dict.fromkeys(r["id"] for r in records))
        half = set(order[: len(order) // 2])
        magnitude = records[0]["unsigned"]
        print(f"\n{path}: {len(order)} prompts, {report['method']['target']} ({'magnitude' if magnitude else 'signed'})")
        for split in ("tune", "check"):
            mine = [r for r in records if (r["id"] in half) == (split == "tune")]
            rho: dict[str, list[float]] = {}
            for record in mine:
                truth = np.array([np.nan if v is None else v for v in record["loo"]], dtype=np.float64)
                for name, values in rankings(record, prior_of(record, rows, report["segments"])).items():
                    rho.setdefault(name, []).append(compare(values, truth, magnitude=magnitude)["spearman"])
            print(f"  {split} ({len(mine)} records over {report['closed_models']}):")
            for name, values in rho.items():
                m = mean_ci(values)
                line = f"    {name:24s} {m['mean']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}] n={m['n']}"
                if name.startswith("z("):
                    for part in ("surrogate", "prior"):
                        d = mean_ci([a - b for a, b in zip(values, rho[part]) if np.isfinite(a) and np.isfinite(b)])
                        line += f" | − {part} {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                print(line)


if __name__ == "__main__":
    main()
