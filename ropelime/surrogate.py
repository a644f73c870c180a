"""The local surrogate: a loaded RoPE causal LM (`ropelime.loading`) that renders prompts and scores a fixed
response under many of them; its RoPE geometry is in `ropelime.rope`.

Scoring is teacher forcing: the surrogate reads its own chat template around a (perturbed) prompt,
then the response tokens, and only the logits at the response positions are computed. Batches are
left-padded so every row's response sits at the same final positions, with explicit position ids.
Each perturbed prompt reuses the key/value cache of the unperturbed prompt up to its first changed
token (`ropelime.prefix_cache`); identical prompts are scored once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Collection, Iterator, Sequence

import numpy as np
import torch

from ropelime.attention import use_windowed_attention
from ropelime.catalogue import PromptFormat
from ropelime.cheap_forward import contiguous_head_input, keep_freed_memory, store_linear_weights_in_bf16
from ropelime.errors import SurrogateError
from ropelime.prefix_cache import PrefixKV, batch_cache, best_source, layout, plan_sharing, shared_length
from ropelime.records import DIVERGENCES
from ropelime.rope import find_rotary, rope_vectors
from ropelime.schema import EncodedPrompt, TokenScores

log = logging.getLogger(__name__)

LOGIT_BUDGET = 1 << 26
"""Largest rows × response tokens × vocabulary logits of one batch (256 MB in fp32): bounds memory."""

SCORE_CHUNK = 1 << 24
"""Logits turned into scores at once: bounds the temporaries of the divergences."""

MIN_SHARED_GAIN = 32
"""Fewest extra leading tokens a prompt must share with a scored one for that one's keys and values to be kept."""

KEPT_BYTES = 1 << 29
"""Memory for the kept keys and values of scored prompts (512 MB), per reference prompt."""

BATCH_TOKENS = {"cpu": 8192, "cuda": 65536}
"""New tokens per forward pass by device type (others: the CPU's). On a CPU, larger batches stop paying
beyond a few thousand tokens; a GPU needs more rows in flight to fill its cores (not measured here: no GPU)."""


