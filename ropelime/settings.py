"""Configuration read from the environment (prefix ROPELIME_)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from ropelime.errors import InputError


def cache_dir() -> Path:
    """Where models, fixed outputs and scores are cached: $ROPELIME_CACHE_DIR or ~/.cache/ropelime."""
    path = Path(os.environ.get("ROPELIME_CACHE_DIR") or Path.home() / ".cache" / "ropelime").expanduser()
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
            raw = os.environ.get(f"ROPELIME_{f.name.upper()}")
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
