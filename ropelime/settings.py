"""Configuration read from the environment (prefix ROPELIME_)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where models, fixed outputs and scores are cached: $ROPELIME_CACHE_DIR or ~/.cache/ropelime."""
    path = Path(os.environ.get("ROPELIME_CACHE_DIR") or Path.home() / ".cache" / "ropelime").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
