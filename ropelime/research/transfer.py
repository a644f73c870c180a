"""Transfer to the closed model: do the surrogate's attributions recover what the closed model's own
answer rests on? A local model stands in for the closed model (`ropelime eval --closed-local MODEL
--transfer`), so its own leave-one-out is the ground truth (AttriBoT's question, asked of this product).

Per item, with the stand-in's answer to the whole prompt as the fixed output:
- ground truth: the stand-in's own leave-one-out attributions, the teacher-forced NLL of its own
  answer with each feature deleted (the stand-in loaded as a surrogate; sampler loo, kernel
  uniform, solver ols); its top-2 features are the positives;
- per method: AP, AUROC and P@2 of the method's attributions against those top 2, and the
  Spearman correlation with the stand-in's attributions over all features;
- answer change: does deleting the method's top-1 / top-3 features change the stand-in's answer
  (token F1 to its answer below 1, `ropelime.verify.similarity`), and change it much (F1 below 0.5)? Against deleting 1 / 3 features
  drawn at random (seeded by the seed and the item id, one draw each, shared by all methods);
- verification: `ropelime.verify` with K = 3 on the method's explanation; the precision of its
  `confirmed` verdicts against the stand-in's top 2 (pooled over items in the summary).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from scipy.stats import spearmanr

from ropelime.cache import digest
from ropelime.closed import fetch_response, fixed_output
from ropelime.research.evaluate import METHODS as EVALUATED
from ropelime.research.evaluate import (Closed, Item, agreement, explain_item, feature_count, finished_items, gold_labels,
                                        mean_ci, method_config)
from ropelime.features import find_explain_span, split_features
from ropelime.perturb import perturb_text
from ropelime.refine import refine as refine_with
from ropelime.schema import ExplainConfig, Feature
from ropelime.settings import cache_dir
from ropelime.surrogate import Surrogate
from ropelime.verify import similarity, verify

TOP_LOO = 2
"""The stand-in's top leave-one-out features that count as what its answer rests on."""
VERIFY_K = 3
STANDIN_LOO = {"sampler": "loo", "kernel": "uniform", "solver": "ols", "target": "nll", "perturb": "delete",
               "prior_weight": 0.0}

CHANGED_MUCH = 0.5
"""Token F1 to the original answer below which an answer counts as changed much (not just reworded)."""

METRICS = ("ap", "auroc", "p_at_k", "spearman", "top1_changed", "top3_changed", "random1_changed",
           "random3_changed", "top1_changed_much", "top3_changed_much", "random1_changed_much", "random3_changed_much", "confirmed_precision", "gold_ap", "gold_auroc", "standin_gold_ap", "standin_gold_auroc", "closed_calls", "surrogate_passes",
           "seconds")


def item_features(item: Item) -> list[Feature]:
    """The item's features, in index order (as every method explains them)."""
    return split_features(item.prompt, item.granularity, explain=find_explain_span(item.prompt, item.explain),
                          segments=item.segments)


def standin_loo(item: Item, answer: str, standin: Surrogate, config: ExplainConfig) -> np.ndarray:
    """The stand-in's own leave-one-out attribution of each feature (index order) for its own answer."""
    from ropelime.explain import default_cache, explain

    loo = config.model_copy(update={**STANDIN_LOO, "granularity": item.granularity, "segments": item.segments,
                                    "budget": feature_count(item)})
    result = explain(item.prompt, answer, explain=item.explain, config=loo, surrogate=standin, cache=default_cache(),
                     output_span=item.output_span)
    return np.array([f.score for f in sorted(result.features, key=lambda f: f.index)])


def top_indices(scores: np.ndarray, n: int) -> list[int]:
    """The n highest-scored feature indices, best first (ties by index)."""
    return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:n]]


def recovery(scores: np.ndarray, loo: np.ndarray) -> dict[str, float]:
    """AP, AUROC and P@2 of `scores` against the stand-in's top-2 LOO features; Spearman with all of `loo`."""
    truth = np.zeros(len(loo), dtype=bool)
    truth[top_indices(loo, TOP_LOO)] = True
    rho = spearmanr(scores, loo).statistic if len(loo) > 2 else float("nan")
    return {**agreement(scores, truth), "spearman": float(rho)}


