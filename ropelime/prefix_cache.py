"""Reuse of key/value caches across the prompts scored for one response.

A perturbed prompt equals the unperturbed one up to its first changed token, and a causal model's
keys and values there depend only on those tokens (positions included, as RoPE is applied before
caching). So those positions are computed once, for the unperturbed prompt, and every perturbed
prompt runs only from its first change on. Perturbed prompts also share starts among themselves
(removing sentences 3 and 17 reads like removing 3 alone up to sentence 17): `plan_sharing` picks
which scored prompts keep their keys and values for others to start from, within a memory budget.

Batch layout, per row: `[pad][cached keys][pad][new tokens]` where the new tokens all end at the
same column. Every pad comes before every real token of its row: the second pad only exists when
the row uses no cached keys. So relative distances between real tokens are the true ones, which
keeps sliding-window layers (Gemma) exact, and the response's logits sit in the last columns of
every row. A row that could reuse more than the batch's width allows recomputes a few real tokens
instead of computing pads: the same cost.
"""

from __future__ import annotations

import bisect
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

    @classmethod
    def from_batch_row(cls, ids: list[int], cache, attention_mask: torch.Tensor, row: int) -> PrefixKV:
        """Keep the first len(ids) real positions of one row of a batched cache laid out by `layout`."""
        columns = torch.nonzero(attention_mask[row]).flatten()[:len(ids)]
        return cls(list(ids), [layer.keys[row:row + 1, :, columns] for layer in cache.layers],
                   [layer.values[row:row + 1, :, columns] for layer in cache.layers])

    def bytes_per_token(self) -> int:
        """Memory one cached position takes over all layers' keys and values."""
        return sum(t[0, :, 0].numel() * t.element_size() for t in (*self.keys, *self.values))


def best_source(sources: Sequence[PrefixKV], prefix: Sequence[int]) -> tuple[PrefixKV | None, int]:
    """The cache that serves most of `prefix`'s leading tokens, and how many (None, 0 when none serves any)."""
    best, most = None, 0
    for source in sources:
        n = source.reusable(prefix)
        if n > most:
            best, most = source, n
    return best, most


def plan_sharing(prompts: Sequence[Sequence[int]], later: Sequence[Sequence[int]], served: Sequence[int],
                 served_later: Sequence[int], *, min_gain: int, token_budget: int) -> dict[int, int]:
    """Which of `prompts` (to be scored now) to keep, and how many leading tokens of each: {index: tokens}.

    A prompt is kept when another prompt — now or `later` — shares at least `min_gain` more leading tokens
    with it than with the caches that already serve it (`served`, `served_later`: those tokens). A kept
    prompt is never itself planned to start from another one scored now, so it can go first. Links are
    taken by gain while the kept tokens fit `token_budget`. The best partner of a prompt among the others
    is one of its neighbours in sorted order, so only neighbours are compared.
    """
    keys = [tuple(p) for p in prompts]
    order = sorted(range(len(prompts)), key=keys.__getitem__)
    ranked = [keys[i] for i in order]
    links = []  # (gain, donor, recipient: ("now", i) or ("later", j), tokens)
    candidates = [(("now", i), keys[i], served[i]) for i in range(len(prompts))]
    candidates += [(("later", j), tuple(p), served_later[j]) for j, p in enumerate(later)]
    for recipient, key, already in candidates:
        at = bisect.bisect_left(ranked, key)
        for neighbour in (at - 1, at, at + 1):
            if 0 <= neighbour < len(order) and recipient != ("now", order[neighbour]):
                donor = order[neighbour]
                tokens = min(shared_length(keys[donor], key), len(key) - 1)
                if tokens - already >= min_gain:
                    links.append((tokens - already, donor, recipient, tokens))
    kept: dict[int, int] = {}
    receiving: set[int] = set()
    spent = 0
    for gain, donor, recipient, tokens in sorted(links, key=lambda link: -link[0]):
        if donor in receiving or (recipient[0] == "now" and recipient[1] in kept):
            continue
        extra = max(0, tokens - kept.get(donor, 0))
        if spent + extra > token_budget:
            continue
        spent += extra
        kept[donor] = max(kept.get(donor, 0), tokens)
        if recipient[0] == "now":
            receiving.add(recipient[1])
    return kept


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


def batch_cache(sources: Sequence[PrefixKV | None], reused: Sequence[int]):
    """A transformers DynamicCache holding, for row r, the first `reused[r]` positions of `sources[r]`, left-padded."""
    from transformers import DynamicCache

    width = max(reused)
    template = next(source for source, n in zip(sources, reused) if n)
    layers = []
    for layer, (keys, values) in enumerate(zip(template.keys, template.values)):
        k = keys.new_zeros((len(reused), keys.shape[1], width, keys.shape[3]))
        v = values.new_zeros((len(reused), values.shape[1], width, values.shape[3]))
        for r, (source, n) in enumerate(zip(sources, reused)):
            if n:
                k[r, :, width - n:] = source.keys[layer][0, :, :n]
                v[r, :, width - n:] = source.values[layer][0, :, :n]
        layers.append((k, v))
    return DynamicCache(layers)
