"""Compare samplers at equal budgets on one prompt and response: faithfulness, stability, agreement, cost.

For every sampler, budget and seed one explanation is fitted; all of them share one score cache,
one fixed response (at most one closed-model call) and one set of held-out random masks, so their
faithfulness numbers are comparable:

- faithfulness: LDS on the shared held-out masks and the top-k removal drop (see `faithfulness`);
- stability: across seeds, the Spearman correlation of the score vectors and the top-k overlap;
- agreement: the same two numbers between samplers at the same budget and seed;
- cost: surrogate forward passes and seconds per run, closed-model calls for the whole comparison.
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from ropelime.errors import Cancelled, InputError, OutOfTime
from ropelime.schema import ExplainConfig, Explanation, Sampler

if TYPE_CHECKING:  # the engine (torch) loads when a comparison runs, not when its result types are imported
    from ropelime.cache import ScoreCache
    from ropelime.store import ExplanationStore
    from ropelime.surrogate import Surrogate

Progress = Callable[[int, int], None]

DEFAULT_SAMPLERS: tuple[Sampler, ...] = ("sparse_k", "loo", "bernoulli")
DEFAULT_BUDGETS: tuple[int, ...] = (16, 32, 64)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1)


class Run(BaseModel):
    """One explanation of the grid and its faithfulness."""

    sampler: Sampler
    budget: int
    seed: int
    explanation_id: str
    samples: int = Field(description="masks scored, the unperturbed prompt included (loo: always d + 1)")
    lds: float
    topk_drop: float
    random_k_drop: float
    surrogate_passes: int = Field(description="forward passes this call spent on the run (cached scores cost none)")
    seconds: float = Field(description="seconds this call spent on the run (a finished run is reused)")


class SamplerResult(BaseModel):
    """One sampler at one budget, over the seeds."""

    sampler: Sampler
    budget: int
    runs: int
    samples: float = Field(description="mean masks scored per run")
    lds: float = Field(description="mean LDS on the shared held-out masks (higher = more faithful)")
    topk_drop: float = Field(description="mean support lost when the k top features are removed")
    random_k_drop: float = Field(description="mean support lost when k random features are removed")
    stability_spearman: float | None = Field(
        description="mean Spearman correlation of the scores between seeds (None: one seed, or constant scores)")
    stability_topk_overlap: float | None = Field(description="mean share of top-k features common to two seeds")
    surrogate_passes: int
    seconds: float


class Agreement(BaseModel):
    """Two samplers at the same budget, averaged over the seeds they share."""

    budget: int
    sampler_a: Sampler
    sampler_b: Sampler
    spearman: float | None
    topk_overlap: float


class Comparison(BaseModel):
    """The result of `compare_samplers`."""

    response: str
    response_source: str
    closed_model: str | None = None
    features: int = Field(description="number of features d")
    k: int = Field(description="features in the top-k removal test and the top-k overlaps")
    heldout_masks: int
    complete: bool = Field(description="False when the time budget ran out before every run finished")
    runs_planned: int = Field(0, description="runs in the grid (samplers × budgets × seeds)")
    results: list[SamplerResult]
    agreement: list[Agreement]
    runs: list[Run]
    closed_model_calls: int
    surrogate_passes: int = Field(description="forward passes this call spent, unfinished runs included "
                                  "(cached scores cost none)")
    seconds: float
    notes: list[str] = Field(default_factory=list)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman correlation; None when either side is constant."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the k highest-scored features that two score vectors have in common."""
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(top_a & top_b) / k


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _pairwise(vectors: list[np.ndarray], k: int) -> tuple[float | None, float | None]:
    """Mean Spearman and top-k overlap over all pairs of vectors (None, None for fewer than two)."""
    pairs = list(itertools.combinations(vectors, 2))
    if not pairs:
        return None, None
    return _mean([rank_correlation(a, b) for a, b in pairs]), _mean([topk_overlap(a, b, k) for a, b in pairs])


