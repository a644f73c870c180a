"""The server as its own process: stdio (raw JSON-RPC lines, and the SDK's stdio client through
`ropelime serve`) and streamable HTTP on 127.0.0.1 (`ropelime-mcp --http`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mcp import Client, StdioServerParameters

from ropelime.schema import Explanation

pytestmark = pytest.mark.anyio

BIN = Path(sys.executable).parent
PROMPT = "Context: The sky is blue. Paris is the capital of France.\nQuestion: What is the capital of France?"
EXPLAIN = {"prompt": PROMPT, "response": "Paris.", "budget": 4}




def request(id_: int, method: str, params: dict | None = None) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}}) + "\n"


def read_until(child: subprocess.Popen, id_: int, replies: dict) -> None:
    """Read stdout lines, each of which must be a JSON-RPC message, until the reply to `id_`."""
    while id_ not in replies:
        raw = child.stdout.readline()
        assert raw, child.stderr.read()[-2000:]
        message = json.loads(raw)
        assert message["jsonrpc"] == "2.0"
        replies[message.get("id")] = message


def test_stdio_carries_nothing_but_protocol(env):
    child = subprocess.Popen([sys.executable, "-m", "ropelime_server", "--verbose"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    replies: dict = {}
    try:
        child.stdin.write(request(1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                    "clientInfo": {"name": "raw-test", "version": "0"}}))
        child.stdin.flush()
        read_until(child, 1, replies)
        child.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        child.stdin.write(request(2, "tools/list"))
        child.stdin.write(request(3, "tools/call", {"name": "explain_response", "arguments": EXPLAIN}))
        child.stdin.flush()
        read_until(child, 3, replies)
        rest, errors = child.communicate(timeout=60)  # closes stdin: the server exits
    finally:
        child.kill()
    assert all(json.loads(line)["jsonrpc"] == "2.0" for line in rest.splitlines())
    assert {t["name"] for t in replies[2]["result"]["tools"]} == {"explain_response", "top_features",
                                                                  "compare_samplers", "verify_explanation"}
    result = replies[3]["result"]
    assert not result["isError"]
    explanation = Explanation.model_validate(result["structuredContent"])
    assert all(PROMPT[f.start:f.end] == f.text for f in explanation.features)
    assert "ready" in errors  # --verbose logs go to stderr


async def test_ropelime_serve_over_stdio_with_the_sdk_client(env, tmp_path):
    params = StdioServerParameters(command=str(BIN / "ropelime"), args=["serve"], env=env)
    async with Client(params) as client:
        tools = await client.list_tools()
        result = await client.call_tool("explain_response", EXPLAIN)
    assert len(tools.tools) == 4
    assert not result.is_error and Explanation.model_validate(result.structured_content).diagnostics.complete


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(env):
    port = free_port()
    child = subprocess.Popen([str(BIN / "ropelime-mcp"), "--http", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert child.poll() is None and time.monotonic() < deadline, child.stdout.read() if child.poll() else "timeout"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/mcp"
    child.terminate()
    child.wait(timeout=30)


async def test_streamable_http_on_loopback(http_server):
    async with Client(http_server) as client:
        tools = await client.list_tools()
        result = await client.call_tool("explain_response", EXPLAIN)
    assert {t.name for t in tools.tools} == {"explain_response", "top_features", "compare_samplers",
                                           "verify_explanation"}
    assert not result.is_error and Explanation.model_validate(result.structured_content).features


def test_http_refuses_foreign_host_headers(http_server):
    """DNS-rebinding protection: a page on another origin cannot drive the local server."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    response = httpx.post(http_server, json=body, headers={**headers, "Host": "evil.example"})
    assert response.status_code == 421
    response = httpx.post(http_server, json=body, headers={**headers, "Origin": "http://evil.example"})
    assert response.status_code == 403
