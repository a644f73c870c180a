"""How well each surrogate answers the dev MMLU questions itself: a surrogate that does not know the
answer cannot show which words decide it (docs/EVALUATION.md §8.16).

    python scripts/mmlu_accuracy.py gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
    python scripts/mmlu_accuracy.py qwen2.5-coder-0.5b --formats chat,plain --limit 20

For every item the surrogate reads the prompt `ropelime eval mmlu` builds; its distribution at the
answer's first position, restricted to the four letters, gives p(gold letter) and whether the gold
letter ranks first. Prints one markdown row per surrogate and prompt format (mean and 95% bootstrap
interval over the items).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ropelime.research.evaluate import DATA_FILES, LETTERS, mean_ci, mmlu_item, read_jsonl
from ropelime.surrogate import Surrogate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / DATA_FILES["mmlu"]


def letter_probabilities(surrogate: Surrogate, rows: list[dict], prompt_format: str) -> np.ndarray:
    """(items, 4) probabilities of the letters A–D at the answer's first position, renormalised over the four."""
    letters = [surrogate.encode_response(letter)[0] for letter in LETTERS]
    out = []
    for row in rows:
        item = mmlu_item(row)
        prompt = surrogate.encode_prompt(item.prompt, None, [], prompt_format=prompt_format)
        first = surrogate.reference(list(prompt.ids), surrogate.encode_response(item.answer))[0, letters]
        out.append(first.softmax(-1).numpy())
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("surrogates", nargs="+", help="catalogue names or model paths")
    parser.add_argument("--data", type=Path, default=DATA, help="the MMLU decisive-word dev file")
    parser.add_argument("--formats", default="auto", help="comma-separated prompt formats: auto, chat, plain")
    parser.add_argument("--limit", type=int, default=None, help="the first N items")
    args = parser.parse_args()
    rows = read_jsonl(args.data)[:args.limit]
    gold = np.array([row["answer"] for row in rows])
    print(f"{len(rows)} MMLU items; chance: p(gold) 0.25, accuracy 0.25\n")
    print("| surrogate | prompt format | p(gold letter) among A–D | accuracy |")
    print("|---|---|---|---|")
    for name in args.surrogates:
        surrogate = Surrogate.load(name)
        for prompt_format in args.formats.split(","):
            p = letter_probabilities(surrogate, rows, prompt_format)
            p_gold = p[np.arange(len(rows)), gold]
            correct = (p.argmax(-1) == gold).astype(float)
            cells = [mean_ci(list(values)) for values in (p_gold, correct)]
            print(f"| {surrogate.name} | {surrogate.prompt_format(prompt_format)} | "
                  + " | ".join(f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}]" for c in cells) + " |")


if __name__ == "__main__":
    main()
