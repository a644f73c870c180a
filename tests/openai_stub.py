"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests (stdlib only, no network beyond loopback).

    with OpenAIStub(reply="Paris") as stub:
        litellm.completion("openai/stub-model", messages, api_base=stub.base_url, api_key="sk-x")
        stub.requests        # chat-completion requests received so far
        stub.bodies          # their JSON bodies, in order (messages, temperature, max_tokens, ...)

Endpoints: POST /v1/chat/completions (non-streaming) and GET /v1/models.

`reply` is a string or a callable(messages) -> str, e.g. a local model standing in for a closed one.

Faults, to rehearse failures. `stub.faults` is a list consumed one per chat-completion request, in
order; once it is empty, `stub.fault` (default "ok") applies to every further request:
    "ok"         a valid chat.completion
    "empty"      a valid chat.completion whose content is ""
    "malformed"  status 200, Content-Type JSON, body that is not JSON
    "timeout"    sleep `stall_s` seconds (default 3; cut short when the stub stops), then answer "ok"
    "NNN"        any HTTP status code, with an OpenAI-style error body; "429" adds `Retry-After: 0`
`api_key`, when set, makes the stub answer 401 to requests without `Authorization: Bearer <api_key>`;
the 401 message echoes the key it was given, so tests can check that clients never repeat it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | Callable[[list[dict[str, Any]]], str]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error"}


def _count_tokens(text: str) -> int:
    """A rough token count (whitespace words) for the usage block."""
    return len(text.split())


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class OpenAIStub:
    """An OpenAI-compatible chat-completions server in a background thread; use as a context manager."""

    def __init__(self, reply: Reply = "Paris", *, faults: list[str] | None = None, fault: str = "ok",
                 stall_s: float = 3.0, api_key: str | None = None) -> None:
        self.reply = reply
        self.faults = list(faults or [])
        self.fault = fault
        self.stall_s = stall_s
        self.api_key = api_key
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the stub is not running"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The api_base to give an OpenAI client, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIStub:
        """Bind a free loopback port and serve in a daemon thread."""
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers, release the port."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_fault(self, body: dict[str, Any]) -> str:
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            return self.faults.pop(0) if self.faults else self.fault

    def _completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        messages = body.get("messages") or []
        prompt_tokens = sum(_count_tokens(_message_text(m)) for m in messages)
        completion_tokens = _count_tokens(content)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "stub-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # idle connections do not linger

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout)
                    pass

            def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(obj).encode(), headers)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                error = {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "code": None}
                self._json(status, {"error": error}, headers)

            def _authorised(self) -> bool:
                if stub.api_key is None or self.headers.get("Authorization") == f"Bearer {stub.api_key}":
                    return True
                presented = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                self._error(401, f"Incorrect API key provided: {presented}.")  # echoed, as a careless provider might
                return False

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/v1/models":
                    self._error(404, f"no route {self.path}")
                elif self._authorised():
                    model = {"id": "stub-model", "object": "model", "created": 0, "owned_by": "openai-stub"}
                    self._json(200, {"object": "list", "data": [model]})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._error(404, f"no route {self.path}")
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._error(400, "request body is not JSON")
                    return
                fault = stub._next_fault(body)
                if not self._authorised():
                    return
                if body.get("stream"):
                    self._error(400, "the stub does not stream")
                elif fault == "timeout":
                    stub._stopping.wait(stub.stall_s)
                    self._json(200, stub._completion(body, self._reply(body)))
                elif fault == "malformed":
                    self._send(200, b'{"id": "chatcmpl-broken", "choices": [')
                elif fault == "empty":
                    self._json(200, stub._completion(body, ""))
                elif fault == "ok":
                    self._json(200, stub._completion(body, self._reply(body)))
                elif fault.isdigit():
                    status = int(fault)
                    headers = {"Retry-After": "0"} if status == 429 else None
                    self._error(status, f"stub fault {status}", headers)
                else:  # a typo in a test: say so in the error the client reports
                    self._error(400, f"unknown stub fault {fault!r}")

            def _reply(self, body: dict[str, Any]) -> str:
                reply = stub.reply
                return reply(body.get("messages") or []) if callable(reply) else reply

        return Handler
