"""Build the perturbed prompt for a mask (1 = feature kept), as text or as surrogate tokens.

`delete` removes each masked feature with its trailing whitespace; `placeholder` replaces it by a
neutral placeholder (in text: its content, whitespace kept; in tokens: each of its tokens, so later
tokens keep their positions). Everything outside the masked features is kept unchanged.

A perturbation is a `Perturbation` in `PERTURBATIONS`: how it rewrites the text and the tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ropelime.registry import Registry

if TYPE_CHECKING:
    from ropelime.records import EncodedPrompt, Feature

PLACEHOLDER = "_"


def delete_text(text: str, placeholder: str) -> str:
    """A masked feature's text under `delete`: nothing."""
    return ""


def placeholder_text(text: str, placeholder: str) -> str:
    """A masked feature's text under `placeholder`: its content replaced, its whitespace kept."""
    content = text.strip()
    lead = len(text) - len(text.lstrip())
    return text[:lead] + placeholder + text[lead + len(content):]


def delete_tokens(ids: np.ndarray, masked: np.ndarray, prompt_tokens: np.ndarray,
                  placeholder_id: int) -> tuple[list[int], np.ndarray]:
    """Drop the masked tokens; the prompt tokens' positions move up."""
    new_position = np.cumsum(~masked) - 1
    kept = prompt_tokens[~masked[prompt_tokens]]
    return ids[~masked].tolist(), new_position[kept]


def placeholder_tokens(ids: np.ndarray, masked: np.ndarray, prompt_tokens: np.ndarray,
                       placeholder_id: int) -> tuple[list[int], np.ndarray]:
    """Replace each masked token by the placeholder token; positions are kept."""
    return np.where(masked, placeholder_id, ids).tolist(), prompt_tokens


@dataclass(frozen=True)
class Perturbation:
    """How a masked feature is rewritten: in the text (`text(feature_text, placeholder)`) and in the tokens
    (`tokens(ids, masked, prompt_tokens, placeholder_id) -> (ids, positions of the prompt tokens)`)."""

    text: Callable[[str, str], str]
    tokens: Callable[[np.ndarray, np.ndarray, np.ndarray, int], tuple[list[int], np.ndarray]]


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation", {
    "delete": Perturbation(delete_text, delete_tokens),
    "placeholder": Perturbation(placeholder_text, placeholder_tokens),
})
"""The perturbations by name (the choices of `ExplainConfig.perturb`)."""


def _perturbation(mode: str) -> Perturbation:
    if mode not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {mode!r}; use {' or '.join(map(repr, PERTURBATIONS))}.")
    return PERTURBATIONS[mode]


def perturb_text(prompt: str, features: list[Feature], mask: np.ndarray, mode: str,
                 placeholder: str = PLACEHOLDER) -> str:
    """The prompt with the features where `mask` is 0 deleted or replaced by `placeholder`."""
    keep = _check_mask(mask, len(features))
    rewrite = _perturbation(mode).text
    pieces, cursor = [], 0
    for feature, kept in zip(features, keep):
        if kept:
            continue
        pieces.append(prompt[cursor:feature.start])
        pieces.append(rewrite(feature.text, placeholder))
        cursor = feature.end
    pieces.append(prompt[cursor:])
    return "".join(pieces)


def perturb_tokens(encoded: EncodedPrompt, mask: np.ndarray, mode: str,
                   placeholder_id: int) -> tuple[list[int], np.ndarray]:
    """Perturbed token ids, and the positions in them of the tokens that come from the prompt.

    A token belongs to the feature given by `encoded.token_feature` (-1 = fixed text).
    """
    keep = _check_mask(mask, None)
    rewrite = _perturbation(mode).tokens
    feature = encoded.token_feature
    masked = np.zeros(len(feature), dtype=bool)
    inside = feature >= 0
    masked[inside] = ~keep[feature[inside]]
    return rewrite(np.asarray(encoded.ids, dtype=np.int64), masked, encoded.prompt_tokens, placeholder_id)


def _check_mask(mask: np.ndarray, d: int | None) -> np.ndarray:
    """The mask as a 1-D bool array of length d (when given)."""
    keep = np.asarray(mask)
    if keep.ndim != 1 or (d is not None and keep.shape[0] != d):
        raise ValueError(f"mask must be a 1-D array with one entry per feature ({d}), got shape {keep.shape}.")
    return keep.astype(bool)
