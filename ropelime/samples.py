"""Score once, fit many: the scored perturbations of one explanation (`ScoredSamples`) and the fit that
turns them into an `Explanation` (`fit_samples`).

Scoring is the expensive step (`ropelime.scoring`); fitting is cheap. So the parts of the response
to attribute (`output_span`), the target, the solver and the kernel's width and normalisation can
change after scoring without another surrogate pass: fit the same `ScoredSamples` again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from importlib.metadata import version

import numpy as np

from ropelime.anytime import record_fit
from ropelime.cache import digest
from ropelime.errors import InputError
from ropelime.fit import SOLVERS, LinearFit, fit_linear
from ropelime.kernels import KERNELS, kernel_weights
from ropelime.expected_fidelity import expected_fidelity
from ropelime.position import position_factors, position_note
from ropelime.priors import question_overlap
from ropelime.reliability import assess
from ropelime.samplers import SAMPLERS, default_k
from ropelime.schema import (Cost, Diagnostics, Direction, ExplainConfig, Explanation, Feature, FeatureScore,
                             SurrogateInfo, TokenScores)
from ropelime.targets import TARGETS, support_sign, target_notes, target_vector

BOOTSTRAP = 200
"""Bootstrap draws of the fit's intervals."""

FIT_OPTIONS = frozenset({"target", "solver", "alpha", "kernel", "kernel_width", "kernel_normalise", "adjust_position",
                         "prior_weight"})
"""The method options a refit of scored samples may change (the others choose what is scored)."""

Positions = slice | np.ndarray


@dataclass
class Inputs:
    """What one explanation is of: the prompt, its explainable span and features, the fixed response, and
    the method (`config`, resolved for the features: see `resolve_config`)."""

    prompt: str
    system: str | None
    span: tuple[int, int]
    response: str
    features: list[Feature]
    config: ExplainConfig

    def inputs(self) -> dict:
        """These fields, to build another record of the same explanation."""
        return {f.name: getattr(self, f.name) for f in fields(Inputs)}


@dataclass
class ScoredSamples(Inputs):
    """The scored perturbations of one prompt and response on one surrogate, ready to fit.

    `masks` are the scored masks in order (row 0 keeps every feature), `scores` the surrogate's
    per-token scores of the response after each, `distances` each mask's kernel distance to the
    prompt (None when the kernel needs none). `cost` is what scoring cost, `stopped` why it ended
    early ("time budget", "converged") or None.
    """

    masks: np.ndarray
    scores: list[TokenScores]
    distances: np.ndarray | None
    planned: int
    surrogate: SurrogateInfo
    response_offsets: list[tuple[int, int]]
    """The character span in the response of each response token."""
    cost: Cost = field(default_factory=Cost)
    stopped: str | None = None
    untokenised: list[int] = field(default_factory=list)
    """Features that share all their tokens with a neighbour (their scores are 0)."""
    response_source: str = "given"
    closed_model: str | None = None

    @property
    def complete(self) -> bool:
        """Every planned mask was scored."""
        return len(self.scores) == self.planned

    def positions(self, output_span: str | None) -> Positions:
        """The response token positions a target over `output_span` covers (all for None)."""
        return output_positions(self.response, self.response_offsets, output_span)

    def targets(self, target: str | None = None, output_span: str | None = None) -> np.ndarray:
        """The target of every scored mask (default: the samples' own target) over `output_span`."""
        return target_vector(self.scores, target or self.config.target, self.positions(output_span))


def output_positions(response: str, offsets: list[tuple[int, int]], output_span: str | None) -> Positions:
    """The response token positions (tokens at `offsets`) overlapping `output_span`: all for None."""
    if output_span is None:
        return slice(None)
    start = response.find(output_span) if output_span.strip() else -1
    if start < 0:
        raise InputError(f"output_span {output_span[:60]!r} is not a substring of the response; "
                         "copy a part of the response exactly, or leave it out to explain the whole response.")
    end = start + len(output_span)
    positions = np.array([t for t, (a, b) in enumerate(offsets) if a < end and b > start], dtype=np.int64)
    if not len(positions):
        raise InputError("output_span covers no token of the response; give a longer part of the response.")
    return positions


