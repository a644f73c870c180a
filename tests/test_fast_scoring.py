"""Faithful speed: the optimised scoring engine gives the plain computation's scores and attributions.

The plain computation scores each perturbed prompt alone, with a full-logits forward and no cache.
The engine batches, pads, reuses the unperturbed prompt's key/value cache and scores duplicates
once. Both run on the same masks; a tiny Gemma 3 with a short sliding window checks that reuse
stays exact across sliding-window layers and logit soft-capping.
"""

from __future__ import annotations

import copy

import shutil

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from ropelime.features import find_explain_span, split_features
from ropelime.fit import fit_linear
from ropelime.perturb import perturb_tokens
from ropelime.samplers import sample_masks
from ropelime.surrogate import Surrogate
from ropelime.targets import target_vector

PROMPT = ("Question: What is the capital of France?\n\nContext: The sky is blue. Paris is the capital of France. "
          "Cats sleep a lot. The bridge was designed by Mara Tollet in 1987. Rivers hold trout.")
CONTEXT = PROMPT[PROMPT.index("The sky"):]


@pytest.fixture(scope="module")
def tiny_gemma(tiny_model_dir, tmp_path_factory) -> Surrogate:
    """A random-weight Gemma 3 with a 4-token sliding window, mixed layer types and soft-capped logits."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    path = tmp_path_factory.mktemp("tiny-gemma")
    for name in tiny_model_dir.iterdir():
        if name.name.startswith("tokenizer") or name.name == "special_tokens_map.json":
            shutil.copy(name, path / name.name)
    torch.manual_seed(1)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              final_logit_softcapping=5.0, max_position_embeddings=512,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2)
    Gemma3ForCausalLM(config).save_pretrained(path)
    return Surrogate.load(str(path), device="cpu", dtype="float32")


def plain_distributions(surrogate: Surrogate, prefix: list[int], response: list[int]) -> torch.Tensor:
    """Log-distributions at the response positions from one full-logits forward of this prompt alone, no cache."""
    with torch.no_grad():
        logits = surrogate.model(torch.tensor([prefix + response])).logits[0].float()
    return torch.log_softmax(logits, -1)[len(prefix) - 1:len(prefix) - 1 + len(response)]


def plain_logp(surrogate: Surrogate, prefix: list[int], response: list[int]) -> np.ndarray:
    """log p(response | prefix), plainly."""
    logp = plain_distributions(surrogate, prefix, response)
    return logp[torch.arange(len(response)), torch.tensor(response)].numpy()


def plain_divergences(p: torch.Tensor, q: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """KL(p || q) and JS(p, q) per position from log-distributions, by their definitions."""
    kl = (p.exp() * (p - q)).sum(-1)
    m = torch.log(0.5 * (p.exp() + q.exp()))
    js = 0.5 * (p.exp() * (p - m)).sum(-1) + 0.5 * (q.exp() * (q - m)).sum(-1)
    return kl.numpy(), js.numpy()


def perturbed_prompts(surrogate: Surrogate, budget: int, mode: str = "delete"):
    span = find_explain_span(PROMPT, CONTEXT)
    features = split_features(PROMPT, "word", explain=span)
    encoded = surrogate.encode_prompt(PROMPT, None, [(f.start, f.end) for f in features])
    masks = np.vstack([np.ones((1, len(features)), dtype=bool),
                       sample_masks(len(features), "sparse_k", budget, seed=3)])
    prefixes = [perturb_tokens(encoded, m, mode, surrogate.placeholder_id)[0] for m in masks]
    return encoded, masks, prefixes


def engine_scores(surrogate: Surrogate, encoded, prefixes, response, max_batch_tokens=256):
    reference = surrogate.reference(encoded.ids, response)
    rows = [None] * len(prefixes)
    for batch, scores in surrogate.iter_scores(prefixes, response, reference=reference,
                                               max_batch_tokens=max_batch_tokens):
        for i, s in zip(batch, scores):
            rows[i] = s
    return rows


@pytest.mark.parametrize("mode", ["delete", "placeholder"])
@pytest.mark.parametrize("model", ["tiny_surrogate", "tiny_gemma"])
def test_engine_attributions_equal_the_plain_loop(model, mode, request):
    surrogate = request.getfixturevalue(model)
    encoded, masks, prefixes = perturbed_prompts(surrogate, 24, mode)
    response = surrogate.encode_response("Paris is the capital.")
    rows = engine_scores(surrogate, encoded, prefixes, response)
    plain = np.array([plain_logp(surrogate, p, response) for p in prefixes])
    np.testing.assert_allclose(np.array([r.logp for r in rows]), plain, atol=1e-4)
    np.testing.assert_allclose(rows[0].kl, 0, atol=1e-5)
    np.testing.assert_allclose(rows[0].js, 0, atol=1e-5)
    reference = plain_distributions(surrogate, prefixes[0], response)
    for prefix, row in zip(prefixes[1:8], rows[1:8]):
        kl, js = plain_divergences(reference, plain_distributions(surrogate, prefix, response))
        np.testing.assert_allclose(row.kl, kl, atol=1e-4)
        np.testing.assert_allclose(row.js, js, atol=1e-4)

    weights = np.ones(len(masks))
    fast = fit_linear(masks.astype(float), target_vector(rows, "nll"), weights, solver="ridge", alpha=1.0, seed=0)
    slow = fit_linear(masks.astype(float), -plain.mean(axis=1), weights, solver="ridge", alpha=1.0, seed=0)
    np.testing.assert_allclose(fast.coef, slow.coef, atol=1e-4)


def test_prefix_reuse_spans_sliding_windows(tiny_gemma):
    """Rows reuse different cached lengths in one batch, all longer than the sliding window."""
    encoded, _, prefixes = perturbed_prompts(tiny_gemma, 12)
    response = tiny_gemma.encode_response("Paris")
    tiny_gemma.reference(encoded.ids, response)
    reused = [tiny_gemma._prefix.reusable(p) for p in prefixes]
    assert len(set(reused)) > 3 and max(reused) > 4
    rows = engine_scores(tiny_gemma, encoded, prefixes, response, max_batch_tokens=10_000)
    for prefix, row in zip(prefixes, rows):
        np.testing.assert_allclose(row.logp, plain_logp(tiny_gemma, prefix, response), atol=1e-4)


def test_duplicate_prompts_are_scored_once(tiny_surrogate, monkeypatch):
    encoded, _, prefixes = perturbed_prompts(tiny_surrogate, 5)
    response = tiny_surrogate.encode_response("Paris")
    doubled = prefixes + prefixes[1:3]
    computed = []
    forward = tiny_surrogate._forward
    monkeypatch.setattr(tiny_surrogate, "_forward", lambda rows, *a, **k: computed.extend(rows) or forward(rows, *a, **k))
    rows = engine_scores(tiny_surrogate, encoded, doubled, response)
    assert len(computed) == 1 + len(prefixes)  # the reference pass, then each distinct prompt once
    np.testing.assert_array_equal(rows[len(prefixes)].logp, rows[1].logp)


def test_common_start_is_reused_without_a_reference(tiny_gemma):
    """Without a reference pass, the prompts' common start is computed once and reused."""
    encoded, _, prefixes = perturbed_prompts(tiny_gemma, 8)
    response = tiny_gemma.encode_response("Paris is")
    tiny_gemma._prefix = None
    rows = {}
    for batch, scores in tiny_gemma.iter_scores(prefixes[1:], response, max_batch_tokens=64):
        rows.update(zip(batch, scores))
    for i, prefix in enumerate(prefixes[1:]):
        np.testing.assert_allclose(rows[i].logp, plain_logp(tiny_gemma, prefix, response), atol=1e-4)


