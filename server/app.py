"""The RoPE-LIME MCP server: four read-only tools, explanation resources and prompt files over the library."""

from __future__ import annotations

import base64
import contextvars
import inspect
import json
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Annotated, Literal, TypeVar, get_args

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp_types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

import ropelime
from ropelime.compare import DEFAULT_BUDGETS, DEFAULT_SAMPLERS, DEFAULT_SEEDS, Comparison, plot_faithfulness
from ropelime.compare import compare_samplers as compare_grid
from ropelime.errors import InputError
from ropelime import options as declared
from ropelime.options import choices, explicit, with_method_parameters
from ropelime.presets import PRESETS
from ropelime.render import settled_line, to_html
from ropelime.catalogue import DEFAULT_SURROGATE
from ropelime.schema import ExplainConfig, Explanation, Sampler
from ropelime.samples import DEFAULT_METHOD
from ropelime.refine import check_request as check_refine
from ropelime.verify import check_request
from ropelime_server.engine import (EngineOptions, engine_of, lifespan_for, run_job, tool_errors,
                                    validation_problems)
from ropelime_server.prompt_files import load_prompts
from ropelime_server.results import Direction, TopFeatures, comparison_text, explanation_text, top_text

DEFAULT_TIME_BUDGET_S = 40.0
"""Hosts such as Claude Desktop cancel a call at about 60 s: stop scoring well before and say how to continue."""

INSTRUCTIONS = """RoPE-LIME explains which parts of a prompt an answer rests on. A small local surrogate model
scores the fixed answer with each word, sentence or paragraph removed alone (and in pairs, for the
intervals); every feature gets a score with a 95% interval: positive = the answer rests on it (by
default how much the answer depends on it whatever its direction, and a direction: whether it makes
the answer more likely (supports) or less (opposes); with target=nll the score itself is signed).
Call explain_response with the prompt and the answer (or a model to ask once), then top_features
with its explanation_id, optionally for one part of the answer (output_span). Long prompts may come
back INCOMPLETE after the time budget: call again with continue_from to resume from cached scores.
compare_samplers compares the perturbation samplers' faithfulness, stability and cost. To check whether
the closed model's own answer rests on the top features, pass verify=K to explain_response or call
verify_explanation: K + 1 more closed-model calls, each verdict confirmed / not_confirmed / inconclusive.
A small surrogate's ranking agrees only loosely with a large closed model's own (each explanation says how
far, as measured): pass refine=K with the model to measure the closed model's own effect of deleting the K
best candidates (K calls, its log-probabilities when the provider returns them); those rank first, marked
measured."""

_CLOSED = "litellm model string (e.g. openai/gpt-4o-mini) asked once, at temperature 0, when no response is given; " \
          "its API key comes from the provider's usual environment variable"

PromptArg = Annotated[str, Field(description="the prompt (question, context) whose answer to explain, exactly as given to the model")]
ResponseArg = Annotated[str | None, Field(description="the answer to explain, word for word; give it to avoid any closed-model call")]
ModelArg = Annotated[str | None, Field(description=_CLOSED)]
SystemArg = Annotated[str | None, Field(description="system prompt given with the prompt; kept fixed, never attributed")]
ExplainArg = Annotated[str | None, Field(description="the substring of the prompt to attribute, e.g. the context of a RAG prompt; "
                                                     "the rest stays fixed (default: the whole prompt)")]
ToolGranularity = Literal["word", "sentence", "paragraph"]
"""The granularities a tool offers (caller-given segments are for the library and the CLI)."""

EXPLAIN_OPTIONS = declared.EXPLAIN
"""The options explain_response offers: every option of `ropelime.explain` and `ropelime explain` (declared in
ExplainConfig and CallOptions; see `ropelime.options`)."""
COMPARE_OPTIONS = ("target", "kernel", "kernel_width", "perturb", "prompt_format", "solver", "adjust_position")
"""compare_samplers' method options besides granularity and the time budget: the choices that say how every sampler's
masks are scored and read (the grid's axes are samplers, budgets and seeds; the Python `compare_samplers` takes
every ExplainConfig field)."""
TOOL_NARROWED = {"granularity": ToolGranularity}
TOOL_DEFAULTS = {"time_budget_s": DEFAULT_TIME_BUDGET_S}
GIVEN_ARGUMENTS: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("given_arguments", default=None)
"""The argument names the caller gave in the current tool call (a `method` preset fills in only the others)."""
TimeBudgetArg = Annotated[float | None, Field(gt=0, description="stop scoring after this many seconds and return a partial "
                                                                "result marked incomplete (null: no limit)")]


