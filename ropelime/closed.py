"""The one call to the closed model (through litellm) that gets the fixed output to explain.

The answer is asked for once at temperature 0 and cached on disk, one JSON file per request, so it
is never regenerated. Every failure becomes a `ClosedModelError` whose one-line message says what
to do; API keys are read by litellm from the providers' standard environment variables and are
never echoed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from ropelime import settings
from ropelime.errors import ClosedModelError, InputError
from ropelime.files import write_atomic

log = logging.getLogger(__name__)

TEMPERATURE = 0.0
TOP_LOGPROBS = 20
"""Alternatives asked for at each answer token when log-probabilities are wanted (OpenAI's maximum)."""
BACKOFF_S = 0.5  # first retry delay; doubles per attempt unless the provider sends Retry-After
MAX_DELAY_S = 20.0
FALLBACK = "or pass the response yourself (--response on the command line, response= in the library and MCP tools)"

_SECRET_PATTERNS = [
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{6,}"),  # OpenAI, Anthropic (sk-ant-...), and lookalikes
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),  # Google
    re.compile(r"\b(gsk|hf|xai|r8)_[A-Za-z0-9]{10,}"),  # Groq, Hugging Face, xAI, Replicate
    re.compile(r"(?i)\bbearer\s+\S+"),
    re.compile(r"(?i)\b(api[_-]?key|token|secret)(['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
]
_SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)



class ClosedResult(BaseModel):
    """The closed model's answer. On a cache hit, usage and latency are those of the original call."""

    text: str
    model: str
    usage: dict[str, float]  # prompt_tokens, completion_tokens, total_tokens; cost_usd when known
    latency_s: float
    cached: bool
    first_token_logprobs: dict[str, float] | None = None
    """The provider's top alternatives for the answer's first token and their log-probabilities, when asked for
    (`logprobs=True`) and returned; None otherwise."""


def _litellm() -> ModuleType:
    """Import litellm (slow) with the offline cost map and without its banners."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def scrub(text: str) -> str:
    """`text` on one line, without anything that looks like a credential."""
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name) and len(value) >= 12:
            text = text.replace(value, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) + m.group(2) + "***") if m.re.groups == 2 else "***", text)
    return " ".join(text.split())


def _provider_message(error: BaseException, limit: int = 240) -> str:
    """The provider's own words from a litellm exception, without litellm's prefixes, scrubbed."""
    text = str(getattr(error, "message", None) or error)
    text = re.sub(r"^litellm\.\w+:\s*", "", text)
    text = re.sub(r"^\w+(Error|Exception):\s*", "", text)
    text = re.sub(r"^\w+Exception\s+-\s+", "", text)
    text = scrub(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _chain(error: BaseException) -> list[BaseException]:
    """The exception and its causes / contexts, outermost first."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _retry_after(error: BaseException) -> float | None:
    """Seconds the provider asked us to wait (Retry-After), if it said."""
    for headers in (getattr(error, "litellm_response_headers", None),
                    getattr(getattr(error, "response", None), "headers", None)):
        value = headers.get("retry-after") if headers is not None else None
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def _missing_keys(litellm: ModuleType, model: str, api_base: str | None) -> list[str]:
    """The provider's API-key variables litellm needs and the environment lacks."""
    try:
        missing = litellm.validate_environment(model, api_base=api_base).get("missing_keys", [])
    except Exception:  # noqa: BLE001 - an unknown provider is reported by the call itself
        return []
    return [name for name in missing if "API_KEY" in name]


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}]


def cache_key(model: str, messages: list[dict[str, str]], max_tokens: int | None, api_base: str | None,
              logprobs: bool = False) -> str:
    """sha256 of everything that determines the answer (and whether it carries log-probabilities)."""
    payload = {"model": model, "messages": messages, "temperature": TEMPERATURE, "max_tokens": max_tokens,
               "api_base": api_base} | ({"logprobs": TOP_LOGPROBS} if logprobs else {})
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _read_cache(path: Path) -> ClosedResult | None:
    """The cached answer, or None when absent or unreadable (then it will be rewritten)."""
    try:
        result = ClosedResult.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as error:
        log.warning("ignoring an unreadable cached answer %s (%s); asking the model again",
                    path.name, type(error).__name__)
        return None
    if not result.text.strip():
        return None
    return result.model_copy(update={"cached": True})


def _usage(litellm: ModuleType, response: Any) -> dict[str, float]:
    usage: dict[str, float] = {}
    reported = getattr(response, "usage", None)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(reported, name, None)
        if isinstance(value, (int, float)):
            usage[name] = float(value)
    try:
        cost = litellm.completion_cost(completion_response=response)
    except Exception:  # noqa: BLE001 - litellm raises for models it has no price for
        cost = None
    if isinstance(cost, (int, float)) and cost > 0:
        usage["cost_usd"] = float(cost)
    return usage


