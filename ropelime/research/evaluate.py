"""Evaluation on the dev data (DESIGN.md section 7): agreement with gold evidence, faithfulness on the
surrogate, and cost, per item and aggregated, for RoPE-LIME and the baselines on the same features.

Tasks:
- `hotpotqa`: the context paragraphs (``"<title>: " + "".join(sentences)``) are explained sentence
  by sentence; the question and the instruction stay fixed. Features are caller-given segments
  built from the dataset's own sentences (one feature per sentence: a sentence's content and the
  whitespace up to the next one), so gold `supporting_facts` map one-to-one onto features.
- `mmlu`: the words of the question stem are the features; the instruction and the choices stay
  fixed. A word is gold when its span overlaps a `decisive` span.

The fixed output is the gold answer unless a closed model is given.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from sklearn.metrics import average_precision_score, roc_auc_score

from ropelime.cache import ScoreCache
from ropelime.errors import InputError
from ropelime.features import find_explain_span, split_features
from ropelime.samples import resolve_config
from ropelime.schema import ExplainConfig, Explanation, Feature, Granularity
from ropelime.surrogate import Surrogate

Task = Literal["hotpotqa", "mmlu"]
Layout = Literal["context_first", "question_first"]
DATA_FILES: dict[str, str] = {"hotpotqa": "hotpotqa_dev.jsonl", "mmlu": "mmlu_decisive_dev.jsonl"}
LETTERS = "ABCD"

HOTPOT_INSTRUCTION = "Answer the question using the context. Reply with a short answer only."
MMLU_INSTRUCTION = "The following is a multiple choice question about {subject}. Reply with the letter and the text of the correct choice."

BASELINES: dict[str, dict[str, Any]] = {
    "loo": {"sampler": "loo", "kernel": "uniform", "solver": "ols", "adjust_position": False, "prior_weight": 0.0},
    "contextcite": {"sampler": "bernoulli", "target": "logit_prob", "solver": "lasso", "kernel": "uniform",
                    "adjust_position": False, "prior_weight": 0.0},
}
"""Method overrides of the baselines run on the surrogate (the rest comes from the evaluated config); they
read the scores as published, with no adjustment for position and no text prior."""

METHODS = ("ropelime", *BASELINES, "gsmile")


class Item(BaseModel):
    """One evaluation example: a prompt, its explainable part, the gold answer and gold evidence spans."""

    id: str
    prompt: str
    explain: str = Field(description="the explainable substring of the prompt (its first occurrence)")
    granularity: Granularity
    segments: list[tuple[int, int]] | None = None
    answer: str = Field(description="the gold answer: the fixed output when no closed model is given")
    output_span: str | None = Field(None, description="the part of the fixed output attributed (None = all of it)")
    gold_spans: list[tuple[int, int]] = Field(description="character spans of the gold evidence in the prompt")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def hotpotqa_item(row: dict, layout: Layout = "context_first") -> Item:
    """Build the prompt, one segment per dataset sentence, and the gold sentences' spans.

    A segment is a sentence's content and the whitespace up to the next sentence of its paragraph;
    titles, the paragraph breaks and whitespace-only sentences stay fixed.
    """
    question = f"Question: {row['question']}"
    if layout == "context_first":
        head, tail = f"{HOTPOT_INSTRUCTION}\n\nContext:\n", f"\n\n{question}\nAnswer:"
    elif layout == "question_first":
        head, tail = f"{HOTPOT_INSTRUCTION}\n\n{question}\n\nContext:\n", "\n\nAnswer:"
    else:
        raise ValueError(f"unknown layout {layout!r}; use context_first or question_first.")
    paragraphs, spans, offset = [], {}, len(head)
    for title, sentences in row["context"]:
        cursor = offset + len(f"{title}: ")
        starts = []
        for s, sentence in enumerate(sentences):
            if sentence.strip():
                starts.append((s, cursor + len(sentence) - len(sentence.lstrip())))
            cursor += len(sentence)
        for (s, start), after in zip(starts, [a for _, a in starts[1:]] + [cursor]):
            spans[(title, s)] = (start, after)
        paragraphs.append(f"{title}: " + "".join(sentences))
        offset += len(paragraphs[-1]) + 2
    context = "\n\n".join(paragraphs)
    gold = [spans[(t, s)] for t, s in row["supporting_facts"] if (t, s) in spans]
    return Item(id=row["id"], prompt=head + context + tail, explain=context, granularity="segments",
                segments=sorted(spans.values()), answer=row["answer"], gold_spans=gold)


AnswerPart = Literal["whole", "letter"]


def mmlu_item(row: dict, answer_part: AnswerPart = "whole") -> Item:
    """The stem's words are the features; the gold spans are the decisive words' spans in the prompt.

    The fixed output is "<letter>. <choice text>"; `answer_part="letter"` attributes only its letter."""
    head = MMLU_INSTRUCTION.format(subject=row["subject"].replace("_", " ")) + "\n\n"
    choices = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, row["choices"]))
    prompt = f"{head}{row['question']}{choices}\nAnswer:"
    gold = [(len(head) + d["start"], len(head) + d["end"]) for d in row["decisive"]]
    answer = f"{LETTERS[row['answer']]}. {row['choices'][row['answer']]}"
    return Item(id=row["id"], prompt=prompt, explain=row["question"], granularity="word", answer=answer,
                output_span=LETTERS[row["answer"]] if answer_part == "letter" else None, gold_spans=gold)


def load_items(task: Task, path: Path, *, limit: int | None = None, skip: int = 0, layout: Layout = "context_first",
               answer_part: AnswerPart = "whole") -> list[Item]:
    """`limit` items of a dev file (all by default) after its first `skip`."""
    rows = read_jsonl(path)[skip:None if limit is None else skip + limit]
    if task == "hotpotqa":
        return [hotpotqa_item(row, layout) for row in rows]
    if task == "mmlu":
        return [mmlu_item(row, answer_part) for row in rows]
    raise ValueError(f"unknown task {task!r}; use hotpotqa or mmlu.")


# ---- metrics ------------------------------------------------------------------------------------

def gold_labels(features: list[Feature], gold_spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """True for each feature whose span overlaps a gold span."""
    spans = list(gold_spans)
    return np.array([any(f.start < b and a < f.end for a, b in spans) for f in features], dtype=bool)


def agreement(scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """AUROC, average precision and precision@k (k = number of gold features); NaN when undefined."""
    gold = np.asarray(gold, dtype=bool)
    k = int(gold.sum())
    if k == 0 or k == len(gold):
        return {"auroc": float("nan"), "ap": float("nan"), "p_at_k": float("nan")}
    top = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return {"auroc": float(roc_auc_score(gold, scores)), "ap": float(average_precision_score(gold, scores)),
            "p_at_k": float(gold[top].mean())}


def significance(features: list, gold: np.ndarray) -> dict[str, float]:
    """The share of gold features, and of the others, whose 95% interval excludes 0, and whose direction is
    `supports` and `opposes` (NaN where there are none)."""
    from ropelime.reliability import excludes_zero

    gold = np.asarray(gold, dtype=bool)
    shares = {}
    for name, marked in (("significant", [excludes_zero(f) for f in features]),
                         ("supports", [f.direction == "supports" for f in features]),
                         ("opposes", [f.direction == "opposes" for f in features])):
        marked = np.array(marked, dtype=bool)
        shares[f"{name}_gold"] = float(marked[gold].mean()) if gold.any() else float("nan")
        shares[f"{name}_other"] = float(marked[~gold].mean()) if (~gold).any() else float("nan")
    return shares


def mean_ci(values: Iterable[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of the finite values with a percentile bootstrap interval, and how many values it rests on."""
    x = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(x):
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(x.mean()), "low": float(low), "high": float(high), "n": int(len(x))}


