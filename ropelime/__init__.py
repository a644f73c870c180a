"""RoPE-LIME: explain a closed LLM's fixed answer with a local RoPE surrogate.

    import ropelime
    result = ropelime.explain(prompt, response, explain=context, granularity="sentence")
    result.top(3)
    ropelime.verify(result, 3, model="openai/gpt-4o-mini")   # check the top 3 with the closed model

    samples = ropelime.score(prompt, response, explain=context)   # score once …
    ropelime.fit_samples(samples, output_span="Paris")           # … fit many (no surrogate pass)

The names below load on first use, so `import ropelime` (and the CLI's `--help`) does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Cancelled": "ropelime.errors",
    "ExplainConfig": "ropelime.schema",
    "Explanation": "ropelime.schema",
    "FeatureScore": "ropelime.schema",
    "ScoredSamples": "ropelime.samples",
    "Surrogate": "ropelime.surrogate",
    "audit": "ropelime.audit",
    "explain": "ropelime.explain",
    "fit_samples": "ropelime.samples",
    "load_surrogate": "ropelime.explain",
    "refit": "ropelime.explain",
    "resume": "ropelime.explain",
    "score": "ropelime.explain",
    "verify": "ropelime.verify",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from ropelime.audit import audit
    from ropelime.errors import Cancelled
    from ropelime.explain import explain, load_surrogate, refit, resume, score
    from ropelime.samples import ScoredSamples, fit_samples
    from ropelime.schema import ExplainConfig, Explanation, FeatureScore
    from ropelime.surrogate import Surrogate
    from ropelime.verify import verify


class _Package(types.ModuleType):
    """Keeps `ropelime.explain` (`audit`, `verify`) the function: importing the submodule of the same name
    would rebind the package's attribute to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}" and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ropelime' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
