"""gSMILE as published, for comparison: it asks the closed model again for every perturbed prompt.

Bernoulli(0.5) masks over the same features; each perturbed prompt (features deleted from the
text) is sent to the closed model through litellm; the distance between the original and each
perturbed output is the exact Word Mover's Distance over static word vectors (the surrogate's input
embeddings, offline); the target is 1 − minmax(WMD); the locality kernel is sqrt(exp(−d²/0.25²))
on the cosine distance of the mask; the fit is weighted OLS. Cost: 1 + N closed-model answers.
"""

from __future__ import annotations

import time
from importlib.metadata import version

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.spatial.distance import cdist

from ropelime.cache import digest
from ropelime.closed import fetch_response, fixed_output
from ropelime.features import find_explain_span, split_features
from ropelime.fit import fit_linear
from ropelime.kernels import kernel_weights
from ropelime.perturb import perturb_text
from ropelime.samplers import sample_masks
from ropelime.schema import Cost, Diagnostics, ExplainConfig, Explanation, FeatureScore, SurrogateInfo
from ropelime.settings import cache_dir
from ropelime.surrogate import Surrogate

KERNEL_WIDTH = 0.25


def wmd(a: np.ndarray, a_weight: np.ndarray, b: np.ndarray, b_weight: np.ndarray) -> float:
    """Exact Word Mover's Distance: the optimal transport cost between two weighted sets of vectors
    (weights summing to 1) under Euclidean cost, solved as a linear programme."""
    cost = cdist(a, b)
    n, m = cost.shape
    rows = np.kron(np.eye(n), np.ones(m))  # sum over j of T[i, j] = a_weight[i]
    cols = np.kron(np.ones(n), np.eye(m))  # sum over i of T[i, j] = b_weight[j]
    result = linprog(cost.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([a_weight, b_weight]),
                     bounds=(0, None), method="highs")
    if not result.success:
        raise RuntimeError(f"WMD: the transport problem failed ({result.message})")
    return float(result.fun)


def bag_of_words(surrogate: Surrogate, text: str) -> tuple[np.ndarray, np.ndarray]:
    """The text's distinct surrogate tokens as static vectors (input embeddings) with normalised counts."""
    ids, counts = np.unique(surrogate.tokenizer.encode(text, add_special_tokens=False), return_counts=True)
    with torch.inference_mode():
        vectors = surrogate.model.get_input_embeddings().weight[torch.as_tensor(ids)].float().cpu().numpy()
    return vectors, counts / counts.sum()


def output_distances(surrogate: Surrogate, original: str, outputs: list[str]) -> np.ndarray:
    """WMD between the original output and each output (0 for identical texts, inf for an empty one)."""
    base = bag_of_words(surrogate, original)
    distances = []
    for text in outputs:
        if text == original:
            distances.append(0.0)
            continue
        other = bag_of_words(surrogate, text)
        distances.append(wmd(*base, *other) if len(other[0]) and len(base[0]) else np.inf)
    return np.array(distances)


def similarity_target(distances: np.ndarray) -> np.ndarray:
    """1 − minmax(WMD); an infinite distance counts as the largest finite one (similarity 0)."""
    finite = distances[np.isfinite(distances)]
    top = finite.max() if finite.size else 0.0
    d = np.where(np.isfinite(distances), distances, top)
    span = d.max() - d.min()
    return np.ones_like(d) if span == 0 else 1.0 - (d - d.min()) / span


def gsmile(
    prompt: str,
    response: str | None = None,
    *,
    model: str,
    api_base: str | None = None,
    explain: str | None = None,
    config: ExplainConfig | None = None,
    surrogate: Surrogate,
    system: str | None = None,
    max_tokens: int | None = None,
    timeout: float = 60.0,
) -> Explanation:
    """Attribute the closed model's answer to the prompt's features the gSMILE way.

    `response` is the closed model's answer to the unperturbed prompt (asked for when None).
    `config` gives the features (granularity, segments), the budget N and the seed; sampler,
    perturbation, kernel and solver are gSMILE's own. Closed-model answers are cached on disk;
    `cost.closed_model_calls` counts the answers the explanation rests on (1 + N), of which
    `cost.closed_model_usage["cached"]` came from the cache. `config.target` ("nll") applies only to
    faithfulness checks on the surrogate; gSMILE's own target is 1 − minmax(WMD).
    """
    started = time.perf_counter()
    config = (config or ExplainConfig()).model_copy(update={
        "sampler": "bernoulli", "perturb": "delete", "kernel": "cosine", "kernel_width": KERNEL_WIDTH,
        "solver": "ols", "target": "nll"})
    cached = 0

    def ask(text: str) -> str:
        nonlocal cached
        answer = fetch_response(model, text, system, cache_dir=cache_dir(), timeout=timeout, api_base=api_base,
                                max_tokens=max_tokens)
        cached += answer.cached
        return answer.text

    fixed = fixed_output(prompt, response, model=model, system=system, api_base=api_base, timeout=timeout,
                         max_tokens=max_tokens)
    response, cached = fixed.text, int(fixed.answer is not None and fixed.answer.cached)
    span = find_explain_span(prompt, explain)
    features = split_features(prompt, config.granularity, explain=span, segments=config.segments)
    d = len(features)
    masks = np.vstack([np.ones((1, d), dtype=bool), sample_masks(d, "bernoulli", config.budget, seed=config.seed)])
    outputs = [response] + [ask(perturb_text(prompt, features, m, "delete")) for m in masks[1:]]
    y = similarity_target(output_distances(surrogate, response, outputs))
    weights = kernel_weights("cosine", masks, width=KERNEL_WIDTH)
    fit = fit_linear(masks, y, weights, solver="ols", seed=config.seed)
    ranks = np.empty(d, dtype=int)
    ranks[np.argsort(-fit.coef, kind="stable")] = np.arange(1, d + 1)
    notes = [*fit.notes, "gSMILE: target 1 − minmax(WMD) between closed-model outputs; "
             "config.target applies only to faithfulness checks on the surrogate"]
    if np.ptp(y) == 0:
        notes.append("every perturbed prompt gave the original output: all scores are 0")
    return Explanation(
        id=digest("gsmile", prompt, system, span, response, sorted(config.model_dump().items()), model)[:16],
        prompt=prompt, system=system, explain_start=span[0], explain_end=span[1], response=response,
        response_source="closed_model", closed_model=model,
        features=[FeatureScore(**f.model_dump(), score=float(fit.coef[i]), ci_low=float(fit.ci_low[i]),
                               ci_high=float(fit.ci_high[i]), rank=int(ranks[i])) for i, f in enumerate(features)],
        config=config,
        diagnostics=Diagnostics(r2=fit.r2, samples=len(masks), planned_samples=len(masks), complete=True,
                                surrogate_nll=float("nan"), notes=notes),
        cost=Cost(closed_model_calls=len(masks), seconds=round(time.perf_counter() - started, 3),
                  closed_model_usage={"cached": float(cached)}),
        surrogate=SurrogateInfo(**surrogate.info()),
        provenance={"ropelime": version("ropelime"), "method": "gsmile", "seed": str(config.seed)},
    )