class Surrogate:
    """A loaded causal LM with rotary position embeddings, ready to score responses."""

    def __init__(self, model, tokenizer, name: str, device: torch.device, precision: str = "float32",
                 prompt_format: PromptFormat | None = None) -> None:
        self.model = model.eval()
        self.precision = precision
        """'float32', 'mixed' (bfloat16 matrix products under autocast, float32 embeddings and norms) or 'bfloat16'."""
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.rotary = find_rotary(model)
        if self.rotary is None:
            raise SurrogateError(
                f"{name} has no rotary position embeddings; RoPE-LIME needs a RoPE model "
                f"(e.g. Gemma, Llama, Qwen, SmolLM2). Use the embedded gemma3-270m or another RoPE model."
            )
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.default_prompt_format: PromptFormat = prompt_format or ("chat" if self.has_chat_template else "plain")
        """How `auto` renders prompts: the format measured best for this surrogate, else chat when it has a template."""
        use_windowed_attention(self.model)
        contiguous_head_input(self.model)
        if precision == "mixed":
            store_linear_weights_in_bf16(self.model)
        self.placeholder_id = self._placeholder_id()
        forward = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward else "past_key_values"
        self.reuse_prefix = True
        """Reuse cached keys and values of a shared prompt start (off only to measure what it saves)."""
        self.keep_divergences = False
        """Compute the KL and JS divergences of every scored mask even when the target does not read them (the
        evaluation harness sets it, so that any target can later be fitted from the cached scores)."""
        self._prefix: PrefixKV | None = None
        """Keys and values of the last unperturbed prompt given to `reference`, reused by `iter_scores`."""
        self._kept: list[PrefixKV] = []
        """Keys and values of scored perturbed prompts that later prompts start from (`plan_sharing`)."""

    @classmethod
    def load(cls, name: str | None = None, *, device: str | None = None, dtype: str | None = None) -> Surrogate:
        """Load a catalogued surrogate by name (None: the embedded default), a local directory, a GGUF
        file or a hub id (see `ropelime.loading.load_model`)."""
        from ropelime.loading import load_model

        model, tokenizer, name, device, precision, prompt_format = load_model(name, device=device, dtype=dtype)
        return cls(model, tokenizer, name, device, precision, prompt_format=prompt_format)

    def _placeholder_id(self) -> int:
        ids = self.tokenizer.encode(" _", add_special_tokens=False)
        return ids[-1]

    # ---- encoding -------------------------------------------------------------------------

    def prompt_format(self, asked: str = "auto") -> PromptFormat:
        """The format a prompt is rendered in: `auto` is this surrogate's default; `chat` without a chat
        template falls back to plain text (never an error)."""
        chosen = self.default_prompt_format if asked == "auto" else asked
        return "chat" if chosen == "chat" and self.has_chat_template else "plain"

    def render(self, prompt: str, system: str | None, prompt_format: str = "auto") -> tuple[str, int, bool]:
        """The text the surrogate reads before the response, where the prompt starts in it, and
        whether that text already holds the special tokens (from a chat template).

        `chat` wraps the prompt (and system prompt) in the surrogate's chat template as the user turn and
        opens the assistant turn; `plain` is the system prompt, a blank line, the prompt and a blank line."""
        if self.prompt_format(prompt_format) == "chat":
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            offset = text.rfind(prompt)
            if offset < 0:
                raise SurrogateError("the surrogate's chat template altered the prompt text; "
                                     "strip leading/trailing whitespace from the prompt and retry.")
            return text, offset, True
        head = f"{system}\n\n" if system else ""
        return f"{head}{prompt}\n\n", len(head), False

    def encode_prompt(self, prompt: str, system: str | None, spans: Sequence[tuple[int, int]],
                      prompt_format: str = "auto") -> EncodedPrompt:
        """Tokenize the rendered prompt once and map each token to the feature span holding it."""
        text, offset, templated = self.render(prompt, system, prompt_format)
        encoding = self.tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        token_feature = np.full(len(ids), -1, dtype=np.int64)
        in_prompt = []
        starts = np.array([s for s, _ in spans], dtype=np.int64)
        for i, (a, b) in enumerate(encoding["offset_mapping"]):
            a, b = a - offset, b - offset
            if b <= 0 or a >= len(prompt) or a == b:
                continue
            in_prompt.append(i)
            piece = prompt[max(a, 0):b]
            anchor = max(a, 0) + (len(piece) - len(piece.lstrip()) if piece.strip() else 0)
            j = int(np.searchsorted(starts, anchor, side="right")) - 1
            if j >= 0 and spans[j][0] <= anchor < spans[j][1]:
                token_feature[i] = j
        return EncodedPrompt(ids, token_feature, np.array(in_prompt, dtype=np.int64))

    def encode_response(self, response: str) -> list[int]:
        """The response's token ids, as the surrogate would emit them after the prompt."""
        ids = self.tokenizer.encode(response, add_special_tokens=False)
        if not ids:
            raise SurrogateError("the response is empty; give the text whose support you want explained.")
        return ids

    def response_offsets(self, response: str) -> list[tuple[int, int]]:
        """The character span in the response of each of its tokens."""
        encoding = self.tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoding["offset_mapping"]]

    # ---- scoring --------------------------------------------------------------------------

    @torch.inference_mode()
    def reference(self, prefix: list[int], response: list[int]) -> torch.Tensor:
        """Log-distributions over the vocabulary at each response position for one prompt (T, V).

        The prompt's keys and values are kept: later `iter_scores` calls reuse them up to each
        perturbed prompt's first changed token.
        """
        from transformers import DynamicCache

        cache = DynamicCache()  # no config: every layer keeps all positions, also sliding-window ones
        logits = self._forward([list(prefix) + response[:-1]], [0], [None], len(response), cache)
        self._prefix = PrefixKV.from_cache(prefix, cache)
        self._kept = []
        return torch.log_softmax(logits[0].float(), dim=-1)

    @torch.inference_mode()
    def iter_scores(
        self,
        prefixes: Sequence[list[int]],
        response: list[int],
        *,
        reference: torch.Tensor | None = None,
        max_batch_tokens: int | None = None,
        later: Sequence[list[int]] = (),
        divergences: Collection[str] = DIVERGENCES,
    ) -> Iterator[tuple[list[int], list[TokenScores]]]:
        """Score the response after each prefix; yields (row indices, scores) batch by batch.

        Identical prefixes are scored once. Each prompt starts from the cached keys and values that
        serve most of its leading tokens: the reference prompt's, or those of prompts scored earlier for
        the same reference (`plan_sharing` picks which to keep, among these and for the prompts a
        later call will score, `later`); the kept ones are scored first. Rows are grouped by the number
        of tokens they must compute so padding stays small, with at most `max_batch_tokens` new tokens
        per batch (default: `BATCH_TOKENS` for the device); the caller may stop between batches. Given the
        `reference` distributions, the `divergences` to them ("kl", "js") are computed too.
        """
        max_batch_tokens = max_batch_tokens or BATCH_TOKENS.get(self.device.type, BATCH_TOKENS["cpu"])
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, prefix in enumerate(prefixes):
            groups.setdefault(tuple(prefix), []).append(i)
        unique = [list(key) for key in groups]
        shared = self._shared_prefix(unique) if self.reuse_prefix else None
        sources = [shared, *self._kept] if shared is not None else []
        kept = {}
        if sources:
            served = [best_source(sources, p)[1] for p in unique]
            served_later = [best_source(sources, p)[1] for p in later]
            budget = max(0, KEPT_BYTES // shared.bytes_per_token() - sum(len(k.ids) for k in self._kept))
            kept = plan_sharing(unique, later, served, served_later, min_gain=MIN_SHARED_GAIN, token_budget=budget)
        max_rows = max(1, LOGIT_BUDGET // (len(response) * self.model.config.get_text_config().vocab_size))
        for phase in ([u for u in range(len(unique)) if u in kept], [u for u in range(len(unique)) if u not in kept]):
            chosen = {u: best_source(sources, unique[u]) for u in phase}
            work = {u: len(unique[u]) + len(response) - 1 - chosen[u][1] for u in phase}
            batch: list[int] = []
            for u in sorted(phase, key=work.__getitem__):
                if batch and (work[u] * (len(batch) + 1) > max_batch_tokens or len(batch) == max_rows):
                    yield self._yield_batch(batch, unique, groups, chosen, kept, response, reference, divergences)
                    batch = []
                batch.append(u)
            if batch:
                yield self._yield_batch(batch, unique, groups, chosen, kept, response, reference, divergences)
            sources = [shared, *self._kept] if shared is not None else []
        if not later:
            self._kept = []  # nothing left to start from them: free the memory

    def _shared_prefix(self, prefixes: list[list[int]]) -> PrefixKV | None:
        """The cached prefix to reuse: the last reference prompt, else the prefixes' common start."""
        if self._prefix is not None and any(self._prefix.reusable(p) > 0 for p in prefixes):
            return self._prefix
        self._kept = []  # kept prompts belong to the reference they were scored with
        common = min((shared_length(prefixes[0], p) for p in prefixes), default=0)
        common = min(common, min(len(p) for p in prefixes) - 1)
        if common < 1 or len(prefixes) < 2:
            return None
        from transformers import DynamicCache

        cache = DynamicCache()
        self._forward([prefixes[0][:common]], [0], [None], 1, cache)
        return PrefixKV.from_cache(prefixes[0][:common], cache)

    def _yield_batch(self, batch, unique, groups, chosen, kept, response, reference, divergences):
        from transformers import DynamicCache

        keep = any(u in kept for u in batch)
        cache = DynamicCache() if keep else None
        logits, layout_used, cache = self._forward(
            [unique[u] + response[:-1] for u in batch], [chosen[u][1] for u in batch],
            [chosen[u][0] for u in batch], len(response), cache, returning_cache=True)
        for r, u in enumerate(batch):
            if u in kept:
                self._kept.append(PrefixKV.from_batch_row(unique[u][:kept[u]], cache, layout_used.attention_mask, r))
        scores = self._token_scores(logits, response, reference, divergences)
        rows, out = [], []
        for u, row_scores in zip(batch, scores):
            for i in groups[tuple(unique[u])]:
                rows.append(i)
                out.append(row_scores)
        return rows, out

    def _token_scores(self, logits: torch.Tensor, response: list[int], reference,
                      divergences: Collection[str] = DIVERGENCES) -> list[TokenScores]:
        """log p of each response token and, given the reference (T, V), the `divergences` to it; a few rows at a time.

        Works in place on a float32 copy of each chunk (on `logits` itself when they are float32: they are
        consumed): no vocabulary-sized temporaries, the same numbers as computing out of place.
        """
        target = torch.tensor(response, device=logits.device)
        if reference is not None:
            p_ref = reference.exp()
            if "js" in divergences:
                ref_entropy = -torch.special.xlogy(p_ref, p_ref).sum(-1)
        rows: list[TokenScores] = []
        step = max(1, SCORE_CHUNK // (logits.shape[1] * logits.shape[2]))
        for start in range(0, len(logits), step):
            logprobs = logits[start:start + step].float()
            torch.log_softmax(logprobs, dim=-1, out=logprobs)
            token_logp = logprobs.gather(-1, target.expand(len(logprobs), -1).unsqueeze(-1)).squeeze(-1)
            kl = js = None
            if reference is not None and "js" in divergences:
                q = logprobs.exp()
                mix = 0.5 * (p_ref + q)
                # JS = H(mix) - (H(p) + H(q)) / 2
                js = -torch.special.xlogy(mix, mix).sum(-1) - 0.5 * (ref_entropy - (q * logprobs).sum(-1))
                js = js.clamp(min=0)
            if reference is not None and "kl" in divergences:  # last: it overwrites logprobs
                kl = torch.sub(reference, logprobs, out=logprobs).mul_(p_ref).sum(-1)
            for r in range(len(logprobs)):
                rows.append(TokenScores(
                    token_logp[r].double().cpu().numpy(),
                    None if kl is None else kl[r].double().cpu().numpy(),
                    None if js is None else js[r].double().cpu().numpy(),
                ))
        return rows

    def computing(self) -> torch.autocast:
        """The context every forward pass of `model` runs in: bfloat16 autocast for 'mixed', else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "mixed")

    def _forward(self, rows: list[list[int]], reusable: list[int], sources: Sequence[PrefixKV | None], keep: int,
                 cache=None, returning_cache: bool = False):
        """Logits of the last `keep` positions of each row, (B, keep, V), from one batched forward pass.

        Row r reads its first `reusable[r]` positions from `sources[r]` instead of computing them; a given
        `cache` (used when nothing is reused) is filled with the rows' keys and values. With
        `returning_cache`: (logits, the batch layout, the filled cache or None).
        """
        if self.device.type == "cpu":
            keep_freed_memory()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = layout(rows, reusable, pad)
        if batch.cached_width:
            cache = batch_cache(sources, batch.reused)
        with self.computing():
            out = self.model(
                input_ids=batch.input_ids.to(self.device),
                attention_mask=batch.attention_mask.to(self.device),
                position_ids=batch.position_ids.to(self.device),
                logits_to_keep=keep,
                use_cache=cache is not None,
                **{self._cache_argument: cache},
            )
        return (out.logits, batch, cache) if returning_cache else out.logits

    # ---- RoPE embedding space -------------------------------------------------------------

    def rope_vectors(self, ids: list[int], keep: np.ndarray | None = None) -> torch.Tensor:
        """The tokens' input embeddings rotated by the model's rotary embedding (`ropelime.rope.rope_vectors`)."""
        return rope_vectors(self.model, self.rotary, ids, keep)

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "dtype": self.precision,
            "device": str(self.device),
            "chat_template": self.has_chat_template,
        }