# ---- the run ------------------------------------------------------------------------------------

class Closed(BaseModel):
    """The closed model behind the fixed outputs (and gSMILE's regenerations)."""

    model: str
    api_base: str | None = None
    max_tokens: int = 48
    timeout: float = 120.0


def feature_count(item: Item) -> int:
    """d, the number of features of the item."""
    if item.segments:
        return len(item.segments)
    return len(split_features(item.prompt, item.granularity, explain=find_explain_span(item.prompt, item.explain)))


def method_config(method: str, config: ExplainConfig, budget: int | Literal["d"], d: int) -> ExplainConfig:
    """The evaluated config (method 'ropelime') or a baseline's, at the budget (a number or 'd')."""
    update = dict(BASELINES.get(method, {}))
    update["budget"] = d if budget == "d" else budget
    return config.model_copy(update=update)


def recorded_method(config: ExplainConfig) -> dict[str, Any]:
    """The method as a report's head records it: the default target, sampler and solver written out where the
    config leaves them unset, so reports made before and after a default changed compare as they were run;
    options resolved per item (k, alpha, kernel width) stay as given."""
    resolved = resolve_config(config, 1)
    method = config.model_copy(update={name: getattr(resolved, name) for name in ("target", "sampler", "solver")})
    return method.model_dump(exclude={"segments", "granularity", "time_budget_s", "budget"})


