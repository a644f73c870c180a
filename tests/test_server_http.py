"""The server as a real process under load and exposure: a `ropelime-mcp --http` subprocess on
127.0.0.1 with a token, and a stdio subprocess.

- Concurrency: 8 simultaneous explain_response calls over streamable HTTP (8 sessions) and 4 over
  stdio (one session) give the scores of the same explanations computed one by one; the surrogate
  is loaded once (one "ready" log line at -v).
- Cancellation over the protocol: a cancelled long explanation stops within a batch (no more
  progress; the next call returns), its scores stay cached, and the next calls work.
- Exposure: a host other than loopback is refused without a token; with a token every request must
  carry `Authorization: Bearer <token>` (401 otherwise); DNS-rebinding protection stays on.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

import ropelime
from ropelime.cache import ScoreCache
from ropelime.anytime import MAX_CHUNK
from ropelime.schema import Explanation

pytestmark = pytest.mark.anyio

BIN = Path(sys.executable).parent
TOKEN = "test-token-0123456789"
CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge was designed by Mara."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
RESPONSE = "Paris is the capital of France."
ARGS = {"prompt": PROMPT, "response": RESPONSE, "explain": CONTEXT, "budget": 8}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(env, tmp_path):
    """`ropelime-mcp --http -v` on 127.0.0.1 with a token; yields its URL and its stderr log file."""
    port, log = free_port(), tmp_path / "server.log"
    with log.open("w") as sink:
        child = subprocess.Popen([str(BIN / "ropelime-mcp"), "--http", "--port", str(port), "-v"],
                                 env={**env, "ROPELIME_MCP_TOKEN": TOKEN}, stdout=sink, stderr=sink)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/mcp", log
    child.terminate()
    child.wait(timeout=30)


def authorised(url: str, token: str = TOKEN) -> Client:
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=120)))


def alone(surrogate, seed: int, cache: ScoreCache) -> list[float]:
    explanation = ropelime.explain(PROMPT, RESPONSE, explain=CONTEXT, budget=8, seed=seed, surrogate=surrogate,
                                   cache=cache)
    return [f.score for f in explanation.features]


async def explain(client: Client, **args) -> Explanation:
    result = await client.call_tool("explain_response", {**ARGS, **args})
    assert not result.is_error, result.content[0].text
    return Explanation.model_validate(result.structured_content)


def test_http_says_where_it_listens(http_server):
    url, log = http_server
    deadline = time.monotonic() + 30
    while f"listening on {url}" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"listening on {url}" in log.read_text()


async def test_eight_simultaneous_http_calls_match_one_by_one_and_load_once(http_server, tiny_surrogate, tmp_path):
    url, log = http_server
    results: dict[int, Explanation] = {}

    async def call(seed: int) -> None:
        async with authorised(url) as client:
            results[seed] = await explain(client, seed=seed)

    with anyio.fail_after(300):
        async with anyio.create_task_group() as tg:
            for seed in range(8):
                tg.start_soon(call, seed)
    cache = ScoreCache(tmp_path / "alone.sqlite")
    for seed in range(8):
        assert [f.score for f in results[seed].features] == pytest.approx(alone(tiny_surrogate, seed, cache), abs=1e-6)
    cache.close()
    assert log.read_text().count("ready on") == 1  # the surrogate was loaded once


async def test_four_simultaneous_stdio_calls_match_one_by_one(env, tiny_surrogate, tmp_path):
    results: dict[int, Explanation] = {}
    async with Client(StdioServerParameters(command=str(BIN / "ropelime-mcp"), env=env)) as client:
        async def call(seed: int) -> None:
            results[seed] = await explain(client, seed=seed)

        with anyio.fail_after(300):
            async with anyio.create_task_group() as tg:
                for seed in range(4):
                    tg.start_soon(call, seed)
    cache = ScoreCache(tmp_path / "alone.sqlite")
    for seed in range(4):
        assert [f.score for f in results[seed].features] == pytest.approx(alone(tiny_surrogate, seed, cache), abs=1e-6)
    cache.close()


async def test_cancelling_over_http_stops_within_a_batch_and_keeps_the_scores(http_server):
    url, _ = http_server
    long_args = {"granularity": "word", "budget": 4000, "time_budget_s": None}
    seen: list[int] = []
    started = anyio.Event()

    async def on_progress(done, total, message):
        seen.append(int(done))
        if done > 0:
            started.set()

    async with authorised(url) as client:
        async with anyio.create_task_group() as tg:
            async def long_call() -> None:
                await client.call_tool("explain_response", {**ARGS, **long_args}, progress_callback=on_progress)

            tg.start_soon(long_call)
            with anyio.fail_after(120):
                await started.wait()
            tg.cancel_scope.cancel()
        at_cancel = max(seen)
        with anyio.fail_after(120):  # the engine is free again: the worker stopped at its next batch
            after = await explain(client)
        assert after.diagnostics.complete and max(seen) == at_cancel  # no progress after the cancel
        resumed = await explain(client, **{**long_args, "time_budget_s": 0.001})
    assert 0 < resumed.cost.cached_samples <= at_cancel + MAX_CHUNK  # kept, and at most one more batch


async def test_a_token_is_required_by_every_request(http_server):
    url, _ = http_server
    assert httpx.post(url, json=LIST, headers=MCP_HEADERS).status_code == 401
    wrong = httpx.post(url, json=LIST, headers={**MCP_HEADERS, "Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "Bearer" in wrong.headers["www-authenticate"]
    good = {**MCP_HEADERS, "Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(url, json={**LIST, "method": "ping"}, headers=good).status_code != 401
    # DNS-rebinding protection stays on behind the token
    assert httpx.post(url, json=LIST, headers={**good, "Host": "evil.example"}).status_code == 421
    assert httpx.post(url, json=LIST, headers={**good, "Origin": "http://evil.example"}).status_code == 403
    async with authorised(url) as client:
        assert len((await client.list_tools()).tools) == 4


def test_a_host_beyond_loopback_needs_a_token(env):
    env = {k: v for k, v in env.items() if k != "ROPELIME_MCP_TOKEN"}
    done = subprocess.run([str(BIN / "ropelime-mcp"), "--http", "--host", "0.0.0.0", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("error: refusing to serve on 0.0.0.0 without a token: set ROPELIME_MCP_TOKEN "
                                   "(or --token) so that requests must carry it, or serve on 127.0.0.1.")
