"""Reuse of the unperturbed prompt's key/value cache across perturbed prompts.

A perturbed prompt equals the unperturbed one up to its first changed token, and a causal model's
keys and values there depend only on those tokens (positions included, as RoPE is applied before
caching). So those positions are computed once, for the unperturbed prompt, and every perturbed
prompt runs only from its first change on.

Batch layout, per row: `[pad][cached keys][pad][new tokens]` where the new tokens all end at the
same column. Every pad comes before every real token of its row: the second pad only exists when
the row uses no cached keys. So relative distances between real tokens are the true ones, which
keeps sliding-window layers (Gemma) exact, and the response's logits sit in the last columns of
every row. A row that could reuse more than the batch's width allows recomputes a few real tokens
instead of computing pads: the same cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


@dataclass
class PrefixKV:
    """Keys and values of every layer for the tokens `ids` (each tensor: 1 × heads × len(ids) × dim)."""

    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def from_cache(cls, ids: list[int], cache) -> PrefixKV:
        """Keep the first len(ids) positions of a filled transformers cache (full, not sliding, layers)."""
        n = len(ids)
        return cls(list(ids), [layer.keys[:, :, :n].clone() for layer in cache.layers],
                   [layer.values[:, :, :n].clone() for layer in cache.layers])

    def reusable(self, prefix: Sequence[int]) -> int:
        """How many leading tokens of `prefix` can come from this cache (at least its last token is recomputed)."""
        return min(shared_length(self.ids, prefix), len(prefix) - 1)


@dataclass
class BatchLayout:
    """Inputs of one batched forward: new tokens, attention over cache + new, positions, cached keys used."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    reused: list[int]
    """Per row: how many cached positions it reads."""

    @property
    def cached_width(self) -> int:
        return self.attention_mask.shape[1] - self.input_ids.shape[1]


def layout(rows: Sequence[list[int]], reusable: Sequence[int], pad_id: int) -> BatchLayout:
    """Place rows (full token sequences) in one batch, reusing up to `reusable[r]` cached tokens of row r."""
    width = max(len(row) - k for row, k in zip(rows, reusable))
    reused = [max(0, len(row) - width) for row in rows]
    cached = max(reused)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), cached + width), dtype=torch.long)
    for r, (row, k) in enumerate(zip(rows, reused)):
        new = row[k:]
        input_ids[r, width - len(new):] = torch.tensor(new)
        attention[r, cached - k:cached] = 1
        attention[r, cached + width - len(new):] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, cached:]
    return BatchLayout(input_ids, attention, positions, reused)


def batch_cache(prefix: PrefixKV, reused: Sequence[int]):
    """A transformers DynamicCache holding, for row r, `reused[r]` cached positions, left-padded."""
    from transformers import DynamicCache

    width = max(reused)
    layers = []
    for keys, values in zip(prefix.keys, prefix.values):
        k = keys.new_zeros((len(reused), keys.shape[1], width, keys.shape[3]))
        v = values.new_zeros((len(reused), values.shape[1], width, values.shape[3]))
        for r, n in enumerate(reused):
            if n:
                k[r, :, width - n:] = keys[0, :, :n]
                v[r, :, width - n:] = values[0, :, :n]
        layers.append((k, v))
    return DynamicCache(layers)
