"""The one closed-model call, against a real OpenAI-compatible server on 127.0.0.1 (tests/openai_stub.py)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from ropelime.closed import ClosedResult, fetch_response, scrub
from ropelime.errors import ClosedModelError
from tests.openai_stub import OpenAIStub

SENTINEL = "sk-test-SENTINEL"
MODEL = "openai/stub-model"
PROMPT = "What is the capital of France?"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)


@pytest.fixture
def stub():
    with OpenAIStub(reply="Paris") as server:
        yield server


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def fetch(stub: OpenAIStub, cache: Path, **options) -> ClosedResult:
    options.setdefault("timeout", 5.0)
    return fetch_response(options.pop("model", MODEL), options.pop("prompt", PROMPT), options.pop("system", None),
                          cache_dir=cache, api_base=stub.base_url, **options)


def failure(call, *args, **kwargs) -> str:
    """The ClosedModelError message of a call that must fail; it is one line and never shows the key."""
    with pytest.raises(ClosedModelError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "SENTINEL" not in message and "--response" in message
    return message


def cache_files(cache: Path) -> list[Path]:
    folder = cache / "closed"
    return sorted(folder.iterdir()) if folder.exists() else []


def assert_clean(cache: Path) -> None:
    """Only complete entries in the cache: no temp files, every file valid JSON without the key."""
    for path in cache_files(cache):
        assert path.suffix == ".json" and not path.name.startswith("."), path.name
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        assert "SENTINEL" not in text


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_call_hits_the_server_once(stub, cache):
    result = fetch(stub, cache, max_tokens=50)
    assert (result.text, result.cached, stub.requests) == ("Paris", False, 1)
    assert result.model.endswith("stub-model")
    assert result.usage["prompt_tokens"] > 0 and result.usage["completion_tokens"] == 1
    assert result.usage["total_tokens"] == result.usage["prompt_tokens"] + 1
    assert "cost_usd" not in result.usage  # litellm has no price for the stub model
    assert result.latency_s > 0
    body = stub.bodies[0]
    assert body["messages"] == [{"role": "user", "content": PROMPT}]
    assert body["temperature"] == 0 and body["max_tokens"] == 50
    assert len(cache_files(cache)) == 1
    assert_clean(cache)


def test_identical_call_is_a_cache_hit_without_a_request(stub, cache):
    first = fetch(stub, cache)
    second = fetch(stub, cache)
    assert stub.requests == 1
    assert second.cached and second.text == first.text and second.usage == first.usage


def test_cache_hit_needs_neither_server_nor_key(stub, cache, monkeypatch):
    fetch(stub, cache)
    api_base = stub.base_url
    stub.stop()
    monkeypatch.delenv("OPENAI_API_KEY")
    again = fetch_response(MODEL, PROMPT, cache_dir=cache, api_base=api_base)
    assert again.cached and again.text == "Paris"


def test_each_part_of_the_request_is_in_the_cache_key(stub, cache):
    fetch(stub, cache)
    fetch(stub, cache, system="Answer in one word.")
    assert stub.requests == 2
    assert stub.bodies[1]["messages"] == [{"role": "system", "content": "Answer in one word."},
                                          {"role": "user", "content": PROMPT}]
    fetch(stub, cache, system="Answer in one word.")
    assert stub.requests == 2
    fetch(stub, cache, max_tokens=7)
    fetch(stub, cache, prompt=PROMPT + " ")
    assert stub.requests == 4
    assert len(cache_files(cache)) == 4


def test_known_model_records_its_cost(stub, cache):
    result = fetch(stub, cache, model="openai/gpt-4o-mini")
    assert result.usage["cost_usd"] > 0


def test_rate_limit_then_ok_recovers_within_retries(stub, cache):
    stub.faults = ["429", "429", "ok"]
    result = fetch(stub, cache, retries=2)
    assert result.text == "Paris" and stub.requests == 3


def test_rate_limit_beyond_retries_fails(stub, cache):
    stub.fault = "429"
    message = failure(fetch, stub, cache, retries=1)
    assert "rate-limited" in message and "2 attempts" in message
    assert stub.requests == 2
    assert_clean(cache)


def test_persistent_server_error_fails_after_retries(stub, cache):
    stub.fault = "500"
    started = time.perf_counter()
    message = failure(fetch, stub, cache, retries=2)
    assert "500" in message and "stub fault 500" in message and "3 attempts" in message
    assert stub.requests == 3
    assert time.perf_counter() - started < 5  # bounded backoff
    assert cache_files(cache) == []


def test_timeout_fails_quickly_and_the_stub_still_stops(cache):
    stub = OpenAIStub(fault="timeout", stall_s=3).start()
    try:
        started = time.perf_counter()
        message = failure(fetch, stub, cache, timeout=1, retries=0)
        assert time.perf_counter() - started < 2.5
        assert "timeout" in message and "1 s" in message
    finally:
        started = time.perf_counter()
        stub.stop()  # wakes the stalled handler
        assert time.perf_counter() - started < 2
    assert cache_files(cache) == []


def test_connection_refused(cache):
    base = f"http://127.0.0.1:{closed_port()}/v1"
    message = failure(fetch_response, MODEL, PROMPT, cache_dir=cache, api_base=base, timeout=5, retries=0)
    assert "could not connect" in message and "refused" in message.lower()


def test_malformed_response_is_not_retried(stub, cache):
    stub.fault = "malformed"
    message = failure(fetch, stub, cache)
    assert "malformed" in message
    assert stub.requests == 1
    assert_clean(cache)
    assert cache_files(cache) == []


def test_empty_completion_fails_and_is_not_cached(stub, cache):
    stub.faults = ["empty"]
    assert "empty response" in failure(fetch, stub, cache)
    assert cache_files(cache) == []
    assert fetch(stub, cache).text == "Paris" and stub.requests == 2


def test_unknown_model_at_the_server(stub, cache):
    stub.fault = "404"
    assert "not found" in failure(fetch, stub, cache)
    assert stub.requests == 1  # a 4xx is not retried


def test_unknown_provider_fails_without_a_request(cache):
    message = failure(fetch_response, "nosuchprovider/some-model", PROMPT, cache_dir=cache, timeout=5)
    assert "unknown provider" in message


def test_failures_leave_no_partial_cache_entries(stub, cache):
    for fault in ("500", "malformed", "empty", "429"):
        stub.fault = fault
        failure(fetch, stub, cache, retries=0)
    stub.fault = "ok"
    fetch(stub, cache)
    assert [p.suffix for p in cache_files(cache)] == [".json"]
    assert_clean(cache)


def test_truncated_cache_entry_is_a_miss_and_is_rewritten(stub, cache):
    fetch(stub, cache)
    [entry] = cache_files(cache)
    entry.write_bytes(entry.read_bytes()[:20])
    result = fetch(stub, cache)
    assert not result.cached and result.text == "Paris" and stub.requests == 2
    assert ClosedResult.model_validate_json(entry.read_bytes()).text == "Paris"
    assert fetch(stub, cache).cached and stub.requests == 2


def test_missing_key_for_a_real_provider_fails_fast_without_network(cache, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    message = failure(fetch_response, "openai/gpt-4o-mini", PROMPT, cache_dir=cache)
    assert message.startswith("OPENAI_API_KEY is not set")
    assert cache_files(cache) == []


def test_missing_key_with_api_base_says_any_value_will_do(stub, cache, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    message = failure(fetch, stub, cache)
    assert "OPENAI_API_KEY" in message and "any value" in message
    assert stub.requests == 0


def test_rejected_key_is_never_echoed(cache):
    with OpenAIStub(api_key="sk-the-right-key-0000") as stub:  # its 401 echoes the key it was given
        message = failure(fetch, stub, cache)
    assert "credentials" in message and "sk-the-right" not in message
    assert cache_files(cache) == []


def test_scrub_removes_credentials():
    text = scrub("bad key sk-proj-abcdef123456 in\nBearer abc.def api_key='hunter22' AIzaSyA1234567890abcdefghijk ok")
    assert text == "bad key *** in *** api_key='***' *** ok"


def test_stub_reply_callable_models_endpoint_and_auth():
    with OpenAIStub(reply=lambda messages: messages[-1]["content"].upper(), api_key="sk-stub-key-123") as stub:
        request = urllib.request.Request(f"{stub.base_url}/models",
                                         headers={"Authorization": "Bearer sk-stub-key-123"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["data"][0]["id"] == "stub-model"
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi there"}]}).encode()
        request = urllib.request.Request(f"{stub.base_url}/chat/completions", data=body, method="POST",
                                         headers={"Authorization": "Bearer sk-stub-key-123",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            completion = json.load(response)
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["content"] == "HI THERE"
        assert completion["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        assert stub.requests == 1
        port = stub.port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_a_local_stand_in_gets_the_same_port_again_and_its_answers_come_from_the_cache(tmp_path: Path):
    from ropelime.research.endpoint import OpenAIEndpoint, stable_port

    port = stable_port("stand-in-a")
    assert 49152 <= port < 65536 and port == stable_port("stand-in-a") != stable_port("stand-in-b")
    answers = []
    for _ in range(2):  # two runs serving the same stand-in, one after the other
        with OpenAIEndpoint("Paris.", model="stand-in-a", port=port) as endpoint:
            assert endpoint.port == port
            answers.append(fetch_response("openai/stand-in-a", "Capital of France?", api_base=endpoint.base_url,
                                          cache_dir=tmp_path, timeout=5, retries=0))
            calls = endpoint.requests
    assert [a.cached for a in answers] == [False, True] and calls == 0
    with OpenAIEndpoint("x", port=port) as first, OpenAIEndpoint("y", port=port) as second:
        assert first.port == port and second.port not in (0, port)  # taken: falls back to a free port
