"""Fidelity to real closed models: does an explanation rank the prompt's sentences the way the closed
model's own leave-one-out (LOO) does?

The data (`../shared/data/fidelity/`, its README) holds prompts with the sentence-level LOO recorded from
GPT-4o, GPT-4.1 and Gemini 2.5 Flash-Lite (and API-served Llama models): each label's log-probability on
the prompt and with each user segment deleted. Per prompt and closed model, the closed model's own answer
(the label it gave most probability, written as the system prompt asks) is explained under the exact
system prompt and user text, the recorded segments being the features, and the explanation is compared
with that model's recorded LOO: Spearman over the segments and whether the same segment comes first.

The comparison fits the target: an unsigned target (kl, js) says how much the answer rests on a segment,
so it is compared with the LOO's magnitudes; a signed one (nll, logit_prob) with the signed LOO. Both are
recorded. References in the same run: the position prior (first segment first; reads no text) and every
other recorded model's own LOO, each with its paired difference to the explanation.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp
from scipy.stats import spearmanr

from ropelime.errors import InputError
from ropelime.research.evaluate import mean_ci

CLOSED_MODELS = ("gpt-4o", "gpt-4-1", "gemini-2-5-flash-lite-vertex")
"""The closed models of the data, in the order reports list them."""

POSITION = "position prior"
OVERLAP = "question-overlap prior"
MIN_LABEL_MASS = 0.5
"""A model is skipped on a prompt where its recorded labels hold less probability than this (the README:
its answer is then mostly outside the recorded labels)."""
MIN_SEGMENTS = 3
"""Segments with a recorded LOO a prompt needs for a Spearman correlation to mean something."""
LOG_ODDS_BENCHMARKS = ("boolq",)
"""Benchmarks whose LOO is the answer's log-odds against the other labels (the release's `loo`); elsewhere
(ANLI) it is the answer's log-probability (`loo_logprob`): the log-odds needs all three labels in the top-K,
which holds for 17–41% of ANLI segments."""
REQUIRED = ("benchmark", "prompt_idx", "system", "user", "segments", "labels", "response_text", "models")
Segments = Literal["context", "all"]


def open_text(path: Path):
    """A .jsonl or .jsonl.gz file opened for reading text."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_prompts(path: str | Path, *, start: int = 0, n: int | None = None) -> list[dict[str, Any]]:
    """Rows `start` .. `start + n` of a fidelity data file; InputError for a missing file or another schema."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no fidelity data at {path}: give a file of ../shared/data/fidelity/ "
                         "(boolq_dev.jsonl.gz, anli_r1.jsonl.gz).")
    rows = []
    try:
        with open_text(path) as lines:
            for number, line in enumerate(lines):
                if not line.strip() or number < start:
                    continue
                if n is not None and len(rows) >= n:
                    break
                row = json.loads(line)
                missing = [key for key in REQUIRED if key not in row]
                if missing:
                    raise InputError(f"{path} line {number + 1} is not a fidelity record (no {', '.join(missing)}): "
                                     "give a file of ../shared/data/fidelity/.")
                rows.append(row)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path} as JSON lines ({type(error).__name__}: {error}).") from None
    return rows


def api_models(row: dict[str, Any]) -> list[str]:
    """The models with a recorded LOO over the user text (the API-served ones), closed models first."""
    recorded = [m for m, v in row["models"].items() if "loo" in v]
    closed = [m for m in CLOSED_MODELS if m in recorded]
    return closed + sorted(m for m in recorded if m not in CLOSED_MODELS)


def model_answer(row: dict[str, Any], model: str) -> str | None:
    """The label `model` gave most probability on the unablated prompt, or None when its recorded labels hold
    less than `MIN_LABEL_MASS` (or it is not in the row)."""
    record = row["models"].get(model)
    if record is None:
        return None
    lps = [-math.inf if lp is None else lp for lp in record["orig"]]
    if sum(math.exp(lp) for lp in lps) < MIN_LABEL_MASS:
        return None
    return row["labels"][int(np.argmax(lps))]


def feature_segments(row: dict[str, Any], which: Segments) -> list[int]:
    """The user segments that are features: all of them, or the context (the last segment, the question or
    hypothesis, stays fixed)."""
    n = len(row["segments"])
    return list(range(n if which == "all" else n - 1))


def _support(lps: list[float | None] | None, label: int, log_odds: bool) -> float:
    """A label's log-probability, or its log-odds against the other labels; NaN when a needed one is missing
    (or the recording holds none)."""
    if lps is None:
        return math.nan
    values = np.array([np.nan if v is None else v for v in lps], dtype=np.float64)
    if not log_odds:
        return float(values[label])
    if np.isnan(values).any():
        return math.nan
    return float(values[label] - logsumexp(np.delete(values, label)))


def label_loo(row: dict[str, Any], model: str, label: str, indices: list[int]) -> np.ndarray:
    """`model`'s recorded LOO of the segments `indices` for `label` (NaN where undefined): how much deleting
    each segment lowers the label's support, > 0 = the segment supports it. For a model's own answer this is
    the release's `loo` (BoolQ) or `loo_logprob` (ANLI); for another model's answer, the same measure of it."""
    record, a = row["models"][model], row["labels"].index(label)
    log_odds = row["benchmark"] in LOG_ODDS_BENCHMARKS
    before = _support(record["orig"], a, log_odds)
    return np.array([before - _support(record["ablated"][i], a, log_odds) for i in indices], dtype=np.float64)


def position_prior(d: int) -> np.ndarray:
    """First segment first: the ranking that reads no text."""
    return -np.arange(d, dtype=np.float64)


def compare(estimate: np.ndarray, truth: np.ndarray, magnitude: bool) -> dict[str, float]:
    """Spearman and top-1 agreement of `estimate` with `truth` (its magnitudes with `magnitude`) over the
    segments where both are defined; NaN when fewer than `MIN_SEGMENTS` are, or either is constant."""
    estimate, truth = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(estimate) & np.isfinite(truth)
    if ok.sum() < MIN_SEGMENTS:
        return {"spearman": math.nan, "top1": math.nan}
    e, t = estimate[ok], np.abs(truth[ok]) if magnitude else truth[ok]
    if np.ptp(e) == 0 or np.ptp(t) == 0:
        return {"spearman": math.nan, "top1": math.nan}
    return {"spearman": float(spearmanr(e, t).statistic), "top1": float(np.argmax(e) == np.argmax(t))}


def paired(a: list[float], b: list[float], seed: int = 0) -> dict[str, float]:
    """Mean difference a − b over the prompts where both are defined, with its bootstrap interval."""
    return mean_ci([x - y for x, y in zip(a, b) if np.isfinite(x) and np.isfinite(y)], seed=seed)


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), 5) for v in values]


def _array(values: list[float | None] | None) -> np.ndarray | None:
    return None if values is None else np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def estimates_of(record: dict[str, Any]) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """Every ranking a record holds, as (name, its ranking by magnitude, its signed values or None): the
    explanation (an unsigned score is a magnitude, its sign comes from the likelihood effect) and its refined
    and random-refined variants, the position prior, and each other model's own LOO (|LOO| by magnitude)."""
    if "scores" in record:
        scores = _array(record["scores"])
        yield "explanation", scores, _array(record["effects"]) if record["unsigned"] else scores
        for name in ("refined", "random_refined"):
            if name in record:
                yield name, _array(record[name]), None if record["unsigned"] else _array(record[name])
    prior = position_prior(record["d"])
    yield POSITION, prior, prior
    if "prior" in record:  # ties broken by position, as the prior itself ranks them
        overlap = np.array(record["prior"], dtype=np.float64) + 1e-6 * prior
        yield OVERLAP, overlap, overlap
    for model, values in record["references"].items():
        yield model, np.abs(_array(values)), _array(values)


