"""The pipeline, one way through small stages:

    inputs ─ check_text ─▶ fixed_output ─▶ split (features) ─▶ prepare (surrogate tokens)
        ─▶ plan_masks (sampler) ─▶ score_samples (perturb, surrogate, cache, kernel distances)
        ─▶ fit_samples (target, kernel weights, solver) ─▶ Explanation ─▶ verify (optional)

`explain` runs them all; `refit` fits an explanation's cached scores again for a part of the response.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ropelime import catalogue, settings
from ropelime.anytime import Deadline, importance_first
from ropelime.cache import ScoreCache
from ropelime.closed import fixed_output
from ropelime.errors import InputError, OutOfTime
from ropelime.fit import SOLVERS
from ropelime.kernels import KERNELS
from ropelime.perturb import PERTURBATIONS
from ropelime.priors import question_overlap
from ropelime.presets import PRESETS
from ropelime.samplers import SAMPLERS, sample_masks
from ropelime.samples import BOOTSTRAP, ScoredSamples, fit_samples, output_positions, resolve_config
from ropelime.schema import Cost, ExplainConfig, Explanation, Feature
from ropelime.scoring import Prepared, Progress, prepare, score_masks, score_samples, split
from ropelime.settings import Limits, cache_dir
from ropelime.surrogate import Surrogate
from ropelime.targets import TARGETS, target_vector

log = logging.getLogger(__name__)

STAGES = {"sampler": SAMPLERS, "target": TARGETS, "kernel": KERNELS, "solver": SOLVERS, "perturb": PERTURBATIONS}
"""The method options that name a pluggable stage, and their registries."""

CHARS_PER_TOKEN = 4
"""Characters per token assumed when choosing a surrogate before any tokenizer is loaded (English text)."""


def load_surrogate(name: str | None = None, device: str | None = None, dtype: str | None = None) -> Surrogate:
    """Load a surrogate once per process and setting; unset arguments follow $ROPELIME_SURROGATE,
    $ROPELIME_DEVICE and $ROPELIME_DTYPE as they are now, then the defaults (`catalogue.DEFAULT_SURROGATE`).

    'auto' outside a call (e.g. a server's start) picks for a HotpotQA-size call: 65 prompts of 1,300
    tokens within 40 s."""
    name = name or settings.surrogate() or catalogue.DEFAULT_SURROGATE
    device = device or settings.device()
    if name == catalogue.AUTO:
        pick, why = catalogue.choose_auto(prompt_tokens=1300, masks=65, time_budget_s=40.0, gpu=_has_gpu(device))
        log.info("%s", why)
        name = pick.name
    return _load_surrogate(name, device, dtype or settings.dtype())


def _has_gpu(device: str | None) -> bool:
    import torch

    return device.startswith("cuda") if device else torch.cuda.is_available()


@functools.lru_cache(maxsize=4)
def _load_surrogate(name: str | None, device: str | None, dtype: str | None) -> Surrogate:
    return Surrogate.load(name, device=device, dtype=dtype)


def resolve_surrogate(name: str | None, prompt: str, response: str, config: ExplainConfig,
                      features: int) -> tuple[Surrogate, str | None]:
    """Load the named surrogate (unset: $ROPELIME_SURROGATE, else the default); for 'auto' pick one from the
    catalogue for this call's size and time budget, and say why.

    The pick depends on the prompt, the response, the budget and the time budget, not on the method: it plans
    for the default method's masks at this budget whatever the sampler, so that explanations of one prompt by
    two methods (compared side by side) come from the same surrogate."""
    name = name or settings.surrogate() or catalogue.DEFAULT_SURROGATE
    if name != catalogue.AUTO:
        return load_surrogate(name), None
    masks = len(plan_masks(features, resolve_config(ExplainConfig(budget=config.budget), features)))
    tokens = (len(prompt) + len(response)) // CHARS_PER_TOKEN + 1
    pick, why = catalogue.choose_auto(prompt_tokens=tokens, masks=masks, time_budget_s=config.time_budget_s,
                                      gpu=_has_gpu(settings.device()))
    return load_surrogate(pick.name), why


def default_cache() -> ScoreCache:
    """The process-wide score cache in the (current) cache directory."""
    return _score_cache_at(cache_dir() / "scores.sqlite")


@functools.lru_cache(maxsize=4)
def _score_cache_at(path: Path) -> ScoreCache:
    return ScoreCache(path)


def method_config(config: ExplainConfig | None, options: dict) -> ExplainConfig:
    """`config` (default: the defaults) with `options` applied, validated. A stage option may be a callable
    instead of a name: it is registered under its own name (see `ropelime.registry`)."""
    options = {key: STAGES[key].accept(value) if key in STAGES else value for key, value in options.items()}
    if "method" in options:  # a preset fills in only what neither `options` nor `config` gave explicitly
        given = {} if config is None else {name: getattr(config, name) for name in config.model_fields_set}
        old = PRESETS.get(given.get("method") or "", {})
        given = {k: v for k, v in given.items() if k == "method" or old.get(k, object()) != v}
        return ExplainConfig.model_validate(given | options)
    merged = (config or ExplainConfig()).model_copy(update=options)
    return ExplainConfig.model_validate(merged.model_dump())


def plan_masks(d: int, config: ExplainConfig) -> np.ndarray:
    """The unperturbed mask, then the sampler's masks: (n, d) bool, True = kept."""
    return np.vstack([np.ones((1, d), dtype=bool),
                      sample_masks(d, config.sampler, config.budget, k=config.k, sizes=config.sizes, seed=config.seed)])


def explain(
    prompt: str,
    response: str | None = None,
    *,
    model: str | None = None,
    system: str | None = None,
    explain: str | None = None,
    config: ExplainConfig | None = None,
    surrogate: Surrogate | str | None = None,
    cache: ScoreCache | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    closed_timeout: float = 60.0,
    api_base: str | None = None,
    output_span: str | None = None,
    cached_only: bool = False,
    limits: Limits | None = None,
    verify: int = 0,
    refine: int = 0,
    started: float | None = None,
    **options,
) -> Explanation:
    """Explain which parts of `prompt` support `response` (or `model`'s answer to it).

    Runs `fixed_output`, `score` and `fit_samples` (and `verify`). `explain` is the substring to attribute
    (default: the whole prompt); method options go in
    `config` or as keyword arguments (see `ExplainConfig`); a stage (sampler, target, kernel, solver) may be
    given as a callable instead of a name: it is registered under its own name (`ropelime.registry`). `output_span` (a
    substring of the response) attributes only that part of the answer. `cached_only` fits on the
    scores already in the cache and runs no surrogate pass. `limits` caps features and tokens (default:
    from the environment, see `Limits`). `verify=K` then checks the top K supporting features with
    `model` itself (K + 1 more calls, see `ropelime.verify`) once scoring is complete, with the time left
    in the time budget (scoring comes first; a repeat continues both from the caches). `refine=K` first
    measures the closed model's own effect of deleting K candidate features (K more calls, see
    `ropelime.refine`) and ranks them first, marked measured. The time budget
    counts from `started` (a `time.perf_counter()` time; default: now), so a caller that waited for
    the model can count that wait too.
    """
    from ropelime.refine import check_request as check_refine, refine as refine_top
    from ropelime.verify import check_request, verify as verify_top

    started = time.perf_counter() if started is None else started
    config = method_config(config, options)
    limits = limits or Limits.from_env()
    deadline = Deadline.after(started, config.time_budget_s)
    check_inputs(prompt, response, system=system, explain=explain, output_span=output_span)
    check_request(verify, model)
    check_refine(refine, model)
    asking = dict(model=model, system=system, api_base=api_base, logprobs=bool(verify or refine),
                  timeout=min(closed_timeout, max(1.0, deadline.remaining())))
    fixed = fixed_output(prompt, response, **asking)
    # what verify and refine compare with: the model's own answer to the whole prompt
    reference = fixed.answer or (fixed_output(prompt, **asking).answer if verify or refine else None)
    cost = Cost(closed_model_calls=int(reference is not None and not reference.cached),
                closed_model_usage=fixed.answer.usage if fixed.answer else {})

    samples = score(prompt, fixed.text, system=system, explain=explain, config=config, surrogate=surrogate,
                    cache=cache, progress=progress, should_stop=should_stop, output_span=output_span,
                    cached_only=cached_only, limits=limits, started=started, cost=cost)
    samples.response_source, samples.closed_model = fixed.source, model
    settled = samples.complete or samples.stopped == "converged"
    waiting = [f"{what} waits for the complete explanation: call again to continue and {verb}"
               for what, verb, asked in (("measuring the closed model's own effects", "refine", refine),
                                         (f"verifying the top {verify} features", "verify", verify))
               if asked and not settled]
    explanation = fit_samples(samples, output_span=output_span, notes=waiting, started=started)
    closed = dict(model=model, reference=reference, api_base=api_base, timeout=closed_timeout, deadline=deadline.end,
                  should_stop=should_stop)
    if refine and settled:
        explanation = refine_top(explanation, refine, **closed)
    if verify and settled:
        explanation = verify_top(explanation, verify, **closed)
    return explanation


def score(
    prompt: str,
    response: str,
    *,
    system: str | None = None,
    explain: str | None = None,
    config: ExplainConfig | None = None,
    surrogate: Surrogate | str | None = None,
    cache: ScoreCache | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    output_span: str | None = None,
    cached_only: bool = False,
    limits: Limits | None = None,
    started: float | None = None,
    cost: Cost | None = None,
    **options,
) -> ScoredSamples:
    """The steps of `explain` up to the fit, for a given response: split the features, plan the masks and
    score them (through the cache, within the time budget). Fit the result with `fit_samples`, as often as
    you like: for parts of the response, other targets, solvers or kernel widths, with no more scoring.

    The arguments are `explain`'s; `cost` (default a new one) is updated in place.
    """
    started = time.perf_counter() if started is None else started
    config = method_config(config, options)
    limits = limits or Limits.from_env()
    check_inputs(prompt, response, system=system, explain=explain, output_span=output_span)
    check_response(response)
    span, features = split(prompt, explain, config, limits)
    chosen_because = None
    if not isinstance(surrogate, Surrogate):
        surrogate, chosen_because = resolve_surrogate(surrogate, prompt, response, config, len(features))
    prepared = prepare(prompt, response, system=system, span=span, features=features, config=config,
                       surrogate=surrogate, limits=limits, output_span=output_span, chosen_because=chosen_because)
    return score_planned(prepared, cache=cache or default_cache(), started=started, cost=cost, progress=progress,
                         should_stop=should_stop, cached_only=cached_only, output_span=output_span)


def score_planned(prepared: Prepared, *, cache: ScoreCache, started: float, cost: Cost | None = None,
                  progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                  cached_only: bool = False, output_span: str | None = None) -> ScoredSamples:
    """Score the masks the prepared method plans, within its time budget counted from `started` (leaving room
    for the distances and the fit), through `cache`."""
    config = prepared.config
    deadline = Deadline.after(started, config.time_budget_s)
    if deadline.end is not None:
        deadline.leave_room_for_fit(len(prepared.features), config.solver, BOOTSTRAP,
                                    fits=1 if TARGETS[config.target].signed else 2)
    masks = plan_masks(len(prepared.features), config)
    # when the time budget may stop scoring early, the likely important features' single removals come first
    urgent = importance_first(masks, question_overlap(prepared.prompt, prepared.features, prepared.response))
    return score_samples(prepared, masks, cache=cache, cost=cost, progress=progress, should_stop=should_stop,
                         deadline=deadline, cached_only=cached_only, output_span=output_span, urgent=urgent)


def check_inputs(prompt: str, response: str | None, *, system: str | None = None, explain: str | None = None,
                 output_span: str | None = None) -> None:
    """Refuse broken Unicode in any text, and an empty prompt, before any work."""
    for name, text in [("prompt", prompt), ("response", response), ("system prompt", system),
                       ("text to explain", explain), ("output_span", output_span)]:
        check_text(name, text)
    if not prompt or not prompt.strip():
        raise InputError("the prompt is empty: give the prompt whose answer you want explained.")


def check_response(response: str) -> None:
    """Refuse an empty fixed output."""
    if not response.strip():
        raise InputError("the response is empty: give the text whose support you want explained.")


def check_text(name: str, text: str | None) -> None:
    """Refuse text that is not valid Unicode (lone surrogates, e.g. from bytes decoded with errors)."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"the {name} holds characters that are not valid Unicode (at position {error.start}); "
                         "decode the text as UTF-8 (or replace the broken characters) and retry.") from None


def resume(previous: Explanation, **arguments) -> Explanation:
    """Explain again with a (partial) explanation's prompt, response, span and method, continuing from the
    cached scores. `arguments` are `explain`'s others (a new `time_budget_s`, `verify`, `surrogate`, …);
    the result keeps where the response came from."""
    result = explain(previous.prompt, previous.response, system=previous.system,
                     explain=previous.prompt[previous.explain_start:previous.explain_end], config=previous.config,
                     **arguments)
    return result.model_copy(update={"response_source": previous.response_source,
                                     "closed_model": previous.closed_model})


def prepare_again(explanation: Explanation, surrogate: Surrogate | str | None = None) -> Prepared:
    """An explanation's inputs, features and method made ready for scoring again on its surrogate (or another)."""
    if not isinstance(surrogate, Surrogate):
        surrogate = load_surrogate(surrogate or explanation.surrogate.name)
    features = [Feature(**f.model_dump(include=set(Feature.model_fields)))
                for f in sorted(explanation.features, key=lambda f: f.index)]
    return prepare(explanation.prompt, explanation.response, system=explanation.system,
                   span=(explanation.explain_start, explanation.explain_end), features=features,
                   config=explanation.config, surrogate=surrogate)


def cached_samples(explanation: Explanation, *, surrogate: Surrogate | str | None = None,
                   cache: ScoreCache | None = None) -> ScoredSamples:
    """The scored samples of an explanation, rebuilt from the score cache without a surrogate pass
    (InputError when they are no longer cached)."""
    prepared = prepare_again(explanation, surrogate)
    samples = score_planned(prepared, cache=cache or default_cache(), started=time.perf_counter(), cached_only=True)
    samples.response_source, samples.closed_model = explanation.response_source, explanation.closed_model
    return samples


def refit(explanation: Explanation, output_span: str | None, *, surrogate: Surrogate | str | None = None,
          cache: ScoreCache | None = None, samples: ScoredSamples | None = None) -> Explanation:
    """Attribute only `output_span` of an explanation's response: a new fit of its scored samples (given, or
    rebuilt from the score cache), no surrogate pass."""
    started = time.perf_counter()
    samples = samples or cached_samples(explanation, surrogate=surrogate, cache=cache)
    return fit_samples(samples, output_span=output_span, started=started)


def mask_targets(
    explanation: Explanation,
    masks: np.ndarray,
    *,
    surrogate: Surrogate | str | None = None,
    cache: ScoreCache | None = None,
    should_stop: Callable[[], bool] | None = None,
    deadline: Deadline | None = None,
) -> tuple[np.ndarray, Cost]:
    """The target value of each mask (rows over the explanation's features, True = kept) under the
    explanation's inputs and method, scored through the cache; and what that cost.

    Positive support is `support_sign(target) * value`. Used for faithfulness checks on held-out masks.
    Raises OutOfTime when `deadline` comes before every mask is scored (those scored stay cached).
    """
    prepared = prepare_again(explanation, surrogate)
    masks = np.asarray(masks, dtype=bool).reshape(-1, len(prepared.features))
    started, cost = time.perf_counter(), Cost()
    every_mask = prepared.config.model_copy(update={"converge_top_k": None})
    _, rows, _, stopped = score_masks(prepared.encoded, explanation.response, masks, config=every_mask,
                                      surrogate=prepared.surrogate, cache=cache or default_cache(), cost=cost,
                                      should_stop=should_stop, deadline=deadline)
    if stopped == "time budget":
        raise OutOfTime(f"time budget reached after {len(rows)} of {len(masks)} masks (scores kept in the cache)",
                        cost.surrogate_forward_passes)
    positions = output_positions(explanation.response, prepared.response_offsets, explanation.output_span)
    cost.seconds = round(time.perf_counter() - started, 3)
    return target_vector(rows, explanation.config.target, positions), cost
