"""The evaluation: loaders and gold alignment on the real dev files, metrics on planted data, a tiny
end-to-end `ropelime eval`, and gSMILE against a real OpenAI-compatible server counting its calls."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ropelime.research.baselines import gsmile, similarity_target, wmd
from ropelime.research.evaluate import (agreement, gold_labels, hotpotqa_item, load_items, mean_ci, mmlu_item,
                                        recorded_method, significance)
from ropelime.features import find_explain_span, split_features
from ropelime.schema import ExplainConfig, Feature, FeatureScore
from tests.conftest import DATA
from tests.openai_stub import OpenAIStub

MMLU = DATA / "mmlu_decisive_dev.jsonl"


@pytest.fixture(scope="module")
def mmlu_rows() -> list[dict]:
    if not MMLU.exists():
        pytest.skip(f"dev data not found at {MMLU}")
    return [json.loads(line) for line in MMLU.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("layout", ["context_first", "question_first"])
def test_hotpotqa_segments_are_the_dataset_sentences_and_gold_maps_one_to_one(hotpotqa_items, layout):
    for row in hotpotqa_items:
        item = hotpotqa_item(row, layout)
        features = split_features(item.prompt, "segments", explain=find_explain_span(item.prompt, item.explain),
                                  segments=item.segments)
        sentences = [s for _, ss in row["context"] for s in ss if s.strip()]
        assert [f.text.strip() for f in features] == [s.strip() for s in sentences]
        assert " ".join(f.text for f in features).split() == " ".join(sentences).split()  # nothing else explained
        assert row["question"] in item.prompt and row["question"] not in item.explain
        gold = gold_labels(features, item.gold_spans)
        titles = dict(row["context"])
        wanted = {titles[t][i].strip() for t, i in row["supporting_facts"] if titles[t][i].strip()}
        assert {f.text.strip() for f, g in zip(features, gold) if g} == wanted
        assert gold.sum() == len(item.gold_spans)  # each gold sentence is exactly one feature


def test_mmlu_gold_words_overlap_the_decisive_spans(mmlu_rows):
    for row in mmlu_rows:
        item = mmlu_item(row)
        features = split_features(item.prompt, "word", explain=find_explain_span(item.prompt, item.explain))
        assert "".join(f.text for f in features).strip() == row["question"].strip()
        gold = gold_labels(features, item.gold_spans)
        assert [item.prompt[a:b] for a, b in item.gold_spans] == [d["word"] for d in row["decisive"]]
        for d in row["decisive"]:  # every decisive word lies in a gold feature, and only gold features hold one
            assert any(g and d["word"] in f.text for f, g in zip(features, gold))
        assert all(any(d["word"] in f.text or f.text.strip() in d["word"] for d in row["decisive"])
                   for f, g in zip(features, gold) if g)
        assert item.answer.startswith("ABCD"[row["answer"]] + ". ") and all(c in item.prompt for c in row["choices"])


def test_gold_labels_by_span_overlap():
    features = [Feature(index=i, text="ab ", start=3 * i, end=3 * i + 3) for i in range(4)]
    assert gold_labels(features, [(4, 5), (9, 10)]).tolist() == [False, True, False, True]
    assert gold_labels(features, [(3, 3)]).tolist() == [False] * 4  # an empty span overlaps nothing


def test_agreement_on_planted_scores():
    gold = np.array([0, 1, 0, 0, 1, 0], dtype=bool)
    perfect = agreement(np.array([0.1, 0.9, 0.0, 0.2, 0.8, 0.3]), gold)
    assert perfect == {"auroc": 1.0, "ap": 1.0, "p_at_k": 1.0}
    reversed_ = agreement(np.array([0.9, 0.1, 0.8, 0.7, 0.0, 0.6]), gold)
    assert reversed_["auroc"] == 0.0 and reversed_["p_at_k"] == 0.0
    half = agreement(np.array([0.1, 0.9, 0.95, 0.2, 0.0, 0.3]), gold)
    assert half["auroc"] == pytest.approx(3 / 8) and half["p_at_k"] == 0.5
    assert np.isnan(agreement(np.ones(3), np.zeros(3, dtype=bool))["auroc"])


def test_significance_counts_the_intervals_that_exclude_zero_and_the_directions_among_gold_and_others():
    def scored(low: float, high: float, direction: str | None = None) -> FeatureScore:
        return FeatureScore(index=0, text="a", start=0, end=1, score=(low + high) / 2, ci_low=low, ci_high=high, rank=1,
                            direction=direction)

    features = [scored(0.1, 0.3, "supports"), scored(-0.1, 0.2, "opposes"), scored(-0.5, -0.2, "opposes"),
                scored(0.0, 0.4), scored(0.2, 0.3, "unclear")]
    gold = np.array([1, 1, 0, 0, 0], dtype=bool)
    assert significance(features, gold) == {"significant_gold": 0.5, "significant_other": pytest.approx(2 / 3),
                                            "supports_gold": 0.5, "supports_other": 0.0,
                                            "opposes_gold": 0.5, "opposes_other": pytest.approx(1 / 3)}
    assert np.isnan(significance(features, np.ones(5, dtype=bool))["significant_other"])


def test_mean_ci_brackets_the_mean_and_skips_undefined_values():
    summary = mean_ci([0.5, 0.6, 0.7, float("nan"), None])
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(0.6)
    assert 0.5 <= summary["low"] <= 0.6 <= summary["high"] <= 0.7
    assert mean_ci([0.5, 0.6, 0.7]) == mean_ci([0.5, 0.6, 0.7])  # seeded
    assert mean_ci([])["n"] == 0


def test_wmd_is_exact_transport():
    a = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert wmd(a, np.array([0.5, 0.5]), a, np.array([0.5, 0.5])) == pytest.approx(0.0)
    b = np.array([[0.0, 1.0]])
    assert wmd(a, np.array([0.5, 0.5]), b, np.array([1.0])) == pytest.approx(0.5 * 1 + 0.5 * np.sqrt(5))
    assert similarity_target(np.array([0.0, 2.0, 1.0, np.inf])).tolist() == [1.0, 0.0, 0.5, 0.0]


def test_gsmile_resends_every_perturbed_prompt_and_finds_the_evidence(tiny_surrogate, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-stub")
    context = "The sky is blue. Paris is the capital of France. Cats sleep a lot. Rivers run to the sea."
    prompt = f"Context: {context}\nQuestion: What is the capital of France?"

    def reply(messages):
        return "Paris" if "Paris is the capital" in messages[-1]["content"] else "I do not know the answer"

    config = ExplainConfig(granularity="sentence", budget=8, seed=0)
    with OpenAIStub(reply=reply) as stub:
        result = gsmile(prompt, model="openai/stub-model", api_base=stub.base_url, explain=context, config=config,
                        surrogate=tiny_surrogate)
        assert stub.requests == 1 + 8 and result.cost.closed_model_calls == 9
        assert {json.dumps(b["messages"]) for b in stub.bodies[1:]}.isdisjoint({json.dumps(stub.bodies[0]["messages"])})
        again = gsmile(prompt, model="openai/stub-model", api_base=stub.base_url, explain=context, config=config,
                       surrogate=tiny_surrogate)
        assert stub.requests == 9 and again.cost.closed_model_usage["cached"] == 9  # answers come from the cache
    assert result.response == "Paris"
    assert result.top(1)[0].text.startswith("Paris is the capital")
    assert (result.config.sampler, result.config.kernel, result.config.solver) == ("bernoulli", "cosine", "ols")


def test_eval_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, mmlu_rows, capsys):
    from ropelime.cli import main

    out = tmp_path / "report.json"
    code = main(["eval", "mmlu", "--data", str(MMLU), "--limit", "2", "--methods", "ropelime,loo,contextcite",
                 "--budget", "6", "--heldout", "4", "--surrogate", str(tiny_model_dir), "--device", "cpu",
                 "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["complete"] and report["items"] == 2 and report["errors"] == 0
    assert report["fixed_output"] == "gold answer" and report["command"].startswith("ropelime eval mmlu --data")
    assert len(report["records"]) == 6
    for record in report["records"]:
        assert 0.0 <= record["auroc"] <= 1.0 and -1.0 <= record["lds"] <= 1.0
        gold = np.isin(np.arange(record["d"]), record["gold_features"])  # the attribution itself, to analyse later
        assert len(record["scores"]) == record["d"] and gold.sum() == record["gold"]
        assert agreement(np.array(record["scores"]), gold)["auroc"] == pytest.approx(record["auroc"], abs=1e-4)
        assert record["closed_calls"] == 0 and record["surrogate_passes"] >= 1
        same = (record["target_lds"], record["target_topk_minus_random"]) == (record["lds"], record["topk_minus_random"])
        assert not same  # measured on the NLL and on each method's own target: KL (default), logit-prob (ContextCite)
    loo = [r for r in report["records"] if r["method"] == "loo"]
    assert all(r["samples"] == r["d"] + 1 for r in loo)
    assert report["summary"]["ropelime"]["auroc"]["n"] == 2
    assert "AUROC" in capsys.readouterr().out


def test_eval_measures_faithfulness_on_the_methods_own_target_too(tiny_model_dir, tmp_path, mmlu_rows):
    from ropelime.cli import main

    out = tmp_path / "report.json"
    assert main(["eval", "mmlu", "--data", str(MMLU), "--limit", "1", "--methods", "loo", "--target", "kl",
                 "--heldout", "8", "--surrogate", str(tiny_model_dir), "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    record = report["records"][0]
    assert report["faithfulness"]["target"] == "nll"  # the common measure stays the NLL's
    assert -1.0 <= record["target_lds"] <= 1.0 and record["target_topk_minus_random"] != record["topk_minus_random"]
    assert 0.0 <= record["significant_gold"] <= 1.0 and 0.0 <= record["significant_other"] <= 1.0
    assert report["summary"]["loo"]["target_lds"]["n"] == 1


def test_eval_budget_d_equals_the_number_of_features(tiny_model_dir, tmp_path, mmlu_rows):
    from ropelime.cli import main

    out = tmp_path / "report.json"
    assert main(["eval", "mmlu", "--data", str(MMLU), "--limit", "1", "--budget", "d", "--heldout", "0",
                 "--sampler", "sparse_k", "--surrogate", str(tiny_model_dir), "--device", "cpu", "--json", str(out)]) == 0
    record = json.loads(out.read_text())["records"][0]
    assert record["samples"] == record["d"] + 1 and "lds" not in record


def test_load_items_limits_and_rejects_unknown_tasks(tmp_path, mmlu_rows):
    assert len(load_items("mmlu", MMLU, limit=3)) == 3
    with pytest.raises(ValueError, match="unknown task"):
        load_items("squad", MMLU)  # type: ignore[arg-type]


def test_eval_reuse_scores_refits_without_surrogate_passes(tiny_model_dir, tmp_path, mmlu_rows):
    from ropelime.cli import main

    common = ["eval", "mmlu", "--data", str(MMLU), "--limit", "1", "--budget", "5", "--heldout", "0",
              "--surrogate", str(tiny_model_dir), "--device", "cpu", "--reuse-scores"]
    assert main([*common, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*common, "--target", "kl", "--kernel", "cosine", "--json", str(tmp_path / "b.json")]) == 0
    first, again = (json.loads((tmp_path / f"{n}.json").read_text())["records"][0] for n in "ab")
    assert first["surrogate_passes"] > 0 and first["cached_samples"] == 0
    assert again["surrogate_passes"] == 0 and again["cached_samples"] == again["samples"]


def test_eval_resume_keeps_the_finished_items_and_evaluates_the_rest(tiny_model_dir, tmp_path, mmlu_rows,
                                                                       monkeypatch, capsys):
    from ropelime.cli import main

    out = tmp_path / "report.json"
    common = ["eval", "mmlu", "--data", str(MMLU), "--methods", "ropelime,loo", "--budget", "5", "--heldout", "0",
              "--surrogate", str(tiny_model_dir), "--device", "cpu", "--json", str(out), "--resume"]
    assert main([*common, "--limit", "1"]) == 0
    first = json.loads(out.read_text())
    assert first["resumed"] == 0 and first["items"] == 1
    monkeypatch.setenv("ROPELIME_CACHE_DIR", str(tmp_path / "another-machine"))  # no score cache to lean on
    assert main([*common, "--limit", "2"]) == 0
    second = json.loads(out.read_text())
    assert second["resumed"] == 1 and second["items"] == 2 and second["complete"]
    assert second["records"][:2] == first["records"]  # kept as they were, seconds included
    assert {r["id"] for r in second["records"][2:]} != {first["records"][0]["id"]}
    assert all(r["surrogate_passes"] > 0 for r in second["records"][2:])
    capsys.readouterr()
    assert main([*common, "--limit", "2", "--target", "nll"]) == 2
    assert "other settings (methods differ)" in capsys.readouterr().err
    assert json.loads(out.read_text()) == second  # the refused run left the report alone
    assert main([*common[:-3], "--resume", "--limit", "1"]) == 2
    assert "--resume continues the report of --json OUT" in capsys.readouterr().err


def test_report_heads_record_the_default_method_written_out():
    unset, written = ExplainConfig(), ExplainConfig(sampler="loo_pairs", target="kl", solver="differences")
    default = recorded_method(unset)
    assert default == recorded_method(written)  # a report made when the defaults were written out resumes
    assert (default["sampler"], default["target"], default["solver"], default["k"]) == ("loo_pairs", "kl",
                                                                                          "differences", None)
    linear = recorded_method(ExplainConfig(sampler="sparse_k", target="nll"))
    assert (linear["sampler"], linear["target"], linear["solver"]) == ("sparse_k", "nll", "ridge")


def test_eval_skip_and_merge_give_the_report_of_all_the_items(tiny_model_dir, tmp_path, mmlu_rows):
    from ropelime.cli import main
    from scripts.eval_tables import main as tables


    # the parts read the scores the whole run cached: how prompts are batched (it follows the measured pace)
    # moves a score in its last digits, enough to swap two near-tied features of the tiny model
    common = ["eval", "mmlu", "--data", str(MMLU), "--methods", "ropelime,loo", "--budget", "5", "--heldout", "0",
              "--surrogate", str(tiny_model_dir), "--device", "cpu", "--reuse-scores"]
    assert main([*common, "--limit", "2", "--json", str(tmp_path / "all.json")]) == 0
    assert main([*common, "--limit", "1", "--json", str(tmp_path / "first.json")]) == 0
    assert main([*common, "--skip", "1", "--limit", "1", "--json", str(tmp_path / "rest.json")]) == 0
    tables(["--merge", str(tmp_path / "merged.json"), str(tmp_path / "first.json"), str(tmp_path / "rest.json")])
    merged, whole = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("merged", "all"))
    cost = {"seconds", "surrogate_passes", "cached_samples", "tokens_scored"}
    strip = lambda records: [{k: v for k, v in r.items() if k not in cost} for r in records]  # noqa: E731
    assert merged["items"] == 2 and strip(merged["records"]) == strip(whole["records"])
    assert merged["summary"]["ropelime"]["auroc"] == whole["summary"]["ropelime"]["auroc"]
    assert main([*common, "--skip", "-1", "--json", str(tmp_path / "x.json")]) == 2


def test_surrogate_plot_takes_seconds_from_measured_timings(tiny_model_dir, tmp_path, mmlu_rows, monkeypatch):
    """With --timings the seconds axis shows each surrogate's measured seconds, not the reports' own."""
    import matplotlib.axes

    from ropelime.cli import main
    from scripts.eval_tables import main as tables

    assert main(["eval", "mmlu", "--data", str(MMLU), "--methods", "ropelime", "--budget", "5", "--heldout", "0",
                 "--surrogate", str(tiny_model_dir), "--device", "cpu", "--limit", "1",
                 "--json", str(tmp_path / "tiny.json")]) == 0
    report = json.loads((tmp_path / "tiny.json").read_text())
    for name in ("gemma3-270m", "qwen2.5-coder-0.5b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({**report, "surrogate": name}))
    timings = {"setting": "test", "results": [{"surrogate": "gemma3-270m", "mmlu": {"seconds_mean": 4.3}},
                                              {"surrogate": "qwen2.5-coder-0.5b", "mmlu": {"seconds_mean": 6.2}}]}
    (tmp_path / "timings.json").write_text(json.dumps(timings))
    drawn = []
    original = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, **kw: (drawn.append(list(x)), original(self, x, y, **kw))[1])
    tables(["--plot-surrogates", str(tmp_path / "plot.png"), "--timings", str(tmp_path / "timings.json"),
            str(tmp_path / "gemma3-270m.json"), str(tmp_path / "qwen2.5-coder-0.5b.json")])
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert drawn == [[0.27, 0.49], [4.3, 6.2]]


def test_the_gold_gap_is_the_gold_share_minus_the_others_per_item(tmp_path, capsys):
    from scripts.eval_tables import main as tables

    records = [{"id": str(i), "method": "ropelime", "supports_gold": gold, "supports_other": other}
               for i, (gold, other) in enumerate([(0.5, 0.1), (1.0, 0.2), (0.0, 0.0), (float("nan"), 0.3)])]
    (tmp_path / "r.json").write_text(json.dumps({"summary": {"ropelime": {}}, "records": records}))
    tables(["--gold-gap", "supports", str(tmp_path / "r.json")])
    line = capsys.readouterr().out.strip()
    assert line.startswith("- r ropelime: supports, gold − others 0.400 [") and line.endswith("(n=3)")


def test_the_position_gain_adjusts_the_recorded_scores_and_pairs_them(tmp_path, capsys):
    from scripts.eval_tables import main as tables

    position = np.arange(30) / 29
    records = []
    for i in range(4):  # scores grow along the prompt; the gold features sit early and are twice their neighbours
        scores = np.exp(1.4 * position + np.random.default_rng(i).normal(0, 0.1, 30))
        scores[[2, 5]] *= 2
        gold = np.isin(np.arange(30), [2, 5])
        records.append({"id": str(i), "method": "loo", "scores": scores.tolist(), "gold_features": [2, 5],
                        "auroc": agreement(scores, gold)["auroc"]})
    report = {"summary": {"loo": {}}, "methods": {"loo": {"adjust_position": False}}, "records": records}
    (tmp_path / "r.json").write_text(json.dumps(report))
    tables(["--position-gain", str(tmp_path / "r.json")])
    line = capsys.readouterr().out.strip()
    recorded, adjusted, delta = map(float, re.search(r"AUROC (\S+) .* as scored, (\S+) .* Δ (\S+) ", line).groups())
    assert line.startswith("- r loo: AUROC ") and line.endswith("(n=4)")
    assert recorded < 0.7 and adjusted > 0.95 and delta == pytest.approx(adjusted - recorded, abs=2e-3)
    report["methods"]["loo"]["adjust_position"] = True  # scores adjusted already: refused
    (tmp_path / "r.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit, match="already adjusted"):
        tables(["--position-gain", str(tmp_path / "r.json")])


def test_the_ensemble_averages_z_scored_scores_and_pairs_with_each_report(tmp_path, capsys):
    from scripts.eval_tables import main as tables

    gold = [0, 1]
    reports = {  # each surrogate misses one gold feature the other finds; together they find both
        "a": [9.0, 0.0, 1.0, 2.0, 3.0, 4.0],
        "b": [0.0, 90.0, 10.0, 20.0, 30.0, 40.0],
    }
    for name, scores in reports.items():
        labels = np.isin(np.arange(6), gold)
        record = {"id": "q", "method": "loo", "d": 6, "scores": scores, "gold_features": gold,
                  "auroc": agreement(np.array(scores), labels)["auroc"]}
        (tmp_path / f"{name}.json").write_text(json.dumps({"summary": {"loo": {}}, "records": [record]}))
    tables(["--ensemble", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("- loo: ensemble AUROC 1.000 [") and lines[0].endswith("(n=1)")
    assert lines[1].startswith("  - Δ over a (0.500 [") and lines[2].startswith("  - Δ over b (0.500 [")
    assert lines[1].endswith(": 0.500 [0.500, 0.500]")


def test_versus_pairs_a_method_with_each_baseline_on_their_common_items(tmp_path, capsys):
    from scripts.eval_tables import main as tables

    ours = {"methods": {"ropelime": {"sampler": None, "target": None}},
            "records": [{"id": str(i), "method": "ropelime", "auroc": a} for i, a in enumerate([0.9, 0.8, 0.7])]}
    baselines = {"methods": {"loo": {"sampler": "loo", "target": "nll"}},
                 "records": [{"id": str(i), "method": "loo", "auroc": a} for i, a in [(0, 0.5), (1, 0.6), (5, 0.1)]]}
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    (tmp_path / "base.json").write_text(json.dumps(baselines))
    tables(["--versus", str(tmp_path / "ours.json"), str(tmp_path / "base.json")])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["ours", "ropelime (default, default)", "loo (loo, nll)", "2"]  # items 0 and 1 only
    assert cells[4].startswith("0.850 [") and cells[5].startswith("0.550 [") and cells[6].startswith("0.300 [")