def compare_samplers(
    prompt: str,
    response: str | None = None,
    *,
    model: str | None = None,
    system: str | None = None,
    explain: str | None = None,
    samplers: Sequence[Sampler] = DEFAULT_SAMPLERS,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    heldout: int = 32,
    time_budget_s: float | None = None,
    surrogate: Surrogate | str | None = None,
    cache: ScoreCache | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    api_base: str | None = None,
    closed_timeout: float = 60.0,
    store: ExplanationStore | None = None,
    started: float | None = None,
    **options,
) -> Comparison:
    """Explain `response` (or `model`'s answer, asked once) with every sampler, budget and seed and compare.

    `explain` is the substring to attribute; `options` are further `ExplainConfig` fields
    (granularity, target, kernel, ...). With `time_budget_s` (counted from `started`, a
    `time.perf_counter()` time, default now) the grid stops in time to return within it (smallest
    budgets first), with the runs that finished, and says it is incomplete; calling again resumes
    from the cached scores. With a `store`, every finished run's explanation is saved there and a run
    already in it is reused, so calling again does not re-fit finished runs.
    Raises InputError, ClosedModelError, Cancelled.
    """
    from dataclasses import replace

    from ropelime.anytime import Deadline
    from ropelime.closed import fixed_output
    from ropelime.explain import check_inputs, check_response, default_cache, load_surrogate, score_planned
    from ropelime.faithfulness import default_k, evaluate_faithfulness
    from ropelime.samples import explanation_id, fit_samples, resolve_config
    from ropelime.scoring import prepare, split
    from ropelime.settings import Limits
    from ropelime.surrogate import Surrogate

    started = time.perf_counter() if started is None else started
    deadline = Deadline.after(started, time_budget_s)
    samplers, budgets, seeds = list(dict.fromkeys(samplers)), sorted(set(budgets)), list(dict.fromkeys(seeds))
    if not samplers or not budgets or not seeds:
        raise InputError("give at least one sampler, one budget and one seed.")
    if min(budgets) < 1:
        raise InputError(f"budgets must be positive numbers of perturbed prompts, got {min(budgets)}.")
    config = ExplainConfig(**options)
    check_inputs(prompt, response, system=system, explain=explain)
    limits = Limits.from_env()
    span, features = split(prompt, explain, config, limits)
    d = len(features)
    if d < 2:
        raise InputError(f"comparing samplers needs at least two features, the text to explain has {d}; "
                         "use a finer granularity or a longer text to explain.")
    k = default_k(d)
    fixed = fixed_output(prompt, response, model=model, system=system, api_base=api_base,
                         timeout=min(closed_timeout, max(1.0, deadline.remaining())))
    response, closed_calls, source = fixed.text, fixed.calls, fixed.source
    check_response(response)
    if not isinstance(surrogate, Surrogate):
        surrogate = load_surrogate(surrogate)
    prepared = prepare(prompt, response, system=system, span=span, features=features, config=config,
                       surrogate=surrogate, limits=limits)
    cache = cache or default_cache()

    grid = [(b, s, seed) for b in budgets for s in samplers for seed in seeds]
    runs: list[Run] = []
    explanations: dict[tuple[int, str, int], Explanation] = {}
    complete, notes, spent = True, [], 0  # spent: every surrogate pass of this call, unfinished runs included
    for done, (budget, sampler, seed) in enumerate(grid):
        if progress:
            progress(done, len(grid))
        if should_stop and should_stop():
            raise Cancelled(f"cancelled after {done} of {len(grid)} runs (scores kept in the cache)")
        if deadline.remaining() <= deadline.fixed_s:
            complete = False
            break
        run_started, passes = time.perf_counter(), 0
        run_config = config.model_copy(update={"sampler": sampler, "budget": budget, "seed": seed,
                                               "time_budget_s": time_budget_s})
        run_id = explanation_id(prompt, system, span, response, run_config, surrogate.name, d=d)
        result = store.get(run_id) if store else None
        if result is None or not result.diagnostics.complete:
            samples = score_planned(replace(prepared, config=resolve_config(run_config, d)), cache=cache,
                                    started=started, should_stop=should_stop)
            result = fit_samples(samples, started=started)
            passes = result.cost.surrogate_forward_passes
            spent += passes
            if not result.diagnostics.complete:
                complete = False
                break
            if store:
                store.save(result)
        if deadline.remaining() <= deadline.fixed_s:  # its faithfulness check comes next call
            complete = False
            break
        try:
            faith = evaluate_faithfulness(result, heldout=heldout, k=k, seed=0, surrogate=surrogate, cache=cache,
                                          deadline=deadline)
        except OutOfTime as stopped:
            spent += stopped.surrogate_passes
            complete = False
            break
        spent += faith.cost.surrogate_forward_passes
        explanations[budget, sampler, seed] = result
        runs.append(Run(sampler=sampler, budget=budget, seed=seed, explanation_id=result.id,
                        samples=result.diagnostics.samples, lds=faith.lds, topk_drop=faith.topk_drop,
                        random_k_drop=faith.random_k_drop, surrogate_passes=passes + faith.cost.surrogate_forward_passes,
                        seconds=round(time.perf_counter() - run_started, 3)))
    if progress:
        progress(len(runs), len(grid))
    if not complete:
        notes.append(f"time budget reached after {len(runs)} of {len(grid)} runs; call again with the same "
                     "arguments to continue from the cached scores")
    if "loo" in samplers:
        notes.append("loo scores the d single-feature removals whatever the budget or seed")

    results = _per_sampler(runs, explanations, k)
    return Comparison(
        response=response, response_source=source, closed_model=model if source == "closed_model" else None,
        features=d, k=k,
        heldout_masks=heldout, complete=complete, runs_planned=len(grid), results=results,
        agreement=_agreement(explanations, budgets, samplers, seeds, k), runs=runs,
        closed_model_calls=closed_calls, surrogate_passes=spent,
        seconds=round(time.perf_counter() - started, 3), notes=notes,
    )


