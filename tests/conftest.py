"""Shared fixtures: a tiny random-weight RoPE model saved to disk, loaded like any user model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ropelime.settings import cache_dir

USER_CACHE = cache_dir()

CORPUS = [
    "The sky is blue. Paris is the capital of France. Cats sleep a lot.",
    "Question: What is the capital of France? Answer: Paris.",
    "The bridge was designed by the engineer Mara Tollet in 1987.",
    "Context: rivers, towns, trout, cables and footpaths; numbers 0 1 2 3 4 5 6 7 8 9.",
]


def build_tiny_model(path: Path, *, rope: bool = True) -> Path:
    """Write a small random-weight causal LM (Llama with RoPE, or GPT-2 without) and a BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    if rope:
        config = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=fast.vocab_size, n_embd=48, n_layer=2, n_head=4, n_positions=512,
                            bos_token_id=1, eos_token_id=2)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-rope"))


@pytest.fixture(scope="session")
def tiny_surrogate(tiny_model_dir):
    from ropelime.surrogate import Surrogate

    return Surrogate.load(str(tiny_model_dir), device="cpu", dtype="float32")  # exact: compared with plain loops


def load_embedded(dtype: str | None = None):
    """The real embedded default, prepared once in the user's (or CI's) cache directory."""
    from ropelime.catalogue import CATALOGUE, EMBEDDED, prepare
    from ropelime.surrogate import Surrogate

    surrogate = Surrogate.load(str(prepare(CATALOGUE[EMBEDDED], USER_CACHE)), device="cpu", dtype=dtype)
    surrogate.name = EMBEDDED
    return surrogate


@pytest.fixture(scope="session")
def embedded_surrogate():
    """The embedded default at the default precision."""
    return load_embedded()


@pytest.fixture(scope="session")
def embedded_float32():
    """The embedded default in float32, for comparisons with plain fp32 loops."""
    return load_embedded("float32")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own empty cache directory (scores, fixed outputs)."""
    monkeypatch.setenv("ROPELIME_CACHE_DIR", str(tmp_path / "cache"))


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def hotpotqa_items() -> list[dict]:
    import json

    path = DATA / "hotpotqa_dev.jsonl"
    if not path.exists():
        pytest.skip(f"dev data not found at {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the MCP SDK's default)."""
    return "asyncio"


@pytest.fixture
def env(tiny_model_dir) -> dict[str, str]:
    """A child server's environment: the tiny surrogate on the CPU in float32 (as the tiny_surrogate fixture)."""
    import os

    return {**os.environ, "ROPELIME_SURROGATE": str(tiny_model_dir), "ROPELIME_DEVICE": "cpu",
            "ROPELIME_DTYPE": "float32"}