UNSET_DEFAULTS = ("target", "sampler", "solver", "k", "alpha", "kernel_width", "prior_weight")
"""Options whose default is written as None and chosen per explanation (`resolve_config`)."""

DEFAULT_METHOD = {"target": "kl", "sampler": "loo_pairs"}
"""The target and sampler when none is given (the solver follows the sampler), at every granularity: each
feature's KL divergence when it alone is removed, with pair masks for the intervals. Measured best on
HotpotQA's sentences (docs/EVALUATION.md §8.12–8.15: on both surrogates, on the ranking against gold and on
predicting the KL of held-out masks) and on MMLU's words (§8.16: +0.13 on Gemma 3 270M and the 1.5B, a tie on
the 0.5B, against sparse_k's masks fitted to the NLL)."""


PRIOR_WEIGHT = {"word": 0.0, "sentence": 2.0, "paragraph": 2.0, "segments": 2.0}
"""The question-overlap prior's weight when none is given (`ropelime.priors`, docs/EVALUATION.md section 9):
chosen on the first 75 of 150 BoolQ dev prompts against GPT-4o, GPT-4.1 and Gemini's own leave-one-out; on the
other 75 it adds +0.17 [+0.10, +0.24] Spearman to Gemma 3 270M alone and +0.17 [+0.11, +0.24] to the 0.5B
alone; on HotpotQA's gold sentences +0.06 [+0.00, +0.12] AUROC over Gemma alone and +0.03 [+0.01, +0.04] over
the prior alone. On MMLU's words a tie (+0.004 [−0.022, +0.029]), so words keep the surrogate's scores."""


def resolve_config(config: ExplainConfig, d: int) -> ExplainConfig:
    """The config with the values an explanation over d features uses in place of None: the target and
    sampler (`DEFAULT_METHOD`), the solver (the sampler's), sparse_k's k, the ridge/lasso alpha, the
    kernel width and the prior's weight (None stays where the option does not apply)."""
    sampler = config.sampler or DEFAULT_METHOD["sampler"]
    solver = config.solver or SAMPLERS[sampler].solver
    resolved = {
        "target": config.target or DEFAULT_METHOD["target"],
        "sampler": sampler,
        "solver": solver,
        "k": min(config.k or default_k(d), max(d - 1, 1)) if SAMPLERS[sampler].uses_k else config.k,
        "alpha": SOLVERS[solver].default_alpha if config.alpha is None else config.alpha,
        "kernel_width": KERNELS[config.kernel].default_width if config.kernel_width is None else config.kernel_width,
        "prior_weight": PRIOR_WEIGHT[config.granularity] if config.prior_weight is None else config.prior_weight,
    }
    return config.model_copy(update=resolved)


def _identity_config(config: ExplainConfig, d: int) -> ExplainConfig:
    """The config with each resolved value that equals its default given the other values (ridge's alpha for
    ridge, whatever the sampler) written as None, so that a config and its resolved copy (`resolve_config`)
    name the same explanation, and a refit with another solver or kernel gets that one's defaults."""
    resolved = resolve_config(config, d)
    return resolved.model_copy(update={
        name: None for name in UNSET_DEFAULTS
        if getattr(resolve_config(resolved.model_copy(update={name: None}), d), name) == getattr(resolved, name)})


def explanation_id(prompt: str, system: str | None, span: tuple[int, int], response: str,
                   config: ExplainConfig, surrogate_name: str, output_span: str | None = None, *, d: int) -> str:
    """Content hash of the inputs and method over d features (the time budget does not change the result's
    identity, nor does writing a default value out, nor the name of the preset that chose the options)."""
    method = _identity_config(config, d).model_dump(exclude={"time_budget_s", "method"})
    parts = [prompt, system, span, response, sorted(method.items()), surrogate_name]
    return digest(*parts, *([output_span] if output_span is not None else []))[:16]


