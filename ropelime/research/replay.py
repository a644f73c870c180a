"""A recorded closed model, replayed: an OpenAI-compatible endpoint on 127.0.0.1 that answers the prompts of a
fidelity data file (`ropelime.research.fidelity`) — unablated, or with one user segment deleted — as the
recorded model did, with the recorded label log-probabilities as the first token's top alternatives.

The product's own closed-model path (litellm, `openai/<model>` with `api_base`) runs against it unchanged,
so refinement and verification are measured offline, at no cost, exactly as a user's calls would go:

    with ReplayEndpoint(rows) as replay:
        fetch_response("openai/gpt-4o", user, system, api_base=replay.base_url, logprobs=True, ...)

It refuses (HTTP 400, one line) any prompt it has no recording of, and (404) any model the file lacks.
Prompts are matched with their whitespace runs collapsed.
"""

from __future__ import annotations

import json
from typing import Any

from ropelime.research.endpoint import Answer, OpenAIEndpoint, error_answer, message_text
from ropelime.research.fidelity import api_models

Recording = tuple[list[float | None] | None, dict[str, Any]]
"""The label log-probabilities of one prompt (None: no label was among the recorded top-K), and its row."""


def normalised(text: str) -> str:
    return " ".join(text.split())


def dialog_key(system: str, user: str) -> str:
    return json.dumps([normalised(system), normalised(user)])


class ReplayEndpoint(OpenAIEndpoint):
    """Answers the recorded prompts of `rows` for every API model they hold (see the module docstring)."""

    def __init__(self, rows: list[dict[str, Any]], *, port: int = 0, source: str = "the fidelity data") -> None:
        super().__init__("", model="replay", port=port)
        self.source = source
        self.recordings: dict[str, dict[str, Recording]] = {}
        for row in rows:
            segments = row["segments"]
            for model in api_models(row):
                record, table = row["models"][model], self.recordings.setdefault(model, {})
                table[dialog_key(row["system"], row["user"])] = (record["orig"], row)
                for i, segment in enumerate(segments):
                    deleted = row["user"][:segment["start"]] + row["user"][segment["end"]:]
                    table.setdefault(dialog_key(row["system"], deleted), (record["ablated"][i], row))
        self.prompts = len(rows)

    def answer(self, body: dict[str, Any], recorded: Any) -> Answer:
        model = str(body.get("model") or "")
        if model not in self.recordings:
            return error_answer(404, f"The model `{model}` does not exist in {self.source}: this replay endpoint "
                                     f"serves {', '.join(sorted(self.recordings))}.")
        messages = body.get("messages") or []
        system = next((message_text(m) for m in messages if m.get("role") == "system"), "")
        user = message_text(messages[-1]) if messages else ""
        found = self.recordings[model].get(dialog_key(system, user))
        if found is None:
            return error_answer(400, f"no recording of this prompt for {model} in {self.source}: the replay endpoint "
                                     f"answers only its {self.prompts} recorded prompts, unablated or with one "
                                     "user segment deleted.")
        lps, row = found
        return 200, json.dumps(self.recorded_completion(body, lps, row)).encode(), {}

    def recorded_completion(self, body: dict[str, Any], lps: list[float | None] | None, row: dict[str, Any]) -> dict:
        """The chat.completion of one recording: the most probable recorded label as the answer, and every
        recorded label's log-probability as the first token's alternatives (a label outside the recorded
        top-K is absent, as it was from the provider's answer)."""
        present = {row["label_token"][label]: lp for lp, label in zip(lps or [], row["labels"]) if lp is not None}
        if not present:
            return self.completion(body, "(no label among the recorded top alternatives)")
        best = max((lp, label) for lp, label in zip(lps, row["labels"]) if lp is not None)[1]
        return self.completion(body, row["response_text"][best], present)
