"""Closed-model calls through the server: litellm against an OpenAI-compatible server on 127.0.0.1
that counts its requests. One per explanation with a model, none with a given response, none for
top_features, one in total for a comparison."""

from __future__ import annotations

import pytest
from mcp import Client

from ropelime.compare import Comparison
from ropelime.schema import Explanation
from ropelime_server.app import build_server
from ropelime_server.engine import EngineOptions
from tests.openai_stub import OpenAIStub

pytestmark = pytest.mark.anyio

CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
MODEL = "openai/stub-model"



@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with OpenAIStub(reply="Paris is the capital.") as running:
        yield running


@pytest.fixture
def server(tiny_model_dir, stub):
    return build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu", api_base=stub.base_url))


async def test_closed_model_calls_per_tool(server, stub):
    args = {"prompt": PROMPT, "explain": CONTEXT, "budget": 4}
    async with Client(server) as client:
        given = await client.call_tool("explain_response", {**args, "response": "Paris."})
        assert not given.is_error and stub.requests == 0

        asked = await client.call_tool("explain_response", {**args, "model": MODEL})
        assert not asked.is_error, asked.content[0].text
        assert stub.requests == 1
        explanation = Explanation.model_validate(asked.structured_content)
        assert explanation.response == "Paris is the capital." and explanation.closed_model == MODEL
        assert explanation.response_source == "closed_model" and explanation.cost.closed_model_calls == 1
        assert f"from {MODEL}" in asked.content[0].text

        await client.call_tool("top_features", {"explanation_id": explanation.id})
        await client.call_tool("top_features", {"explanation_id": explanation.id, "output_span": "Paris"})
        assert stub.requests == 1

        other = await client.call_tool("explain_response", {**args, "model": MODEL, "prompt": PROMPT + " Why?",
                                                            "explain": None})
        assert not other.is_error and stub.requests == 2  # a new explanation: one more call

        compared = await client.call_tool("compare_samplers", {
            "prompt": PROMPT + " Briefly.", "explain": CONTEXT, "model": MODEL, "samplers": ["loo", "sparse_k"],
            "budgets": [2, 4], "seeds": [0, 1]})
        assert not compared.is_error, compared.content[0].text
        assert stub.requests == 3  # one for the whole comparison
        assert Comparison.model_validate(compared.structured_content).closed_model_calls == 1


async def test_the_configured_default_model_is_used_when_no_response_is_given(tiny_model_dir, stub):
    server = build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu", api_base=stub.base_url,
                                        default_model=MODEL))
    async with Client(server) as client:
        result = await client.call_tool("explain_response", {"prompt": PROMPT, "explain": CONTEXT, "budget": 4})
    assert not result.is_error and stub.requests == 1
    assert Explanation.model_validate(result.structured_content).closed_model == MODEL


async def test_closed_model_failures_reach_the_model_without_the_key(tiny_model_dir, stub):
    with OpenAIStub(api_key="sk-the-key-the-server-expects") as strict:  # answers 401, echoing the key it got
        server = build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu", api_base=strict.base_url))
        async with Client(server) as client:
            result = await client.call_tool("explain_response", {"prompt": PROMPT, "model": MODEL})
        assert strict.requests == 1
    text = result.content[0].text
    assert result.is_error and "credentials" in text and "sk-test-not-a-real-key" not in text


async def test_refine_through_the_server_measures_on_the_closed_model(tiny_model_dir, stub):
    """The stub answers "Paris is the capital." only while the Paris sentence is there (no log-probabilities):
    refine=3 measures every sentence by answer similarity and puts the Paris sentence first."""
    def reply(messages):
        return "Paris is the capital." if "Paris is the capital of France." in messages[-1]["content"] else "Unknown."

    stub.reply = reply
    server = build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu", api_base=stub.base_url))
    async with Client(server) as client:
        result = await client.call_tool("explain_response", {"prompt": PROMPT, "explain": CONTEXT, "budget": 6,
                                                             "model": MODEL, "refine": 3})
        assert not result.is_error, result.content[0].text
        explanation = Explanation.model_validate(result.structured_content)
        assert explanation.refinement.signal == "similarity" and stub.requests == 1 + 3
        top = explanation.top(1)[0]
        assert top.evidence == "measured" and top.text.startswith("Paris") and top.closed_effect == 1.0
        assert "refined with openai/stub-model" in result.content[0].text
        assert explanation.cost.closed_model_calls == 4
        refused = await client.call_tool("explain_response", {"prompt": PROMPT, "response": "Paris.", "refine": 2})
        assert refused.is_error and "refinement asks the closed model again" in refused.content[0].text