def _refit_config(samples: ScoredSamples, options: dict) -> ExplainConfig:
    """The samples' config with the fit options changed; refuses options that would need new scores."""
    unknown = sorted(set(options) - FIT_OPTIONS)
    if unknown:
        raise InputError(f"{', '.join(unknown)} choose what is scored, not how it is fitted; explain again to change "
                         f"{'it' if len(unknown) == 1 else 'them'} (a refit takes {', '.join(sorted(FIT_OPTIONS))}).")
    as_given = _identity_config(samples.config, len(samples.features))  # defaults of the old solver/kernel unset
    config = ExplainConfig.model_validate(as_given.model_dump() | options)
    kernel = KERNELS[config.kernel]
    if kernel.distance is not None and samples.distances is None:
        raise InputError(f"the {config.kernel} kernel needs distances measured on the surrogate, which these samples "
                         "lack; explain again with that kernel.")
    return resolve_config(config, len(samples.features))


def fit_samples(samples: ScoredSamples, *, output_span: str | None = None, notes: list[str] | None = None,
                started: float | None = None, **options) -> Explanation:
    """Fit the weighted linear model on scored samples and build the Explanation (no surrogate pass).

    `output_span` (a substring of the response) attributes only that part of the answer; `options`
    change how the samples are fitted (`FIT_OPTIONS`: target, solver, alpha, kernel, kernel_width,
    kernel_normalise); `notes` are appended to the fit's own. The cost is the samples' with the seconds
    since `started` (a `time.perf_counter()` time; default now).
    """
    started = time.perf_counter() if started is None else started
    config = _refit_config(samples, options) if options else samples.config
    d = len(samples.features)
    positions = samples.positions(output_span)
    y = target_vector(samples.scores, config.target, positions)
    weights = kernel_weights(config.kernel, samples.masks, width=config.kernel_width, distances=samples.distances,
                             normalise=config.kernel_normalise)
    fit_started = time.perf_counter()
    fit = fit_linear(samples.masks, y, weights, solver=config.solver, alpha=config.alpha, seed=config.seed,
                     bootstrap=BOOTSTRAP)
    if SOLVERS[config.solver].closed_form:
        record_fit(len(samples.masks), d, BOOTSTRAP, time.perf_counter() - fit_started)
    scores, low, high = as_support(fit, config.target)
    position_notes = []
    adjusted = position_factors(scores) if config.adjust_position else None
    if adjusted is not None:
        factors, slope = adjusted
        scores, low, high = scores * factors, low * factors, high * factors
    if config.adjust_position:
        position_notes.append(position_note(None if adjusted is None else adjusted[1]))
    overlap = question_overlap(samples.prompt, samples.features, samples.response)
    if config.prior_weight:
        shift = prior_shift(overlap, scores, config.prior_weight)
        scores, low, high = scores + shift, low + shift, high + shift
        position_notes.append(f"scores combined with the question-overlap prior (weight {config.prior_weight:g}): "
                              "a feature sharing rare words with the prompt's fixed text or the answer ranks higher")
    if TARGETS[config.target].signed:
        effect, directions = None, directions_of(low, high)
    else:  # the direction an unsigned score lacks: the same fit on the response's likelihood, from the same scores
        nll_fit = fit_linear(samples.masks, target_vector(samples.scores, "nll", positions), weights,
                             solver=config.solver, alpha=config.alpha, seed=config.seed, bootstrap=BOOTSTRAP)
        effect, effect_low, effect_high = as_support(nll_fit, "nll")
        directions = directions_of(effect_low, effect_high)
    unscored = ~(~samples.masks[1:]).any(axis=0)  # no scored mask removed them: their fit says nothing
    scores, low, high = (np.where(unscored, 0.0, values) for values in (scores, low, high))
    ranks = np.empty(d, dtype=int)
    ranks[np.lexsort((-scores, unscored))] = np.arange(1, d + 1)  # the unscored last
    features = [FeatureScore(**f.model_dump(), score=float(scores[i]), ci_low=float(low[i]), ci_high=float(high[i]),
                             rank=int(ranks[i]),
                             likelihood_effect=None if effect is None or unscored[i] else float(effect[i]),
                             direction=None if unscored[i] else directions[i],
                             evidence="unscored" if unscored[i] else "estimated")
                for i, f in enumerate(samples.features)]
    if unscored.any():
        position_notes.append(f"{int(unscored.sum())} of {d} features are not yet scored (no perturbation removing "
                              "them was scored before the time budget): they are listed as not yet scored, never as "
                              "supporting or opposing; continue to score them")
    diagnostics = Diagnostics(r2=fit.r2, samples=len(samples.scores), planned_samples=samples.planned,
                              complete=samples.complete, unscored_features=int(unscored.sum()), surrogate_nll=float(-samples.scores[0].logp[positions].mean()),
                              notes=[*fit.notes, *position_notes, *sampling_notes(samples, config),
                                     *target_notes(config.target), *(notes or [])])
    diagnostics.reliability = assess(diagnostics, features, None if config.granularity == "word" else overlap)
    diagnostics.expected_fidelity = expected_fidelity(samples.surrogate.name, config.granularity)
    cost = samples.cost.model_copy(update={"seconds": round(time.perf_counter() - started, 3)})
    return Explanation(
        id=explanation_id(samples.prompt, samples.system, samples.span, samples.response, config,
                          samples.surrogate.name, output_span, d=d),
        prompt=samples.prompt, system=samples.system, explain_start=samples.span[0], explain_end=samples.span[1],
        response=samples.response, response_source=samples.response_source, output_span=output_span,
        closed_model=samples.closed_model if samples.response_source == "closed_model" else None,
        features=features, config=config, diagnostics=diagnostics, cost=cost, surrogate=samples.surrogate,
        provenance={"ropelime": version("ropelime"), "torch": version("torch"),
                    "transformers": version("transformers"), "seed": str(config.seed)},
    )


