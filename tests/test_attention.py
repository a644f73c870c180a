"""Windowed attention computes what transformers' sdpa computes, on fewer key columns."""

from __future__ import annotations

import pytest
import torch

from ropelime import attention

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny_gemma_model():
    """A random-weight Gemma 3 whose sliding-window layers see 8 tokens, in float32."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(3)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                              attn_implementation="sdpa")
    return Gemma3ForCausalLM(config).eval()


def logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_windowed_equals_sdpa_with_blocks_and_left_padding(tiny_gemma_model, monkeypatch):
    """Several query blocks, grouped heads and a left-padded row: same logits as the full product."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 16)
    ids = torch.randint(3, 300, (2, 90))
    mask = torch.ones_like(ids)
    mask[1, :13] = 0
    ids[1, :13] = 0
    reference = logits(tiny_gemma_model, ids, mask)
    assert attention.use_windowed_attention(tiny_gemma_model)
    try:
        windowed = logits(tiny_gemma_model, ids, mask)
    finally:
        tiny_gemma_model.set_attn_implementation("sdpa")
    kept = mask.bool()
    assert torch.allclose(windowed[kept], reference[kept], atol=1e-5)


def test_only_sdpa_models_are_switched(tiny_gemma_model):
    tiny_gemma_model.set_attn_implementation("eager")
    try:
        assert not attention.use_windowed_attention(tiny_gemma_model)
        assert tiny_gemma_model.config._attn_implementation == "eager"
    finally:
        tiny_gemma_model.set_attn_implementation("sdpa")


def test_key_spans_cover_each_query_blocks_window_and_are_found_once_per_mask():
    """A left-padded sliding-window mask: each block's span runs from its first query's window start (or the
    row's first real token) to its last query; a fully padded block opens nothing; the second layer reuses them."""
    queries, window, pad = 40, 8, 13
    position = torch.arange(queries)
    causal = (position[None, :] <= position[:, None]) & (position[None, :] > position[:, None] - window)
    mask = torch.stack([causal, causal & (position[None, :] >= pad) & (position[:, None] >= pad)])[:, None]
    expected = [(0, 10), (3, 20), (13, 30), (23, 40)]  # the unpadded row opens these; the padded one within them
    spans = attention.key_spans(mask, queries, queries, 10)
    assert spans == expected
    padded_only = mask[1:]
    assert attention.key_spans(padded_only, queries, queries, 10)[0] == (0, queries)  # nothing opened: all keys
    assert attention.key_spans(padded_only, queries, queries, 10)[1] == (13, 20)
    assert attention.key_spans(mask, queries, queries, 10) is spans
