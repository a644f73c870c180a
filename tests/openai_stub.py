"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests (`ropelime.research.endpoint`), with faults.

    with OpenAIStub(reply="Paris") as stub:
        litellm.completion("openai/stub-model", messages, api_base=stub.base_url, api_key="sk-x")
        stub.requests        # chat-completion requests received so far
        stub.bodies          # their JSON bodies, in order (messages, temperature, max_tokens, ...)

Endpoints: POST /v1/chat/completions (non-streaming) and GET /v1/models.

`reply` is a string or a callable(messages) -> str, e.g. a local model standing in for a closed one,
or an answer that depends on which sentences the prompt holds.

Faults, to rehearse failures. `stub.faults` is a list consumed one per chat-completion request, in
order; once it is empty, `stub.fault` (default "ok") applies to every further request:
    "ok"         a valid chat.completion
    "empty"      a valid chat.completion whose content is ""
    "malformed"  status 200, Content-Type JSON, body that is not JSON
    "timeout"    sleep `stall_s` seconds (default 3; cut short when the stub stops), then answer "ok"
    "NNN"        any HTTP status code, with an OpenAI-style error body; "429" adds `Retry-After: 0`
`fault_for`, when set, is a callable(messages) -> fault name or None, asked first for every request:
a fault for particular prompts (e.g. "500" whenever a given sentence is missing).
`api_key`, when set, makes the stub answer 401 to requests without `Authorization: Bearer <api_key>`;
the 401 message echoes the key it was given, so tests can check that clients never repeat it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ropelime.research.endpoint import Answer, OpenAIEndpoint, Reply, error_answer


class OpenAIStub(OpenAIEndpoint):
    """An OpenAI-compatible chat-completions server in a background thread; use as a context manager."""

    def __init__(self, reply: Reply = "Paris", *, faults: list[str] | None = None, fault: str = "ok",
                 stall_s: float = 3.0, api_key: str | None = None,
                 fault_for: Callable[[list[dict[str, Any]]], str | None] | None = None) -> None:
        super().__init__(reply, api_key=api_key, model="stub-model")
        self.fault_for = fault_for
        self.faults = list(faults or [])
        self.fault = fault
        self.stall_s = stall_s

    def record(self, body: dict[str, Any]) -> str:
        """Count the request and take its fault."""
        super().record(body)
        chosen = self.fault_for(body.get("messages") or []) if self.fault_for else None
        with self._lock:
            return chosen or (self.faults.pop(0) if self.faults else self.fault)

    def answer(self, body: dict[str, Any], recorded: str) -> Answer:
        fault = recorded
        if fault == "timeout":
            self._stopping.wait(self.stall_s)
            return super().answer(body, recorded)
        if fault == "malformed":
            return 200, b'{"id": "chatcmpl-broken", "choices": [', {}
        if fault == "empty":
            return 200, json.dumps(self.completion(body, "")).encode(), {}
        if fault == "ok":
            return super().answer(body, recorded)
        if fault.isdigit():
            status = int(fault)
            return error_answer(status, f"stub fault {status}", {"Retry-After": "0"} if status == 429 else None)
        return error_answer(400, f"unknown stub fault {fault!r}")  # a typo in a test: say so
