"""Fidelity to recorded closed models: the data's reading (schema checks, the release's LOO reproduced from
the label log-probabilities), the comparison on planted rankings, and `ropelime eval fidelity` end to end on
four prompts copied from the data (three BoolQ, one ANLI), with the tiny surrogate and `--refine` through the
replay endpoint and litellm."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ropelime.errors import InputError
from ropelime.research import fidelity

SAMPLE = Path(__file__).parent / "data" / "fidelity_sample.jsonl"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return fidelity.read_prompts(SAMPLE)


def test_reads_jsonl_and_gz_alike_and_refuses_another_schema(rows, tmp_path):
    packed = tmp_path / "sample.jsonl.gz"
    with SAMPLE.open("rb") as source, gzip.open(packed, "wb") as target:
        shutil.copyfileobj(source, target)
    assert fidelity.read_prompts(packed) == rows and len(rows) == 4
    assert [r["prompt_idx"] for r in fidelity.read_prompts(SAMPLE, start=1, n=2)] == [rows[1]["prompt_idx"],
                                                                                      rows[2]["prompt_idx"]]
    other = tmp_path / "hotpot.jsonl"
    other.write_text(json.dumps({"id": "x", "question": "q", "context": []}) + "\n")
    with pytest.raises(InputError, match="not a fidelity record"):
        fidelity.read_prompts(other)
    with pytest.raises(InputError, match="no fidelity data"):
        fidelity.read_prompts(tmp_path / "missing.jsonl.gz")


def test_label_loo_reproduces_the_recorded_loo_of_each_models_own_answer(rows):
    for row in rows:
        field = "loo" if row["benchmark"] == "boolq" else "loo_logprob"
        everything = list(range(len(row["segments"])))
        for model in fidelity.api_models(row):
            answer = fidelity.model_answer(row, model)
            if answer is None:
                continue
            recorded = np.array([np.nan if v is None else v for v in row["models"][model][field]])
            np.testing.assert_allclose(fidelity.label_loo(row, model, answer, everything), recorded, atol=2e-5)


def test_another_models_loo_is_read_for_the_closed_models_answer(rows):
    row = rows[0]
    answer = fidelity.model_answer(row, "gpt-4o")
    other = next(label for label in row["labels"] if label != answer)
    own = fidelity.label_loo(row, "gpt-4-1", answer, [0, 1, 2])
    flipped = fidelity.label_loo(row, "gpt-4-1", other, [0, 1, 2])
    np.testing.assert_allclose(own, -flipped)  # two labels: support for one is opposition to the other


def test_compare_on_planted_rankings():
    truth = np.array([3.0, -2.0, 0.5, np.nan, 0.1])
    same = fidelity.compare(np.array([3.0, -2.0, 0.5, 9.0, 0.1]), truth, magnitude=False)
    assert same == {"spearman": pytest.approx(1.0), "top1": 1.0}
    by_size = fidelity.compare(np.array([4.0, 3.0, 2.0, 0.0, 1.0]), truth, magnitude=True)
    assert by_size == {"spearman": pytest.approx(1.0), "top1": 1.0}  # |−2| ranks second
    assert fidelity.compare(np.array([4.0, 3.0, 2.0, 0.0, 1.0]), truth, magnitude=False)["top1"] == 1.0
    assert np.isnan(fidelity.compare(np.ones(5), truth, magnitude=True)["spearman"])  # constant: undefined
    assert np.isnan(fidelity.compare(np.arange(5.0), np.array([1.0, np.nan, np.nan, np.nan, 2.0]), False)["top1"])
    prior = fidelity.position_prior(4)
    assert fidelity.compare(prior, np.array([4.0, 3.0, 2.0, 1.0]), magnitude=True)["spearman"] == pytest.approx(1.0)


def test_closed_models_default_and_unknown(rows):
    assert fidelity.closed_models(rows, None) == ["gpt-4o", "gpt-4-1", "gemini-2-5-flash-lite-vertex"]
    assert fidelity.closed_models(rows, ["gpt-4-1"]) == ["gpt-4-1"]
    with pytest.raises(InputError, match="no recordings of claude-9"):
        fidelity.closed_models(rows, ["claude-9"])


def test_eval_fidelity_end_to_end_with_refinement_and_resume(tiny_model_dir, tmp_path, capsys):
    from ropelime.cli import main

    out = tmp_path / "fidelity.json"
    common = ["eval", "fidelity", "--data", str(SAMPLE), "--surrogate", str(tiny_model_dir), "--device", "cpu",
              "--budget", "12", "--closed-model", "gpt-4o", "--closed-model", "gemini-2-5-flash-lite-vertex",
              "--refine", "2", "--out", str(out), "--resume", "--json"]
    assert main([*common, "--n", "2"]) == 0
    first = json.loads(out.read_text())
    assert first["prompts"] == 2 and first["errors"] == 0 and first["resumed"] == 0
    capsys.readouterr()
    assert main([*common, "--n", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads(out.read_text())
    assert report["resumed"] == 2 and report["prompts"] == 4 and report["complete"]
    assert report["records"][:len(first["records"])] == first["records"]
    assert set(summary) == {"gpt-4o", "gemini-2-5-flash-lite-vertex"}
    entry = summary["gpt-4o"]
    assert entry["comparison"] == "magnitude"  # the default target (kl) is unsigned
    assert entry["n_prompts"] >= 3 and -1 <= entry["spearman"] <= 1
    assert entry["spearman_ci"][0] <= entry["spearman"] <= entry["spearman_ci"][1]
    references = entry["references"]
    assert {"position prior", "refined", "random_refined", "gpt-4-1", "llama3.1-8b-instruct"} <= set(references)
    assert "gpt-4o" not in references  # a model is not its own reference
    for record in report["records"]:
        assert record["refined_calls"] == record["random_refined_calls"] == 2 + 1  # K deletions and the original
        assert "refined_errors" not in record
        measured = np.argsort(-np.array(record["refined"]))[:2]  # the refined ranking: measured ones first
        truth = np.array([np.nan if v is None else v for v in record["loo"]])
        if np.isfinite(truth[measured]).all():  # the replay gives back the recorded LOO, so their order is its
            assert abs(truth[measured[0]]) >= abs(truth[measured[1]])
    assert main([*common, "--n", "4", "--target", "nll"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["eval", "fidelity", "--data", str(SAMPLE), "--closed-model", "claude-9"]) == 2
    assert "no recordings of claude-9" in capsys.readouterr().err
