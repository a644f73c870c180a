"""The pipeline: prompt → features → masks → perturbed prompts → surrogate scores → fit → Explanation."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np

from ropelime import catalogue
from ropelime.anytime import MAX_CHUNK, Deadline, RankingWatch, pace_of, plan_chunk, record_fit
from ropelime.cache import ScoreCache, digest
from ropelime.errors import Cancelled, InputError, OutOfTime
from ropelime.features import find_explain_span, split_features
from ropelime.fit import DEFAULT_ALPHA, fit_linear
from ropelime.kernels import DEFAULT_WIDTH, kernel_weights, rwmd
from ropelime.perturb import perturb_tokens
from ropelime.prefix_cache import shared_length
from ropelime.reliability import assess
from ropelime.samplers import default_k, sample_masks
from ropelime.schema import Cost, Diagnostics, ExplainConfig, Explanation, FeatureScore, KernelCost, SurrogateInfo
from ropelime.settings import Limits, cache_dir
from ropelime.surrogate import EncodedPrompt, Surrogate, TokenScores
from ropelime.targets import SUPPORT_SIGN, target_vector

log = logging.getLogger(__name__)

CONVERGE_EVERY = 8
"""With converge_top_k: masks scored between two checks of the top-k ranking (fixed, so the result
does not depend on the machine's speed)."""

BOOTSTRAP = 200
"""Bootstrap draws of the fit's intervals."""

Progress = Callable[[int, int], None]


def load_surrogate(name: str | None = None, device: str | None = None, dtype: str | None = None) -> Surrogate:
    """Load a surrogate once per process and setting (the embedded default when name is None);
    unset arguments follow $ROPELIME_SURROGATE, $ROPELIME_DEVICE and $ROPELIME_DTYPE as they are now.

    'auto' outside a call (e.g. a server's start) picks for a HotpotQA-size call: 65 prompts of 1,300
    tokens within 40 s."""
    name = name or os.environ.get("ROPELIME_SURROGATE")
    device = device or os.environ.get("ROPELIME_DEVICE")
    if name == catalogue.AUTO:
        pick, why = catalogue.choose_auto(prompt_tokens=1300, masks=65, time_budget_s=40.0, gpu=_has_gpu(device))
        log.info("%s", why)
        name = pick.name
    return _load_surrogate(name, device, dtype or os.environ.get("ROPELIME_DTYPE"))


def _has_gpu(device: str | None) -> bool:
    import torch

    return device.startswith("cuda") if device else torch.cuda.is_available()


@functools.lru_cache(maxsize=4)
def _load_surrogate(name: str | None, device: str | None, dtype: str | None) -> Surrogate:
    return Surrogate.load(name, device=device, dtype=dtype)


def resolve_surrogate(name: str | None, prompt: str, response: str, config: ExplainConfig,
                      features: int) -> tuple[Surrogate, str | None]:
    """Load the named surrogate; for 'auto' (also via $ROPELIME_SURROGATE) pick one from the catalogue for this
    call's size and time budget, and say why."""
    name = name or os.environ.get("ROPELIME_SURROGATE")
    if name != catalogue.AUTO:
        return load_surrogate(name), None
    masks = 1 + (features if config.sampler == "loo" else config.budget)
    tokens = (len(prompt) + len(response)) // CHARS_PER_TOKEN + 1
    pick, why = catalogue.choose_auto(prompt_tokens=tokens, masks=masks, time_budget_s=config.time_budget_s,
                                      gpu=_has_gpu(os.environ.get("ROPELIME_DEVICE")))
    return load_surrogate(pick.name), why


CHARS_PER_TOKEN = 4
"""Characters per token assumed when choosing a surrogate before any tokenizer is loaded (English text)."""


def default_cache() -> ScoreCache:
    """The process-wide score cache in the (current) cache directory."""
    return _score_cache_at(cache_dir() / "scores.sqlite")


@functools.lru_cache(maxsize=4)
def _score_cache_at(path: Path) -> ScoreCache:
    return ScoreCache(path)


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
    started: float | None = None,
    **options,
) -> Explanation:
    """Explain which parts of `prompt` support `response` (or `model`'s answer to it).

    `explain` is the substring to attribute (default: the whole prompt); method options go in
    `config` or as keyword arguments (see `ExplainConfig`). `output_span` (a substring of the
    response) attributes only that part of the answer. `cached_only` fits on the scores already in
    the cache and runs no surrogate pass. `limits` caps features and tokens (default: from the
    environment, see `Limits`). `verify=K` then checks the top K supporting features with `model`
    itself (K + 1 more calls, see `ropelime.verify`) once scoring is complete, with the time left in
    the time budget (scoring comes first; a repeat continues both from the caches). The time budget
    counts from `started` (a `time.perf_counter()` time; default: now), so a caller that waited for
    the model can count that wait too.
    """
    from ropelime.verify import check_request, verify as verify_top

    started = time.perf_counter() if started is None else started
    config = (config or ExplainConfig()).model_copy(update=options)
    config = ExplainConfig.model_validate(config.model_dump())
    limits = limits or Limits.from_env()
    deadline = Deadline.after(started, config.time_budget_s)
    for name, text in [("prompt", prompt), ("response", response), ("system prompt", system),
                       ("text to explain", explain), ("output_span", output_span)]:
        check_text(name, text)
    if not prompt or not prompt.strip():
        raise InputError("the prompt is empty: give the prompt whose answer you want explained.")
    check_request(verify, model)
    cost = Cost()
    source = "given" if response is not None else "closed_model"
    reference = None  # the model's answer to the prompt: the response, or what verification compares with
    if response is None or verify:
        if not model:
            raise InputError("give the response to explain, or a model to get it from.")
        from ropelime.closed import fetch_response  # litellm is slow to import: only when needed

        reference = fetch_response(model, prompt, system, cache_dir=cache_dir(), api_base=api_base,
                                   timeout=min(closed_timeout, max(1.0, deadline.remaining())))
        cost.closed_model_calls = 0 if reference.cached else 1
        if response is None:
            response, cost.closed_model_usage = reference.text, reference.usage
    if not response.strip():
        raise InputError("the response is empty: give the text whose support you want explained.")

    span = find_explain_span(prompt, explain)
    features = split_features(prompt, config.granularity, explain=span, segments=config.segments,
                              max_features=limits.max_features)
    chosen_because = None
    if not isinstance(surrogate, Surrogate):
        surrogate, chosen_because = resolve_surrogate(surrogate, prompt, response, config, len(features))
    cache = cache or default_cache()
    positions = output_positions(surrogate, response, output_span)

    d = len(features)
    config = resolve_config(config, d)
    planned_masks = np.vstack([np.ones((1, d), dtype=bool),
                               sample_masks(d, config.sampler, config.budget, k=config.k, sizes=config.sizes,
                                            seed=config.seed)])
    encoded = surrogate.encode_prompt(prompt, system, [(f.start, f.end) for f in features], config.prompt_format)
    check_lengths(len(encoded.ids), len(surrogate.encode_response(response)), limits)
    base_vectors = surrogate.rope_vectors(encoded.ids, encoded.prompt_tokens) if config.kernel == "rwmd_rope" else None
    if deadline.end is not None:
        deadline.leave_room_for_fit(d, config.solver, BOOTSTRAP)
    if deadline.end is not None and base_vectors is not None:  # time one distance: scoring leaves room for them all
        distance_started = time.perf_counter()
        rwmd(base_vectors, surrogate.rope_vectors(encoded.ids, encoded.prompt_tokens), config.kernel_cost)
        deadline.per_mask_s += time.perf_counter() - distance_started
    scored, rows, perturbed, stopped = score_masks(
        encoded, response, planned_masks, config=config, surrogate=surrogate, cache=cache, progress=progress,
        should_stop=should_stop, deadline=deadline, cost=cost, cached_only=cached_only, positions=positions)
    if cached_only and (not scored or scored[0] != 0):
        raise InputError("no cached scores for this explanation (the cache was cleared or the surrogate "
                         "differs); run the explanation again.")
    masks, planned = planned_masks[scored], len(planned_masks)
    distances = rwmd_distances(surrogate, encoded, [perturbed[i] for i in scored], config.kernel_cost,
                               base=base_vectors) if base_vectors is not None else None
    y = target_vector(rows, config.target, positions)
    weights = kernel_weights(config.kernel, masks, width=config.kernel_width, rwmd_distances=distances,
                             normalise=config.kernel_normalise)
    fit_started = time.perf_counter()
    fit = fit_linear(masks, y, weights, solver=config.solver, alpha=config.alpha, seed=config.seed,
                     bootstrap=BOOTSTRAP)
    if config.solver != "lasso":
        record_fit(len(masks), d, BOOTSTRAP, time.perf_counter() - fit_started)
    sign = SUPPORT_SIGN[config.target]
    scores = sign * fit.coef
    low, high = sorted_pair(sign * fit.ci_low, sign * fit.ci_high)
    ranks = np.empty(d, dtype=int)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, d + 1)

    notes = list(fit.notes)
    untokenised = sorted(set(range(d)) - set(encoded.token_feature[encoded.token_feature >= 0].tolist()))
    if untokenised:
        notes.append(f"features {untokenised} share tokens with a neighbour; their scores are 0")
    complete = len(rows) == planned
    if config.sampler != "loo" and planned - 1 < config.budget:
        notes.append(f"only {planned - 1} distinct perturbations exist for {d} features with {config.sampler}"
                     + (f" (k = {config.k})" if config.sampler == "sparse_k" else "")
                     + f", fewer than the budget of {config.budget}; all of them are scored")
    if stopped == "converged":
        notes.append(f"the top-{config.converge_top_k} ranking settled after {len(rows)} of {planned} samples; "
                     "scoring stopped early")
    elif not complete:
        notes.append(f"time budget reached after {len(rows)} of {planned} samples; call again to continue")
    verify_now = verify and (complete or stopped == "converged")
    if verify and not verify_now:
        notes.append(f"verifying the top {verify} features waits for the complete explanation: call again to "
                     "continue and verify")
    base_nll = float(-rows[0].logp[positions].mean())
    scored_features = [
        FeatureScore(**f.model_dump(), score=float(scores[i]), ci_low=float(low[i]), ci_high=float(high[i]),
                     rank=int(ranks[i]))
        for i, f in enumerate(features)
    ]
    diagnostics = Diagnostics(r2=fit.r2, samples=len(rows), planned_samples=planned, complete=complete,
                              surrogate_nll=base_nll, notes=notes)
    diagnostics.reliability = assess(diagnostics, scored_features)
    cost.seconds = round(time.perf_counter() - started, 3)
    explanation = Explanation(
        id=explanation_id(prompt, system, span, response, config, surrogate.name, output_span, d=d),
        prompt=prompt,
        system=system,
        explain_start=span[0],
        explain_end=span[1],
        response=response,
        response_source=source,
        output_span=output_span,
        closed_model=model if source == "closed_model" else None,
        features=scored_features,
        config=config,
        diagnostics=diagnostics,
        cost=cost,
        surrogate=SurrogateInfo(**surrogate.info(), prompt_format=surrogate.prompt_format(config.prompt_format),
                                chosen_because=chosen_because),
        provenance={"ropelime": version("ropelime"), "torch": version("torch"),
                    "transformers": version("transformers"), "seed": str(config.seed)},
    )
    if not verify_now:
        return explanation
    return verify_top(explanation, verify, model=model, reference=reference, api_base=api_base, timeout=closed_timeout,
                      deadline=deadline.end, should_stop=should_stop)


