"""A third-party client: the MCP Inspector CLI (Node) drives `ropelime-mcp` over stdio.

Needs `npx` (Node 20) and the npm registry the first time (the package is then cached)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INSPECTOR = "@modelcontextprotocol/inspector@0.15.0"
SERVER = str(Path(sys.executable).parent / "ropelime-mcp")
CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"

pytestmark = pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")


@pytest.fixture
def inspector(tiny_model_dir):
    """Run one Inspector CLI method against a fresh `ropelime-mcp` process; returns its JSON output."""
    env = {**os.environ, "ROPELIME_SURROGATE": str(tiny_model_dir), "ROPELIME_DEVICE": "cpu"}

    def run(method: str, *options: str) -> dict:
        done = subprocess.run(["npx", "-y", INSPECTOR, "--cli", SERVER, "--method", method, *options], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
        return json.loads(done.stdout)

    return run


def test_inspector_lists_and_calls_every_tool(inspector):
    tools = {t["name"]: t for t in inspector("tools/list")["tools"]}
    assert set(tools) == {"explain_response", "top_features", "compare_samplers", "verify_explanation"}
    assert all(t["outputSchema"]["type"] == "object" and t["annotations"]["readOnlyHint"] for t in tools.values())

    explained = inspector("tools/call", "--tool-name", "explain_response", "--tool-arg", f"prompt={PROMPT}",
                          "--tool-arg", "response=Paris.", "--tool-arg", f"explain={CONTEXT}", "--tool-arg", "budget=4")
    assert not explained.get("isError"), explained
    features = explained["structuredContent"]["features"]
    assert len(features) == 3
    assert all(PROMPT[f["start"]:f["end"]] == f["text"] and isinstance(f["score"], float) for f in features)
    explanation_id = explained["structuredContent"]["explanation_id"]
    assert explanation_id in explained["content"][0]["text"]

    top = inspector("tools/call", "--tool-name", "top_features", "--tool-arg", f"explanation_id={explanation_id}",
                    "--tool-arg", "k=2", "--tool-arg", "direction=both")
    assert not top.get("isError") and len(top["structuredContent"]["features"]) == 2

    compared = inspector("tools/call", "--tool-name", "compare_samplers", "--tool-arg", f"prompt={PROMPT}",
                         "--tool-arg", "response=Paris.", "--tool-arg", f"explain={CONTEXT}",
                         "--tool-arg", 'samplers=["loo", "sparse_k"]', "--tool-arg", "budgets=[4]",
                         "--tool-arg", "seeds=[0]")
    assert not compared.get("isError"), compared
    assert [c["type"] for c in compared["content"]] == ["text", "image"]
    assert len(compared["structuredContent"]["runs"]) == 2

    as_json = inspector("resources/read", "--uri", f"explanation://{explanation_id}")["contents"][0]
    assert as_json["mimeType"] == "application/json" and json.loads(as_json["text"])["explanation_id"] == explanation_id
    as_html = inspector("resources/read", "--uri", f"explanation://{explanation_id}/html")["contents"][0]
    assert as_html["mimeType"] == "text/html" and "<html" in as_html["text"]


def test_inspector_lists_and_gets_prompts(inspector):
    prompts = {p["name"] for p in inspector("prompts/list")["prompts"]}
    assert prompts == {"self_audit", "explain_answer", "compare_methods"}
    audit = inspector("prompts/get", "--prompt-name", "self_audit", "--prompt-args", "answer=It is Paris.")
    assert "It is Paris." in audit["messages"][0]["content"]["text"]
    options = inspector("resources/read", "--uri", "ropelime://options")["contents"][0]
    assert "sparse_k" in json.loads(options["text"])["sampler"]


@pytest.mark.slow
def test_inspector_explains_on_the_embedded_surrogate(embedded_surrogate, tmp_path):
    """The acceptance check: `ropelime-mcp` on its defaults (the embedded Gemma 3 270M)."""
    from tests.conftest import USER_CACHE

    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / "models").symlink_to(USER_CACHE / "models")  # the prepared model, a fresh score cache
    env = {key: value for key, value in os.environ.items() if key not in ("ROPELIME_SURROGATE", "ROPELIME_DEVICE")}
    env["ROPELIME_CACHE_DIR"] = str(tmp_path / "cache")
    needle = "The lighthouse of Lysa was built by the architect Oren Castell in 1902."
    context = f"The harbour town of Lysa is known for its painted boats. {needle} Its fair draws visitors every August."
    prompt = f"Context: {context}\n\nQuestion: Who built the lighthouse of Lysa?"
    done = subprocess.run(["npx", "-y", INSPECTOR, "--cli", SERVER, "--method", "tools/call", "--tool-name",
                           "explain_response", "--tool-arg", f"prompt={prompt}", "--tool-arg",
                           "response=Oren Castell built it.", "--tool-arg", f"explain={context}"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    explanation = json.loads(done.stdout)["structuredContent"]
    assert explanation["surrogate"]["name"] == "gemma3-270m" and explanation["diagnostics"]["complete"]
    assert len(explanation["features"]) == 3
    for f in explanation["features"]:
        assert prompt[f["start"]:f["end"]] == f["text"] and isinstance(f["score"], float)
    top = max(explanation["features"], key=lambda f: f["score"])
    assert top["text"].strip() == needle
