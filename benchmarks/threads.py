"""Scoring threads with and without another busy process: torch's default against `ropelime.cores`.

    python benchmarks/threads.py                   # the embedded surrogate, MMLU dev rows 0-2
    python benchmarks/threads.py --surrogate qwen2.5-coder-0.5b --rows 0,1

Each setting of $ROPELIME_THREADS (1, the core count = torch's default, and auto = the cores other
processes leave free) explains the same MMLU dev items (the stem's words, gold answer, budget 64, a
fresh score cache) in its own subprocess, after one warm-up explanation, twice: on the machine as it
is, and while a competing process keeps one core busy with matrix products (one torch thread). Prints
seconds per explanation and the ratio to torch's default in the same condition, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COMPETITOR = """
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
print("busy", flush=True)
while True:
    a = torch.tanh(a @ a)
"""


def measure(surrogate_name: str, rows: list[int]) -> dict:
    """Time explanations of `rows` in this process (run as a child with $ROPELIME_THREADS set)."""
    from ropelime.cache import ScoreCache
    from ropelime.explain import explain
    from ropelime.research.evaluate import DATA_FILES, mmlu_item, read_jsonl
    from ropelime.surrogate import Surrogate

    surrogate = Surrogate.load(surrogate_name)
    data = read_jsonl(DATA / DATA_FILES["mmlu"])
    seconds, threads = [], set()
    for n, row in enumerate([rows[-1] + 1, *rows]):  # the first is a warm-up, not timed
        item = mmlu_item(data[row])
        with tempfile.TemporaryDirectory() as scratch:
            cache = ScoreCache(Path(scratch) / "scores.sqlite")
            started = time.perf_counter()
            result = explain(item.prompt, item.answer, explain=item.explain, surrogate=surrogate, cache=cache,
                             granularity=item.granularity, budget=64)
            cache.close()
        if n:
            seconds.append(time.perf_counter() - started)
            threads.add(result.cost.threads)
    return {"seconds": sum(seconds) / len(seconds), "threads": sorted(threads)}


def run_child(setting: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "ROPELIME_THREADS": setting, "TRANSFORMERS_VERBOSITY": "error"}
    child = subprocess.run([sys.executable, __file__, "--child", "--surrogate", args.surrogate, "--rows", args.rows],
                           capture_output=True, text=True, env=env, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogate", default="gemma3-270m")
    parser.add_argument("--rows", default="0,1,2", help="MMLU dev rows to explain")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.surrogate, [int(r) for r in args.rows.split(",")])))
        return
    cores = os.cpu_count() or 1
    settings = ["1", str(cores), "auto"]
    table = {}
    for condition in ("as is", "one core busy"):
        competitor = None
        if condition == "one core busy":
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.PIPE, text=True)
            competitor.stdout.readline()
        try:
            load = os.getloadavg()[0]
            table[condition] = {s: run_child(s, args) for s in settings}
            table[condition]["load"] = (load, os.getloadavg()[0])
        finally:
            if competitor:
                competitor.kill()
                competitor.wait()
    print(f"{args.surrogate}, MMLU rows {args.rows}, budget 64, {cores} cores; "
          f"seconds per explanation, ratio = torch's default ({cores} threads) / this setting, same condition")
    print("| condition | load avg (start → end) | ROPELIME_THREADS | threads used | s / explanation | speed-up vs default |")
    print("|---|---|---|---|---|---|")
    for condition, runs in table.items():
        load = runs.pop("load")
        for setting, r in runs.items():
            ratio = runs[str(cores)]["seconds"] / r["seconds"]
            print(f"| {condition} | {load[0]:.2f} → {load[1]:.2f} | {setting} | {r['threads']} | {r['seconds']:.1f} | "
                  f"{ratio:.2f}× |")


if __name__ == "__main__":
    main()
