"""Refinement with the closed model's own effects, against recorded closed models replayed by `ropelime replay`
as a real process on 127.0.0.1 and reached through litellm as a user's calls would go: the replayed answers
and log-probabilities, its refusals, and `refine`'s call count, measured effects and ranking on a prompt whose
true leave-one-out is recorded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ropelime
from ropelime.asking import answer_support
from ropelime.closed import fetch_response
from ropelime.errors import ClosedModelError, InputError
from ropelime.refine import check_request, refine
from ropelime.research import fidelity
from ropelime.schema import ExplainConfig
from tests.openai_stub import OpenAIStub

SAMPLE = Path(__file__).parent / "data" / "fidelity_sample.jsonl"
MODEL = "gpt-4o"


@pytest.fixture(scope="module")
def row() -> dict:
    return fidelity.read_prompts(SAMPLE, n=1)[0]


@pytest.fixture(scope="module")
def replay_url() -> str:
    """`ropelime replay` in its own process; its base URL, read from what it prints."""
    process = subprocess.Popen([sys.executable, "-m", "ropelime.cli", "replay", "--data", str(SAMPLE)],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stderr.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert found, f"replay did not start: {line!r}"
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-replay-any")


def ask(prompt: str, system: str, url: str, **kwargs):
    from ropelime.settings import cache_dir

    return fetch_response(f"openai/{MODEL}", prompt, system, cache_dir=cache_dir(), api_base=url, timeout=20,
                          retries=0, **kwargs)


def test_the_replay_answers_recorded_prompts_with_their_log_probabilities(row, replay_url):
    record = row["models"][MODEL]
    answer = fidelity.model_answer(row, MODEL)
    whole = ask(row["user"], row["system"], replay_url, logprobs=True)
    assert whole.text == row["response_text"][answer]
    recorded = {row["label_token"][label]: lp for label, lp in zip(row["labels"], record["orig"]) if lp is not None}
    assert whole.first_token_logprobs == pytest.approx(recorded)
    segment = row["segments"][1]
    deleted = row["user"][:segment["start"]] + row["user"][segment["end"]:]
    without = ask(deleted, row["system"], replay_url, logprobs=True)
    support = answer_support(whole.first_token_logprobs, whole.text)
    assert support - answer_support(without.first_token_logprobs, whole.text) == pytest.approx(
        record["loo"][1], abs=2e-5)  # the release's own LOO of that segment, through litellm
    assert ask(row["user"], row["system"], replay_url).first_token_logprobs is None  # not asked for: none kept


def test_the_replay_refuses_what_it_has_no_recording_of(row, replay_url):
    with pytest.raises(ClosedModelError, match="no recording of this prompt"):
        ask(row["user"] + " One more sentence.", row["system"], replay_url)
    from ropelime.settings import cache_dir

    with pytest.raises(ClosedModelError, match="not found"):
        fetch_response("openai/claude-9", row["user"], row["system"], cache_dir=cache_dir(), api_base=replay_url,
                       timeout=20, retries=0)


def explanation_of(row: dict, surrogate, **kwargs):
    indices = fidelity.feature_segments(row, "context")
    answer = fidelity.model_answer(row, MODEL)
    return fidelity.explain_prompt(row, row["response_text"][answer], indices, ExplainConfig(budget=10), surrogate,
                                   None, **kwargs), indices, answer


def test_refine_measures_the_closed_models_own_loo_and_ranks_it_first(row, replay_url, tiny_surrogate):
    explanation, indices, answer = explanation_of(row, tiny_surrogate)
    truth = fidelity.label_loo(row, MODEL, answer, indices)
    refined = refine(explanation, 2, model=f"openai/{MODEL}", api_base=replay_url)
    r = refined.refinement
    assert r.signal == "logprob" and r.candidates == "surrogate" and r.closed_model_calls == 3  # original + 2
    chosen = [f.index for f in sorted(explanation.features, key=lambda f: -f.ci_high)[:2]]
    assert [m.feature for m in r.features] == chosen
    for m in r.features:  # the release's LOO; where it is undefined (the answer left the top-K), a lower bound
        assert m.error is None
        assert m.effect == pytest.approx(truth[m.feature], abs=2e-5) if np.isfinite(truth[m.feature]) else m.effect > 0
    by_rank = sorted(refined.features, key=lambda f: f.rank)
    assert [f.evidence for f in by_rank] == ["measured"] * 2 + ["estimated"] * (len(indices) - 2)
    assert abs(by_rank[0].closed_effect) >= abs(by_rank[1].closed_effect)  # kl is unsigned: by magnitude
    rest = [f.index for f in sorted(explanation.features, key=lambda f: -f.score) if f.index not in chosen]
    assert [f.index for f in by_rank[2:]] == rest  # the estimates keep the surrogate's order
    assert refined.top(2) == by_rank[:2]
    assert "not measured" in explanation.diagnostics.expected_fidelity  # the tiny model is not catalogued
    assert refined.diagnostics.expected_fidelity.startswith("the 2 feature(s) marked measured")
    assert refined.cost.closed_model_calls == explanation.cost.closed_model_calls + 3
    again = refine(explanation, 2, model=f"openai/{MODEL}", api_base=replay_url)
    assert again.refinement.closed_model_calls == 0 and again.refinement.cached_answers == 3
    assert [f.rank for f in again.features] == [f.rank for f in refined.features]


def test_explain_with_refine_spends_k_calls_after_the_one_answer(row, replay_url, tiny_surrogate):
    spans = [(row["segments"][i]["start"], row["segments"][i]["end"]) for i in range(len(row["segments"]) - 1)]
    result = ropelime.explain(row["user"], system=row["system"], model=f"openai/{MODEL}", api_base=replay_url,
                              surrogate=tiny_surrogate, refine=2, granularity="segments", segments=spans, budget=10,
                              seed=1)
    assert result.response == row["response_text"][fidelity.model_answer(row, MODEL)]
    assert result.response_source == "closed_model"
    assert result.refinement.closed_model_calls == 2  # the fixed output carried the log-probabilities
    assert result.cost.closed_model_calls == 1 + 2
    assert sum(f.evidence == "measured" for f in result.features) == 2


def test_without_log_probabilities_refine_compares_answers(tiny_surrogate):
    key = "Paris is the capital of France."
    prompt = f"{key} The sky is blue. Cats sleep a lot."

    def reply(messages):
        return "Paris." if key in messages[-1]["content"] else "I do not know."

    with OpenAIStub(reply=reply) as stub:
        explanation = ropelime.explain(prompt, "Paris.", surrogate=tiny_surrogate, budget=6)
        refined = refine(explanation, 3, model="openai/stub-model", api_base=stub.base_url)
    r = refined.refinement
    assert r.signal == "similarity" and any("no log-probabilities" in n for n in r.notes)
    effects = {m.feature: m.effect for m in r.features}
    assert effects[0] == 1.0 and all(effects[i] == 0.0 for i in effects if i != 0)
    assert refined.top(1)[0].index == 0 and refined.top(1)[0].evidence == "measured"


def test_bad_requests_are_refused_before_any_call(tiny_surrogate):
    with pytest.raises(InputError, match="refinement asks the closed model again"):
        check_request(3, None)
    with pytest.raises(InputError, match="refine must be 0"):
        check_request(-1, "openai/x")
    with pytest.raises(InputError, match="refinement asks the closed model again"):
        ropelime.explain("A prompt. Two sentences.", "Yes.", surrogate=tiny_surrogate, refine=2)


def test_answer_support_reads_the_first_tokens_alternatives():
    alternatives = {"false": np.log(0.75), " False": np.log(0.05), "true": np.log(0.2)}
    assert answer_support(alternatives, "false") == pytest.approx(np.log(0.8 / 0.2))
    assert answer_support(alternatives, "true") == pytest.approx(np.log(0.2 / 0.8))
    assert answer_support({"ent": -0.1, "neutral": -2.5}, "entailment") == pytest.approx(-0.1 + 2.5)
    assert answer_support({"true": -0.1}, "false") is None and answer_support(None, "false") is None


def test_the_command_line_refines_and_shows_what_was_measured(row, replay_url, tiny_model_dir, capsys, monkeypatch):
    from ropelime.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # the table's every column on one line

    spans = [f"{row['segments'][i]['start']}:{row['segments'][i]['end']}" for i in range(len(row["segments"]) - 1)]
    argv = ["explain", "--prompt", row["user"], "--system", row["system"], "--model", f"openai/{MODEL}",
            "--api-base", replay_url, "--refine", "2", "--surrogate", str(tiny_model_dir), "--device", "cpu",
            "--budget", "8", *[x for span in spans for x in ("--segment", span)]]
    assert main([*argv, "--json"]) == 0
    result = ropelime.Explanation.model_validate_json(capsys.readouterr().out)
    assert result.refinement.signal == "logprob" and len(result.refinement.features) == 2
    assert result.cost.closed_model_calls == 3 and result.cost.closed_model_usage["total_tokens"] > 0
    assert main(argv) == 0  # the table: measured features first, with their effect; the refinement's lines
    out = " ".join(capsys.readouterr().out.split())
    assert "evidence" in out and "measured" in out and "refined with openai/gpt-4o" in out and "fidelity:" in out
