"""Scoring speed measured on this machine, per surrogate, kept in the cache directory.

The catalogue's tokens/s were measured on one reference machine (2 cores with native bf16); a CPU
without it runs the same surrogate several times slower. Every scoring run that computes enough
tokens updates this machine's figure (`speeds.json`), which `--surrogate auto` plans with and
`ropelime models` shows.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ropelime.settings import cache_dir

MIN_TOKENS = 2048
"""Runs scoring fewer tokens say more about fixed costs than about speed: not recorded."""
WEIGHT_OF_NEW = 0.5
"""The new measurement's weight in the running figure."""


def _path() -> Path:
    return cache_dir() / "speeds.json"


def _read() -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(_path().read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def measured(surrogate: str) -> float | None:
    """Tokens scored per second by `surrogate` (a catalogue or model name) on this machine, if measured."""
    return _read().get(surrogate)


def record(surrogate: str, tokens: int, seconds: float) -> None:
    """Fold one scoring run into this machine's figure (ignored when too small to measure)."""
    if tokens < MIN_TOKENS or seconds <= 0:
        return
    speeds = _read()
    rate = tokens / seconds
    speeds[surrogate] = rate if surrogate not in speeds else (
        WEIGHT_OF_NEW * rate + (1 - WEIGHT_OF_NEW) * speeds[surrogate])
    path = _path()
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as out:
        json.dump({k: round(v, 1) for k, v in sorted(speeds.items())}, out, indent=1)
    os.replace(out.name, path)