def answer_similarity(item: Item, features: list[Feature], removed: list[int], answer: str,
                      closed: Closed) -> tuple[float, bool]:
    """Token F1 of the closed model's answer with the `removed` features deleted to its original answer (1 = the
    same answer); and whether it called the model."""
    keep = np.ones(len(features), dtype=bool)
    keep[removed] = False
    result = fetch_response(closed.model, perturb_text(item.prompt, features, keep, "delete"), cache_dir=cache_dir(),
                            timeout=closed.timeout, api_base=closed.api_base, max_tokens=closed.max_tokens)
    return similarity(result.text, answer), not result.cached


def changes(name: str, f1: float) -> dict[str, Any]:
    """The record fields of one deletion: its similarity, changed at all (F1 < 1) and changed much."""
    return {f"{name}_similarity": f1, f"{name}_changed": f1 < 1.0, f"{name}_changed_much": f1 < CHANGED_MUCH}


def random_removals(item: Item, d: int, seed: int) -> dict[str, list[int]]:
    """One random draw of 1 and one of 3 features (fewer when d is smaller), seeded by the seed and the item id."""
    rng = np.random.default_rng(int(digest(item.id, seed)[:12], 16))
    return {f"random{n}": sorted(int(i) for i in rng.choice(d, size=min(n, d), replace=False)) for n in (1, 3)}


def transfer_item(item: Item, methods: list[str], config: ExplainConfig, *, budget: int | Literal["d"],
                  surrogate: Surrogate, standin: Surrogate, closed: Closed, reuse_scores: bool = False,
                  refine: int = 0, step: Callable[[str], None] | None = None) -> list[dict]:
    """Per-method transfer records for one item (see the module docstring). With `refine` K, each method's
    explanation is first refined with K calls to the stand-in (`ropelime.refine`) and its refined ranking
    (measured features first) is what is scored."""
    from ropelime.explain import default_cache

    fetched = fixed_output(item.prompt, model=closed.model, timeout=closed.timeout, api_base=closed.api_base,
                           max_tokens=closed.max_tokens).answer
    answer = fetched.text
    features = item_features(item)
    loo = standin_loo(item, answer, standin, config)
    gold = gold_labels(features, item.gold_spans)
    standin_gold = agreement(loo, gold)
    shared: dict[str, Any] = {"id": item.id, "response": answer, "d": len(features), "standin_loo": loo.tolist(),
                              "standin_top": top_indices(loo, TOP_LOO),
                              "standin_gold_ap": standin_gold["ap"], "standin_gold_auroc": standin_gold["auroc"]}
    shared["item_closed_calls"] = int(not fetched.cached)  # the answer and the random removals, for all methods
    for name, removed in random_removals(item, len(features), config.seed).items():
        f1, called = answer_similarity(item, features, removed, answer, closed)
        shared |= {name: removed, **changes(name, f1)}
        shared["item_closed_calls"] += called
    base = config.model_copy(update={"granularity": item.granularity, "segments": item.segments})
    records = []
    for method in methods:
        if step:
            step(method)
        record: dict[str, Any] = {**shared, "method": method}
        try:
            started = time.perf_counter()
            result = explain_item(item, method, method_config(method, base, budget, len(features)), answer, surrogate,
                                  closed, cache=default_cache() if reuse_scores else None)
            calls = result.cost.closed_model_calls if method == "gsmile" else 0
            ordered = sorted(result.features, key=lambda f: f.index)
            record["scores"] = [f.score for f in ordered]
            if refine:
                result = refine_with(result, refine, model=closed.model, api_base=closed.api_base,
                                     timeout=closed.timeout, max_tokens=closed.max_tokens)
                ordered = sorted(result.features, key=lambda f: f.index)
                record |= {"refined": [m.feature for m in result.refinement.features],
                           "refine_signal": result.refinement.signal}
                calls += result.refinement.closed_model_calls
            scores = np.array([-float(f.rank) for f in ordered]) if refine else np.array(record["scores"])
            against_gold = agreement(scores, gold)
            record |= {**recovery(scores, loo), "gold_ap": against_gold["ap"], "gold_auroc": against_gold["auroc"]}
            verified = verify(result, VERIFY_K, model=closed.model, api_base=closed.api_base, timeout=closed.timeout,
                              max_tokens=closed.max_tokens).verification
            calls += verified.closed_model_calls
            for n in (1, 3):
                record[f"top{n}"] = top_indices(scores, n)
                f1, called = answer_similarity(item, features, record[f"top{n}"], answer, closed)
                record |= changes(f"top{n}", f1)
                calls += called
            confirmed = [c.feature for c in verified.checks if c.verdict == "confirmed"]
            hits = len(set(confirmed) & set(shared["standin_top"]))
            record |= {"verdicts": {c.feature: c.verdict for c in verified.checks}, "confirmed": len(confirmed),
                       "confirmed_hits": hits, "confirmed_precision": hits / len(confirmed) if confirmed else None,
                       "closed_calls": calls,
                       "surrogate_passes": result.cost.surrogate_forward_passes,
                       "seconds": round(time.perf_counter() - started, 2)}
        except Exception as error:  # noqa: BLE001 - one failing item must not end a long run; it is reported
            record["error"] = f"{type(error).__name__}: {error}"
        records.append(record)
    return records


