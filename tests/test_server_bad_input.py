"""Bad input through the MCP server: each case comes back as a tool error whose text says what to do,
and the server keeps working (a good call after all of them succeeds). Startup failures go through
the `ropelime-mcp` entry point: a non-zero exit and a one-line message on stderr.

Cases tried (in-process client, tiny RoPE model):
- empty prompt; whitespace-only prompt; empty response; whitespace-only response
- `explain` not a substring of the prompt; `explain` with no splittable feature (whitespace only)
- granularity "segments" (not offered by the tools: they have no way to give the spans)
- more features than ROPELIME_MAX_FEATURES; a prompt over ROPELIME_MAX_PROMPT_TOKENS; a response
  over ROPELIME_MAX_RESPONSE_TOKENS; a non-numeric cap variable
- budget 0, negative, absurd (10**12; the tool caps it at 100 000); time_budget_s 0
- unknown granularity, sampler, target, kernel, perturb
- compare_samplers with an absurd budget, an empty sampler list, an unknown sampler
- malformed explanation_id (path tricks) and unknown explanation_id, in top_features,
  continue_from and the explanation resource; k = 0
- output_span not in the response; output_span of whitespace only
- prompt and response that are not valid Unicode (lone surrogates, as from bytes decoded with
  errors="surrogateescape"); control characters (accepted: spans stay exact)
- a very long single "word" (accepted within the caps: its span is exact; refused over the token cap)
Every error text is one line without pydantic's links.
Startup: an unknown surrogate path and a model without rotary embeddings: the server still answers
(the surrogate loads in the background) and every tool call says why it cannot load, in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from ropelime.schema import Explanation
from ropelime_server.app import build_server
from ropelime_server.engine import EngineOptions
from tests.conftest import build_tiny_model

pytestmark = pytest.mark.anyio

CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
RESPONSE = "Paris is the capital."
ARGS = {"prompt": PROMPT, "response": RESPONSE, "explain": CONTEXT, "budget": 4}
BIN = Path(sys.executable).parent

# expected words in the error text (what went wrong and what to do) -> tool and arguments
EXPLAIN_CASES: dict[str, tuple[str, dict]] = {
    "empty prompt": ("prompt is empty: give the prompt", {**ARGS, "prompt": "", "explain": None}),
    "whitespace prompt": ("prompt is empty: give the prompt", {**ARGS, "prompt": " \n\t ", "explain": None}),
    "empty response": ("response is empty: give the text", {**ARGS, "response": ""}),
    "whitespace response": ("response is empty: give the text", {**ARGS, "response": "  \n"}),
    "explain not in prompt": ("not a substring of the prompt; copy it", {**ARGS, "explain": "Lyon is in France."}),
    "nothing splittable": ("nothing to explain", {**ARGS, "explain": "\n"}),
    "segments (not offered)": ("'word', 'sentence' or 'paragraph'", {**ARGS, "granularity": "segments"}),
    "budget 0": ("greater than or equal to 1", {**ARGS, "budget": 0}),
    "budget negative": ("greater than or equal to 1", {**ARGS, "budget": -5}),
    "budget absurd": ("less than or equal to 100000", {**ARGS, "budget": 10**12}),
    "time budget 0": ("greater than 0", {**ARGS, "time_budget_s": 0}),
    "unknown granularity": ("'word', 'sentence' or 'paragraph'", {**ARGS, "granularity": "letters"}),
    "unknown sampler": ("'sparse_k', 'loo'", {**ARGS, "sampler": "magic"}),
    "unknown target": ("'nll', 'logit_prob', 'kl'", {**ARGS, "target": "accuracy"}),
    "unknown kernel": ("'rwmd_rope', 'cosine'", {**ARGS, "kernel": "rbf"}),
    "unknown perturb": ("'delete'", {**ARGS, "perturb": "shuffle"}),
    "malformed continue_from": ("not an explanation id; ids are the hex strings",
                                {"continue_from": "../../etc/passwd"}),
    "unknown continue_from": ("run explain_response first", {"continue_from": "0123abcd"}),
    "lone surrogate in prompt": ("not valid Unicode (at position 3); decode the text as UTF-8",
                                 {**ARGS, "prompt": "Ctx\udc80" + PROMPT, "explain": None}),
    "lone surrogate in response": ("response holds characters that are not valid Unicode",
                                   {**ARGS, "response": "Paris\udcff"}),
}
OTHER_CASES: dict[str, tuple[str, dict]] = {
    "malformed id": ("not an explanation id", {"explanation_id": "../x"}),
    "unknown id": ("no explanation with id 'abc'; run explain_response first", {"explanation_id": "abc"}),
    "k 0": ("greater than or equal to 1", {"explanation_id": "abc", "k": 0}),
}
COMPARE_CASES: dict[str, tuple[str, dict]] = {
    "compare absurd budget": ("less than or equal to 100000", {**ARGS, "budgets": [4, 10**9]}),
    "compare no sampler": ("at least 1 item", {**ARGS, "samplers": []}),
    "compare unknown sampler": ("'sparse_k', 'loo'", {**ARGS, "samplers": ["loo", "magic"]}),
}



@pytest.fixture
def server(tiny_model_dir):
    return build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu"))


async def expect_error(client: Client, tool: str, args: dict, expected: str) -> None:
    result = await client.call_tool(tool, args)
    text = result.content[0].text
    assert result.is_error and expected in text, (tool, args, text)
    assert "internal error" not in text
    assert "\n" not in text and "pydantic.dev" not in text and "[type=" not in text, text


async def good_call(client: Client, **args) -> Explanation:
    result = await client.call_tool("explain_response", {**ARGS, **args})
    assert not result.is_error, result.content[0].text
    return Explanation.model_validate(result.structured_content)


async def test_bad_input_is_refused_clearly_and_the_server_keeps_working(server, monkeypatch):
    async with Client(server) as client:
        for expected, args in EXPLAIN_CASES.values():
            await expect_error(client, "explain_response", args, expected)
        for expected, args in COMPARE_CASES.values():
            await expect_error(client, "compare_samplers", args, expected)
        for expected, args in OTHER_CASES.values():
            await expect_error(client, "top_features", args, expected)
        with pytest.raises(Exception, match="run explain_response first"):
            await client.read_resource("explanation://0123abcd")

        explanation = await good_call(client)
        await expect_error(client, "top_features", {"explanation_id": explanation.id, "output_span": "Lyon"},
                           "not a substring of the response; copy a part of the response exactly")
        await expect_error(client, "top_features", {"explanation_id": explanation.id, "output_span": "  "},
                           "not a substring of the response")

        caps = {  # variable, value, arguments, expected
            "features": ("ROPELIME_MAX_FEATURES", "3", {"granularity": "word"}, "exceed the limit of 3"),
            "prompt tokens": ("ROPELIME_MAX_PROMPT_TOKENS", "10", {}, "raise ROPELIME_MAX_PROMPT_TOKENS"),
            "response tokens": ("ROPELIME_MAX_RESPONSE_TOKENS", "2", {}, "raise ROPELIME_MAX_RESPONSE_TOKENS"),
            "not a number": ("ROPELIME_MAX_FEATURES", "many", {}, "is not a whole number; set it to one"),
        }
        for variable, value, args, expected in caps.values():
            with monkeypatch.context() as patch:
                patch.setenv(variable, value)
                await expect_error(client, "explain_response", {**ARGS, **args}, expected)

        assert (await good_call(client, seed=1)).diagnostics.complete  # still alive after every case


async def test_control_characters_and_long_words_keep_exact_spans(server, monkeypatch):
    control = f"Context:\x00 The sky\x07 is blue.\x1b[31m Paris is the capital of France.\r\n\x0c{PROMPT}"
    long_word = f"{PROMPT} {'Parisx' * 300} done."
    async with Client(server) as client:
        for prompt in (control, long_word):
            explanation = await good_call(client, prompt=prompt, explain=None, granularity="word")
            assert all(prompt[f.start:f.end] == f.text for f in explanation.features)
        assert any(f.text.strip() == "Parisx" * 300 for f in explanation.features)  # one feature
        monkeypatch.setenv("ROPELIME_MAX_PROMPT_TOKENS", "200")
        await expect_error(client, "explain_response", {**ARGS, "prompt": long_word, "explain": None},
                           "over the cap of 200; shorten it")


@pytest.fixture(scope="module")
def no_rope_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("no-rope"), rope=False)


@pytest.mark.parametrize("which, expected", [
    ("missing", "unknown surrogate"),
    ("no_rope", "has no rotary position embeddings; RoPE-LIME needs a RoPE model"),
])
def test_a_surrogate_that_cannot_load_is_named_by_every_tool_call(which, expected, no_rope_model_dir, tmp_path):
    surrogate = str(tmp_path / "no-such-model") if which == "missing" else str(no_rope_model_dir)
    server = [str(BIN / "ropelime-mcp"), "--surrogate", surrogate, "--device", "cpu"]
    lines = [json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                 "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}),
             json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
             json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "explain_response", "arguments": ARGS}})]
    child = subprocess.Popen(server, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "ROPELIME_CACHE_DIR": str(tmp_path / "cache")})
    replies: dict = {}
    try:
        child.stdin.write("\n".join(lines) + "\n")
        child.stdin.flush()
        while 2 not in replies:  # stdin stays open until the call's reply: closing it ends the server
            raw = child.stdout.readline()
            assert raw, child.stderr.read()[-2000:]
            message = json.loads(raw)
            replies[message.get("id")] = message
        _, errors = child.communicate(timeout=60)
    finally:
        child.kill()
    assert replies[1]["result"]["serverInfo"]["name"] == "ropelime"  # answered although the model cannot load
    result = replies[2]["result"]
    text = result["content"][0]["text"]
    assert result["isError"] and "could not be loaded" in text and expected in text and "\n" not in text
    assert [line for line in errors.splitlines() if expected in line], errors  # and in the log