F = TypeVar("F", bound=Callable)


def tool(mcp: MCPServer, **settings) -> Callable[[F], F]:
    """`mcp.tool(...)` with the function's docstring, dedented, as the tool's description."""
    def register(function: F) -> F:
        return mcp.tool(description=inspect.cleandoc(function.__doc__ or ""), **settings)(function)
    return register


def _result(text: str, data: dict, *extra: ImageContent) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text), *extra], structured_content=data)


def options_document(options: EngineOptions) -> dict:
    """The available choices and defaults, for the options resource."""
    defaults = ExplainConfig()
    return {
        "surrogate": options.surrogate or DEFAULT_SURROGATE,
        "default_closed_model": options.default_model,
        "granularity": list(get_args(ToolGranularity)),
        **{name: choices(name) for name in ("method", "sampler", "target", "kernel", "perturb", "solver")},
        "methods": PRESETS,
        "direction": list(get_args(Direction)),
        "defaults": {**defaults.model_dump(exclude={"segments", "time_budget_s"}),
                     **DEFAULT_METHOD,
                     "solver": "the sampler's: differences for loo_pairs, else ridge",
                     "time_budget_s": DEFAULT_TIME_BUDGET_S},
        "compare_samplers_defaults": {"samplers": list(DEFAULT_SAMPLERS), "budgets": list(DEFAULT_BUDGETS),
                                      "seeds": list(DEFAULT_SEEDS), "time_budget_s": DEFAULT_TIME_BUDGET_S},
        "meaning": {
            "score": "positive = the response rests on the feature (target nll: supports it; kl, js: how much the "
                     "response depends on it, whatever its direction); ci_low/ci_high = 95% interval",
            "direction": "supports / opposes / unclear: whether the response is less or more likely without the "
                         "feature (95% interval above or below 0, or straddling it); likelihood_effect (kl, js) = "
                         "that change in nats per token",
            "sparse_k": "each perturbation removes a few features, balanced coverage (fitted by ridge)",
            "loo": "remove one feature at a time (budget does not apply)",
            "loo_pairs": "remove one feature at a time, then pairs of features for the intervals (the default)",
            "differences": "a feature's score is the change when it alone is removed; its interval, how far pairs "
                           "depart from the sum of their parts",
            "bernoulli": "keep each feature with probability 1/2 (LIME, ContextCite)",
            "nll": "mean negative log-likelihood of the response", "logit_prob": "log-odds of the whole response",
            "kl": "KL divergence of the next-token distributions", "js": "Jensen-Shannon divergence",
            "rwmd_rope": "locality by relaxed word mover's distance in RoPE embedding space",
            "delete": "remove masked text", "placeholder": "replace masked text, keeping token positions",
            "verify": "verdicts from asking the closed model again without each top feature (similarity = token F1 "
                      "to its original answer): confirmed = at least 0.25 lower than a control removing K random "
                      "others; inconclusive = the control's similarity is below 0.25; not_confirmed = otherwise; "
                      "unverified = no answer (fault or time budget)",
            "refine": "the closed model's own effect of deleting each of K candidates (the surrogate's highest "
                      "upper interval bounds): the drop of the log-odds of the answer's first token (or 1 − token "
                      "F1 of its new answer without log-probabilities); measured features rank first",
        },
    }


class RopeLimeServer(MCPServer):
    """MCPServer whose argument errors read as one line (the SDK's carry pydantic's layout and links)."""

    async def call_tool(self, name: str, arguments: dict, context: Context | None = None):
        GIVEN_ARGUMENTS.set(frozenset(arguments or ()))
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as error:
            if isinstance(error, UnexpectedToolError) or not isinstance(error.__cause__, ValidationError):
                raise
            raise ToolError(f"invalid arguments for {name}: {validation_problems(error.__cause__)}") \
                from error.__cause__

    async def list_tools(self):
        """The tools with compact schemas: no generated titles, and output schemas cut to their top-level fields'
        types (the full nested schema repeated per tool made tools/list 49 KB; see `compact_output_schema`)."""
        tools = await super().list_tools()
        for listed in tools:
            listed.input_schema = _without_titles(listed.input_schema)
            if listed.output_schema is not None:
                listed.output_schema = compact_output_schema(listed.output_schema)
        return tools


