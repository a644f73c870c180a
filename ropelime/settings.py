"""Configuration read from the environment (prefix ROPELIME_): every variable is read here, and only here.

| variable | what |
| --- | --- |
| ROPELIME_CACHE_DIR | models, fixed outputs, scores and explanations (default ~/.cache/ropelime) |
| ROPELIME_SURROGATE | the default surrogate (a catalogued name, 'auto', a directory, a .gguf file or a hub id) |
| ROPELIME_DEVICE | cpu, cuda, … (default: cuda when available) |
| ROPELIME_DTYPE | compute precision: float32, mixed, bfloat16 or auto |
| ROPELIME_THREADS | CPU threads of the surrogate (default: the cores other processes leave free; `ropelime.cores`) |
| ROPELIME_MAX_FEATURES, ROPELIME_MAX_PROMPT_TOKENS, ROPELIME_MAX_RESPONSE_TOKENS | caps (`Limits`) |
| ROPELIME_MODEL | the MCP server's closed model when a call gives neither response nor model |
| ROPELIME_API_BASE | the MCP server's base URL of an OpenAI-compatible closed model |
| ROPELIME_CLOSED_TIMEOUT | the MCP server's seconds per closed-model attempt (default 60) |
| ROPELIME_MCP_TOKEN | the bearer token HTTP requests to the MCP server must carry |

Values are read when asked for, so a change of the environment applies to the next call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from ropelime.errors import InputError


def _get(name: str) -> str | None:
    """$ROPELIME_<name>, or None when unset or empty."""
    return os.environ.get(f"ROPELIME_{name}") or None


def surrogate() -> str | None:
    """$ROPELIME_SURROGATE: the surrogate used when none is named."""
    return _get("SURROGATE")


def device() -> str | None:
    """$ROPELIME_DEVICE: the device used when none is named."""
    return _get("DEVICE")


def dtype() -> str | None:
    """$ROPELIME_DTYPE: the compute precision used when none is named."""
    return _get("DTYPE")


def threads() -> int | None:
    """$ROPELIME_THREADS: torch threads for scoring, or None (unset or 'auto') to use the free cores."""
    raw = _get("THREADS")
    if raw is None or raw == "auto":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise InputError(f"ROPELIME_THREADS={raw!r} is not a number of threads; set it to one, e.g. 2, or to auto.")
    return int(raw)


def closed_model() -> str | None:
    """$ROPELIME_MODEL: the MCP server's default closed model."""
    return _get("MODEL")


def api_base() -> str | None:
    """$ROPELIME_API_BASE: the MCP server's default base URL of the closed model."""
    return _get("API_BASE")


def mcp_token() -> str | None:
    """$ROPELIME_MCP_TOKEN: the bearer token of the MCP server over HTTP."""
    return _get("MCP_TOKEN")


def closed_timeout(default: float = 60.0) -> float:
    """$ROPELIME_CLOSED_TIMEOUT: seconds per closed-model attempt (InputError when not a positive number)."""
    raw = _get("CLOSED_TIMEOUT")
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise InputError(f"ROPELIME_CLOSED_TIMEOUT={raw!r} is not a number of seconds; set it to one, "
                         "e.g. 60.") from None
    if seconds <= 0:
        raise InputError(f"ROPELIME_CLOSED_TIMEOUT must be more than 0 seconds, got {raw}.")
    return seconds


def cache_dir() -> Path:
    """Where models, fixed outputs and scores are cached: $ROPELIME_CACHE_DIR or ~/.cache/ropelime."""
    path = Path(_get("CACHE_DIR") or Path.home() / ".cache" / "ropelime").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Limits:
    """Caps that keep one explanation within reach of a CPU; each can be raised by its variable."""

    max_features: int = 1000
    """ROPELIME_MAX_FEATURES: features in the explainable part."""
    max_prompt_tokens: int = 8192
    """ROPELIME_MAX_PROMPT_TOKENS: surrogate tokens of the rendered prompt."""
    max_response_tokens: int = 1024
    """ROPELIME_MAX_RESPONSE_TOKENS: surrogate tokens of the response."""

    @classmethod
    def from_env(cls) -> Limits:
        """The defaults, overridden by ROPELIME_MAX_* variables."""
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"ROPELIME_{f.name.upper()}")  # not _get: an empty value is refused
            if raw is None:
                continue
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise InputError(f"ROPELIME_{f.name.upper()}={raw!r} is not a whole number; set it to one, "
                                 "e.g. 2000.") from None
            if values[f.name] < 1:
                raise InputError(f"ROPELIME_{f.name.upper()} must be at least 1, got {raw}.")
        return cls(**values)


def hide_library_progress_bars() -> None:
    """Turn off transformers' own progress bars (weight loading), which would clutter stderr."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