def _per_sampler(runs: list[Run], explanations: dict[tuple[int, str, int], Explanation], k: int) -> list[SamplerResult]:
    from ropelime.faithfulness import scores_vector

    results = []
    for (budget, sampler), group in itertools.groupby(runs, key=lambda r: (r.budget, r.sampler)):
        group = list(group)
        spearman, overlap = _pairwise([scores_vector(explanations[budget, sampler, r.seed]) for r in group], k)
        results.append(SamplerResult(
            sampler=sampler, budget=budget, runs=len(group), samples=float(np.mean([r.samples for r in group])),
            lds=float(np.mean([r.lds for r in group])), topk_drop=float(np.mean([r.topk_drop for r in group])),
            random_k_drop=float(np.mean([r.random_k_drop for r in group])), stability_spearman=spearman,
            stability_topk_overlap=overlap, surrogate_passes=sum(r.surrogate_passes for r in group),
            seconds=round(sum(r.seconds for r in group), 3)))
    return results


def _agreement(explanations: dict[tuple[int, str, int], Explanation], budgets: list[int], samplers: list[str],
               seeds: list[int], k: int) -> list[Agreement]:
    from ropelime.faithfulness import scores_vector

    rows = []
    for budget, (a, b) in itertools.product(budgets, itertools.combinations(samplers, 2)):
        pairs = [(scores_vector(explanations[budget, a, s]), scores_vector(explanations[budget, b, s]))
                 for s in seeds if (budget, a, s) in explanations and (budget, b, s) in explanations]
        if pairs:
            rows.append(Agreement(budget=budget, sampler_a=a, sampler_b=b,
                                  spearman=_mean([rank_correlation(x, y) for x, y in pairs]),
                                  topk_overlap=float(np.mean([topk_overlap(x, y, k) for x, y in pairs]))))
    return rows


def plot_faithfulness(comparison: Comparison) -> bytes:
    """A PNG: LDS and top-k removal drop against budget, one line per sampler."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    lds_axes, drop_axes = figure.subplots(1, 2)
    for sampler, group in itertools.groupby(sorted(comparison.results, key=lambda r: (r.sampler, r.budget)),
                                            key=lambda r: r.sampler):
        group = list(group)
        budgets = [r.budget for r in group]
        lds_axes.plot(budgets, [r.lds for r in group], marker="o", label=sampler)
        drop_axes.plot(budgets, [r.topk_drop for r in group], marker="o", label=sampler)
    for axes, label in ((lds_axes, "LDS on held-out masks"), (drop_axes, f"support lost, top-{comparison.k} removed")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("budget (perturbed prompts)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    lds_axes.legend(title="sampler")
    figure.suptitle(f"RoPE-LIME faithfulness against budget (d = {comparison.features} features)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