def hotpotqa_prompts(surrogate, item: dict, masks_wanted: int):
    """A real HotpotQA prompt (longer than Gemma 3's 512-token sliding window), sparse_k prompts, response."""
    context = "\n\n".join(f"{title}: {''.join(sentences).strip()}" for title, sentences in item["context"])
    prompt = f"Question: {item['question']}\n\nContext:\n{context}"
    features = split_features(prompt, "sentence", explain=find_explain_span(prompt, context))
    encoded = surrogate.encode_prompt(prompt, None, [(f.start, f.end) for f in features])
    assert len(encoded.ids) > 1000
    masks = sample_masks(len(features), "sparse_k", masks_wanted, seed=0)
    masks[-1, :] = True
    masks[-1, -2] = False  # removes a late sentence: most of the prompt comes from the cache
    prefixes = [perturb_tokens(encoded, m, "delete", surrogate.placeholder_id)[0] for m in masks]
    return encoded, prefixes, surrogate.encode_response(item["answer"])


@pytest.mark.slow
def test_engine_equals_plain_on_the_embedded_model(embedded_float32, hotpotqa_items):
    encoded, prefixes, response = hotpotqa_prompts(embedded_float32, hotpotqa_items[0], 3)
    rows = engine_scores(embedded_float32, encoded, prefixes, response, max_batch_tokens=8192)
    for prefix, row in zip(prefixes, rows):
        np.testing.assert_allclose(row.logp, plain_logp(embedded_float32, prefix, response), atol=2e-4)