def explain_item(item: Item, method: str, config: ExplainConfig, response: str, surrogate: Surrogate,
                 closed: Closed | None, cache: ScoreCache | None = None) -> Explanation:
    """One explanation of the item's fixed response by one method, through `cache` (default: a fresh
    one, so the cost is what a user with an empty cache pays)."""
    from ropelime.explain import explain

    with tempfile.TemporaryDirectory(prefix="ropelime-eval-") as scratch:
        fresh = cache is None
        cache = ScoreCache(Path(scratch) / "scores.sqlite") if fresh else cache
        try:
            if method == "gsmile":
                if closed is None:
                    raise ValueError("gsmile re-sends every perturbed prompt to a closed model: give one.")
                from ropelime.research.baselines import gsmile

                return gsmile(item.prompt, response, model=closed.model, api_base=closed.api_base,
                              explain=item.explain, config=config, surrogate=surrogate,
                              max_tokens=closed.max_tokens, timeout=closed.timeout)
            return explain(item.prompt, response, explain=item.explain, config=config, surrogate=surrogate,
                           cache=cache, output_span=item.output_span)
        finally:
            if fresh:
                cache.close()


COMMON_FAITHFULNESS = {"target": "nll", "perturb": "delete"}
"""The faithfulness every method is measured on (`lds`, `topk_minus_random`), whatever it fits; `target_lds` and
`target_topk_minus_random` measure it on the explanation's own target and perturbation (the same masks)."""


def evaluate_item(item: Item, methods: list[str], config: ExplainConfig, *, budget: int | Literal["d"],
                  surrogate: Surrogate, closed: Closed | None = None, heldout: int = 32,
                  faith_cache: ScoreCache | None = None, reuse_scores: bool = False,
                  step: Callable[[str], None] | None = None) -> list[dict]:
    """Per-method records for one item: agreement, faithfulness (`COMMON_FAITHFULNESS`, and on the method's own
    target) and cost; and the attribution itself (`scores` in feature order, `gold_features` their indices), so a
    later analysis can rank, combine or adjust the scores without running the explanation again.

    With `reuse_scores` the explanations also score through `faith_cache` (the persistent cache):
    refits of the same masks (another target, kernel or solver) then cost no surrogate pass.
    """
    from ropelime.faithfulness import evaluate_faithfulness

    response, closed_calls = item.answer, 0
    if closed is not None:
        from ropelime.closed import fixed_output

        response = fixed_output(item.prompt, model=closed.model, timeout=closed.timeout, api_base=closed.api_base,
                                max_tokens=closed.max_tokens).text
        closed_calls = 1
    base = config.model_copy(update={"granularity": item.granularity, "segments": item.segments})
    records = []
    for method in methods:
        if step:
            step(method)
        record: dict[str, Any] = {"id": item.id, "method": method, "response": response}
        try:
            started = time.perf_counter()
            cfg = method_config(method, base, budget, feature_count(item))
            result = explain_item(item, method, cfg, response, surrogate, closed,
                                  cache=faith_cache if reuse_scores else None)
            features = sorted(result.features, key=lambda f: f.index)
            gold = gold_labels(features, item.gold_spans)
            scores = np.array([f.score for f in features])
            record |= {"d": len(features), "gold": int(gold.sum()), **agreement(scores, gold),
                       "scores": scores.tolist(), "gold_features": np.flatnonzero(gold).tolist(),
                       **significance(features, gold),
                       "closed_calls": result.cost.closed_model_calls if method == "gsmile" else closed_calls,
                       "surrogate_passes": result.cost.surrogate_forward_passes, "samples": result.diagnostics.samples,
                       "cached_samples": result.cost.cached_samples, "tokens_scored": result.cost.tokens_scored,
                       "seconds": round(time.perf_counter() - started, 2), "r2": result.diagnostics.r2,
                       "surrogate_nll": result.diagnostics.surrogate_nll}
            if heldout > 0 and len(features) >= 2:
                common = result.model_copy(update={"config": result.config.model_copy(update=COMMON_FAITHFULNESS)})
                faith = evaluate_faithfulness(common, heldout=heldout, seed=config.seed, surrogate=surrogate,
                                              cache=faith_cache)
                own = faith if common.config == result.config else evaluate_faithfulness(
                    result, heldout=heldout, seed=config.seed, surrogate=surrogate, cache=faith_cache)
                record |= {"lds": faith.lds, "topk_drop": faith.topk_drop, "random_k_drop": faith.random_k_drop,
                           "topk_minus_random": faith.topk_drop - faith.random_k_drop, "faith_k": faith.k,
                           "target_lds": own.lds, "target_topk_minus_random": own.topk_drop - own.random_k_drop}
        except Exception as error:  # noqa: BLE001 - one failing item must not end a long run; it is reported
            record["error"] = f"{type(error).__name__}: {error}"
        records.append(record)
    return records


