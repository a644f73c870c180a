"""The transfer evaluation's mechanics on tiny models only: metrics on planted scores; one item whose
closed model is a real OpenAI-compatible server on 127.0.0.1 answering "Paris." only while the key
sentence is present (so every answer change is known); and `ropelime eval --closed-local --transfer`
end to end with the tiny model as both surrogate and stand-in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ropelime.research.evaluate import Closed, hotpotqa_item
from ropelime.schema import ExplainConfig
from ropelime.research.transfer import recovery, transfer_item
from tests.openai_stub import OpenAIStub

KEY = "Paris is the capital of France."
ROW = {
    "id": "tiny-1", "question": "What is the capital of France?", "answer": "Paris",
    "context": [["France", [KEY, " The sky is blue."]], ["Cats", ["Cats sleep a lot.", " Trout swim upstream."]],
                ["Bridge", ["The bridge has cables.", " Rivers run to the sea."]]],
    "supporting_facts": [["France", 0]],
}


def test_recovery_on_planted_scores():
    loo = np.array([0.9, 0.1, 0.5, 0.0, -0.2])  # top 2: features 0 and 2
    same = recovery(loo * 3, loo)
    assert same["ap"] == same["auroc"] == same["p_at_k"] == 1.0 and same["spearman"] == pytest.approx(1.0)
    reversed_ = recovery(-loo, loo)
    assert reversed_["auroc"] == 0.0 and reversed_["spearman"] == pytest.approx(-1.0)
    half = recovery(np.array([0.9, 0.8, 0.0, 0.1, 0.2]), loo)
    assert half["p_at_k"] == 0.5 and half["auroc"] == pytest.approx(3 / 6)  # 0.9 beats all three, 0.0 none


def test_transfer_item_answer_changes_and_verdicts_follow_the_closed_model(tiny_surrogate, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-stub")
    item = hotpotqa_item(ROW)

    def reply(messages):
        return "Paris." if KEY in messages[-1]["content"] else "I do not know."

    config = ExplainConfig(target="nll")  # the stand-in's own target, so that its LOO and the evaluated one agree
    with OpenAIStub(reply=reply) as stub:
        closed = Closed(model="openai/stub-model", api_base=stub.base_url, max_tokens=8)
        records = transfer_item(item, ["ropelime", "loo"], config, budget=6, surrogate=tiny_surrogate,
                                standin=tiny_surrogate, closed=closed)
        asked = stub.requests
        again = transfer_item(item, ["ropelime", "loo"], config, budget=6, surrogate=tiny_surrogate,
                              standin=tiny_surrogate, closed=closed)
        assert stub.requests == asked  # every answer is cached
    assert [r["method"] for r in records] == ["ropelime", "loo"] and not any("error" in r for r in records)
    assert all(r["closed_calls"] == 0 and r["item_closed_calls"] == 0 for r in again)
    assert records[0]["item_closed_calls"] == 1 + 2  # the answer, random-1 and random-3
    key = 0  # the key sentence is the first feature
    for r in records:
        assert r["d"] == 6 and len(r["standin_loo"]) == len(r["scores"]) == 6 and r["response"] == "Paris."
        assert r["standin_top"] == [int(i) for i in np.argsort(-np.array(r["standin_loo"]), kind="stable")[:2]]
        for name in ("top1", "top3", "random1", "random3"):
            assert r[f"{name}_changed"] == (key in r[name])  # the stub's rule, whatever the tiny model ranks
        assert r["top1"] == r["top3"][:1] and len(r["random3"]) == 3
        confirmed = [int(f) for f, v in r["verdicts"].items() if v == "confirmed"]
        assert confirmed in ([], [key]) and r["confirmed"] == len(confirmed)
        if key in r["verdicts"]:
            assert r["verdicts"][key] in ("confirmed", "inconclusive")  # inconclusive only if the control removed it
        assert r["confirmed_hits"] == (1 if confirmed and key in r["standin_top"] else 0)
        assert 0 <= r["ap"] <= 1 and -1 <= r["spearman"] <= 1
    loo = records[1]
    # same model, same leave-one-out: the same scores, up to float rounding (batches sized from the measured pace)
    assert loo["scores"] == pytest.approx(loo["standin_loo"], rel=1e-3, abs=1e-6)
    assert loo["ap"] == 1.0 and loo["spearman"] == pytest.approx(1.0)


def test_eval_transfer_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    from ropelime.cli import main

    data = tmp_path / "hotpot.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "id": "tiny-2", "context": ROW["context"][::-1]})
                    + "\n", encoding="utf-8")
    out = tmp_path / "transfer.json"
    common = ["eval", "hotpotqa", "--data", str(data), "--methods", "ropelime,loo", "--budget", "6",
              "--target", "nll", "--surrogate", str(tiny_model_dir), "--device", "cpu"]  # the stand-in's target
    assert main([*common, "--transfer"]) == 2  # a usage mistake: one line, before any model loads
    assert "--transfer needs --closed-local" in capsys.readouterr().err
    assert main([*common, "--closed-local", str(tiny_model_dir), "--max-tokens", "4", "--transfer",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "transfer" and report["complete"] and report["items"] == 2 and report["errors"] == 0
    assert report["command"].startswith("ropelime eval hotpotqa") and len(report["records"]) == 4
    for record in report["records"]:
        assert {"ap", "auroc", "spearman", "top1_changed", "top3_changed", "random1_changed", "random3_changed",
                "verdicts", "confirmed_precision", "standin_top"} <= set(record)
    summary = report["summary"]["ropelime"]
    assert summary["ap"]["n"] == 2 and "top3_vs_random3" in summary and "confirmed_pooled" in summary
    assert report["summary"]["loo"]["spearman"]["mean"] == pytest.approx(1.0)  # the stand-in explains itself
    assert "transfer to" in capsys.readouterr().out


def test_transfer_with_refinement_scores_the_refined_ranking(tiny_surrogate, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-stub")
    item = hotpotqa_item(ROW)

    def reply(messages):
        return "Paris." if KEY in messages[-1]["content"] else "I do not know."

    with OpenAIStub(reply=reply) as stub:
        closed = Closed(model="openai/stub-model", api_base=stub.base_url, max_tokens=8)
        records = transfer_item(item, ["ropelime"], ExplainConfig(target="nll"), budget=6, surrogate=tiny_surrogate,
                                standin=tiny_surrogate, closed=closed, refine=6)
    record = records[0]
    assert "error" not in record and sorted(record["refined"]) == list(range(6))  # every feature measured
    assert record["refine_signal"] == "similarity"  # the stub gives no log-probabilities
    assert record["top1"] == [0]  # only the key sentence's deletion changes the answer: it ranks first
    assert record["top1_changed"] and record["closed_calls"] >= 6


def test_a_local_stand_in_serves_its_first_tokens_log_probabilities(tiny_surrogate, monkeypatch, tmp_path):
    import math

    from ropelime.closed import fetch_response
    from ropelime.research.endpoint import OpenAIEndpoint, local_model_reply

    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    with OpenAIEndpoint(local_model_reply(tiny_surrogate, max_new_tokens=3, top_logprobs=5)) as endpoint:
        plain = fetch_response("openai/local", "Say something.", cache_dir=tmp_path, api_base=endpoint.base_url)
        rich = fetch_response("openai/local", "Say something.", cache_dir=tmp_path, api_base=endpoint.base_url,
                              logprobs=True)
    assert plain.first_token_logprobs is None and rich.text == plain.text
    alternatives = rich.first_token_logprobs
    assert 1 <= len(alternatives) <= 5 and all(lp <= 0 for lp in alternatives.values())
    assert sum(math.exp(lp) for lp in alternatives.values()) <= 1 + 1e-6
