"""Verification through the MCP tools, the CLI and the rendered views, against the same local
OpenAI-compatible server (tests/test_verify.py): its answer is "Paris." only while the prompt holds
the key sentence. The tiny surrogate's ranking decides how many features qualify (k), so the
assertions count 1 + k + 1 calls for whatever it ranks."""

from __future__ import annotations

import json
import re

import pytest
from mcp import Client
from rich.console import Console

from ropelime.cli import main
from ropelime.render import print_explanation, to_html
from ropelime.schema import Explanation
from ropelime.store import ExplanationStore
from ropelime_server.app import build_server
from ropelime_server.engine import EngineOptions
from tests.openai_stub import OpenAIStub
from tests.test_verify import CONTEXT, KEY_FIRST, MODEL, PROMPT, SYSTEM, planted, reply

ARGS = {"prompt": PROMPT, "explain": CONTEXT, "system": SYSTEM, "budget": 24}


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with OpenAIStub(reply=reply) as running:
        yield running


@pytest.fixture
def server(tiny_model_dir, stub):
    return build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu", api_base=stub.base_url))


def verdict_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"feature \d+: (confirmed|not_confirmed|inconclusive)", line)]


@pytest.mark.anyio
async def test_mcp_explain_response_with_verify_then_verify_explanation_by_id(server, stub):
    async with Client(server) as client:
        refused = await client.call_tool("explain_response", {**ARGS, "response": "Paris.", "verify": 2})
        assert refused.is_error and "pass model" in refused.content[0].text and stub.requests == 0

        asked = await client.call_tool("explain_response", {**ARGS, "model": MODEL, "verify": 3})
        assert not asked.is_error, asked.content[0].text
        explanation = Explanation.model_validate(asked.structured_content)
        v = explanation.verification
        k = len(v.checks)
        assert 1 <= k <= 3 and stub.requests == 1 + k + 1 and explanation.cost.closed_model_calls == 1 + k + 1
        text = asked.content[0].text
        assert f"verified with {MODEL}: {k} feature(s) and 1 control; {k + 1} closed-model call(s)" in text
        assert len(verdict_lines(text)) == k

        repeat = await client.call_tool("explain_response", {**ARGS, "model": MODEL, "verify": 3})
        again = Explanation.model_validate(repeat.structured_content)
        assert stub.requests == 1 + k + 1 and again.cost.closed_model_calls == 0
        assert [c.verdict for c in again.verification.checks] == [c.verdict for c in v.checks]

        given = Explanation.model_validate((await client.call_tool(
            "explain_response", {**ARGS, "response": "Paris.", "budget": 12})).structured_content)
        assert given.verification is None and stub.requests == 1 + k + 1
        no_model = await client.call_tool("verify_explanation", {"explanation_id": given.id})
        assert no_model.is_error and "pass model" in no_model.content[0].text
        unknown = await client.call_tool("verify_explanation", {"explanation_id": "0123abcd", "model": MODEL})
        assert unknown.is_error and "no explanation with id" in unknown.content[0].text

        before = stub.requests
        verified = await client.call_tool("verify_explanation", {"explanation_id": given.id, "k": 1, "model": MODEL})
        assert not verified.is_error, verified.content[0].text
        result = Explanation.model_validate(verified.structured_content)
        assert result.id == given.id and result.features == given.features  # no re-scoring
        assert len(result.verification.checks) == 1 and result.verification.checks[0].feature == given.top(1)[0].index
        assert stub.requests - before == result.verification.closed_model_calls <= 2  # control + feature (original cached)
        stored = Explanation.model_validate_json(
            (await client.read_resource(f"explanation://{given.id}")).contents[0].text)
        assert stored.verification == result.verification
        page = (await client.read_resource(f"explanation://{given.id}/html")).contents[0].text
        assert "Verified with the closed model" in page and result.verification.checks[0].verdict in page