METRICS = ("auroc", "ap", "p_at_k", "lds", "topk_drop", "random_k_drop", "topk_minus_random",
           "target_lds", "target_topk_minus_random", "significant_gold", "significant_other", "supports_gold",
           "supports_other", "opposes_gold", "opposes_other", "closed_calls",
           "surrogate_passes", "seconds")


def summarise(records: list[dict], methods: list[str], seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and metric: mean, bootstrap interval and number of items."""
    return {m: {metric: mean_ci((r.get(metric) for r in records if r["method"] == m and "error" not in r), seed=seed)
                for metric in METRICS}
            for m in methods}


def check_same_settings(previous: dict[str, Any], head: dict[str, Any]) -> None:
    """InputError when the report `previous` was made with other settings than `head` (its keys)."""
    differ = [key for key in head if json.loads(json.dumps(head[key])) != previous.get(key)]
    if differ:
        raise InputError(f"the report to resume was made with other settings ({', '.join(differ)} differ); "
                         "write to another --json file, or run without --resume.")


def finished_items(previous: dict[str, Any] | None, head: dict[str, Any], methods: list[str]) -> dict[str, list[dict]]:
    """A previous report's records of the items every method finished without error, by item id.

    InputError when `previous` was made with other settings than `head` (the keys both describe).
    """
    if not previous:
        return {}
    check_same_settings(previous, head)
    by_item: dict[str, list[dict]] = {}
    for record in previous.get("records", []):
        by_item.setdefault(record["id"], []).append(record)
    return {item: records for item, records in by_item.items()
            if {r["method"] for r in records if "error" not in r} >= set(methods)}


def run_evaluation(items: list[Item], methods: list[str], config: ExplainConfig, *, budget: int | Literal["d"],
                   surrogate: Surrogate, closed: Closed | None = None, heldout: int = 32,
                   reuse_scores: bool = False, step: Callable[[str, str], None] | None = None,
                   checkpoint: Callable[[dict[str, Any]], None] | None = None,
                   previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate every method on every item; the report holds the per-item records and the summary.

    Faithfulness masks are scored through the persistent score cache (shared by the methods of an
    item); explanations use fresh caches so their cost is what a user would pay, unless
    `reuse_scores`, which also keeps every mask's divergences (so a later run can fit any target from
    the cached scores without scoring again). `checkpoint` gets the report so far after every item
    (`complete` False until the last).
    Items that a `previous` report with the same settings finished keep its records (`resumed` counts them).
    """
    from ropelime.explain import default_cache

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
    head = {
        "fixed_output": f"answer of {closed.model}" if closed else "gold answer",
        "surrogate": surrogate.name,
        "precision": surrogate.precision,
        "budget": budget,
        "methods": {m: ("gSMILE as published" if m == "gsmile"
                        else recorded_method(method_config(m, config, budget, 0)))
                    for m in methods},
        "faithfulness": {**COMMON_FAITHFULNESS, "heldout_masks": heldout},
        "scores": "persistent cache (cost counts only new scoring)" if reuse_scores else "fresh cache per explanation",
    }
    finished = finished_items(previous, head, methods)
    head["resumed"] = sum(item.id in finished for item in items)
    records: list[dict] = []
    report: dict[str, Any] = {}
    kept, surrogate.keep_divergences = surrogate.keep_divergences, reuse_scores
    try:
        for done, item in enumerate(items, start=1):
            for method in methods:  # one at a time, so a long run saves every finished explanation
                if item.id in finished:
                    records += [r for r in finished[item.id] if r["method"] == method]
                    if step:
                        step(item.id, method)
                else:
                    records += evaluate_item(item, [method], config, budget=budget, surrogate=surrogate, closed=closed,
                                             heldout=heldout, faith_cache=default_cache(), reuse_scores=reuse_scores,
                                             step=(lambda m, item=item: step(item.id, m)) if step else None)
                report = {**head, "items": done, "complete": done == len(items) and method == methods[-1],
                          "errors": sum("error" in r for r in records),
                          "summary": summarise(records, methods, seed=config.seed), "records": records}
                if checkpoint:
                    checkpoint(report)
    finally:
        surrogate.keep_divergences = kept
    return report