def _without_titles(schema: dict) -> dict:
    """An input schema without the titles pydantic derives from parameter names ("Kernel Width")."""
    properties = {name: {k: v for k, v in p.items() if k != "title"}
                  for name, p in schema.get("properties", {}).items()}
    return {k: v for k, v in schema.items() if k != "title"} | {"properties": properties}


def _types(schema: dict) -> list[str]:
    """The JSON types a property schema allows ($ref: an object or, for a Literal, a string)."""
    if "type" in schema:
        return schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if "enum" in schema or "const" in schema:
        return sorted({type(v).__name__.replace("str", "string").replace("NoneType", "null") for v in
                       schema.get("enum", [schema.get("const")])})
    if "$ref" in schema:
        return ["object"]
    types = [t for branch in schema.get("anyOf", []) + schema.get("oneOf", []) for t in _types(branch)]
    return list(dict.fromkeys(types))


def compact_output_schema(schema: dict) -> dict:
    """The output schema cut to its required top-level fields and their JSON types (no nested definitions,
    descriptions or optional fields): the structured content still validates against it; the full schema of
    every result is the ropelime://schemas resource."""
    required = schema.get("required", [])
    properties = {}
    for name in required:
        types = _types(schema["properties"][name]) or ["object"]
        properties[name] = {"type": types[0] if len(types) == 1 else types}
    return {"type": "object", "properties": properties, "required": required}


