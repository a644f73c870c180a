"""Comparing samplers on the tiny model: the grid, shared held-out masks, stability, agreement,
cost, the time budget and resuming, and one closed-model call in total."""

from __future__ import annotations

import numpy as np
import pytest

from ropelime.cache import ScoreCache
from ropelime.compare import Comparison, compare_samplers, plot_faithfulness, rank_correlation, topk_overlap
from ropelime.errors import InputError
from ropelime.store import ExplanationStore
from tests.openai_stub import OpenAIStub

CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge was designed by Mara."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"


@pytest.fixture
def cache(tmp_path):
    store = ScoreCache(tmp_path / "scores.sqlite")
    yield store
    store.close()


def run(surrogate, cache, **options) -> Comparison:
    options.setdefault("budgets", [4, 8])
    options.setdefault("seeds", [0, 1])
    options.setdefault("heldout", 8)
    return compare_samplers(PROMPT, options.pop("response", "Paris."), explain=CONTEXT, surrogate=surrogate,
                            cache=cache, **options)


def test_every_sampler_budget_and_seed_is_run_and_summarised(tiny_surrogate, cache):
    seen = []
    result = run(tiny_surrogate, cache, progress=lambda done, total: seen.append((done, total)))
    assert result.complete and result.features == 4 and result.k == 1 and result.heldout_masks == 8
    assert [(r.budget, r.sampler, r.seed) for r in result.runs] == [
        (b, s, seed) for b in (4, 8) for s in ("sparse_k", "loo", "bernoulli") for seed in (0, 1)]
    assert [(r.budget, r.sampler) for r in result.results] == [
        (b, s) for b in (4, 8) for s in ("sparse_k", "loo", "bernoulli")]
    for row in result.results:
        assert row.runs == 2 and -1 <= row.lds <= 1
        assert row.stability_topk_overlap is not None and 0 <= row.stability_topk_overlap <= 1
    loo = [r for r in result.results if r.sampler == "loo"]
    assert all(r.stability_spearman == 1.0 and r.stability_topk_overlap == 1.0 for r in loo)  # loo ignores the seed
    assert all(r.samples == 5 for r in loo)
    assert {(a.sampler_a, a.sampler_b) for a in result.agreement} == {
        ("sparse_k", "loo"), ("sparse_k", "bernoulli"), ("loo", "bernoulli")}
    assert result.closed_model_calls == 0 and result.response_source == "given"
    assert result.surrogate_passes == sum(r.surrogate_passes for r in result.runs) > 0
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)


def test_runs_share_the_held_out_masks_and_the_score_cache(tiny_surrogate, cache):
    first = run(tiny_surrogate, cache, samplers=["loo", "sparse_k"], budgets=[8], seeds=[0])
    # sparse_k with a budget of 8 over 4 features starts with the same 4 singletons loo scores, and
    # the held-out masks were scored for loo: only sparse_k's pairs and its removal masks are new.
    loo, sparse = first.runs
    assert loo.surrogate_passes > sparse.surrogate_passes
    again = run(tiny_surrogate, cache, samplers=["loo", "sparse_k"], budgets=[8], seeds=[0])
    assert again.surrogate_passes == 0
    assert [r.lds for r in again.runs] == [r.lds for r in first.runs]


def test_time_budget_returns_what_is_done_and_a_second_call_resumes(tiny_surrogate, cache):
    grid = {"samplers": ["loo", "sparse_k"], "seeds": [0]}
    partial = run(tiny_surrogate, cache, time_budget_s=0.01, **grid)
    assert not partial.complete and len(partial.runs) < 4
    assert any("call again" in note for note in partial.notes)
    resumed = run(tiny_surrogate, cache, **grid)
    assert resumed.complete and len(resumed.runs) == 4
    assert [r.lds for r in resumed.runs[:len(partial.runs)]] == [r.lds for r in partial.runs]


def test_finished_runs_are_stored_and_reused_from_the_store(tiny_surrogate, cache, tmp_path):
    store = ExplanationStore(tmp_path / "explanations")
    grid = {"samplers": ["loo", "sparse_k"], "budgets": [4], "seeds": [0]}
    first = run(tiny_surrogate, cache, store=store, **grid)
    stored = store.load(first.runs[0].explanation_id)
    flipped = [f.model_copy(update={"score": -f.score}) for f in stored.features]
    store.save(stored.model_copy(update={"features": flipped}))  # the second call must read this, not re-fit
    again = run(tiny_surrogate, cache, store=store, **grid)
    assert again.runs[0].lds == pytest.approx(-first.runs[0].lds)
    assert again.runs[1].lds == pytest.approx(first.runs[1].lds)
    assert again.surrogate_passes == 0


def test_a_closed_model_is_asked_once_for_the_whole_comparison(tiny_surrogate, cache, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with OpenAIStub(reply="Paris.") as stub:
        grid = {"samplers": ["loo"], "budgets": [4], "seeds": [0]}
        first = run(tiny_surrogate, cache, response=None, model="openai/stub-model", api_base=stub.base_url, **grid)
        again = run(tiny_surrogate, cache, response=None, model="openai/stub-model", api_base=stub.base_url, **grid)
        assert stub.requests == 1
    assert first.closed_model_calls == 1 and again.closed_model_calls == 0
    assert first.response == "Paris." and first.response_source == "closed_model"
    assert first.closed_model == "openai/stub-model"


def test_bad_inputs_are_refused_with_a_reason(tiny_surrogate, cache):
    with pytest.raises(InputError, match="at least two features"):
        compare_samplers("Paris?", "Paris.", surrogate=tiny_surrogate, cache=cache, budgets=[2], seeds=[0])
    with pytest.raises(InputError, match="response to explain, or a model"):
        run(tiny_surrogate, cache, response=None)
    with pytest.raises(InputError, match="positive"):
        run(tiny_surrogate, cache, budgets=[0])


def test_plot_is_a_png(tiny_surrogate, cache):
    png = plot_faithfulness(run(tiny_surrogate, cache, samplers=["loo", "sparse_k"], seeds=[0]))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_rank_correlation_and_overlap():
    a, b = np.array([3.0, 2.0, 1.0, 0.0]), np.array([2.0, 3.0, 1.0, 0.0])
    assert rank_correlation(a, a) == 1.0 and rank_correlation(a, -a) == -1.0
    assert rank_correlation(a, np.zeros(4)) is None
    assert topk_overlap(a, b, 1) == 0.0 and topk_overlap(a, b, 2) == 1.0