def check_text(name: str, text: str | None) -> None:
    """Refuse text that is not valid Unicode (lone surrogates, e.g. from bytes decoded with errors)."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"the {name} holds characters that are not valid Unicode (at position {error.start}); "
                         "decode the text as UTF-8 (or replace the broken characters) and retry.") from None


def check_lengths(prompt_tokens: int, response_tokens: int, limits: Limits) -> None:
    """Refuse a rendered prompt or response longer than the caps, saying how to proceed."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise InputError(f"the prompt is {prompt_tokens} surrogate tokens, over the cap of {limits.max_prompt_tokens}; "
                         "shorten it, or raise ROPELIME_MAX_PROMPT_TOKENS (scoring time grows with its length).")
    if response_tokens > limits.max_response_tokens:
        raise InputError(f"the response is {response_tokens} surrogate tokens, over the cap of "
                         f"{limits.max_response_tokens}; shorten it, or raise ROPELIME_MAX_RESPONSE_TOKENS.")


def sorted_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise (min, max) of two arrays."""
    return np.minimum(a, b), np.maximum(a, b)


def resolve_config(config: ExplainConfig, d: int) -> ExplainConfig:
    """The config with the values an explanation over d features uses in place of None: sparse_k's k,
    the ridge/lasso alpha and the kernel width (None stays where the option does not apply)."""
    resolved = {
        "k": min(config.k or default_k(d), max(d - 1, 1)) if config.sampler == "sparse_k" else config.k,
        "alpha": DEFAULT_ALPHA[config.solver] if config.alpha is None and config.solver != "ols" else config.alpha,
        "kernel_width": DEFAULT_WIDTH[config.kernel] if config.kernel_width is None and config.kernel != "uniform"
        else config.kernel_width,
    }
    return config.model_copy(update=resolved)


def _identity_config(config: ExplainConfig, d: int) -> ExplainConfig:
    """The config with resolved values that equal the defaults written as None, so that a config and its
    resolved copy (`resolve_config`) name the same explanation."""
    defaults = resolve_config(config.model_copy(update={"k": None, "alpha": None, "kernel_width": None}), d)
    resolved = resolve_config(config, d)
    return resolved.model_copy(update={name: None for name in ("k", "alpha", "kernel_width")
                                       if getattr(resolved, name) == getattr(defaults, name)})


def explanation_id(prompt: str, system: str | None, span: tuple[int, int], response: str,
                   config: ExplainConfig, surrogate_name: str, output_span: str | None = None, *, d: int) -> str:
    """Content hash of the inputs and method over d features (the time budget does not change the result's
    identity, nor does writing a default value out)."""
    method = _identity_config(config, d).model_dump(exclude={"time_budget_s"})
    parts = [prompt, system, span, response, sorted(method.items()), surrogate_name]
    return digest(*parts, *([output_span] if output_span is not None else []))[:16]


def output_positions(surrogate: Surrogate, response: str, output_span: str | None) -> slice | np.ndarray:
    """The response token positions the target covers: all, or those overlapping `output_span`."""
    if output_span is None:
        return slice(None)
    start = response.find(output_span) if output_span.strip() else -1
    if start < 0:
        raise InputError(f"output_span {output_span[:60]!r} is not a substring of the response; "
                         "copy a part of the response exactly, or leave it out to explain the whole response.")
    positions = surrogate.response_positions(response, start, start + len(output_span))
    if not len(positions):
        raise InputError("output_span covers no token of the response; give a longer part of the response.")
    return positions


def refit(explanation: Explanation, output_span: str | None, *, surrogate: Surrogate | str | None = None,
          cache: ScoreCache | None = None) -> Explanation:
    """Attribute only `output_span` of an explanation's response from its cached scores: no surrogate pass."""
    span_text = explanation.prompt[explanation.explain_start:explanation.explain_end]
    result = explain(explanation.prompt, explanation.response, system=explanation.system, explain=span_text,
                     config=explanation.config, surrogate=surrogate or explanation.surrogate.name, cache=cache,
                     output_span=output_span, cached_only=True)
    return result.model_copy(update={"response_source": explanation.response_source,
                                     "closed_model": explanation.closed_model})