def _text(response: Any) -> str:
    """The completion's text; raises on a response without one."""
    try:
        choice = response.choices[0]
        content = choice.message.content
    except (AttributeError, IndexError, TypeError) as error:
        raise ClosedModelError(f"the model's response was malformed (no choices): try again, {FALLBACK}") from error
    if not isinstance(content, str) or not content.strip():
        hint = " (it hit max_tokens: raise it)" if getattr(choice, "finish_reason", None) == "length" else ""
        raise ClosedModelError(f"the model returned an empty response{hint}: check the prompt, {FALLBACK}")
    return content


def _first_token_logprobs(response: Any) -> dict[str, float] | None:
    """The top alternatives of the first answer token with their log-probabilities, if the response has them."""
    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    try:
        content = get(get(response.choices[0], "logprobs"), "content")
        first = content[0] if content else None
    except (AttributeError, IndexError, TypeError):
        return None
    if first is None:
        return None
    alternatives = {str(get(t, "token")): float(get(t, "logprob")) for t in get(first, "top_logprobs") or []
                    if get(t, "token") is not None and get(t, "logprob") is not None}
    if get(first, "token") is not None and get(first, "logprob") is not None:
        alternatives.setdefault(str(get(first, "token")), float(get(first, "logprob")))
    return alternatives or None


def _is_retryable(litellm: ModuleType, error: BaseException) -> bool:
    """Rate limits, timeouts, lost connections and provider 5xx are worth another try."""
    exc = litellm.exceptions
    if any(isinstance(e, json.JSONDecodeError) for e in _chain(error)):
        return False  # malformed response
    if isinstance(error, (exc.RateLimitError, exc.Timeout, exc.APIConnectionError,
                          exc.ServiceUnavailableError)):
        return True
    if isinstance(error, exc.InternalServerError):  # also how litellm reports refused connections
        return "Missing credentials" not in str(error)
    return isinstance(getattr(error, "status_code", None), int) and error.status_code >= 500


def _connection_error(error: BaseException) -> BaseException | None:
    """The lost or refused connection behind a litellm error (litellm reports it as a 500)."""
    import openai

    for e in _chain(error):
        if isinstance(e, openai.APIConnectionError) and not isinstance(e, openai.APITimeoutError):
            return e
    return None


def _explain_error(litellm: ModuleType, error: BaseException, model: str, api_base: str | None,
                   timeout: float, attempts: int) -> str:
    """What went wrong and what to do, from the last error after `attempts` tries."""
    exc = litellm.exceptions
    said = _provider_message(error)
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    where = f" at {api_base}" if api_base else ""
    chain = _chain(error)
    status = getattr(error, "status_code", None)
    if "LLM Provider NOT provided" in str(error):
        return f"unknown provider in model {model!r}: write it as provider/model (e.g. openai/gpt-4o-mini), {FALLBACK}"
    if isinstance(error, exc.Timeout) or any(isinstance(e, TimeoutError) for e in chain):
        return (f"{model} did not answer within the {timeout:g} s timeout ({tries}): try again later or allow "
                f"a longer timeout, {FALLBACK}")
    if any(isinstance(e, json.JSONDecodeError) for e in chain):
        return (f"{model}{where} sent a malformed response (not valid JSON): check that the endpoint is "
                f"OpenAI-compatible, {FALLBACK}")
    if isinstance(error, (exc.AuthenticationError, exc.PermissionDeniedError)) or status in (401, 403):
        return (f"the provider rejected the credentials for {model} ({said}): check the provider's API-key "
                f"environment variable, {FALLBACK}")
    if isinstance(error, exc.NotFoundError):
        return f"model {model!r} was not found{where} ({said}): check the model name, {FALLBACK}"
    if isinstance(error, exc.RateLimitError):
        return f"{model} is still rate-limited after {tries} ({said}): wait and try again, {FALLBACK}"
    if isinstance(error, exc.BadRequestError):
        return f"the provider refused the request to {model} ({said}): check the model name and prompt, {FALLBACK}"
    connection = _connection_error(error)
    if connection is not None or isinstance(error, exc.APIConnectionError):
        detail = (connection.__cause__ or connection) if connection is not None else said
        return f"could not connect to {model}{where} after {tries} ({detail}): check the network and api_base, {FALLBACK}"
    if isinstance(status, int) and status >= 500 and "Missing credentials" not in str(error):
        return f"the provider failed with error {status} after {tries} ({said}): try again later, {FALLBACK}"
    return f"the call to {model} failed ({type(error).__name__}: {said}): check the model and its settings, {FALLBACK}"


