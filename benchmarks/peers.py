"""RoPE-LIME side by side with ContextCite 0.0.4: the same HotpotQA item, surrogate and number of masks.

    pip install -e '.[peers]'
    python benchmarks/peers.py                                       # row 25, gemma3-270m, 64 masks
    python benchmarks/peers.py --surrogate qwen2.5-coder-0.5b --cc-batch-sizes 1 --memory-cap-gib 12
    OMP_NUM_THREADS=1 python benchmarks/peers.py --row 98 --masks 4  # smoke test (13 sentences)

The item is built as `ropelime eval` builds it (`hotpotqa_item`: one feature per dataset sentence,
the gold answer as the fixed response). Runs, each in its own subprocess, timed without the model
load (shown apart):

- ContextCite 0.0.4, its own code as installed, once per `--cc-batch-sizes` entry (its default is
  1): `ContextCiter(model, tokenizer, context, query, num_ablations=masks, batch_size=b, ...)`,
  timed from constructing the citer to `get_attributions()`. It gets the surrogate's transformers
  model and tokenizer as `ropelime.loading.load_model` prepares them, without RoPE-LIME's engine
  changes, in float32 (its autocast is CUDA-only).
  - Prompt: its template is the item's prompt with the context cut out, so the prompt it builds is
    the item's. It always applies the tokenizer's chat template; for a surrogate RoPE-LIME reads
    plain (no chat template, as the embedded Gemma 3 270M GGUF), the tokenizer is given a template
    that renders what RoPE-LIME reads: the tokenizer's start tokens, the prompt, a blank line.
  - Sources: the item's sentences, through a `BaseContextPartitioner` whose ablation deletes the
    masked sentences' text. Its own sentence split needs NLTK's `punkt_tab`, which
    `context_cite.utils` downloads at import (`nltk.download`); with no network but the package
    registries, the child replaces `nltk.download` by a no-op before importing it, and NLTK is unused.
  - Response: 0.0.4 takes none; `response` generates with `model.generate` and caches the prompt
    plus the output text. The child puts the rendered prompt plus the gold answer in that cache
    (`citer._cache["output"]`) first, so nothing is generated.
- RoPE-LIME: `ropelime.explain` with a fresh score cache and budget = masks, with the default
  method and with the ContextCite-style settings of `ropelime eval --methods contextcite` (bernoulli
  masks, logit_prob target, lasso, uniform kernel), in the precision in force (`ROPELIME_DTYPE`).

ContextCite draws its masks with seeds 0..masks-1 (each sentence kept with probability 0.5, repeats
possible) and scores only the ablated prompts; RoPE-LIME also scores the unperturbed prompt. A child
whose RSS passes `--memory-cap-gib` is killed by this process, which watches it with psutil; one
running longer than `--timeout` s (model load included) is stopped. Prints a markdown table (seconds,
load seconds, peak RSS, status, top-3 sentences, ContextCite's seconds / this run's), the load
average and core count, and the Spearman correlation of ContextCite's scores with the
ContextCite-style RoPE-LIME scores (different masks: a sanity check, not an agreement measure).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from scipy.stats import spearmanr

from ropelime.research.evaluate import BASELINES, DATA_FILES, Item, hotpotqa_item, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METHODS = {"default": {}, "contextcite-style": BASELINES["contextcite"]}


def load_item(row: int) -> Item:
    return hotpotqa_item(read_jsonl(DATA / DATA_FILES["hotpotqa"])[row])


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# ---- children -----------------------------------------------------------------------------------

def run_contextcite(args) -> dict:
    """ContextCite 0.0.4 on the item's sentences, the gold answer as its response."""
    import nltk

    nltk.download = lambda *_, **__: False  # context_cite.utils downloads punkt_tab at import; unused here
    from context_cite import ContextCiter
    from context_cite.context_partitioner import BaseContextPartitioner

    from ropelime.features import find_explain_span
    from ropelime.loading import load_model

    class Sentences(BaseContextPartitioner):
        """The item's sentences as sources; ablating one deletes its text, the rest stays fixed."""

        def __init__(self, context: str, spans: list[tuple[int, int]]) -> None:
            super().__init__(context)
            self.spans = spans

        @property
        def num_sources(self) -> int:
            return len(self.spans)

        def split_context(self) -> None:
            """The spans are given."""

        def get_source(self, index: int) -> str:
            start, end = self.spans[index]
            return self.context[start:end]

        def get_context(self, mask: np.ndarray | None = None) -> str:
            pieces, cursor = [], 0
            for (start, end), keep in zip(self.spans, np.ones(len(self.spans), bool) if mask is None else mask):
                if not keep:
                    pieces.append(self.context[cursor:start])
                    cursor = end
            return "".join(pieces) + self.context[cursor:]

    item = load_item(args.row)
    start, end = find_explain_span(item.prompt, item.explain)
    head, tail = (text.replace("{", "{{").replace("}", "}}") for text in (item.prompt[:start], item.prompt[end:]))
    started = time.perf_counter()
    model, tokenizer, *_, prompt_format = load_model(args.surrogate, dtype="float32")
    load_s = time.perf_counter() - started
    if prompt_format == "plain" or not getattr(tokenizer, "chat_template", None):
        # ContextCite always applies a chat template; RoPE-LIME reads this surrogate plain: the prompt, a blank line
        special = tokenizer.decode(tokenizer("")["input_ids"])
        tokenizer.chat_template = special + "{{ messages[0]['content'] + '\\n\\n' }}"
    tokenizer.padding_side = "left"  # batch_size > 1 asserts it; only from_pretrained sets it
    started = time.perf_counter()
    citer = ContextCiter(model, tokenizer, item.explain, "", num_ablations=args.masks, batch_size=args.batch_size,
                         prompt_template=head + "{context}" + tail,
                         partitioner=Sentences(item.explain, [(a - start, b - start) for a, b in item.segments]))
    prompt_ids, rendered = citer._get_prompt_ids(return_prompt=True)
    citer._cache["output"] = rendered + item.answer
    scores = citer.get_attributions(verbose=False)
    return {"seconds": time.perf_counter() - started, "load_s": load_s, "scores": scores.tolist(),
            "precision": str(next(model.parameters()).dtype).removeprefix("torch."), "masks": args.masks,
            "prompt_tokens": len(prompt_ids), "response": citer.response}