def compare_record(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per ranking of a record: Spearman and top-1 against the closed model's LOO, signed and of magnitudes."""
    truth = _array(record["loo"])
    undefined = {"spearman": math.nan, "top1": math.nan}
    out = {}
    for name, magnitude_values, signed_values in estimates_of(record):
        magnitude = compare(magnitude_values, truth, magnitude=True)
        signed = undefined if signed_values is None else compare(signed_values, truth, magnitude=False)
        out[name] = {"spearman_magnitude": magnitude["spearman"], "top1_magnitude": magnitude["top1"],
                     "spearman_signed": signed["spearman"], "top1_signed": signed["top1"]}
    return out


def summarise(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Per closed model: the explanation's mean Spearman (the comparison that fits the target) and top-1 with
    their intervals, the same in the other comparison, and each reference's with its paired difference."""
    summary: dict[str, Any] = {}
    for model in dict.fromkeys(r["closed_model"] for r in records if "error" not in r):
        mine = [r for r in records if r["closed_model"] == model and "error" not in r]
        kind = "magnitude" if mine[0]["unsigned"] else "signed"
        other = "signed" if kind == "magnitude" else "magnitude"
        compared = [compare_record(r) for r in mine]
        names = list(dict.fromkeys(name for c in compared for name in c))

        def column(name: str, metric: str) -> list[float]:
            return [c.get(name, {}).get(metric, math.nan) for c in compared]

        def block(name: str) -> dict[str, Any]:
            rho, top1 = mean_ci(column(name, f"spearman_{kind}"), seed=seed), mean_ci(column(name, f"top1_{kind}"),
                                                                                        seed=seed)
            return {"spearman": rho["mean"], "spearman_ci": [rho["low"], rho["high"]], "top1": top1["mean"],
                    "top1_ci": [top1["low"], top1["high"]], "n_prompts": rho["n"],
                    f"spearman_{other}": mean_ci(column(name, f"spearman_{other}"), seed=seed)["mean"],
                    f"top1_{other}": mean_ci(column(name, f"top1_{other}"), seed=seed)["mean"]}

        entry = {"comparison": kind, **block("explanation"), "references": {}}
        ours = column("explanation", f"spearman_{kind}")
        for name in names:
            if name == "explanation":
                continue
            ref = block(name)
            diff = paired(ours, column(name, f"spearman_{kind}"), seed=seed)
            ref |= {"explanation_minus": diff["mean"], "explanation_minus_ci": [diff["low"], diff["high"]],
                    "paired_n": diff["n"]}
            if name in ("refined", "random_refined"):
                top = paired(column(name, f"top1_{kind}"), column("random_refined", f"top1_{kind}"), seed=seed)
                ref |= {"top1_minus_random_refined": top["mean"],
                        "top1_minus_random_refined_ci": [top["low"], top["high"]]}
            entry["references"][name] = ref
        summary[model] = entry
    return summary


def explain_prompt(row: dict[str, Any], response: str, indices: list[int], config, surrogate,
                   cache) -> Any:
    """The explanation of `response` to the row's dialog, the user segments `indices` being the features."""
    from ropelime.explain import explain

    spans = [(row["segments"][i]["start"], row["segments"][i]["end"]) for i in indices]
    method = config.model_copy(update={"granularity": "segments", "segments": spans})
    return explain(row["user"], response, system=row["system"], config=method, surrogate=surrogate, cache=cache)


def prompt_records(row: dict[str, Any], models: list[str], which: Segments, config, surrogate, cache, *,
                   budget: int | str = 64,
                   refine: Callable[[Any, str, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One record per closed model in `models` that answered the row: its answer, LOO, the explanation's scores
    (one explanation per distinct answer), the references' LOO and, with `refine`, the refined rankings.
    `budget` 'd' scores one mask per segment."""
    from ropelime.priors import question_overlap
    from ropelime.targets import TARGETS

    indices = feature_segments(row, which)
    config = config.model_copy(update={"budget": len(indices) if budget == "d" else budget})
    key = f"{row['benchmark']}:{row['prompt_idx']}"
    explained: dict[str, Any] = {}
    records = []
    for model in models:
        answer = model_answer(row, model)
        if answer is None or "loo" not in row["models"].get(model, {}):
            continue
        response = row["response_text"][answer]
        record: dict[str, Any] = {"id": key, "closed_model": model, "answer": answer, "d": len(indices),
                                  "loo": _listed(label_loo(row, model, answer, indices)),
                                  "references": {m: _listed(label_loo(row, m, answer, indices))
                                                 for m in api_models(row) if m != model}}
        try:
            if response not in explained:
                explained[response] = explain_prompt(row, response, indices, config, surrogate, cache)
            explanation = explained[response]
            features = sorted(explanation.features, key=lambda f: f.index)
            unsigned = not TARGETS[explanation.config.target].signed
            record |= {"unsigned": unsigned, "scores": [f.score for f in features],
                       "prior": question_overlap(row["user"], features, response).round(5).tolist(),
                       "effects": [f.likelihood_effect for f in features] if unsigned else None,
                       "ci_high": [f.ci_high for f in features], "surrogate": explanation.surrogate.name,
                       "surrogate_seconds": explanation.cost.seconds,
                       "surrogate_passes": explanation.cost.surrogate_forward_passes}
            if refine is not None:
                record |= refine(explanation, model, key)
        except Exception as error:  # noqa: BLE001 - one failing prompt must not end a long run; it is reported
            record["error"] = f"{type(error).__name__}: {error}"
        records.append(record)
    return records


def run_fidelity(rows: list[dict[str, Any]], models: list[str], which: Segments, config, surrogate, *,
                 budget: int | str = 64, refine: Callable[[Any, str, str], dict[str, Any]] | None = None,
                 previous: dict[str, Any] | None = None, head: dict[str, Any] | None = None,
                 checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Records and summary over `rows`. Prompts a `previous` report with the same `head` finished keep their
    records; `checkpoint` gets the report after every prompt. Scores go through the persistent score cache,
    with every mask's divergences kept, so a rerun (or a refit with another target) scores nothing again."""
    from ropelime.explain import default_cache
    from ropelime.research.evaluate import check_same_settings

    head = head or {}
    done: dict[str, list[dict[str, Any]]] = {}
    if previous:
        check_same_settings(previous, head)
        for record in previous.get("records", []):
            done.setdefault(record["id"], []).append(record)
        done = {k: v for k, v in done.items() if not any("error" in r for r in v)}
    records: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    kept, surrogate.keep_divergences = surrogate.keep_divergences, True
    try:
        for number, row in enumerate(rows, start=1):
            key = f"{row['benchmark']}:{row['prompt_idx']}"
            if step:
                step(key)
            records += done.get(key) or prompt_records(row, models, which, config, surrogate, default_cache(),
                                                       budget=budget, refine=refine)
            report = {**head, "prompts": number, "complete": number == len(rows), "resumed": len(done),
                      "errors": sum("error" in r for r in records), "summary": summarise(records, seed=config.seed),
                      "records": records}
            if checkpoint:
                checkpoint(report)
    finally:
        surrogate.keep_divergences = kept
    return report


def closed_models(rows: list[dict[str, Any]], wanted: list[str] | None) -> list[str]:
    """The closed models to evaluate: `wanted` (InputError for one the rows lack), else every closed model
    the rows hold."""
    present = list(dict.fromkeys(m for row in rows for m in api_models(row)))
    if not wanted:
        found = [m for m in CLOSED_MODELS if m in present]
        if not found:
            raise InputError(f"the data holds none of the closed models {', '.join(CLOSED_MODELS)}; name one of "
                             f"{', '.join(present) or '(none)'} with --closed-model.")
        return found
    unknown = [m for m in wanted if m not in present]
    if unknown:
        raise InputError(f"no recordings of {', '.join(unknown)} in the data: choose from {', '.join(present)}.")
    return list(dict.fromkeys(wanted))


def report_head(data: str | Path, models: list[str], which: Segments, refine: int, config, budget) -> dict[str, Any]:
    """What a report was made with (a resumed report must match it)."""
    from ropelime.research.evaluate import recorded_method

    return {"task": "fidelity", "data": Path(data).name, "closed_models": models, "segments": which,
            "refine": refine, "budget": budget, "method": recorded_method(config),
            "loo": "log-odds of the answer against the other labels (boolq); log-probability of the answer (others)"}


def run(rows: list[dict[str, Any]], models: list[str], which: Segments, config, surrogate, *, budget: int | str = 64,
        refine: int = 0, **options: Any) -> dict[str, Any]:
    """`run_fidelity` at `budget` (a number, or 'd' = one mask per segment), with each closed model replayed on
    127.0.0.1 and every explanation refined with `refine` calls (and, as the control, the same calls on random
    features) through the product's own litellm path when `refine` > 0."""
    import contextlib
    import os

    with contextlib.ExitStack() as stack:
        refiner = None
        if refine:
            from ropelime.refine import refine as refine_with
            from ropelime.research.replay import ReplayEndpoint

            replay = stack.enter_context(ReplayEndpoint(rows))
            os.environ.setdefault("OPENAI_API_KEY", "replay")  # litellm wants a key; the replay ignores it

            def refiner(explanation, model: str, key: str) -> dict[str, Any]:
                asking = dict(model=f"openai/{model}", api_base=replay.base_url, timeout=30.0, max_tokens=4)
                out = {}
                for name, choose in (("refined", "surrogate"), ("random_refined", "random")):
                    result = refine_with(explanation, refine, choose=choose, **asking)
                    features = sorted(result.features, key=lambda f: f.index)
                    out[name] = [-float(f.rank) for f in features]
                    out[f"{name}_calls"] = result.refinement.closed_model_calls + result.refinement.cached_answers
                    errors = [f.error for f in result.refinement.features if f.error]
                    if errors:
                        out[f"{name}_errors"] = errors
                return out

        return run_fidelity(rows, models, which, config, surrogate, budget=budget, refine=refiner, **options)


def summary_table(report: dict[str, Any]):
    """The summary as a rich table: per closed model, the explanation and each reference."""
    from rich.table import Table

    table = Table(title=f"fidelity: {report['prompts']} prompts of {report['data']}, {report['segments']} segments")
    for column in ("closed model", "ranking", "Spearman [95%]", "top-1", "n", "explanation − it [95%]"):
        table.add_column(column)

    def interval(mean: float, ci: list[float]) -> str:
        return "-" if not np.isfinite(mean) else f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"

    for model, entry in report["summary"].items():
        table.add_row(model, f"explanation ({entry['comparison']})", interval(entry["spearman"], entry["spearman_ci"]),
                      f"{entry['top1']:.2f}", str(entry["n_prompts"]), "")
        for name, ref in entry["references"].items():
            table.add_row("", name, interval(ref["spearman"], ref["spearman_ci"]), f"{ref['top1']:.2f}",
                          str(ref["n_prompts"]), interval(ref["explanation_minus"], ref["explanation_minus_ci"]))
    return table