def summarise(records: list[dict], methods: list[str], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per method: mean and bootstrap interval of every metric, the top-3 / random-3 change ratio and
    the precision of `confirmed` pooled over items."""
    summary = {}
    for m in methods:
        mine = [r for r in records if r["method"] == m and "error" not in r]
        row: dict[str, Any] = {metric: mean_ci((r.get(metric) for r in mine), seed=seed) for metric in METRICS}
        for much in ("", "_much"):
            random3 = row[f"random3_changed{much}"]["mean"]
            row[f"top3_vs_random3{much}"] = row[f"top3_changed{much}"]["mean"] / random3 if random3 else float("nan")
        confirmed = sum(r["confirmed"] for r in mine)
        row["confirmed_pooled"] = {"precision": sum(r["confirmed_hits"] for r in mine) / confirmed if confirmed
                                   else float("nan"), "confirmed": confirmed}
        summary[m] = row
    return summary


def run_transfer(items: list[Item], methods: list[str], config: ExplainConfig, *, budget: int | Literal["d"],
                 surrogate: Surrogate, standin: Surrogate, closed: Closed, reuse_scores: bool = False, refine: int = 0,
                 step: Callable[[str, str], None] | None = None,
                 checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The transfer evaluation over `items`; `checkpoint` gets the report so far after every item.

    Items that a `previous` report with the same settings finished keep its records (`resumed` counts them).
    """
    unknown = sorted(set(methods) - set(EVALUATED))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(EVALUATED)}.")
    head = {"mode": "transfer", "fixed_output": f"answer of {closed.model}", "surrogate": surrogate.name,
            "precision": surrogate.precision, "standin": standin.name, "standin_precision": standin.precision, "budget": budget, "ground_truth": f"stand-in leave-one-out, top {TOP_LOO}",
            "standin_loo": STANDIN_LOO, "verify_k": VERIFY_K, "methods": methods}
    if refine:  # reports made before refinement existed resume as they were
        head["refine"] = refine
    finished = finished_items(previous, head, methods)
    head["resumed"] = sum(item.id in finished for item in items)
    records: list[dict] = []
    report: dict[str, Any] = {}
    for done, item in enumerate(items, start=1):
        records += finished.get(item.id) or transfer_item(
            item, methods, config, budget=budget, surrogate=surrogate, standin=standin, closed=closed,
            reuse_scores=reuse_scores, refine=refine, step=(lambda m, item=item: step(item.id, m)) if step else None)
        report = {**head, "items": done, "complete": done == len(items),
                  "errors": sum("error" in r for r in records),
                  "summary": summarise(records, methods, seed=config.seed), "records": records}
        if checkpoint:
            checkpoint(report)
    return report


def transfer_table(report: dict[str, Any]):
    """The summary as a rich table: recovery of the stand-in's LOO, answer changes, confirmed precision."""
    from rich.table import Table

    table = Table(title=f"transfer to {report['standin']}: {report['items']} items, budget {report['budget']}")
    for column in ("method", "AP@top2", "AUROC", "Spearman", "top-1 / random-1 change", "top-3 / random-3 change",
                   "confirmed precision (n)", "closed calls / method"):
        table.add_column(column)
    for method, s in report["summary"].items():
        mean = lambda name: "-" if not s[name]["n"] else f"{s[name]['mean']:.2f}"
        cell = lambda name: "-" if not s[name]["n"] else f"{s[name]['mean']:.3f} [{s[name]['low']:.3f}, {s[name]['high']:.3f}]"
        pooled = s["confirmed_pooled"]
        table.add_row(method, cell("ap"), cell("auroc"), cell("spearman"),
                      f"{mean('top1_changed')} / {mean('random1_changed')}",
                      f"{mean('top3_changed')} / {mean('random3_changed')}",
                      f"{pooled['precision']:.2f} ({pooled['confirmed']})", mean("closed_calls"))
    return table