def run_ropelime(args) -> dict:
    """ropelime.explain with a fresh score cache, the default method or the ContextCite-style one."""
    from ropelime.cache import ScoreCache
    from ropelime.explain import explain
    from ropelime.surrogate import Surrogate

    item = load_item(args.row)
    started = time.perf_counter()
    surrogate = Surrogate.load(args.surrogate)
    load_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        cache = ScoreCache(Path(scratch) / "scores.sqlite")
        started = time.perf_counter()
        result = explain(item.prompt, item.answer, explain=item.explain, surrogate=surrogate, cache=cache,
                         granularity=item.granularity, segments=item.segments, budget=args.masks,
                         **METHODS[args.method])
        seconds = time.perf_counter() - started
        cache.close()
    return {"seconds": seconds, "load_s": load_s, "precision": surrogate.precision,
            "scores": [f.score for f in sorted(result.features, key=lambda f: f.index)],
            "masks": result.diagnostics.samples,
            "prompt_tokens": len(surrogate.encode_prompt(item.prompt, None, item.segments).ids)}


# ---- the parent ---------------------------------------------------------------------------------

def watch(command: list[str], cap_gib: float, timeout: float) -> dict:
    """Run one child, killing it above `cap_gib` of RSS or after `timeout` s; its result and status."""
    started, seen = time.perf_counter(), 0.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT,
                                 env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"})
        process = psutil.Process(child.pid)
        status = None
        while child.poll() is None and status is None:
            try:
                rss = process.memory_info().rss / 2 ** 30
            except psutil.NoSuchProcess:
                break
            seen = max(seen, rss)
            if rss > cap_gib:
                status = f"killed at {rss:.1f} GiB"
            elif time.perf_counter() - started > timeout:
                status = f"timed out after {timeout:.0f} s"
            else:
                time.sleep(0.1)
        if status:
            child.kill()
            child.wait()
            return {"status": status, "rss_gib": seen}
        out.seek(0)
        err.seek(0)
        if child.returncode:
            lines = err.read().decode(errors="replace").strip().splitlines() or ["no output"]
            return {"status": f"failed: {lines[-1][:200]}", "rss_gib": seen}
        return {"status": "completed", **json.loads(out.read().decode().strip().splitlines()[-1])}


