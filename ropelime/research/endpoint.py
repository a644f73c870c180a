"""A minimal OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib HTTP, one thread per request).

It answers with a callable (or a fixed string), e.g. a local model standing in for a closed one in
the evaluation, reached through litellm like any provider:

    with OpenAIEndpoint(local_model_reply(Surrogate.load(path))) as endpoint:
        fetch_response("openai/local", prompt, api_base=endpoint.base_url, ...)
        endpoint.requests    # chat-completion requests received so far

Endpoints: POST /v1/chat/completions (non-streaming) and GET /v1/models. With `api_key` set,
requests without `Authorization: Bearer <api_key>` get a 401.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ropelime.surrogate import Surrogate

Alternatives = dict[str, float]
"""The first answer token's top alternatives and their log-probabilities."""
Reply = str | Callable[[list[dict[str, Any]]], str | tuple[str, Alternatives]]
Answer = tuple[int, bytes, dict[str, str]]
"""HTTP status, body, extra headers."""

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               429: "rate_limit_error"}


def _count_tokens(text: str) -> int:
    """A rough token count (whitespace words) for the usage block."""
    return len(text.split())


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message (plain string or content parts)."""
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def error_answer(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    """An OpenAI-style error body."""
    error = {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": None}
    return status, json.dumps({"error": error}).encode(), headers or {}


class OpenAIEndpoint:
    """An OpenAI-compatible server in a background thread; use as a context manager.

    Subclasses change the answers by overriding `record` (called for every chat-completion request,
    under a lock, before authentication; its result is passed on) and `answer`.
    """

    def __init__(self, reply: Reply, *, api_key: str | None = None, model: str = "local-model",
                 port: int = 0) -> None:
        self.reply = reply
        self.wanted_port = port
        self.api_key = api_key
        self.model = model
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the endpoint is not running"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The api_base to give an OpenAI client, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self):
        """Bind the wanted loopback port (any free one when it is 0 or taken) and serve in a daemon thread."""
        self._stopping.clear()
        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.wanted_port), self._handler_class())
        except OSError:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake waiting handlers, release the port."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def record(self, body: dict[str, Any]) -> Any:
        """Count a chat-completion request and keep its body."""
        with self._lock:
            self.requests += 1
            self.bodies.append(body)

    def answer(self, body: dict[str, Any], recorded: Any) -> Answer:
        """The response to an authorised, non-streaming chat-completion request."""
        replied = self.reply(body.get("messages") or []) if callable(self.reply) else self.reply
        text, alternatives = replied if isinstance(replied, tuple) else (replied, None)
        return 200, json.dumps(self.completion(body, text, alternatives)).encode(), {}

    def completion(self, body: dict[str, Any], content: str,
                   alternatives: Alternatives | None = None) -> dict[str, Any]:
        """A chat.completion object holding `content`; with `alternatives` and a request that asked for
        log-probabilities, the first token's top alternatives (the likeliest as the token itself)."""
        logprobs = None
        if alternatives and body.get("logprobs"):
            top = [{"token": t, "logprob": lp, "bytes": None}
                   for t, lp in sorted(alternatives.items(), key=lambda a: -a[1])]
            logprobs = {"content": [{**top[0], "top_logprobs": top}]}
        prompt_tokens = sum(_count_tokens(message_text(m)) for m in body.get("messages") or [])
        completion_tokens = _count_tokens(content)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # idle connections do not linger

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stay quiet
                pass

            def _send(self, answer: Answer) -> None:
                status, payload, headers = answer
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout)
                    pass

            def _authorised(self) -> bool:
                if endpoint.api_key is None or self.headers.get("Authorization") == f"Bearer {endpoint.api_key}":
                    return True
                presented = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                self._send(error_answer(401, f"Incorrect API key provided: {presented}."))
                return False

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/v1/models":
                    self._send(error_answer(404, f"no route {self.path}"))
                elif self._authorised():
                    model = {"id": endpoint.model, "object": "model", "created": 0, "owned_by": "ropelime"}
                    self._send((200, json.dumps({"object": "list", "data": [model]}).encode(), {}))

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(error_answer(404, f"no route {self.path}"))
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(error_answer(400, "request body is not JSON"))
                    return
                recorded = endpoint.record(body)
                if not self._authorised():
                    return
                if body.get("stream"):
                    self._send(error_answer(400, "this endpoint does not stream"))
                else:
                    self._send(endpoint.answer(body, recorded))

        return Handler


def stable_port(name: str) -> int:
    """A loopback port that depends only on `name` (49152–65535), so that a local stand-in served again
    under the same name gets the same api_base and its cached answers are found."""
    return 49152 + zlib.crc32(name.encode()) % 16384


def local_model_reply(surrogate: Surrogate, max_new_tokens: int = 48,
                      top_logprobs: int = 20) -> Callable[[list[dict[str, Any]]], tuple[str, Alternatives]]:
    """Answer chat messages with a local causal LM, greedily (one request at a time), with the first answer
    token's `top_logprobs` alternatives (served when a request asks for log-probabilities)."""
    import torch

    lock = threading.Lock()

    def reply(messages: list[dict[str, Any]]) -> tuple[str, Alternatives]:
        system = next((message_text(m) for m in messages if m.get("role") == "system"), None)
        prompt = message_text(messages[-1]) if messages else ""
        text, _, templated = surrogate.render(prompt, system)
        ids = surrogate.tokenizer(text, add_special_tokens=not templated, return_tensors="pt")["input_ids"]
        with lock, torch.inference_mode(), surrogate.computing():
            out = surrogate.model.generate(ids.to(surrogate.device), max_new_tokens=max_new_tokens,
                                           do_sample=False, pad_token_id=surrogate.tokenizer.eos_token_id,
                                           output_scores=True, return_dict_in_generate=True)
        answer = surrogate.tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True).strip()
        first = torch.log_softmax(out.scores[0][0].float(), dim=-1).topk(top_logprobs)
        alternatives: Alternatives = {}
        for lp, token in zip(first.values.tolist(), first.indices.tolist()):
            piece = surrogate.tokenizer.decode([token])
            alternatives[piece] = float(np.logaddexp(alternatives[piece], lp)) if piece in alternatives else lp
        return answer or "(no answer)", alternatives

    return reply
