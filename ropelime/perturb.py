"""Build the perturbed prompt for a mask (1 = feature kept), as text or as surrogate tokens.

`delete` removes each masked feature with its trailing whitespace; `placeholder` replaces it by a
neutral placeholder (in text: its content, whitespace kept; in tokens: each of its tokens, so later
tokens keep their positions). Everything outside the masked features is kept unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ropelime.schema import Feature, Perturbation

if TYPE_CHECKING:
    from ropelime.surrogate import EncodedPrompt

PLACEHOLDER = "_"


def perturb_text(prompt: str, features: list[Feature], mask: np.ndarray, mode: Perturbation,
                 placeholder: str = PLACEHOLDER) -> str:
    """The prompt with the features where `mask` is 0 deleted or replaced by `placeholder`."""
    keep = _check_mask(mask, len(features))
    if mode not in ("delete", "placeholder"):
        raise ValueError(f"unknown perturbation {mode!r}; use 'delete' or 'placeholder'.")
    pieces, cursor = [], 0
    for feature, kept in zip(features, keep):
        if kept:
            continue
        pieces.append(prompt[cursor:feature.start])
        if mode == "placeholder":
            text = feature.text
            content = text.strip()
            lead = len(text) - len(text.lstrip())
            pieces.append(text[:lead] + placeholder + text[lead + len(content):])
        cursor = feature.end
    pieces.append(prompt[cursor:])
    return "".join(pieces)


def perturb_tokens(encoded: EncodedPrompt, mask: np.ndarray, mode: Perturbation,
                   placeholder_id: int) -> tuple[list[int], np.ndarray]:
    """Perturbed token ids, and the positions in them of the tokens that come from the prompt.

    A token belongs to the feature given by `encoded.token_feature` (-1 = fixed text).
    """
    keep = _check_mask(mask, None)
    feature = encoded.token_feature
    masked = np.zeros(len(feature), dtype=bool)
    inside = feature >= 0
    masked[inside] = ~keep[feature[inside]]
    ids = np.asarray(encoded.ids, dtype=np.int64)
    if mode == "placeholder":
        return np.where(masked, placeholder_id, ids).tolist(), encoded.prompt_tokens
    if mode != "delete":
        raise ValueError(f"unknown perturbation {mode!r}; use 'delete' or 'placeholder'.")
    new_position = np.cumsum(~masked) - 1
    prompt_tokens = encoded.prompt_tokens[~masked[encoded.prompt_tokens]]
    return ids[~masked].tolist(), new_position[prompt_tokens]


def _check_mask(mask: np.ndarray, d: int | None) -> np.ndarray:
    """The mask as a 1-D bool array of length d (when given)."""
    keep = np.asarray(mask)
    if keep.ndim != 1 or (d is not None and keep.shape[0] != d):
        raise ValueError(f"mask must be a 1-D array with one entry per feature ({d}), got shape {keep.shape}.")
    return keep.astype(bool)