def top3(scores: list[float], item: Item) -> str:
    """The three highest-scoring sentences: index and the start of their text."""
    texts = [item.prompt[a:b].strip() for a, b in item.segments]
    return "; ".join(f"#{i} {texts[i][:40]}{'…' if len(texts[i]) > 40 else ''}".replace("|", "\\|")
                     for i in np.argsort(-np.asarray(scores), kind="stable")[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", type=int, default=25, help="HotpotQA dev row (25: 40 sentences)")
    parser.add_argument("--surrogate", default=None, help="catalogue name, model directory or GGUF (default: embedded)")
    parser.add_argument("--masks", type=int, default=64, help="ContextCite's num_ablations and RoPE-LIME's budget")
    parser.add_argument("--cc-batch-sizes", default="1,8", help="ContextCite batch sizes, one run each (its default: 1)")
    parser.add_argument("--memory-cap-gib", type=float, default=16.0, help="kill a run whose RSS passes this")
    parser.add_argument("--timeout", type=float, default=3600.0, help="stop a run after this many seconds")
    parser.add_argument("--child", choices=["contextcite", "ropelime"], help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (run_contextcite if args.child == "contextcite" else run_ropelime)(args)
        print(json.dumps(result | {"rss_gib": rss_gib()}))
        return

    item = load_item(args.row)
    base = [sys.executable, __file__, "--row", str(args.row), "--masks", str(args.masks)]
    base += ["--surrogate", args.surrogate] if args.surrogate else []
    runs = {f"ContextCite 0.0.4, batch {b}": base + ["--child", "contextcite", "--batch-size", b]
            for b in args.cc_batch_sizes.split(",") if b}
    runs |= {f"RoPE-LIME {m}": base + ["--child", "ropelime", "--method", m] for m in METHODS}
    load_at_start = os.getloadavg()[0]
    results = {}
    for label, command in runs.items():
        results[label] = watch(command, args.memory_cap_gib, args.timeout)
        print(label, json.dumps({k: v for k, v in results[label].items() if k != "scores"}), file=sys.stderr, flush=True)
    cc = {label: r for label, r in results.items() if label.startswith("ContextCite") and "scores" in r}

    print(f"HotpotQA dev row {args.row} ({item.id}): {len(item.segments)} sentences, answer {item.answer!r}; "
          f"surrogate {args.surrogate or 'gemma3-270m (embedded)'}; {args.masks} masks; load average "
          f"{load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end, on {os.cpu_count()} cores")
    print("| run | precision | masks scored | prompt tokens | seconds | load s | peak RSS GiB | status | top-3 sentences "
          "| ContextCite s / this run's s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        done = "scores" in r
        ratio = ", ".join(f"{c['seconds'] / r['seconds']:.2f} ({name.split(', ')[1]})" for name, c in cc.items()
                          ) if done and label.startswith("RoPE-LIME") and cc else "–"
        cells = ([r["precision"], r["masks"], r["prompt_tokens"], f"{r['seconds']:.1f}", f"{r['load_s']:.1f}"]
                 if done else ["–"] * 5)
        print(f"| {label} | " + " | ".join(map(str, cells)) + f" | {r['rss_gib']:.2f} | {r['status']} | "
              f"{top3(r['scores'], item) if done else '–'} | {ratio} |")
    for name, c in cc.items():
        if c["response"] != item.answer:
            print(f"{name}: the response it attributed is {c['response']!r}, not the gold answer")
    style = results["RoPE-LIME contextcite-style"]
    for name, c in cc.items():
        if "scores" in style:
            rho = spearmanr(c["scores"], style["scores"]).statistic
            print(f"Spearman({name}, RoPE-LIME contextcite-style) over {len(item.segments)} sentences: "
                  + ("undefined (constant scores)" if np.isnan(rho) else f"{rho:.3f}"))


if __name__ == "__main__":
    main()
