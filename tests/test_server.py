"""The MCP server in process, through the SDK's client in both protocol eras ("auto" = modern
per-request dispatch, "legacy" = initialize handshake over JSON-RPC streams), on the tiny model."""

from __future__ import annotations

import base64

import anyio
import pytest
from mcp import Client

import ropelime
from ropelime.cache import ScoreCache
from ropelime.compare import Comparison
from ropelime.schema import Explanation
from ropelime_server.app import build_server
from ropelime_server.engine import EngineOptions
from ropelime_server.results import TopFeatures

pytestmark = pytest.mark.anyio

CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge was designed by Mara."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
RESPONSE = "Paris is the capital of France."
ARGS = {"prompt": PROMPT, "response": RESPONSE, "explain": CONTEXT, "budget": 8}



@pytest.fixture(params=["auto", "legacy"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def server(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ROPELIME_DTYPE", "float32")  # as the tiny_surrogate fixture, which results are compared with
    return build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu"))


async def explain(client: Client, **args) -> tuple[str, Explanation]:
    result = await client.call_tool("explain_response", {**ARGS, **args})
    assert not result.is_error, result.content[0].text
    return result.content[0].text, Explanation.model_validate(result.structured_content)


async def test_four_read_only_tools_with_output_schemas(server, mode):
    async with Client(server, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"explain_response", "top_features", "compare_samplers", "verify_explanation"}
    for tool in tools.values():
        assert tool.annotations.read_only_hint is True
        assert tool.output_schema and tool.output_schema["type"] == "object"
        assert tool.description and all(p.get("description") for p in tool.input_schema["properties"].values())
        assert "\n    " not in tool.description  # dedented docstring
    assert "segments" not in str(tools["explain_response"].input_schema["properties"]["granularity"])
    assert tools["explain_response"].annotations.open_world_hint is True
    assert tools["compare_samplers"].annotations.open_world_hint is True
    assert tools["top_features"].annotations.open_world_hint is False
    assert tools["verify_explanation"].annotations.open_world_hint is True
    assert {"features", "diagnostics", "cost"} <= set(tools["explain_response"].output_schema["properties"])
    explain_args = set(tools["explain_response"].input_schema["properties"])
    assert {"prompt", "response", "model", "system", "explain", "granularity", "budget", "sampler", "target",
            "kernel", "perturb", "seed", "time_budget_s", "continue_from", "verify", "refine", "method",
            "solver", "prior_weight"} <= explain_args
    assert tools["explain_response"].input_schema["properties"]["time_budget_s"]["default"] == 40


async def test_explain_response_returns_short_text_and_the_full_explanation(server, mode):
    progress = []

    async def on_progress(done, total, message):
        progress.append((done, total))

    async with Client(server, mode=mode) as client:
        result = await client.call_tool("explain_response", {**ARGS, "granularity": "word", "budget": 40},
                                        progress_callback=on_progress)
    assert not result.is_error
    explanation = Explanation.model_validate(result.structured_content)
    assert explanation.diagnostics.complete and explanation.response == RESPONSE
    assert len(explanation.features) == len(CONTEXT.split())
    for f in explanation.features:
        assert PROMPT[f.start:f.end] == f.text and f.ci_low <= f.score <= f.ci_high
    text = result.content[0].text
    assert explanation.id in text and "complete" in text and RESPONSE in text
    assert explanation.top(1)[0].text.strip() in text
    assert len(text) < 2000
    scoring = [(done, total) for done, total in progress if total is not None]  # None: waiting for the model
    assert scoring[-1] == (41, 41) and len(scoring) >= 3  # scored step by step, reported as it went
    assert all(total == 41 for _, total in scoring)
    assert [done for done, _ in scoring] == sorted(done for done, _ in scoring)


async def test_a_partial_explanation_continues_from_its_cached_scores(server, mode):
    async with Client(server, mode=mode) as client:
        await explain(client, budget=2)  # the surrogate has loaded: the tiny budget below goes to scoring
        text, partial = await explain(client, granularity="word", budget=40, time_budget_s=0.001)
        assert not partial.diagnostics.complete and "INCOMPLETE" in text and f"continue_from={partial.id!r}" in text
        text, resumed = await explain(client, prompt=None, response=None, continue_from=partial.id, time_budget_s=None)
    assert resumed.diagnostics.complete and resumed.id == partial.id
    assert resumed.cost.cached_samples >= partial.diagnostics.samples
    assert resumed.config.granularity == "word" and resumed.config.budget == 40


async def test_same_arguments_again_cost_no_surrogate_pass(server, mode):
    async with Client(server, mode=mode) as client:
        _, first = await explain(client)
        _, again = await explain(client)
    assert again.id == first.id and again.cost.surrogate_forward_passes == 0


async def test_top_features_by_direction_and_for_a_part_of_the_response(server, mode):
    async with Client(server, mode=mode) as client:
        _, explanation = await explain(client)
        both = await client.call_tool("top_features", {"explanation_id": explanation.id, "k": 2, "direction": "both"})
        part = await client.call_tool("top_features", {"explanation_id": explanation.id, "k": 3, "output_span": "Paris"})
        refit = await client.read_resource(f"explanation://{part.structured_content['explanation_id']}")
    top = TopFeatures.model_validate(both.structured_content)
    assert [f.index for f in top.features] == [f.index for f in explanation.top(2, "both")]
    assert top.features[0].text.strip() in both.content[0].text
    spanned = TopFeatures.model_validate(part.structured_content)
    assert spanned.output_span == "Paris" and spanned.source_explanation_id == explanation.id
    assert spanned.explanation_id != explanation.id and len(spanned.features) == 3
    refitted = Explanation.model_validate_json(refit.contents[0].text)
    assert refitted.output_span == "Paris" and refitted.cost.surrogate_forward_passes == 0
    n = len(explanation.features)  # how many are scored, and whether the top could still change, in words
    assert spanned.features_total == spanned.scored_features == n and f"{n} of {n} features scored" in spanned.settled
    assert spanned.settled in part.content[0].text and ("settled" in spanned.settled or "could still" in spanned.settled)


async def test_failures_reach_the_model_as_clear_text(server, mode):
    async with Client(server, mode=mode) as client:
        _, explanation = await explain(client)
        calls = {
            "not a substring": ("top_features", {"explanation_id": explanation.id, "output_span": "Lyon"}),
            "run explain_response first": ("top_features", {"explanation_id": "0123abcd"}),
            "response to explain, or a model": ("explain_response", {"prompt": PROMPT}),
            "prompt is empty": ("explain_response", {"prompt": "  ", "response": RESPONSE}),
            "give the prompt": ("explain_response", {"response": RESPONSE}),
            "at least two features": ("compare_samplers", {"prompt": "Paris?", "response": "Paris."}),
        }
        for expected, (tool, args) in calls.items():
            result = await client.call_tool(tool, args)
            assert result.is_error and expected in result.content[0].text, (expected, result.content[0].text)
        invalid = await client.call_tool("explain_response", {**ARGS, "sampler": "magic"})
    assert invalid.is_error and "sampler" in invalid.content[0].text


async def test_compare_samplers_returns_the_table_and_a_plot(server, mode):
    async with Client(server, mode=mode) as client:
        result = await client.call_tool("compare_samplers", {**ARGS, "samplers": ["loo", "sparse_k"],
                                                             "budgets": [4, 8], "seeds": [0]})
        assert not result.is_error, result.content[0].text
        comparison = Comparison.model_validate(result.structured_content)
        stored = await client.read_resource(f"explanation://{comparison.runs[0].explanation_id}")
    assert comparison.complete and len(comparison.runs) == 4
    text, image = result.content
    assert "loo 4:" in text.text and "sparse_k 8:" in text.text
    assert image.type == "image" and image.mime_type == "image/png"
    assert base64.b64decode(image.data).startswith(b"\x89PNG")
    assert Explanation.model_validate_json(stored.contents[0].text).id == comparison.runs[0].explanation_id


async def test_resources_serve_json_html_and_options(server, mode):
    async with Client(server, mode=mode) as client:
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        static = {str(r.uri) for r in (await client.list_resources()).resources}
        _, explanation = await explain(client)
        as_json = (await client.read_resource(f"explanation://{explanation.id}")).contents[0]
        as_html = (await client.read_resource(f"explanation://{explanation.id}/html")).contents[0]
        options = (await client.read_resource("ropelime://options")).contents[0]
        with pytest.raises(Exception, match="run explain_response first"):
            await client.read_resource("explanation://0123abcd")
    assert templates == {"explanation://{explanation_id}", "explanation://{explanation_id}/html"}
    assert static == {"ropelime://options", "ropelime://schemas"}
    assert as_json.mime_type == "application/json" and Explanation.model_validate_json(as_json.text) == explanation
    assert as_html.mime_type == "text/html" and as_html.text.startswith("<!DOCTYPE html>")
    assert explanation.features[0].text in as_html.text
    assert options.mime_type == "application/json" and '"sparse_k"' in options.text and '"rwmd_rope"' in options.text


async def test_prompts_come_from_the_prompt_files(server, mode):
    async with Client(server, mode=mode) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        audit = await client.get_prompt("self_audit", {"answer": "The capital is Paris."})
        explain_answer = await client.get_prompt("explain_answer", {"prompt": PROMPT})
        compare = await client.get_prompt("compare_methods", {"prompt": PROMPT, "budgets": "8, 16"})
    assert set(prompts) == {"self_audit", "explain_answer", "compare_methods"}
    assert all(p.description and p.title for p in prompts.values())
    assert {a.name: a.required for a in prompts["explain_answer"].arguments} == {
        "prompt": True, "response": False, "granularity": False}
    audit_text = audit.messages[0].content.text
    assert "The capital is Paris." in audit_text and "top_features" in audit_text and "output_span" in audit_text
    assert PROMPT in explain_answer.messages[0].content.text
    assert "8, 16" in compare.messages[0].content.text and "compare_samplers" in compare.messages[0].content.text


async def test_a_cancelled_call_stops_and_frees_the_engine(server, mode):
    started = anyio.Event()

    async def on_progress(done, total, message):
        if done > 0:
            started.set()

    async with Client(server, mode=mode) as client:
        async with anyio.create_task_group() as tg:
            async def long_call():
                await client.call_tool("explain_response", {**ARGS, "granularity": "word", "budget": 4000,
                                                            "time_budget_s": None}, progress_callback=on_progress)

            tg.start_soon(long_call)
            with anyio.fail_after(120):
                await started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(120):  # the engine is free again: the worker stopped at its next batch
            _, after = await explain(client)
        _, resumed = await explain(client, granularity="word", budget=4000, time_budget_s=0.001)
    assert after.diagnostics.complete
    assert 0 < resumed.cost.cached_samples < 4001  # the cancelled call's scores were kept


async def test_concurrent_calls_queue_on_the_one_model(server, mode, tiny_surrogate, tmp_path):
    results: dict[int, Explanation] = {}
    async with Client(server, mode=mode) as client:
        async def call(seed: int) -> None:
            results[seed] = (await explain(client, seed=seed))[1]

        async with anyio.create_task_group() as tg:
            for seed in range(3):
                tg.start_soon(call, seed)
    cache = ScoreCache(tmp_path / "alone.sqlite")
    for seed in range(3):  # each equals the same explanation computed alone
        alone = ropelime.explain(PROMPT, RESPONSE, explain=CONTEXT, budget=8, seed=seed, surrogate=tiny_surrogate,
                                 cache=cache)
        assert results[seed].id == alone.id
        assert [f.score for f in results[seed].features] == pytest.approx([f.score for f in alone.features], abs=1e-6)
    cache.close()
