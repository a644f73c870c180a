"""Scoring: the surrogate's per-token scores of the fixed response after each perturbed prompt, step by step
through the persistent score cache, within a time budget; and the kernel's distances of the scored masks.

`prepare` makes an explanation's inputs ready (features, the prompt as the surrogate reads it, the
response's tokens); `score_samples` scores masks into `ScoredSamples`, which `fit_samples` fits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ropelime import speeds
from ropelime.anytime import MAX_CHUNK, Deadline, RankingWatch, pace_of, plan_chunk, scoring_order
from ropelime.cache import ScoreCache, digest
from ropelime.cores import cpu_threads
from ropelime.errors import Cancelled, InputError
from ropelime.features import find_explain_span, split_features
from ropelime.kernels import KERNELS
from ropelime.perturb import perturb_tokens
from ropelime.prefix_cache import shared_length
from ropelime.records import DIVERGENCES
from ropelime.samples import Inputs, ScoredSamples, output_positions, resolve_config
from ropelime.schema import Cost, EncodedPrompt, ExplainConfig, Feature, SurrogateInfo, TokenScores
from ropelime.settings import Limits
from ropelime.surrogate import Surrogate
from ropelime.targets import divergences_read, support_sign, target_vector

CONVERGE_EVERY = 8
"""With converge_top_k: masks scored between two checks of the top-k ranking (fixed, so the result
does not depend on the machine's speed)."""

Progress = Callable[[int, int], None]


@dataclass
class Prepared(Inputs):
    """An explanation's inputs made ready for scoring on one surrogate."""

    surrogate: Surrogate
    encoded: EncodedPrompt
    response_offsets: list[tuple[int, int]]
    chosen_because: str | None = None

    def info(self) -> SurrogateInfo:
        """The surrogate as the explanation reports it."""
        return SurrogateInfo(**self.surrogate.info(), chosen_because=self.chosen_because,
                             prompt_format=self.surrogate.prompt_format(self.config.prompt_format))

    def untokenised(self) -> list[int]:
        """Features none of whose tokens is their own (they share them with a neighbour)."""
        encoded = self.encoded
        return sorted(set(range(len(self.features))) - set(encoded.token_feature[encoded.token_feature >= 0].tolist()))


def prepare(prompt: str, response: str, *, system: str | None, span: tuple[int, int], features: list[Feature],
            config: ExplainConfig, surrogate: Surrogate, limits: Limits | None = None, output_span: str | None = None,
            chosen_because: str | None = None) -> Prepared:
    """Render the prompt for the surrogate and tokenize the response, refusing lengths over `limits` and an
    `output_span` that is not in the response (before any scoring)."""
    offsets = surrogate.response_offsets(response)
    output_positions(response, offsets, output_span)
    config = resolve_config(config, len(features))
    encoded = surrogate.encode_prompt(prompt, system, [(f.start, f.end) for f in features], config.prompt_format)
    check_lengths(len(encoded.ids), len(surrogate.encode_response(response)), limits or Limits.from_env())
    return Prepared(prompt, system, span, response, features, config, surrogate, encoded, offsets, chosen_because)


def split(prompt: str, explain: str | None, config: ExplainConfig,
          limits: Limits) -> tuple[tuple[int, int], list[Feature]]:
    """The explainable span of the prompt and its features."""
    span = find_explain_span(prompt, explain)
    return span, split_features(prompt, config.granularity, explain=span, segments=config.segments,
                                max_features=limits.max_features)


def check_lengths(prompt_tokens: int, response_tokens: int, limits: Limits) -> None:
    """Refuse a rendered prompt or response longer than the caps, saying how to proceed."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise InputError(f"the prompt is {prompt_tokens} surrogate tokens, over the cap of {limits.max_prompt_tokens}; "
                         "shorten it, or raise ROPELIME_MAX_PROMPT_TOKENS (scoring time grows with its length).")
    if response_tokens > limits.max_response_tokens:
        raise InputError(f"the response is {response_tokens} surrogate tokens, over the cap of "
                         f"{limits.max_response_tokens}; shorten it, or raise ROPELIME_MAX_RESPONSE_TOKENS.")


def score_samples(prepared: Prepared, masks: np.ndarray, *, cache: ScoreCache, cost: Cost | None = None,
                  progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                  deadline: Deadline | None = None, cached_only: bool = False,
                  output_span: str | None = None, urgent: Sequence[int] | None = None) -> ScoredSamples:
    """Score `masks` (row 0 the unperturbed prompt) and measure the kernel's distances of those scored.

    With a `deadline`, the time of one distance is left for every mask; with `cached_only` only cached
    scores are used (InputError when the unperturbed prompt's is missing). `output_span` is the part of
    the response a convergence check ranks by; `urgent` the order to score in when the deadline may come
    first (see `score_masks`). `cost` (default a new one) is updated in place.
    """
    config, surrogate, encoded = prepared.config, prepared.surrogate, prepared.encoded
    cost = cost if cost is not None else Cost()
    kernel = KERNELS[config.kernel]
    distance = kernel.distance(surrogate, encoded, config.kernel_cost) if kernel.distance else None
    if deadline is not None and deadline.end is not None and distance is not None:
        distance_started = time.perf_counter()  # time one distance: scoring leaves room for them all
        distance(encoded.ids, encoded.prompt_tokens)
        deadline.per_mask_s += time.perf_counter() - distance_started
    positions = output_positions(prepared.response, prepared.response_offsets, output_span)
    scored, rows, perturbed, stopped = score_masks(
        encoded, prepared.response, masks, config=config, surrogate=surrogate, cache=cache, progress=progress,
        should_stop=should_stop, deadline=deadline, cost=cost, cached_only=cached_only, positions=positions,
        urgent=urgent)
    if cached_only and (not scored or scored[0] != 0):
        raise InputError("no cached scores for this explanation (the cache was cleared or the surrogate "
                         "differs); run the explanation again.")
    distances = None
    if distance is not None:
        context = digest("distance", surrogate.name, surrogate.precision, config.kernel, config.kernel_cost,
                         encoded.ids)
        distances = cached_distances(distance, [perturbed[i] for i in scored], cache, context=context)
    return ScoredSamples(**prepared.inputs(), masks=masks[scored], scores=rows, distances=distances,
                         planned=len(masks), surrogate=prepared.info(), response_offsets=prepared.response_offsets,
                         cost=cost, stopped=stopped, untokenised=prepared.untokenised())


def cached_distances(distance: Callable[[list[int], np.ndarray], float], perturbed: list[tuple[list[int], np.ndarray]],
                     cache: ScoreCache, *, context: str) -> np.ndarray:
    """`distance(ids, keep)` of every perturbed prompt, through the cache: a repeat measures none again (the RWMD
    of a HotpotQA-size prompt costs tens of milliseconds per mask)."""
    keys = [digest(ids, keep.tobytes()) for ids, keep in perturbed]
    known = cache.get_distances(context, list(dict.fromkeys(keys)))
    new = {key: distance(ids, keep) for key, (ids, keep) in zip(keys, perturbed) if key not in known}
    if new:
        cache.put_distances(context, new)
    return np.array([known.get(key, new.get(key)) for key in keys], dtype=np.float64)


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
    urgent: Sequence[int] | None = None,
) -> tuple[list[int], list[TokenScores], list[tuple[list[int], np.ndarray]], str | None]:
    """Score the response after the perturbed prompt of each mask, step by step, through the cache.

    Returns the indices of the scored masks (in order), their scores, every mask's perturbed
    token ids with the positions of its prompt tokens, and why scoring stopped early ("time budget",
    "converged") or None. Each step scores as many masks as the surrogate's measured pace predicts
    to finish within a few seconds and before `deadline` leaves too little time for the work after
    scoring (see `ropelime.anytime`; the first step always scores the unperturbed prompt); progress
    is reported after every batch and `should_stop` checked between batches. With
    `config.converge_top_k` scoring stops once the top-k ranking (target over `positions`) has
    settled; with `cached_only` nothing is scored and only cached masks are returned. `urgent` (a
    permutation of the masks, e.g. `ropelime.anytime.importance_first`) is the order to score in when the
    deadline may come first (`ropelime.anytime.scoring_order`). `cost` is updated in place.
    """
    response_ids = surrogate.encode_response(response)
    perturbed = [perturb_tokens(encoded, m, config.perturb, surrogate.placeholder_id) for m in masks]
    context = digest(surrogate.name, surrogate.precision, encoded.ids, response_ids)
    keys = [digest(ids) for ids, _ in perturbed]

    divergences = divergences_read(config.target) | (DIVERGENCES if surrogate.keep_divergences else frozenset())
    cached = cache.get_many(context, keys)
    # scores cached without a divergence the target reads do not serve it: those masks are scored again, keeping
    # the divergences they had
    complete = {key: all(getattr(row, name) is not None for name in divergences) for key, row in cached.items()}
    divergences |= {name for key, row in cached.items() if not complete[key] for name in DIVERGENCES
                    if getattr(row, name) is not None}
    rows: list[TokenScores | None] = [cached[key] if complete.get(key) else None for key in keys]
    cost.cached_samples += sum(r is not None for r in rows)
    done = sum(r is not None for r in rows)
    if progress:
        progress(done, len(masks))
    todo = [] if cached_only else [i for i, r in enumerate(rows) if r is None]
    deadline = deadline or Deadline(None)
    pace = pace_of(surrogate)
    # tokens each mask must compute: those after the start it shares with the prompt (reused), and the response
    work = [len(ids) - shared_length(encoded.ids, ids) + len(response_ids) for ids, _ in perturbed]
    todo = scoring_order(todo, urgent, pace.predict(sum(work[i] for i in todo)), deadline.scoring_left(len(masks)))
    watch = RankingWatch(config.converge_top_k) if config.converge_top_k else None
    reference, stopped, position = None, None, 0
    tokens_before, scoring_started = cost.tokens_scored, time.perf_counter()
    with cpu_threads() if todo else contextlib.nullcontext() as threads:
        cost.threads = threads or cost.threads
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
                                                                 reference=reference if divergences else None,
                                                                 divergences=divergences,
                                                                 later=[perturbed[i][0] for i in todo[position + take:]]):
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
                                support_sign(config.target)):
                    stopped = "converged" if position < len(todo) else None
                    break
    if surrogate.device.type == "cpu":
        speeds.record(surrogate.name, cost.tokens_scored - tokens_before, time.perf_counter() - scoring_started)
    scored = [i for i, r in enumerate(rows) if r is not None]
    return scored, [rows[i] for i in scored], perturbed, stopped