@pytest.mark.slow
def test_mixed_precision_orders_masks_like_float32_on_the_embedded_model(embedded_float32, hotpotqa_items):
    """The default precision on this CPU (bf16 products under autocast) against fp32, on 12 real masks."""
    mixed = Surrogate(copy.deepcopy(embedded_float32.model), embedded_float32.tokenizer, "mixed", torch.device("cpu"),
                      "mixed")  # a copy: mixed precision stores the linear weights in bf16
    encoded, prefixes, response = hotpotqa_prompts(embedded_float32, hotpotqa_items[1], 12)
    exact = np.array([-row.logp.mean() for row in engine_scores(embedded_float32, encoded, prefixes, response, 8192)])
    close = np.array([-row.logp.mean() for row in engine_scores(mixed, encoded, prefixes, response, 8192)])
    assert 0 < np.abs(close - exact).max() < 0.1
    assert spearmanr(exact, close).statistic > 0.9


def test_batches_follow_the_devices_token_budget_and_a_gpu_sized_batch_scores_the_same(tiny_gemma, monkeypatch):
    """Without max_batch_tokens the device's BATCH_TOKENS bounds each batch; the GPU's larger batches (run here
    on the CPU) give the same scores as many small ones."""
    from ropelime import surrogate as surrogate_module

    encoded, _, prefixes = perturbed_prompts(tiny_gemma, 24)
    response = tiny_gemma.encode_response("Paris is")
    runs = {}
    for label, tokens in (("small", 64), ("gpu", surrogate_module.BATCH_TOKENS["cuda"])):
        monkeypatch.setitem(surrogate_module.BATCH_TOKENS, "cpu", tokens)
        tiny_gemma.reference(encoded.ids, response)
        batches = list(tiny_gemma.iter_scores(prefixes[1:], response))
        runs[label] = {i: s.logp for rows, scores in batches for i, s in zip(rows, scores)}
        runs[label + " batches"] = len(batches)
    assert runs["gpu batches"] == 1 < runs["small batches"]
    for i in runs["small"]:
        np.testing.assert_allclose(runs["gpu"][i], runs["small"][i], atol=1e-5)


def test_perturbed_prompts_start_from_each_other_exactly(tiny_gemma, monkeypatch):
    """Pair removals start from the kept keys and values of the single removal that shares their start,
    within one call and across calls (`later`); the scores stay the plain loop's and the kept memory is freed."""
    import ropelime.surrogate as surrogate_module

    monkeypatch.setattr(surrogate_module, "MIN_SHARED_GAIN", 2)  # the tiny prompt's sentences are short
    span = find_explain_span(PROMPT, CONTEXT)
    features = split_features(PROMPT, "word", explain=span)
    encoded = tiny_gemma.encode_prompt(PROMPT, None, [(f.start, f.end) for f in features])
    masks = sample_masks(len(features), "loo_pairs", len(features) + 16, seed=0)
    prefixes = [perturb_tokens(encoded, m, "delete", tiny_gemma.placeholder_id)[0] for m in masks]
    response = tiny_gemma.encode_response("Paris is")
    computed = []
    forward = tiny_gemma._forward
    monkeypatch.setattr(tiny_gemma, "_forward", lambda rows, reusable, *a, **k:
                        computed.extend(len(r) - n for r, n in zip(rows, reusable)) or forward(rows, reusable, *a, **k))
    singles, pairs = prefixes[:len(features)], prefixes[len(features):]
    tiny_gemma.reference(encoded.ids, response)
    from_reference = sum(len(p) + len(response) - 1 - tiny_gemma._prefix.reusable(p) for p in prefixes)
    computed.clear()
    rows = {}
    for batch, scores in tiny_gemma.iter_scores(singles, response, later=pairs, max_batch_tokens=64):
        rows.update(zip(batch, scores))
    assert tiny_gemma._kept  # kept for the pairs of the next call
    for batch, scores in tiny_gemma.iter_scores(pairs, response, max_batch_tokens=64):
        rows.update((len(singles) + i, s) for i, s in zip(batch, scores))
    assert not tiny_gemma._kept
    assert sum(computed) < from_reference  # the pairs computed fewer tokens than from the reference alone
    for i, prefix in enumerate(prefixes):
        np.testing.assert_allclose(rows[i].logp, plain_logp(tiny_gemma, prefix, response), atol=1e-4)