def score_masks(
    encoded: EncodedPrompt,
    response: str,
    masks: np.ndarray,
    *,
    config: ExplainConfig,
    surrogate: Surrogate,
    cache: ScoreCache,
    cost: Cost,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    deadline: Deadline | None = None,
    cached_only: bool = False,
    positions: slice | np.ndarray = slice(None),
) -> tuple[list[int], list[TokenScores], list[tuple[list[int], np.ndarray]], str | None]:
    """Score the response after the perturbed prompt of each mask, step by step, through the cache.

    Returns the indices of the scored masks (in order), their scores, every mask's perturbed
    token ids with the positions of its prompt tokens, and why scoring stopped early ("time budget",
    "converged") or None. Each step scores as many masks as the surrogate's measured pace predicts
    to finish within a few seconds and before `deadline` leaves too little time for the work after
    scoring (see `ropelime.anytime`; the first step always scores the unperturbed prompt); progress
    is reported after every batch and `should_stop` checked between batches. With
    `config.converge_top_k` scoring stops once the top-k ranking (target over `positions`) has
    settled; with `cached_only` nothing is scored and only cached masks are returned. `cost` is
    updated in place.
    """
    response_ids = surrogate.encode_response(response)
    perturbed = [perturb_tokens(encoded, m, config.perturb, surrogate.placeholder_id) for m in masks]
    context = digest(surrogate.name, surrogate.precision, encoded.ids, response_ids)
    keys = [digest(ids) for ids, _ in perturbed]

    cached = cache.get_many(context, keys)
    rows: list[TokenScores | None] = [cached.get(key) for key in keys]
    cost.cached_samples += sum(r is not None for r in rows)
    done = sum(r is not None for r in rows)
    if progress:
        progress(done, len(masks))
    todo = [] if cached_only else [i for i, r in enumerate(rows) if r is None]
    deadline = deadline or Deadline(None)
    pace = pace_of(surrogate)
    # tokens each mask must compute: those after the start it shares with the prompt (reused), and the response
    work = [len(ids) - shared_length(encoded.ids, ids) + len(response_ids) for ids, _ in perturbed]
    watch = RankingWatch(config.converge_top_k) if config.converge_top_k else None
    reference, stopped, position = None, None, 0
    while position < len(todo):
        if should_stop and should_stop():
            raise Cancelled(f"cancelled after {done} of {len(masks)} samples (scores kept in the cache)")
        upcoming = [work[i] for i in todo[position:]]
        if reference is None:
            upcoming[0] += len(encoded.ids) + len(response_ids)  # the unperturbed prompt's full pass comes first
        limit = min(MAX_CHUNK, CONVERGE_EVERY - position % CONVERGE_EVERY if watch else MAX_CHUNK)
        scored_before = done
        take = plan_chunk(upcoming, pace, lambda j: deadline.scoring_left(scored_before + j),
                          first=position == 0, limit=limit)
        if take == 0:
            stopped = "time budget"
            break
        chunk = todo[position:position + take]
        chunk_started = time.perf_counter()
        if reference is None:
            reference = surrogate.reference(encoded.ids, response_ids)
            cost.surrogate_forward_passes += 1
        new: dict[str, TokenScores] = {}
        finished = 0
        try:
            for batch, batch_scores in surrogate.iter_scores([perturbed[i][0] for i in chunk], response_ids,
                                                             reference=reference):
                cost.surrogate_forward_passes += 1
                for j, scores in zip(batch, batch_scores):
                    i = chunk[j]
                    rows[i] = scores
                    new[keys[i]] = scores
                    cost.tokens_scored += len(perturbed[i][0]) + len(response_ids)
                done, finished = done + len(batch), finished + len(batch)
                if progress:
                    progress(done, len(masks))
                if should_stop and should_stop() and finished < len(chunk):
                    raise Cancelled(f"cancelled after {done} of {len(masks)} samples (scores kept in the cache)")
        finally:
            cache.put_many(context, new)
        pace.record(sum(upcoming[:take]), time.perf_counter() - chunk_started)
        position += take
        if watch is not None and (position % CONVERGE_EVERY == 0 or position == len(todo)):
            so_far = [i for i, r in enumerate(rows) if r is not None]
            if watch.update(masks[so_far], target_vector([rows[i] for i in so_far], config.target, positions),
                            SUPPORT_SIGN[config.target]):
                stopped = "converged" if position < len(todo) else None
                break
    scored = [i for i, r in enumerate(rows) if r is not None]
    return scored, [rows[i] for i in scored], perturbed, stopped