def prior_shift(prior: np.ndarray, scores: np.ndarray, weight: float) -> np.ndarray:
    """What the question-overlap prior (`ropelime.priors.question_overlap`) adds to each score: `weight` × the
    scores' spread × the prior's z-score (nothing where either is constant)."""
    if prior.std() == 0 or scores.std() == 0:
        return np.zeros_like(scores)
    return weight * scores.std() * (prior - prior.mean()) / prior.std()


def as_support(fit: LinearFit, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fit's coefficients and interval ends turned into support for the response under `target`."""
    sign = support_sign(target)
    ends = sign * fit.ci_low, sign * fit.ci_high
    return sign * fit.coef, np.minimum(*ends), np.maximum(*ends)


def directions_of(low: np.ndarray, high: np.ndarray) -> list[Direction]:
    """`supports` where an interval of support lies above 0, `opposes` below, else `unclear`."""
    return ["supports" if lo > 0 else "opposes" if hi < 0 else "unclear" for lo, hi in zip(low, high)]


def sampling_notes(samples: ScoredSamples, config: ExplainConfig) -> list[str]:
    """What the reader should know about the samples: untokenised features, fewer masks than the budget,
    and why scoring stopped early."""
    notes = []
    if samples.untokenised:
        notes.append(f"features {samples.untokenised} share tokens with a neighbour; their scores are 0")
    sampler = SAMPLERS[config.sampler]
    d, planned, scored = len(samples.features), samples.planned, len(samples.scores)
    if sampler.uses_budget and planned - 1 < config.budget:
        notes.append(f"only {planned - 1} distinct perturbations exist for {d} features with {config.sampler}"
                     + (f" (k = {config.k})" if sampler.uses_k else "")
                     + f", fewer than the budget of {config.budget}; all of them are scored")
    if samples.stopped == "converged":
        notes.append(f"the top-{config.converge_top_k} ranking settled after {scored} of {planned} samples; "
                     "scoring stopped early")
    elif not samples.complete:
        notes.append(f"time budget reached after {scored} of {planned} samples; call again to continue")
    return notes
