"""Command line: `ropelime explain`, `ropelime models`, `ropelime serve`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.resources import files
from pathlib import Path
from typing import get_args

from ropelime.schema import ExplainConfig, Granularity, Kernel, Perturbation, Sampler, Solver, Target

DEMO = files("ropelime.examples")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SystemExit(f"error: cannot read {path}: {error}") from error


def _explain_parser(sub) -> None:
    p = sub.add_parser("explain", help="attribute a response to the parts of its prompt",
                       description="Attribute a fixed response to the parts of its prompt with a local surrogate.")
    src = p.add_argument_group("input")
    src.add_argument("--demo", action="store_true", help="use the bundled RAG example (runs offline)")
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt-file", help="read the prompt from a file")
    src.add_argument("--system", help="system prompt (kept fixed)")
    src.add_argument("--explain", metavar="SUBSTRING", help="the part of the prompt to attribute (default: all)")
    src.add_argument("--response", help="the fixed response to explain (no closed-model call)")
    src.add_argument("--response-file", help="read the response from a file")
    src.add_argument("--model", help="litellm model string to get the response from (e.g. gpt-4o-mini)")
    src.add_argument("--api-base", help="base URL for the closed model (OpenAI-compatible servers)")
    m = p.add_argument_group("method")
    m.add_argument("--granularity", choices=get_args(Granularity), default="sentence")
    m.add_argument("--segment", action="append", metavar="START:END",
                   help="granularity=segments: a character span of the prompt (repeatable)")
    m.add_argument("--sampler", choices=get_args(Sampler), default="sparse_k")
    m.add_argument("--budget", type=int, default=64, help="perturbed prompts to score (default 64)")
    m.add_argument("--k", type=int, help="sparse_k: most features removed per mask")
    m.add_argument("--target", choices=get_args(Target), default="nll")
    m.add_argument("--kernel", choices=get_args(Kernel), default="rwmd_rope")
    m.add_argument("--perturb", choices=get_args(Perturbation), default="delete")
    m.add_argument("--solver", choices=get_args(Solver), default="ridge")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--time-budget", type=float, help="stop scoring after this many seconds")
    m.add_argument("--surrogate", help="embedded default, a model directory, a .gguf file or a hub id")
    m.add_argument("--device", help="cpu, cuda, … (default: cuda when available)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the explanation as JSON on stdout")
    o.add_argument("--html", metavar="FILE", help="write a self-contained heat-map page")
    o.add_argument("--top", type=int, default=10, help="rows in the top-features table")


def _inputs(args) -> tuple[str, str | None, str | None, str | None]:
    if args.demo:
        demo = json.loads(DEMO.joinpath("demo.json").read_text(encoding="utf-8"))
        return demo["prompt"], demo["explain"], demo["response"], None
    if bool(args.prompt) == bool(args.prompt_file):
        raise SystemExit("error: give exactly one of --prompt, --prompt-file (or --demo)")
    prompt = args.prompt if args.prompt is not None else _read(args.prompt_file)
    response = args.response if args.response is not None else (
        _read(args.response_file) if args.response_file else None)
    if response is None and not args.model:
        raise SystemExit("error: give --response/--response-file, or --model to ask a closed model once")
    return prompt, args.explain, response, args.system


def _segments(args) -> list[tuple[int, int]] | None:
    if not args.segment:
        return None
    try:
        return [tuple(int(x) for x in s.split(":", 1)) for s in args.segment]
    except ValueError as error:
        raise SystemExit("error: --segment takes START:END character offsets, e.g. --segment 0:120") from error


def run_explain(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ropelime.explain import explain, load_surrogate
    from ropelime.render import print_explanation, to_html

    prompt, part, response, system = _inputs(args)
    config = ExplainConfig(
        granularity="segments" if args.segment else args.granularity, sampler=args.sampler, budget=args.budget,
        k=args.k, target=args.target, kernel=args.kernel, perturb=args.perturb, solver=args.solver,
        seed=args.seed, time_budget_s=args.time_budget, segments=_segments(args),
    )
    err = Console(stderr=True)
    with err.status("loading the surrogate (the first run prepares the embedded model: about a minute)"):
        surrogate = load_surrogate(args.surrogate, args.device)
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("scoring", total=None)
        result = explain(prompt, response, model=args.model, system=system, explain=part, config=config,
                         surrogate=surrogate, api_base=args.api_base,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    if args.html:
        Path(args.html).write_text(to_html(result), encoding="utf-8")
        err.print(f"wrote {args.html}")
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print_explanation(result, Console(), k=args.top)
    return 0


def run_models(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ropelime.settings import cache_dir
    from ropelime.surrogate import EMBEDDED, prepare_embedded

    console = Console()
    if args.prepare:
        with console.status("preparing the embedded surrogate (de-quantising once, about a minute)"):
            path = prepare_embedded()
        console.print(f"ready: {EMBEDDED} at {path}")
    table = Table(title="surrogates")
    for column in ("name", "kind", "status", "path"):
        table.add_column(column)
    embedded_dir = cache_dir() / "models" / EMBEDDED
    ready = (embedded_dir / "model.safetensors").exists()
    table.add_row(EMBEDDED + " (default)", "embedded, Gemma 3 270M base",
                  "ready" if ready else "not prepared yet (ropelime models --prepare)", str(embedded_dir))
    table.add_row("DIR", "any local transformers RoPE causal LM", "load on use", "--surrogate DIR")
    table.add_row("FILE.gguf", "any GGUF file (de-quantised on load)", "load on use", "--surrogate FILE.gguf")
    table.add_row("owner/name", "a Hugging Face hub id (downloads)", "load on use", "--surrogate owner/name")
    console.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ropelime` console script."""
    parser = argparse.ArgumentParser(prog="ropelime", description="Explain a closed LLM's answer with a local surrogate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    _explain_parser(sub)
    models = sub.add_parser("models", help="list surrogates and prepare the embedded one")
    models.add_argument("--prepare", action="store_true", help="de-quantise and cache the embedded surrogate now")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")

    from pydantic import ValidationError

    from ropelime.closed import ClosedModelError
    from ropelime.errors import InputError

    try:
        return {"explain": run_explain, "models": run_models}[args.command](args)
    except (InputError, ClosedModelError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; scores computed so far are cached", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
