"""The plain records the pipeline's stages pass each other: a feature of the prompt, the prompt as the
surrogate reads it, the surrogate's per-token scores. They sit below the stages (no torch, no registries);
`ropelime.schema` holds them with the rest of the data model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel

KernelCost = Literal["euclidean", "cosine"]
"""The ground cost between RoPE token vectors in the rwmd_rope kernel's distance."""


class Feature(BaseModel):
    """One explainable unit of the prompt, keyed by its character span in the prompt as given."""

    index: int
    text: str
    start: int
    end: int


@dataclass
class EncodedPrompt:
    """A prompt rendered for the surrogate: token ids and, per token, its feature (-1 = fixed)."""

    ids: list[int]
    token_feature: np.ndarray
    prompt_tokens: np.ndarray
    """Indices of the tokens that come from the prompt text (not chat scaffolding)."""


DIVERGENCES = frozenset({"kl", "js"})
"""The divergences from a reference distribution that scoring can compute (`TokenScores` fields)."""


@dataclass
class TokenScores:
    """Per response token: log p(y_t) and, when a reference was given, the divergences asked for (KL, JS) to it."""

    logp: np.ndarray
    kl: np.ndarray | None = None
    js: np.ndarray | None = None
