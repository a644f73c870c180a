"""The scoring path on a tiny random-weight RoPE model: batching, padding, positions, refusal of non-RoPE models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ropelime.errors import SurrogateError
from ropelime.surrogate import Surrogate
from tests.conftest import build_tiny_model

PROMPT = "Context: The sky is blue. Paris is the capital of France. Cats sleep a lot. Question: capital of France?"
SPANS = [(9, 26), (26, 58), (58, 76)]


def test_batched_scores_equal_one_at_a_time(tiny_surrogate):
    encoded = tiny_surrogate.encode_prompt(PROMPT, None, SPANS)
    response = tiny_surrogate.encode_response("Paris is the capital.")
    ids = np.array(encoded.ids)
    # prompts of different lengths, so the batch is left-padded
    prefixes = [encoded.ids] + [ids[encoded.token_feature != j].tolist() for j in range(3)] + [encoded.ids[:4]]
    assert len({len(p) for p in prefixes}) > 2
    reference = tiny_surrogate.reference(encoded.ids, response)
    batched = {}
    for rows, scores in tiny_surrogate.iter_scores(prefixes, response, reference=reference):
        batched.update(zip(rows, scores))
    assert sorted(batched) == list(range(len(prefixes)))
    for i, prefix in enumerate(prefixes):
        (_, [alone]), = list(tiny_surrogate.iter_scores([prefix], response, reference=reference))
        np.testing.assert_allclose(batched[i].logp, alone.logp, atol=1e-4)
        np.testing.assert_allclose(batched[i].kl, alone.kl, atol=1e-4)
    # the unperturbed prompt matches its own reference: zero divergence
    np.testing.assert_allclose(batched[0].kl, 0, atol=1e-5)
    np.testing.assert_allclose(batched[0].js, 0, atol=1e-5)
    assert np.all(batched[1].js <= np.log(2) + 1e-6)


def test_scores_match_a_plain_full_logits_forward(tiny_surrogate):
    encoded = tiny_surrogate.encode_prompt(PROMPT, None, SPANS)
    response = tiny_surrogate.encode_response("Paris")
    (_, [scores]), = list(tiny_surrogate.iter_scores([encoded.ids], response))
    with torch.no_grad():
        logits = tiny_surrogate.model(torch.tensor([encoded.ids + response])).logits[0]
    logp = torch.log_softmax(logits, -1)
    expected = [logp[len(encoded.ids) - 1 + t, tok].item() for t, tok in enumerate(response)]
    np.testing.assert_allclose(scores.logp, expected, atol=1e-5)


def test_mixed_precision_scores_are_close_to_float32_and_keep_float32_weights(tiny_model_dir):
    mixed = Surrogate.load(str(tiny_model_dir), device="cpu", dtype="mixed")
    exact = Surrogate.load(str(tiny_model_dir), device="cpu", dtype="float32")
    assert mixed.precision == "mixed" and mixed.model.dtype == torch.float32
    encoded = exact.encode_prompt(PROMPT, None, SPANS)
    response = exact.encode_response("Paris is the capital.")
    ids = np.array(encoded.ids)
    prefixes = [ids[encoded.token_feature != j].tolist() for j in range(3)]
    scores = {}
    for name, surrogate in (("mixed", mixed), ("exact", exact)):
        reference = surrogate.reference(encoded.ids, response)
        scores[name] = {i: s.logp for rows, batch in surrogate.iter_scores(prefixes, response, reference=reference)
                        for i, s in zip(rows, batch)}
    difference = max(np.abs(scores["mixed"][i] - scores["exact"][i]).max() for i in range(3))
    assert 0 < difference < 0.05  # bf16 products: different, but only in the low digits


def test_precision_auto_and_unknown(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert Surrogate.load(str(tiny_model_dir), device="cpu", dtype="auto").precision == "float32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert Surrogate.load(str(tiny_model_dir), device="cpu", dtype="auto").precision == "mixed"
    with pytest.raises(SurrogateError, match="unknown dtype 'fp8'.*float32, mixed, bfloat16"):
        Surrogate.load(str(tiny_model_dir), device="cpu", dtype="fp8")


def test_forced_bf16_without_native_support_warns(tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert Surrogate.load(str(tiny_model_dir), device="cpu", dtype="float32").precision == "float32"
    assert "emulated" not in caplog.text
    assert Surrogate.load(str(tiny_model_dir), device="cpu", dtype="mixed").precision == "mixed"
    assert "mixed precision on cpu without native bfloat16 is emulated" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    Surrogate.load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert "emulated" not in caplog.text


def test_tokens_map_to_the_feature_holding_them(tiny_surrogate):
    encoded = tiny_surrogate.encode_prompt(PROMPT, None, SPANS)
    pieces = {j: tiny_surrogate.tokenizer.decode([t for t, f in zip(encoded.ids, encoded.token_feature) if f == j])
              for j in range(3)}
    assert "Paris" in pieces[1] and "sky" in pieces[0] and "Cats" in pieces[2]
    fixed = tiny_surrogate.tokenizer.decode([t for t, f in zip(encoded.ids, encoded.token_feature) if f < 0])
    assert "Question" in fixed and "Paris" not in fixed


def test_rope_vectors_rotate_with_position(tiny_surrogate):
    ids = tiny_surrogate.tokenizer.encode("Paris Paris", add_special_tokens=False)
    vectors = tiny_surrogate.rope_vectors(ids)
    raw = tiny_surrogate.model.get_input_embeddings()(torch.tensor(ids))
    # position 0 is not rotated; norms are kept by a rotation
    torch.testing.assert_close(vectors[0], raw[0])
    torch.testing.assert_close(vectors.norm(dim=-1), raw.norm(dim=-1))
    if ids[0] == ids[-1]:
        assert not torch.allclose(vectors[0], vectors[-1])


def test_model_without_rotary_embeddings_is_refused(tmp_path):
    path = build_tiny_model(tmp_path / "gpt2", rope=False)
    with pytest.raises(SurrogateError, match="rotary"):
        Surrogate.load(str(path))


def test_unknown_surrogate_says_what_to_give():
    with pytest.raises(SurrogateError, match="model directory"):
        Surrogate.load("no-such-model")
    with pytest.raises(SurrogateError, match="does not exist"):
        Surrogate.load("missing.gguf")


def test_empty_response_is_refused(tiny_surrogate):
    with pytest.raises(SurrogateError, match="empty"):
        tiny_surrogate.encode_response("")


def test_load_surrogate_reloads_when_the_precision_setting_changes(tiny_model_dir, monkeypatch):
    """One surrogate per process and setting: a changed $ROPELIME_DTYPE is not served the old model."""
    from ropelime.explain import load_surrogate

    monkeypatch.setenv("ROPELIME_DTYPE", "float32")
    exact = load_surrogate(str(tiny_model_dir), "cpu")
    monkeypatch.setenv("ROPELIME_DTYPE", "mixed")
    mixed = load_surrogate(str(tiny_model_dir), "cpu")
    assert (exact.precision, mixed.precision) == ("float32", "mixed")
    assert load_surrogate(str(tiny_model_dir), "cpu", "float32") is exact