def rwmd_distances(surrogate: Surrogate, encoded: EncodedPrompt, perturbed: list[tuple[list[int], np.ndarray]],
                   cost: KernelCost = "euclidean", base=None) -> np.ndarray:
    """RWMD in RoPE embedding space between the prompt's tokens (`base`: their RoPE vectors, when
    already computed) and each perturbed prompt's tokens."""
    base = surrogate.rope_vectors(encoded.ids, encoded.prompt_tokens) if base is None else base
    return np.array([rwmd(base, surrogate.rope_vectors(ids, keep), cost) for ids, keep in perturbed])


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

    Positive support is `SUPPORT_SIGN[target] * value`. Used for faithfulness checks on held-out masks.
    Raises OutOfTime when `deadline` comes before every mask is scored (those scored stay cached).
    """
    if not isinstance(surrogate, Surrogate):
        surrogate = load_surrogate(surrogate or explanation.surrogate.name)
    spans = [(f.start, f.end) for f in sorted(explanation.features, key=lambda f: f.index)]
    masks = np.asarray(masks, dtype=bool).reshape(-1, len(spans))
    started, cost = time.perf_counter(), Cost()
    encoded = surrogate.encode_prompt(explanation.prompt, explanation.system, spans, explanation.config.prompt_format)
    every_mask = explanation.config.model_copy(update={"converge_top_k": None})
    _, rows, _, stopped = score_masks(encoded, explanation.response, masks, config=every_mask, surrogate=surrogate,
                                      cache=cache or default_cache(), cost=cost, should_stop=should_stop,
                                      deadline=deadline)
    if stopped == "time budget":
        raise OutOfTime(f"time budget reached after {len(rows)} of {len(masks)} masks (scores kept in the cache)",
                        cost.surrogate_forward_passes)
    positions = output_positions(surrogate, explanation.response, explanation.output_span)
    cost.seconds = round(time.perf_counter() - started, 3)
    return target_vector(rows, explanation.config.target, positions), cost
