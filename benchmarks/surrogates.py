"""Seconds per explanation for every installed catalogued surrogate, side by side, in one run.

    python benchmarks/surrogates.py                         # every installed surrogate
    python benchmarks/surrogates.py --surrogates gemma3-270m,qwen2.5-coder-0.5b --hotpotqa-rows 25
    python benchmarks/surrogates.py --json docs/results/surrogate_timings.json   # also keep the results

For each surrogate, in its own subprocess (so peak memory is its own): load time, then
`ropelime.explain` with the default method at budget 64 and a fresh score cache on dev items built as
`ropelime eval` builds them (MMLU: the stem's words; HotpotQA: one feature per sentence), the gold
answer as the fixed output. Prints seconds per explanation, prompt tokens scored per second (the
`cpu_tokens_per_s` that `--surrogate auto` plans with), peak RSS, and the ratio of each surrogate's
time to the embedded default's (the baseline, measured in the same run). The machine's load average
is printed with the numbers: timings at a load above the core count are not comparable.
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def measure(name: str, mmlu_rows: list[int], hotpot_rows: list[int], budget: int) -> dict:
    """Load one surrogate and time explanations of the given dev rows (run in a child process)."""
    from ropelime.cache import ScoreCache
    from ropelime.research.evaluate import DATA_FILES, hotpotqa_item, mmlu_item, read_jsonl
    from ropelime.explain import explain
    from ropelime.surrogate import Surrogate

    started = time.perf_counter()
    surrogate = Surrogate.load(name)
    out = {"surrogate": name, "precision": surrogate.precision, "load_s": round(time.perf_counter() - started, 1)}
    for task, rows, build in (("mmlu", mmlu_rows, mmlu_item), ("hotpotqa", hotpot_rows, hotpotqa_item)):
        if not rows:
            continue
        data = read_jsonl(DATA / DATA_FILES[task])
        seconds, tokens = [], 0
        for row in rows:
            item = build(data[row])
            with tempfile.TemporaryDirectory() as scratch:
                cache = ScoreCache(Path(scratch) / "scores.sqlite")
                result = explain(item.prompt, item.answer, explain=item.explain, surrogate=surrogate, cache=cache,
                                 granularity=item.granularity, segments=item.segments, budget=budget)
                cache.close()
            seconds.append(result.cost.seconds)
            tokens += result.cost.tokens_scored
        out[task] = {"items": len(rows), "seconds_mean": round(sum(seconds) / len(seconds), 1),
                     "tokens_per_s": round(tokens / sum(seconds))}
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogates", help="comma-separated catalogue names (default: every installed one)")
    parser.add_argument("--mmlu-rows", default="0,1,2", help="MMLU dev rows to explain")
    parser.add_argument("--hotpotqa-rows", default="25", help="HotpotQA dev rows to explain")
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--json", metavar="OUT", help="also write the results (and the load average) here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = ([int(r) for r in args.mmlu_rows.split(",") if r], [int(r) for r in args.hotpotqa_rows.split(",") if r])
    if args.child:
        print(json.dumps(measure(args.child, *rows, args.budget)))
        return
    from ropelime import catalogue

    names = args.surrogates.split(",") if args.surrogates else [
        e.name for e in catalogue.CATALOGUE.values() if e.is_installed()]
    results = []
    for name in names:
        child = subprocess.run([sys.executable, __file__, "--child", name, "--mmlu-rows", args.mmlu_rows,
                                "--hotpotqa-rows", args.hotpotqa_rows, "--budget", str(args.budget)],
                               capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
        if child.returncode:
            print(f"{name}: failed\n{child.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    base = next((r for r in results if r["surrogate"] == catalogue.EMBEDDED), None)
    setting = (f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; budget {args.budget}, fresh cache, "
               f"default method; MMLU rows {args.mmlu_rows}, HotpotQA rows {args.hotpotqa_rows}")
    if args.json:
        Path(args.json).write_text(json.dumps({"setting": setting, "results": results}, indent=1), encoding="utf-8")
    print(setting)
    print("| surrogate | precision | load s | MMLU s / explanation | HotpotQA s / explanation | tokens/s (MMLU, HotpotQA) "
          "| × embedded time (MMLU, HotpotQA) | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    tasks = ("mmlu", "hotpotqa")
    for r in results:
        cell = lambda task, key: f"{r[task][key]:,}" if task in r else "–"  # noqa: E731
        ratio = ", ".join(f"{r[t]['seconds_mean'] / base[t]['seconds_mean']:.1f}" if base and t in r else "–"
                          for t in tasks)
        print(f"| {r['surrogate']} | {r['precision']} | {r['load_s']} | {cell('mmlu', 'seconds_mean')} | "
              f"{cell('hotpotqa', 'seconds_mean')} | {cell('mmlu', 'tokens_per_s')}, {cell('hotpotqa', 'tokens_per_s')} | "
              f"{ratio} | {r['peak_rss_gib']} |")


if __name__ == "__main__":
    main()
