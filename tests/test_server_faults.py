"""Provider faults through the MCP tool: litellm against an OpenAI-compatible server on 127.0.0.1
(tests/openai_stub.py) that misbehaves on command. Each fault comes back as a tool error saying
what to do, leaves no half-written entry under `cache_dir()/closed`, and the next good call works.
A sentinel API key never shows in tool results, resources, log output or cache files.

Faults tried: a stall past the timeout (every attempt); 429 then success (the bounded retries
recover); 500 on every attempt; 401 that echoes the key it was sent; malformed JSON; an empty
completion; connection refused (nothing listening); a missing API key for a real provider
(anthropic, no network call); a non-numeric ROPELIME_CLOSED_TIMEOUT at startup.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from ropelime.settings import cache_dir
from ropelime_server.app import build_server
from ropelime_server.engine import EngineOptions
from tests.openai_stub import OpenAIStub

pytestmark = pytest.mark.anyio

SENTINEL = "sk-sentinel-7f3a9c2e41b8d605"
CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
MODEL = "openai/stub-model"

# fault name -> (faults consumed in order, then the standing fault), expected words in the error
FAULTS: dict[str, tuple[list[str], str, str]] = {
    "timeout": ([], "timeout", "did not answer within the 0.5 s timeout (3 attempts): try again later"),
    "500": ([], "500", "failed with error 500 after 3 attempts"),
    "401 echoing the key": ([], "ok", "rejected the credentials"),  # the stub expects another key
    "malformed JSON": ([], "malformed", "malformed response (not valid JSON): check that the endpoint"),
    "empty completion": ([], "empty", "returned an empty response: check the prompt"),
}



@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    monkeypatch.setenv("ROPELIME_CLOSED_TIMEOUT", "0.5")
    with OpenAIStub(reply="Paris is the capital.", stall_s=2.0) as running:
        yield running


def closed_entries() -> list[Path]:
    folder = cache_dir() / "closed"
    return sorted(folder.iterdir()) if folder.exists() else []


def assert_no_sentinel_in_cache() -> None:
    for path in cache_dir().rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path


async def call(client: Client, prompt: str, **args) -> tuple[bool, str, dict | None]:
    result = await client.call_tool("explain_response", {"prompt": prompt, "model": MODEL, "explain": CONTEXT,
                                                         "budget": 4, **args})
    return result.is_error, result.content[0].text, result.structured_content


async def test_provider_faults_are_clear_leave_no_partial_entry_and_never_show_the_key(
        tiny_model_dir, stub, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    server = build_server(EngineOptions.from_env(surrogate=str(tiny_model_dir), device="cpu",
                                                 api_base=stub.base_url))
    async with Client(server) as client:
        for name, (faults, standing, expected) in FAULTS.items():
            stub.faults, stub.fault = list(faults), standing
            stub.api_key = "sk-the-key-the-stub-expects-0000" if name.startswith("401") else None
            prompt = f"{PROMPT} ({name})"
            failed, text, _ = await call(client, prompt)
            seen.append(text)
            assert failed and expected in text and "pass the response yourself" in text, (name, text)
            assert closed_entries() == [], name  # nothing half-written, nothing cached
            stub.fault, stub.api_key = "ok", None
            failed, text, data = await call(client, prompt)  # the next good call works
            assert not failed, (name, text)
            seen.append(text + repr(data))
            assert len(closed_entries()) == 1 and closed_entries()[0].suffix == ".json"
            closed_entries()[0].unlink()

        stub.faults, requests = ["429", "ok"], stub.requests
        failed, text, data = await call(client, f"{PROMPT} (429)")
        assert not failed and stub.requests == requests + 2 and data["cost"]["closed_model_calls"] == 1, text
        seen.append(text + repr(data))
        explanation_id = data["explanation_id"]
        for uri in (f"explanation://{explanation_id}", f"explanation://{explanation_id}/html", "ropelime://options"):
            seen += [c.text for c in (await client.read_resource(uri)).contents]
        closed_entries()[0].unlink()

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    refused = build_server(EngineOptions.from_env(surrogate=str(tiny_model_dir), device="cpu",
                                                  api_base=f"http://127.0.0.1:{closed_port}/v1"))
    async with Client(refused) as client:
        failed, text, _ = await call(client, PROMPT)
        assert failed and "could not connect" in text and "check the network and api_base" in text, text
        seen.append(text)
        assert closed_entries() == []
        failed, text, _ = await call(client, PROMPT, model=None, response="Paris.")
        assert not failed, text

    assert_no_sentinel_in_cache()
    assert not any(SENTINEL in text for text in seen)
    assert SENTINEL not in caplog.text
    out, err = capfd.readouterr()
    assert SENTINEL not in out and SENTINEL not in err


async def test_a_missing_key_for_a_real_provider_is_named(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    server = build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu"))
    async with Client(server) as client:
        failed, text, _ = await call(client, PROMPT, model="anthropic/claude-3-5-haiku-latest")
        assert failed and "ANTHROPIC_API_KEY is not set: export it" in text, text
        failed, text, _ = await call(client, PROMPT, model=None, response="Paris.")
        assert not failed, text
    assert closed_entries() == []


def test_a_bad_closed_timeout_stops_the_server_at_start(tiny_model_dir, tmp_path):
    env = {**os.environ, "ROPELIME_CLOSED_TIMEOUT": "soon", "ROPELIME_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([str(Path(sys.executable).parent / "ropelime-mcp"), "--surrogate", str(tiny_model_dir)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "ROPELIME_CLOSED_TIMEOUT='soon' is not a number" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
