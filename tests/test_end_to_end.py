"""End to end on the real embedded surrogate (Gemma 3 270M): the needle sentence must rank first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ropelime

pytestmark = pytest.mark.slow

DISTRACTORS = [
    "The harbour town of Lysa is known for its painted boats.",
    "Its annual fair draws visitors from across the coast every August.",
    "Most houses in the old quarter were built from grey limestone.",
    "The local football club has never won the regional cup.",
    "A ferry leaves for the islands twice a day in summer.",
    "The town museum keeps a collection of old fishing nets.",
]
NEEDLE = "The lighthouse of Lysa was built by the architect Oren Castell in 1902."
QUESTION = "Question: Who built the lighthouse of Lysa?"


@pytest.mark.parametrize("position", [1, 4])
def test_needle_sentence_ranks_first(embedded_surrogate, position):
    sentences = DISTRACTORS[:position] + [NEEDLE] + DISTRACTORS[position:]
    context = " ".join(sentences)
    prompt = f"Context: {context}\n\n{QUESTION}"
    result = ropelime.explain(prompt, "Oren Castell built the lighthouse of Lysa in 1902.",
                              explain=context, surrogate=embedded_surrogate, granularity="sentence", budget=32)
    assert len(result.features) == len(sentences)
    top = result.top(1)[0]
    assert top.text.strip() == NEEDLE
    assert top.rank == 1 and top.ci_low > 0
    assert result.diagnostics.complete and result.cost.closed_model_calls == 0
    for f in result.features:
        assert prompt[f.start:f.end] == f.text


def test_cli_json_on_a_hotpotqa_question(embedded_surrogate, hotpotqa_items, tmp_path):
    item = hotpotqa_items[0]
    context = "\n\n".join(f"{title}: {''.join(sentences)}" for title, sentences in item["context"])
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(f"Question: {item['question']}\n\nContext:\n{context}", encoding="utf-8")
    html = tmp_path / "page.html"
    out = subprocess.run(
        [sys.executable, "-m", "ropelime.cli", "explain", "--prompt-file", str(prompt_file), "--explain", context,
         "--response", item["answer"], "--granularity", "sentence", "--budget", "16", "--json", "--html", str(html)],
        capture_output=True, text=True, timeout=900, check=True,
        env={**__import__("os").environ, "ROPELIME_SURROGATE": str(embedded_surrogate.model.name_or_path)},
    )
    data = json.loads(out.stdout)
    assert data["cost"]["closed_model_calls"] == 0
    assert data["response"] == item["answer"]
    prompt = prompt_file.read_text(encoding="utf-8")
    assert len(data["features"]) >= 30
    for f in data["features"]:
        assert prompt[f["start"]:f["end"]] == f["text"]
        assert f["ci_low"] <= f["score"] <= f["ci_high"]
    assert sorted(f["rank"] for f in data["features"]) == list(range(1, len(data["features"]) + 1))
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
