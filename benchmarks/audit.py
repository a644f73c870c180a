"""Audit throughput on MMLU-size requests: `explain` in a loop, `ropelime.audit` locally, and on Ray with 1
and 2 workers, on the same requests in one run.

    python benchmarks/audit.py --limit 6
    python benchmarks/audit.py --limit 6 --workers 1 2 --threads 1 --budget 64

Requests: the first `limit` items of the MMLU dev file (word features of the question stem, the gold
answer as the fixed response), written to a temporary input file. Every run scores through a fresh
score cache, so every mask is scored. The loop and the local audit use `--threads` torch threads
(default 1: the same as one Ray worker with one CPU); each Ray worker gets one CPU and one thread on a
local Ray instance started by the run.

Reported per run: processing time (from the moment the surrogate or the Ray workers are ready to the
last record) as items/min, the wall time including start-up (surrogate load; Ray start and actors'
loads), and Ray's overhead per item against the local audit. The machine may be shared: read the
load average printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import ropelime
from ropelime.audit_ray import RayOptions
from ropelime.cache import ScoreCache
from ropelime.catalogue import CATALOGUE, EMBEDDED, prepare
from ropelime.research.evaluate import DATA_FILES, mmlu_item, read_jsonl
from ropelime.explain import load_surrogate
from ropelime.schema import ExplainConfig

ROOT = Path(__file__).resolve().parents[1]


def mmlu_requests(limit: int) -> list[dict]:
    """Audit requests from the first `limit` MMLU dev items."""
    items = [mmlu_item(row) for row in read_jsonl(ROOT.parent / "shared" / "data" / DATA_FILES["mmlu"])[:limit]]
    return [{"id": item.id, "prompt": item.prompt, "explain": item.explain, "response": item.answer,
             "granularity": item.granularity} for item in items]


class Clock:
    """A progress callback that notes when processing starts (done = 0) and when the last record is written."""

    def __init__(self) -> None:
        self.start = self.end = None

    def __call__(self, done: int, total: int) -> None:
        if done == 0:
            self.start = time.perf_counter()
        if done == total:
            self.end = time.perf_counter()


def run_loop(requests: list[dict], surrogate: str, config: ExplainConfig, folder: Path) -> tuple[float, float]:
    """`explain` on each request, the surrogate loaded once: (processing seconds, wall seconds)."""
    wall = time.perf_counter()
    loaded = load_surrogate(surrogate)
    cache = ScoreCache(folder / "loop" / "scores.sqlite")
    start = time.perf_counter()
    for r in requests:
        ropelime.explain(r["prompt"], r["response"], explain=r["explain"], config=config, surrogate=loaded,
                         cache=cache, granularity=r["granularity"])
    end = time.perf_counter()
    cache.close()
    return end - start, end - wall


def run_audit(source: Path, surrogate: str, config: ExplainConfig, folder: Path, name: str,
              ray_workers: int | None = None) -> tuple[float, float]:
    """`ropelime.audit` locally or on a fresh local Ray instance: (processing seconds, wall seconds)."""
    os.environ["ROPELIME_CACHE_DIR"] = str(folder / name)  # a fresh score cache (Ray workers inherit it)
    clock, wall = Clock(), time.perf_counter()
    options = None
    if ray_workers:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        options = RayOptions(workers=ray_workers, cpus_per_worker=1)
    try:
        summary = ropelime.audit(source, folder / f"{name}.jsonl", config=config, surrogate=surrogate, runner=options,
                                 progress=clock)
    finally:
        if ray_workers:
            ray.shutdown()
    end = time.perf_counter()
    assert summary.explained == summary.run["requests"] and not summary.errors, summary.errors
    return clock.end - clock.start, end - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=6, help="MMLU items (requests)")
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the loop and the local audit")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Ray worker counts (none: skip Ray)")
    parser.add_argument("--surrogate", help="a model directory (default: the embedded surrogate, prepared once)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    parser.add_argument("--keep", metavar="DIR", help="keep the input and output files (and caches) in DIR")
    args = parser.parse_args()

    surrogate = args.surrogate or str(prepare(CATALOGUE[EMBEDDED]))
    torch.set_num_threads(args.threads)
    config = ExplainConfig(budget=args.budget)
    requests = mmlu_requests(args.limit)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "requests.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in requests), encoding="utf-8")
        runs = [("explain loop", lambda: run_loop(requests, surrogate, config, folder)),
                ("audit, local", lambda: run_audit(source, surrogate, config, folder, "local"))]
        runs += [(f"audit, Ray {w} worker{'s' if w > 1 else ''}",
                  lambda w=w: run_audit(source, surrogate, config, folder, f"ray{w}", w)) for w in args.workers]
        for name, run in runs:
            processing, wall = run()
            results[name] = {"processing_s": round(processing, 2), "wall_s": round(wall, 2),
                             "items_per_min": round(len(requests) / processing * 60, 2)}
            print(f"{name}: {results[name]}", flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    local = results["audit, local"]
    print(f"\n{len(requests)} MMLU requests, budget {args.budget}, {args.threads} thread(s) for the loop and the "
          f"local audit; load average {' '.join(load)}")
    print("(wall s includes start-up: the loop loads the surrogate, the local audit reuses it in this process, "
          "each Ray run starts Ray and its workers)")
    print(f"{'run':<22} {'items/min':>10} {'processing s':>13} {'wall s':>8} {'vs loop':>8}  Ray overhead/item")
    for name, r in results.items():
        ratio = r["items_per_min"] / results["explain loop"]["items_per_min"]
        overhead = ""
        if name.startswith("audit, Ray 1 "):
            overhead = f"{(r['processing_s'] - local['processing_s']) / len(requests):+.2f} s"
        print(f"{name:<22} {r['items_per_min']:>10.2f} {r['processing_s']:>13.1f} {r['wall_s']:>8.1f} "
              f"{ratio:>8.2f}  {overhead}")
    if "audit, Ray 1 worker" in results and "audit, Ray 2 workers" in results:
        scaling = results["audit, Ray 2 workers"]["items_per_min"] / results["audit, Ray 1 worker"]["items_per_min"]
        print(f"Ray 2 workers / 1 worker: {scaling:.2f}x items/min")
    if args.json:
        Path(args.json).write_text(json.dumps({"requests": len(requests), "budget": args.budget,
                                               "threads": args.threads, "loadavg": load, "results": results},
                                              indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