def test_cli_explain_verify_then_ropelime_verify_by_id(tiny_model_dir, stub, capsys):
    common = ["--surrogate", str(tiny_model_dir), "--device", "cpu"]
    assert main(["explain", "--prompt", PROMPT, "--explain", CONTEXT, "--response", "Paris.", "--verify", "2",
                 *common]) == 2
    assert "pass model" in capsys.readouterr().err and stub.requests == 0

    assert main(["explain", "--prompt", PROMPT, "--explain", CONTEXT, "--system", SYSTEM, "--model", MODEL,
                 "--api-base", stub.base_url, "--budget", "24", "--verify", "3", "--json", *common]) == 0
    data = json.loads(capsys.readouterr().out)
    k = len(data["verification"]["checks"])
    assert stub.requests == 1 + k + 1 and data["cost"]["closed_model_calls"] == 1 + k + 1

    assert main(["explain", "--prompt", PROMPT, "--explain", CONTEXT, "--response", "Paris.", "--budget", "12",
                 *common]) == 0
    captured = capsys.readouterr()
    explanation_id = re.search(r"explanation_id (\w+) stored; check its top features", captured.err).group(1)
    assert main(["verify", explanation_id, "--k", "1"]) == 2
    assert "pass model" in capsys.readouterr().err
    assert main(["verify", explanation_id, "--k", "1", "--model", MODEL, "--api-base", stub.base_url]) == 0
    out = capsys.readouterr().out
    assert "closed model" in out and f"verified with {MODEL}: 1 feature(s) and 1 control" in out
    stored = ExplanationStore().load(explanation_id)
    check = stored.verification.checks[0]
    assert f"feature {check.feature}: {check.verdict}" in out and stored.cost.closed_model_calls >= 1
    assert main(["verify", "0123abcd", "--model", MODEL]) == 2
    unknown = capsys.readouterr().err
    assert "no explanation '0123abcd' is stored" in unknown and "ropelime explain" in unknown


def test_terminal_and_html_show_the_verdicts(tiny_surrogate, stub):
    import ropelime

    verified = ropelime.verify(planted(tiny_surrogate, KEY_FIRST), 3, model=MODEL, api_base=stub.base_url)
    console = Console(record=True, width=160)
    print_explanation(verified, console)
    text = console.export_text()
    key_row = next(line for line in text.splitlines() if re.match(r"│ +1 │ Paris is the capital of France\.", line))
    assert key_row.rstrip(" │").endswith("confirmed") and "not confirmed" in text
    assert "control (features" in text
    page = to_html(verified)
    assert "<th>closed model</th>" in page and "<td>confirmed</td>" in page and "<td>not confirmed</td>" in page
    plain = to_html(planted(tiny_surrogate, KEY_FIRST))
    assert "closed model</th>" not in plain and "Verified with the closed model" not in plain


@pytest.mark.anyio
async def test_mcp_partial_explanation_is_verified_when_continued(server, stub):
    async with Client(server) as client:
        warm = await client.call_tool("explain_response", {**ARGS, "response": "Paris.", "budget": 2,
                                                           "sampler": "sparse_k"})
        assert not warm.is_error  # the surrogate has loaded (on 2 masks the call below has not cached)
        partial = await client.call_tool("explain_response", {**ARGS, "model": MODEL, "verify": 2,
                                                              "time_budget_s": 1e-6})
        first = Explanation.model_validate(partial.structured_content)
        assert not first.diagnostics.complete and first.verification is None and stub.requests == 1
        assert "waits for the complete explanation" in partial.content[0].text
        resumed = await client.call_tool("explain_response", {"continue_from": first.id, "verify": 2,
                                                              "time_budget_s": None})
        assert not resumed.is_error, resumed.content[0].text
        done = Explanation.model_validate(resumed.structured_content)
    k = len(done.verification.checks)
    assert done.diagnostics.complete and done.closed_model == MODEL and done.verification.model == MODEL
    assert k >= 1 and stub.requests == 1 + k + 1
