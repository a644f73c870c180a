"""Right early: how soon a partial explanation's top 3 is the complete one's, one run, the load average printed.

    python benchmarks/anytime.py schedules --task hotpotqa --rows 0-9          # importance-first vs plan order
    python benchmarks/anytime.py schedules --task mmlu --rows 0-9
    python benchmarks/anytime.py mcp --rows 0-9                                 # ropelime-mcp, default arguments
    python benchmarks/anytime.py peers --row 25                                 # full time vs a plain loop, ContextCite

`schedules`: each dev item is scored twice with the default method, a fresh score cache each, the
masks in the order `ropelime.explain` scores them when its time budget may stop it early (the single
removals by the question-overlap prior, `ropelime.anytime.importance_first`) and in the sampler's plan
order (plain, what it scores in when the budget suffices), which one first alternating from item to item. The seconds at which
each chunk of masks finished are recorded; at each checkpoint the masks scored by then are fitted (as a
time budget ending there would) and the partial top 3 (scored features only) is compared, as a set,
with the complete explanation's (a checkpoint inside a chunk takes the chunk's first masks as scored,
which the engine's batches may not be). Prints, per checkpoint and schedule, the share of items whose top 3
is already the complete one's, and the seconds a complete explanation took.

`mcp`: `ropelime-mcp` over stdio as a host runs it (a host-like 60 s read timeout), one server per item
with a fresh score cache (the prepared surrogates and the measured speeds are shared); `explain_response`
with its defaults but the prompt, the gold answer as the response and the context as the part to explain;
then `continue_from` until the explanation is complete. Prints the first call's seconds from the
client's side, whether it was complete, and whether its top 3 is the complete top 3.

`peers`: the full-explanation time on one item against a plain transformers loop (`benchmarks/scoring.py`)
and ContextCite 0.0.4 (`benchmarks/peers.py`, needs `pip install -e '.[peers]'`), each script run as is.

To see a CPU without native bf16 on one that has it: `ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
ROPELIME_DTYPE=float32` (float32 matrix products limited to AVX2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
HOST_TIMEOUT = 60.0
MAX_CALLS = 40
"""Most explain_response calls per item before giving up on completing it (the result says so)."""


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rows_of(text: str) -> list[int]:
    """'0-9' or '0,3,5' → row numbers."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(r) for r in text.split(",") if r]


def items(task: str, rows: list[int]):
    from ropelime.research.evaluate import DATA_FILES, load_items

    every = load_items(task, DATA / DATA_FILES[task], limit=max(rows) + 1)
    return [every[r] for r in rows]


def top3(explanation) -> frozenset[int]:
    return frozenset(f.index for f in explanation.top(3))


def scored_by_time(item, surrogate, order: str) -> tuple[object, list[tuple[float, int]], float]:
    """Score one item's planned masks in `order` ('importance' or 'plan') with a fresh cache: the samples in
    scoring order, (seconds, masks scored) after each chunk, and the seconds in all."""
    from ropelime.anytime import importance_first
    from ropelime.cache import ScoreCache
    from ropelime.explain import method_config, plan_masks
    from ropelime.priors import question_overlap
    from ropelime.scoring import prepare, score_samples, split
    from ropelime.settings import Limits

    config = method_config(None, dict(granularity=item.granularity, segments=item.segments))
    limits = Limits.from_env()
    started = time.perf_counter()
    span, features = split(item.prompt, item.explain, config, limits)
    prepared = prepare(item.prompt, item.answer, system=None, span=span, features=features, config=config,
                       surrogate=surrogate, limits=limits)
    masks = plan_masks(len(features), prepared.config)
    if order == "importance":
        masks = masks[importance_first(masks, question_overlap(prepared.prompt, prepared.features, prepared.response))]
    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as folder:
        cache = ScoreCache(Path(folder) / "scores.sqlite")
        samples = score_samples(prepared, masks, cache=cache,
                                progress=lambda done, _total: marks.append((time.perf_counter() - started, done)))
        cache.close()
    return samples, marks, time.perf_counter() - started


def partial_top3(samples, done: int) -> frozenset[int]:
    """The top 3 of a fit on the first `done` scored masks (as a time budget stopping there would give)."""
    from ropelime.samples import fit_samples

    rows = slice(0, done)
    part = dataclasses.replace(samples, masks=samples.masks[rows], scores=samples.scores[rows],
                               distances=None if samples.distances is None else samples.distances[rows])
    return top3(fit_samples(part))