def build_server(options: EngineOptions | None = None) -> MCPServer:
    """The MCP server; it answers at once and loads the surrogate once, in the background (its lifespan)."""
    options = options or EngineOptions.from_env()
    mcp = RopeLimeServer("ropelime", title="RoPE-LIME", version=version("ropelime"), instructions=INSTRUCTIONS,
                    lifespan=lifespan_for(options))

    @tool(mcp, title="Explain a response", annotations=ToolAnnotations(
        read_only_hint=True, idempotent_hint=True, open_world_hint=True))
    @with_method_parameters(EXPLAIN_OPTIONS, after="continue_from", narrowed=TOOL_NARROWED, defaults=TOOL_DEFAULTS)
    async def explain_response(
        ctx: Context,
        prompt: Annotated[str | None, Field(description="the prompt (question, context) whose answer to explain, exactly "
                                                        "as given to the model; required unless continue_from is given")] = None,
        response: ResponseArg = None,
        model: ModelArg = None,
        system: SystemArg = None,
        explain: ExplainArg = None,
        continue_from: Annotated[str | None, Field(description="explanation_id of an INCOMPLETE explanation to resume "
                                                               "from its cached scores (only time_budget_s, verify and "
                                                               "refine are read besides)")] = None,
        **method,
    ) -> Annotated[CallToolResult, Explanation]:
        """Attribute an answer to the parts of its prompt (words, sentences or paragraphs).

        Returns the top features with scores (positive = the answer rests on it) and 95% intervals,
        and the full explanation as structured content. Without a response, asks `model` once.
        Stops after time_budget_s and returns a partial result marked INCOMPLETE with its
        explanation_id; call again with continue_from (or the same arguments) to resume.
        """
        started = time.perf_counter()
        with tool_errors():
            engine = engine_of(ctx)
            previous = engine.store.load(continue_from) if continue_from else None
            verify, refine = method.pop("verify"), method.pop("refine")
            if previous is None and prompt is None:
                raise InputError("give the prompt (or continue_from with the explanation_id of an incomplete explanation).")
            if previous is not None:
                model = (model or previous.closed_model) if verify or refine else None
            else:
                config = ExplainConfig(**explicit(method, GIVEN_ARGUMENTS.get()))
                model = model or (None if response is not None else engine.default_model)

            def job(progress, should_stop) -> Explanation:
                run = dict(model=model, surrogate=engine.surrogate, cache=engine.cache, progress=progress,
                           should_stop=should_stop, api_base=engine.api_base, closed_timeout=engine.closed_timeout,
                           verify=verify, refine=refine, started=started)
                if previous is not None:
                    return ropelime.resume(previous, time_budget_s=method["time_budget_s"], **run)
                return ropelime.explain(prompt, response, system=system, explain=explain, config=config, **run)

            check_request(verify, model)  # before queueing for the engine
            check_refine(refine, model)
            result = await run_job(ctx, job, started=started, time_budget_s=method["time_budget_s"])
            engine.store.save(result)
        return _result(explanation_text(result), result.model_dump(mode="json"))

    @tool(mcp, title="Top features", annotations=ToolAnnotations(
        read_only_hint=True, idempotent_hint=True, open_world_hint=False))
    async def top_features(
        ctx: Context,
        explanation_id: Annotated[str, Field(description="the explanation_id returned by explain_response")],
        k: Annotated[int, Field(ge=1, le=1000, description="how many features to return")] = 5,
        direction: Annotated[Direction, Field(description="supporting (highest scores), opposing (lowest; under "
                                                          "kl/js the highest among features whose removal makes the "
                                                          "answer more likely), or both (largest |score|)")] = "supporting",
        output_span: Annotated[str | None, Field(description="a part of the response, copied exactly: attribute only "
                                                             "that part of the answer, from the cached scores "
                                                             "(no new surrogate pass)")] = None,
    ) -> Annotated[CallToolResult, TopFeatures]:
        """The k features that most support (or oppose) an explained answer, with text, span, score and interval.

        With output_span, re-fits on the stored per-token scores to attribute only that part of the
        answer, e.g. one claim; no closed-model call and no new surrogate pass.
        """
        with tool_errors():
            engine = engine_of(ctx)
            explanation = engine.store.load(explanation_id)
            if output_span is not None:
                explanation = await run_job(ctx, lambda _progress, _stop: ropelime.refit(
                    explanation, output_span, surrogate=engine.surrogate, cache=engine.cache))
                engine.store.save(explanation)
            top = TopFeatures(explanation_id=explanation.id, source_explanation_id=explanation_id, direction=direction,
                              output_span=output_span, response=explanation.response,
                              complete=explanation.diagnostics.complete, features=explanation.top(k, direction),
                              scored_features=len(explanation.features) - explanation.diagnostics.unscored_features,
                              features_total=len(explanation.features), settled=settled_line(explanation, k if direction == "supporting" else 0))
        return _result(top_text(top), top.model_dump(mode="json"))

    @tool(mcp, title="Verify an explanation", annotations=ToolAnnotations(
        read_only_hint=True, idempotent_hint=True, open_world_hint=True))
    async def verify_explanation(
        ctx: Context,
        explanation_id: Annotated[str, Field(description="the explanation_id returned by explain_response")],
        k: Annotated[int, Field(ge=1, le=20, description="how many of the top supporting features to check")] = 3,
        model: Annotated[str | None, Field(description="litellm model string to ask (default: the model that gave "
                                                       "the explained response; required when it was given)")] = None,
        time_budget_s: TimeBudgetArg = DEFAULT_TIME_BUDGET_S,
    ) -> Annotated[CallToolResult, Explanation]:
        """Check whether the closed model's own answer rests on an explanation's top features.

        Asks the model again (temperature 0) without each of the top k supporting features, plus
        one control call without k random others; no surrogate pass. Verdicts: confirmed (its
        removal changed the answer more than the control's), not_confirmed, inconclusive (the
        control alone changed it), unverified (a fault or the time budget; call again: answers
        are cached).
        """
        started = time.perf_counter()
        with tool_errors():
            engine = engine_of(ctx)
            explanation = engine.store.load(explanation_id)
            check_request(k, model or explanation.closed_model)
            deadline = None if time_budget_s is None else started + time_budget_s

            def job(_progress, should_stop) -> Explanation:
                return ropelime.verify(explanation, k, model=model, api_base=engine.api_base,
                                       timeout=engine.closed_timeout, deadline=deadline, should_stop=should_stop)

            result = await run_job(ctx, job, needs_surrogate=False)
            engine.store.save(result)
        return _result(explanation_text(result), result.model_dump(mode="json"))

    @tool(mcp, title="Compare samplers", annotations=ToolAnnotations(
        read_only_hint=True, idempotent_hint=True, open_world_hint=True))
    @with_method_parameters(("granularity",), after="explain", narrowed=TOOL_NARROWED,
                            described=lambda name: f"as explain_response's {name}")
    @with_method_parameters(COMPARE_OPTIONS, after="seeds", described=lambda name: f"as explain_response's {name}")
    @with_method_parameters(("time_budget_s",), after="seeds", defaults=TOOL_DEFAULTS)
    async def compare_samplers(
        ctx: Context,
        prompt: PromptArg,
        response: Annotated[str | None, Field(description="as explain_response's response")] = None,
        model: Annotated[str | None, Field(description="as explain_response's model")] = None,
        system: Annotated[str | None, Field(description="as explain_response's system")] = None,
        explain: Annotated[str | None, Field(description="as explain_response's explain")] = None,
        samplers: Annotated[list[Sampler], Field(min_length=1, description="samplers to compare")] = list(DEFAULT_SAMPLERS),
        budgets: Annotated[list[Annotated[int, Field(ge=1, le=100_000)]], Field(
            min_length=1, description="budgets (perturbed prompts) to compare each sampler at")] = list(DEFAULT_BUDGETS),
        seeds: Annotated[list[int], Field(min_length=1, description="seeds per sampler and budget; two or more "
                                                                    "measure stability")] = list(DEFAULT_SEEDS),
        **method,
    ) -> Annotated[CallToolResult, Comparison]:
        """Compare samplers at equal budgets on one prompt and answer.

        Per sampler and budget: faithfulness (LDS on shared held-out masks, top-k removal drop vs
        random-k), stability across seeds, agreement between samplers, cost. One closed-model call
        at most; calling again after an INCOMPLETE result continues. Includes a PNG plot.
        """
        started = time.perf_counter()
        with tool_errors():
            engine = engine_of(ctx)
            model = model or (None if response is not None else engine.default_model)

            def job(progress, should_stop) -> Comparison:
                return compare_grid(prompt, response, model=model, system=system, explain=explain,
                                    samplers=samplers, budgets=budgets, seeds=seeds, surrogate=engine.surrogate,
                                    cache=engine.cache, progress=progress, should_stop=should_stop,
                                    api_base=engine.api_base, closed_timeout=engine.closed_timeout, store=engine.store,
                                    started=started, **method)

            comparison = await run_job(ctx, job, started=started, time_budget_s=method["time_budget_s"])
            plot = []
            if comparison.results:
                png = plot_faithfulness(comparison)
                plot.append(ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"))
        return _result(comparison_text(comparison), comparison.model_dump(mode="json"), *plot)

    @mcp.resource("explanation://{explanation_id}", name="explanation", title="Explanation (JSON)",
                  description="A stored explanation: features with spans, scores and intervals, method, cost",
                  mime_type="application/json")
    def explanation_json(explanation_id: str, ctx: Context) -> str:
        return _load(ctx, explanation_id).model_dump_json(indent=1)

    @mcp.resource("explanation://{explanation_id}/html", name="explanation-heatmap", title="Explanation heat map",
                  description="A self-contained HTML page: the prompt coloured by support, top features, method",
                  mime_type="text/html")
    def explanation_html(explanation_id: str, ctx: Context) -> str:
        return to_html(_load(ctx, explanation_id))

    @mcp.resource("ropelime://options", name="options", title="RoPE-LIME options",
                  description="Granularities, samplers, targets, kernels, perturbations and the defaults",
                  mime_type="application/json")
    def options_resource() -> str:
        return json.dumps(options_document(options), indent=1)

    @mcp.resource("ropelime://schemas", name="schemas", title="RoPE-LIME result schemas",
                  description="The full JSON schema of each tool's structured result (tools/list gives a compact one)",
                  mime_type="application/json")
    def schemas_resource() -> str:
        return json.dumps({"explain_response": Explanation.model_json_schema(),
                           "verify_explanation": Explanation.model_json_schema(),
                           "top_features": TopFeatures.model_json_schema(),
                           "compare_samplers": Comparison.model_json_schema()})

    for prompt in load_prompts():
        mcp.add_prompt(prompt)
    return mcp


def _load(ctx: Context, explanation_id: str) -> Explanation:
    try:
        return engine_of(ctx).store.load(explanation_id)
    except InputError as error:
        raise ResourceNotFoundError(str(error)) from None
