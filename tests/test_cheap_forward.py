"""The forward-pass adjustments change no number: same logits as plain autocast, embeddings kept in float32."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ropelime.cheap_forward import contiguous_head_input, store_linear_weights_in_bf16
from ropelime.loading import load_model


@pytest.fixture(scope="module")
def tied_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def output_logits(model: LlamaForCausalLM, ids: torch.Tensor, keep: int) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(input_ids=ids, logits_to_keep=keep).logits


def test_adjusted_model_gives_the_same_output_logits_as_autocast(tied_model):
    ids = torch.randint(3, 300, (3, 17))
    adjusted = copy.deepcopy(tied_model)
    store_linear_weights_in_bf16(adjusted)
    contiguous_head_input(adjusted)
    for keep in (1, 5):
        assert torch.equal(output_logits(adjusted, ids, keep), output_logits(tied_model, ids, keep))


def test_the_tied_input_embedding_stays_float32_and_the_head_gets_a_bf16_copy(tied_model):
    adjusted = copy.deepcopy(tied_model)
    store_linear_weights_in_bf16(adjusted)
    assert adjusted.get_input_embeddings().weight.dtype == torch.float32
    assert adjusted.get_output_embeddings().weight.dtype == torch.bfloat16
    assert adjusted.get_output_embeddings().weight is not adjusted.get_input_embeddings().weight
    assert all(m.weight.dtype == torch.bfloat16 for m in adjusted.modules() if isinstance(m, torch.nn.Linear))
    assert torch.equal(adjusted.get_output_embeddings().weight, tied_model.get_output_embeddings().weight.bfloat16())


def test_the_head_sees_a_densely_packed_slice_even_for_one_row(tied_model):
    """One prompt, output-only logits: the slice counts as contiguous but keeps the sequence's strides."""
    adjusted = copy.deepcopy(tied_model)
    contiguous_head_input(adjusted)
    seen = []
    adjusted.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    output_logits(adjusted, torch.randint(3, 300, (1, 17)), keep=4)
    rows, keep, width = seen[0].shape
    assert (rows, keep) == (1, 4)
    assert seen[0].stride() == (keep * width, width, 1)


def test_a_bf16_checkpoint_loads_for_mixed_precision_without_a_float32_copy(tied_model, tiny_model_dir, tmp_path):
    """Loaded as stored (bf16) and widened, a checkpoint gives exactly the weights, buffers and logits of the
    float32 path (load widened, then narrow the linear weights), in half the memory for the linear weights."""
    copy.deepcopy(tied_model).to(torch.bfloat16).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    model, *_ = load_model(str(tmp_path), device="cpu", dtype="mixed")
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16  # as stored: nothing widened yet
    store_linear_weights_in_bf16(model)
    reference = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    store_linear_weights_in_bf16(reference)
    assert model.get_input_embeddings().weight.dtype == torch.float32
    for (name, mine), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs), name
    for (name, mine), (_, theirs) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs), name
    ids = torch.randint(3, 300, (2, 11))
    assert torch.equal(output_logits(model.eval(), ids, 3), output_logits(reference, ids, 3))


FAULTS_PER_PASS = """
import resource, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from ropelime.cheap_forward import keep_freed_memory

torch.manual_seed(0)
torch.set_num_threads(1)  # one thread, one malloc arena: worker threads' arenas unmap their heaps on their own terms
config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=1)
model = LlamaForCausalLM(config).eval()
if sys.argv[1] == "keep":
    assert keep_freed_memory()
ids = torch.randint(3, 1000, (4, 1024))
with torch.inference_mode():
    model(input_ids=ids, logits_to_keep=4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(input_ids=ids, logits_to_keep=4)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_kept_freed_memory_spares_the_page_faults_of_repeated_passes():
    """Each pass's large temporaries come from memory the last pass freed, not from fresh pages (glibc only)."""
    import subprocess
    import sys

    from ropelime.cheap_forward import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("no glibc mallopt here")
    def faults(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", FAULTS_PER_PASS, mode], capture_output=True, text=True,
                                  check=True, timeout=300).stdout.split()[-1])

    # the median of three processes per mode: one process's count now and then moves several-fold with the
    # machine's memory state (a CI run saw 12k faults with glibc's default against the usual 165k; after hours of
    # heavy jobs two CI runs in a row saw medians of 53k and 30k against keep's 19k and 8k, 2.8x and 3.5x fewer)
    counts = {mode: sorted(faults(mode) for _ in range(3)) for mode in ("default", "keep")}
    assert counts["keep"][1] * 2 < counts["default"][1], counts
