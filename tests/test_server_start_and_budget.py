"""What a host sees: the server answers before its surrogate has loaded, and a call returns within its
time budget (plus a stated margin) counted from the call's start, through the SDK's client.

The wall-clock bounds here are behavioural limits with a generous margin (a busy machine must not
fail them), not performance measurements.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time

import anyio
import pytest
from mcp import Client

from ropelime.compare import Comparison
from ropelime.schema import Explanation
from ropelime_server.app import build_server
from ropelime_server.engine import EngineOptions

pytestmark = pytest.mark.anyio

CONTEXT = " ".join(["The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge was designed by Mara."] * 4)
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
RESPONSE = "Paris is the capital of France."
ARGS = {"prompt": PROMPT, "response": RESPONSE, "explain": CONTEXT}

BUDGET_S = 2.0
MARGIN_S = 5.0
"""The stated promise is time_budget_s plus a few seconds; the test allows this much on a busy machine."""


@pytest.fixture
def server(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ROPELIME_DTYPE", "float32")
    return build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu"))


async def test_the_server_answers_while_the_surrogate_loads(tiny_model_dir, monkeypatch):
    explain_module = importlib.import_module("ropelime.explain")
    release, real_load = threading.Event(), explain_module.load_surrogate

    def slow_load(*args, **kwargs):
        release.wait(120)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(explain_module, "load_surrogate", slow_load)
    server = build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu"))
    messages: list[str] = []

    async def on_progress(done, total, message):
        messages.append(message or "")

    async with Client(server) as client:
        assert "explain_response" in {t.name for t in (await client.list_tools()).tools}  # the model is still loading
        early = await client.call_tool("explain_response", {**ARGS, "budget": 4, "time_budget_s": 0.5},
                                       progress_callback=on_progress)
        assert early.is_error and "still loading" in early.content[0].text and "call again" in early.content[0].text
        assert any("loading the surrogate" in m for m in messages)
        release.set()
        with anyio.fail_after(120):
            later = await client.call_tool("explain_response", {**ARGS, "budget": 4})
    assert not later.is_error, later.content[0].text


async def test_explain_response_returns_within_its_time_budget(server):
    async with Client(server) as client:
        await client.list_tools()
        started = time.perf_counter()
        result = await client.call_tool("explain_response", {**ARGS, "granularity": "word", "budget": 2_000,
                                                             "time_budget_s": BUDGET_S})
        took = time.perf_counter() - started
    assert not result.is_error, result.content[0].text
    explanation = Explanation.model_validate(result.structured_content)
    assert took <= BUDGET_S + MARGIN_S, took
    assert not explanation.diagnostics.complete and explanation.diagnostics.samples >= 1
    assert explanation.cost.seconds <= BUDGET_S + MARGIN_S


async def test_compare_samplers_returns_within_its_time_budget_and_counts_its_passes(server):
    async with Client(server) as client:
        await client.list_tools()
        started = time.perf_counter()
        result = await client.call_tool("compare_samplers", {**ARGS, "granularity": "word",
                                                             "budgets": [1_000, 2_000], "seeds": [0],
                                                             "time_budget_s": BUDGET_S})
        took = time.perf_counter() - started
    assert not result.is_error, result.content[0].text
    comparison = Comparison.model_validate(result.structured_content)
    assert took <= BUDGET_S + MARGIN_S, took
    assert not comparison.complete and comparison.runs_planned == 6 and len(comparison.runs) < 6
    assert comparison.surrogate_passes > sum(r.surrogate_passes for r in comparison.runs)  # the unfinished run's too
    assert f"{len(comparison.runs)} of 6 runs" in result.content[0].text


def test_building_the_server_does_not_import_torch(tiny_model_dir):
    """What `initialize` and `tools/list` need loads without torch; the surrogate comes in the background."""
    import subprocess

    code = ("import sys; from ropelime_server.app import build_server; from ropelime_server.engine import EngineOptions; "
            f"build_server(EngineOptions(surrogate={str(tiny_model_dir)!r})); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