def _complete(litellm: ModuleType, model: str, messages: list[dict[str, str]], *, timeout: float,
              retries: int, api_base: str | None, max_tokens: int | None, logprobs: bool = False) -> tuple[Any, float]:
    """litellm.completion with our own bounded retries; returns the response and its latency."""
    # litellm's own num_retries re-runs through tenacity (not a dependency) and also retries 4xx: off.
    # drop_params: a model that refuses temperature=0 (reasoning models) still answers, once.
    kwargs: dict[str, Any] = {"temperature": TEMPERATURE, "timeout": timeout, "num_retries": 0,
                              "max_retries": 0, "drop_params": True}
    if api_base is not None:
        kwargs["api_base"] = api_base
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if logprobs:  # providers that lack them drop the parameters (drop_params) and answer without
        kwargs |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        try:
            return litellm.completion(model=model, messages=messages, **kwargs), time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - every failure is mapped to a ClosedModelError
            if attempt > retries or not _is_retryable(litellm, error):
                message = _explain_error(litellm, error, model, api_base, timeout, attempt)
                raise ClosedModelError(scrub(message)) from None
            wait = _retry_after(error)
            delay = min(MAX_DELAY_S, BACKOFF_S * 2 ** (attempt - 1) if wait is None else wait)
            log.info("closed model %s: %s; retrying in %.1f s", model, type(error).__name__, delay)
            time.sleep(delay)


def _cache_path(cache_dir: Path, model: str, messages: list[dict[str, str]], max_tokens: int | None,
                api_base: str | None, logprobs: bool = False) -> Path:
    return Path(cache_dir) / "closed" / f"{cache_key(model, messages, max_tokens, api_base, logprobs)}.json"


def cached_response(model: str, prompt: str, system: str | None = None, *, cache_dir: Path,
                    api_base: str | None = None, max_tokens: int | None = None,
                    logprobs: bool = False) -> ClosedResult | None:
    """The answer `fetch_response` would return from its cache, or None; never calls the model."""
    return _read_cache(_cache_path(cache_dir, model, _messages(prompt, system), max_tokens, api_base, logprobs))


def fetch_response(model: str, prompt: str, system: str | None = None, *, cache_dir: Path, timeout: float = 60.0,
                   retries: int = 2, api_base: str | None = None, max_tokens: int | None = None,
                   logprobs: bool = False) -> ClosedResult:
    """Ask `model` (a litellm model string) once at temperature 0, or return the cached answer.

    `timeout` is per attempt; rate limits, timeouts, lost connections and 5xx are retried `retries`
    times with backoff (or the provider's Retry-After). With `logprobs` the answer carries the provider's
    top alternatives for its first token, when the provider returns them (cached apart from a plain answer).
    Raises ClosedModelError.
    """
    messages = _messages(prompt, system)
    path = _cache_path(cache_dir, model, messages, max_tokens, api_base, logprobs)
    cached = _read_cache(path)
    if cached is not None:
        return cached

    litellm = _litellm()
    missing = _missing_keys(litellm, model, api_base)
    if missing:
        unset = f"{missing[0]} is not set" if len(missing) == 1 else f"none of {', '.join(missing)} is set"
        local = " (any value, for a local server that needs none)" if api_base else ""
        raise ClosedModelError(f"{unset}: export {'it' if len(missing) == 1 else 'one'}{local}, {FALLBACK}")

    response, latency = _complete(litellm, model, messages, timeout=timeout, retries=retries, api_base=api_base,
                                  max_tokens=max_tokens, logprobs=logprobs)
    result = ClosedResult(text=_text(response), model=str(getattr(response, "model", None) or model),
                          usage=_usage(litellm, response), latency_s=latency, cached=False,
                          first_token_logprobs=_first_token_logprobs(response) if logprobs else None)
    write_atomic(path, result.model_dump_json(indent=1))
    return result


class FixedOutput(BaseModel):
    """The response an explanation attributes: the caller's, or the closed model's answer (`answer`)."""

    text: str
    source: Literal["given", "closed_model"]
    answer: ClosedResult | None = None

    @property
    def calls(self) -> int:
        """Closed-model calls it took (a cached answer costs none)."""
        return int(self.answer is not None and not self.answer.cached)


def fixed_output(prompt: str, response: str | None = None, *, model: str | None = None, system: str | None = None,
                 api_base: str | None = None, timeout: float = 60.0, max_tokens: int | None = None,
                 logprobs: bool = False) -> FixedOutput:
    """The whole retrieval of the fixed output: the given `response`, or `model`'s answer to the prompt (asked
    once at temperature 0 with `timeout` per attempt, cached on disk under the cache dir; `fetch_response`;
    with `logprobs`, the first token's top alternatives too, which `refine` and `verify` measure against).

    Raises InputError when there is neither, ClosedModelError when the model gives no answer.
    """
    if response is not None:
        return FixedOutput(text=response, source="given")
    if not model:
        raise InputError("give the response to explain, or a model to get it from.")
    answer = fetch_response(model, prompt, system, cache_dir=settings.cache_dir(), timeout=timeout, api_base=api_base,
                            max_tokens=max_tokens, logprobs=logprobs)
    return FixedOutput(text=answer.text, source="closed_model", answer=answer)