def schedules(args) -> None:
    from ropelime.explain import load_surrogate
    from ropelime.samples import fit_samples

    surrogate = load_surrogate(args.surrogate)
    checkpoints = [float(c) for c in args.checkpoints.split(",")]
    agree = {order: np.zeros(len(checkpoints)) for order in ("importance", "plan")}
    full_seconds: dict[str, list[float]] = {"importance": [], "plan": []}
    load_at_start, chosen = loadavg(), items(args.task, rows_of(args.rows))
    for number, item in enumerate(chosen):
        complete = None
        for order in ("importance", "plan")[::-1 if number % 2 else 1]:  # alternate which goes first
            samples, marks, seconds = scored_by_time(item, surrogate, order)
            complete = complete or top3(fit_samples(samples))
            full_seconds[order].append(seconds)
            for c, at in enumerate(checkpoints):
                done = max([n for t, n in marks if t <= at], default=0)
                agree[order][c] += done > 0 and partial_top3(samples, done) == complete
            print(f"  {item.id} {order}: {len(samples.masks)} masks in {seconds:.1f} s; load {loadavg()}",
                  file=sys.stderr, flush=True)
    n = len(chosen)
    print(f"{args.task} rows {args.rows} ({n} items), surrogate {surrogate.name} ({surrogate.precision}), default "
          f"method; load average {load_at_start} at start, {loadavg()} at end, on {os.cpu_count()} cores")
    print("| seconds | " + " | ".join(f"{c:g}" for c in checkpoints) + " | complete (median s) |")
    print("|---|" + "---|" * (len(checkpoints) + 1))
    for order, label in (("importance", "importance-first (default)"), ("plan", "plan order (plain)")):
        print(f"| {label}: partial top-3 = complete top-3 | "
              + " | ".join(f"{a / n:.2f}" for a in agree[order]) + f" | {np.median(full_seconds[order]):.1f} |")


async def one_item(item, env: dict) -> dict:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=str(Path(sys.executable).parent / "ropelime-mcp"), env=env)
    arguments = {"prompt": item.prompt, "response": item.answer, "explain": item.explain}
    async with Client(params, read_timeout_seconds=HOST_TIMEOUT) as client:
        await client.list_tools()
        started = time.perf_counter()
        first = await client.call_tool("explain_response", arguments, read_timeout_seconds=HOST_TIMEOUT)
        seconds = time.perf_counter() - started
        result, calls = first.structured_content, 1
        while not result["complete"] and calls < MAX_CALLS:
            more = await client.call_tool("explain_response", {"continue_from": result["explanation_id"]},
                                          read_timeout_seconds=HOST_TIMEOUT)
            result, calls = more.structured_content, calls + 1
    from ropelime.schema import Explanation

    partial, complete = Explanation.model_validate(first.structured_content), Explanation.model_validate(result)
    if not complete.complete:
        raise SystemExit(f"{item.id}: still incomplete after {calls} calls; raise MAX_CALLS")
    return {"seconds": seconds, "complete": partial.complete, "same_top3": top3(partial) == top3(complete),
            "scored": f"{partial.diagnostics.samples}/{partial.diagnostics.planned_samples}",
            "surrogate": partial.surrogate.name, "calls": calls}


def through_mcp(args) -> None:
    import anyio

    from ropelime.settings import cache_dir

    shared, results = cache_dir(), []
    load_at_start = loadavg()
    for item in items("hotpotqa", rows_of(args.rows)):
        with tempfile.TemporaryDirectory() as folder:
            for kept in ("models", "gguf"):  # prepared surrogates: shared, not re-prepared
                if (shared / kept).exists():
                    (Path(folder) / kept).symlink_to(shared / kept)
            if (shared / "speeds.json").exists():  # the measured pace a user's server would know
                shutil.copy(shared / "speeds.json", folder)
            result = anyio.run(one_item, item, {**os.environ, "ROPELIME_CACHE_DIR": folder})
        results.append(result)
        print(f"  {item.id}: {json.dumps(result)}; load {loadavg()}", file=sys.stderr, flush=True)
    seconds = [r["seconds"] for r in results]
    print(f"ropelime-mcp explain_response, default arguments, HotpotQA rows {args.rows} ({len(results)} items), "
          f"surrogate {', '.join(sorted({r['surrogate'] for r in results}))}; load average {load_at_start} at start, "
          f"{loadavg()} at end, on {os.cpu_count()} cores")
    print(f"first call: median {np.median(seconds):.1f} s, max {max(seconds):.1f} s from the client; complete in "
          f"{sum(r['complete'] for r in results)} of {len(results)}; its top 3 = the complete top 3 in "
          f"{sum(r['same_top3'] for r in results)} of {len(results)}")


def peers(args) -> None:
    scoring = [sys.executable, str(ROOT / "benchmarks" / "scoring.py"), "--items", "hotpotqa", "--hotpot-index",
               str(args.row), "--runs", "engine mixed reuse + KL", "--explain-dtypes"]
    subprocess.run(scoring, check=True)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--row", str(args.row),
                    "--cc-batch-sizes", "1"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("schedules", help="partial top-3 against seconds, importance-first and plan order")
    one.add_argument("--task", choices=["hotpotqa", "mmlu"], default="hotpotqa")
    one.add_argument("--rows", default="0-9", help="dev rows: 0-9 or 0,3,5")
    one.add_argument("--surrogate", default=None, help="default: as ropelime picks ($ROPELIME_SURROGATE, else auto)")
    one.add_argument("--checkpoints", default="2,5,10,20,30,40,60", help="seconds at which to compare")
    host = sub.add_parser("mcp", help="ropelime-mcp explain_response with default arguments")
    host.add_argument("--rows", default="0-9")
    other = sub.add_parser("peers", help="full time against a plain loop and ContextCite (their own scripts)")
    other.add_argument("--row", type=int, default=25)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    {"schedules": schedules, "mcp": through_mcp, "peers": peers}[args.what](args)


if __name__ == "__main__":
    main()
