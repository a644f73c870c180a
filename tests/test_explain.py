"""The whole pipeline on the tiny random-weight RoPE model: shape of the result, cache reuse,
anytime stopping and resuming, cancellation, and re-fitting a part of the response."""

from __future__ import annotations

import numpy as np
import pytest

import ropelime
from ropelime.cache import ScoreCache
from ropelime.errors import InputError

CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge was designed by Mara."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
RESPONSE = "Paris is the capital of France."


@pytest.fixture
def cache(tmp_path):
    store = ScoreCache(tmp_path / "scores.sqlite")
    yield store
    store.close()


def run(surrogate, cache, **options):
    options.setdefault("granularity", "word")
    options.setdefault("budget", 24)
    return ropelime.explain(PROMPT, options.pop("response", RESPONSE), explain=CONTEXT, surrogate=surrogate,
                            cache=cache, **options)


def test_explanation_covers_the_explainable_part(tiny_surrogate, cache):
    result = run(tiny_surrogate, cache)
    words = CONTEXT.split()
    assert [f.text.strip() for f in result.features] == words
    for f in result.features:
        assert PROMPT[f.start:f.end] == f.text
        assert f.ci_low <= f.score <= f.ci_high
        assert np.isfinite([f.score, f.ci_low, f.ci_high]).all()
    assert sorted(f.rank for f in result.features) == list(range(1, len(words) + 1))
    assert result.top(1)[0].rank == 1
    assert result.explain_start == PROMPT.index(CONTEXT)
    assert result.diagnostics.samples == result.diagnostics.planned_samples == 1 + len(words) + 16  # loo_pairs
    assert result.diagnostics.complete
    assert result.cost.closed_model_calls == 0 and result.cost.surrogate_forward_passes > 0
    assert result.cost.tokens_scored > 0
    assert result.response_source == "given"
    assert ropelime.Explanation.model_validate_json(result.model_dump_json()) == result


def test_repeating_an_explanation_costs_no_surrogate_pass(tiny_surrogate, cache):
    first = run(tiny_surrogate, cache)
    again = run(tiny_surrogate, cache)
    assert again.id == first.id
    assert again.cost.surrogate_forward_passes == 0
    assert again.cost.cached_samples == again.diagnostics.samples
    assert [f.score for f in again.features] == [f.score for f in first.features]


@pytest.mark.parametrize("option", [{"seed": 1}, {"sampler": "bernoulli"}, {"target": "nll"}, {"perturb": "placeholder"},
                                    {"kernel_cost": "cosine"}, {"kernel_normalise": False}])
def test_the_id_changes_with_the_method(tiny_surrogate, cache, option):
    assert run(tiny_surrogate, cache, **option).id != run(tiny_surrogate, cache).id


def test_the_kernel_cost_and_normalisation_only_change_the_fit(tiny_surrogate, cache):
    linear = {"sampler": "sparse_k", "target": "nll"}  # a weighted linear fit (differences ignore the kernel)
    first = run(tiny_surrogate, cache, **linear)
    for option in ({"kernel_cost": "cosine"}, {"kernel_normalise": False}):
        again = run(tiny_surrogate, cache, **linear, **option)
        assert again.cost.surrogate_forward_passes == 0 and again.cost.cached_samples == again.diagnostics.samples
        assert again.config.model_dump(include=set(option)) == option
        assert [f.score for f in again.features] != [f.score for f in first.features]
        assert any(f.score != 0 for f in again.features) and not again.diagnostics.notes
    part = ropelime.refit(again, "France", surrogate=tiny_surrogate, cache=cache)
    assert part.config == again.config and part.cost.surrogate_forward_passes == 0
    # raw distances far beyond the kernel width leave only the unperturbed prompt: said, not silent
    narrow = run(tiny_surrogate, cache, **linear, kernel_normalise=False, kernel_width=1e-4)
    assert all(f.score == 0 for f in narrow.features)
    assert any("widen the locality kernel" in note for note in narrow.diagnostics.notes)


def test_time_budget_gives_a_partial_result_that_resumes(tiny_surrogate, cache):
    partial = run(tiny_surrogate, cache, budget=60, time_budget_s=1e-6)
    assert not partial.diagnostics.complete
    assert partial.diagnostics.samples < partial.diagnostics.planned_samples == 61
    assert any("continue" in note for note in partial.diagnostics.notes)
    resumed = run(tiny_surrogate, cache, budget=60)
    assert resumed.id == partial.id and resumed.diagnostics.complete
    assert resumed.cost.cached_samples == partial.diagnostics.samples


def test_resume_continues_a_partial_explanation_from_its_inputs(tiny_surrogate, cache):
    partial = run(tiny_surrogate, cache, budget=60, time_budget_s=1e-6)
    resumed = ropelime.resume(partial, time_budget_s=None, surrogate=tiny_surrogate, cache=cache)
    assert resumed.id == partial.id and resumed.diagnostics.complete
    assert resumed.cost.cached_samples == partial.diagnostics.samples
    assert resumed.config.time_budget_s is None and resumed.response_source == partial.response_source


def test_cancellation_keeps_what_was_scored(tiny_surrogate, cache):
    calls = []

    def stop_after_first_chunk() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(ropelime.Cancelled):
        run(tiny_surrogate, cache, budget=60, should_stop=stop_after_first_chunk)
    resumed = run(tiny_surrogate, cache, budget=60)
    assert resumed.diagnostics.complete and resumed.cost.cached_samples > 0


def test_refit_on_a_part_of_the_response_runs_no_pass(tiny_surrogate, cache):
    whole = run(tiny_surrogate, cache)
    part = ropelime.refit(whole, "France", surrogate=tiny_surrogate, cache=cache)
    assert part.output_span == "France" and part.id != whole.id
    assert part.cost.surrogate_forward_passes == 0
    assert part.diagnostics.samples == whole.diagnostics.samples
    assert [f.text for f in part.features] == [f.text for f in whole.features]
    assert [f.score for f in part.features] != [f.score for f in whole.features]
    with pytest.raises(InputError, match="not a substring of the response"):
        ropelime.refit(whole, "London", surrogate=tiny_surrogate, cache=cache)


def test_refit_without_cached_scores_says_to_run_again(tiny_surrogate, cache, tmp_path):
    whole = run(tiny_surrogate, cache)
    empty = ScoreCache(tmp_path / "empty.sqlite")
    with pytest.raises(InputError, match="run the explanation again"):
        ropelime.refit(whole, "Paris", surrogate=tiny_surrogate, cache=empty)
    empty.close()


@pytest.mark.parametrize("target", ["nll", "logit_prob", "kl", "js"])
@pytest.mark.parametrize("kernel", ["rwmd_rope", "cosine", "uniform"])
def test_every_target_and_kernel_gives_finite_scores(tiny_surrogate, cache, target, kernel):
    result = run(tiny_surrogate, cache, granularity="sentence", target=target, kernel=kernel, budget=8)
    assert len(result.features) == 4
    assert all(np.isfinite(f.score) for f in result.features)
    assert 0.0 <= result.diagnostics.r2 <= 1.0 + 1e-9  # ridge never fits worse than its intercept


def test_bad_input_is_refused_with_advice(tiny_surrogate, cache):
    with pytest.raises(InputError, match="prompt is empty"):
        ropelime.explain("  ", RESPONSE, surrogate=tiny_surrogate, cache=cache)
    with pytest.raises(InputError, match="response is empty"):
        ropelime.explain(PROMPT, " ", surrogate=tiny_surrogate, cache=cache)
    with pytest.raises(InputError, match="not a substring"):
        ropelime.explain(PROMPT, RESPONSE, explain="Berlin", surrogate=tiny_surrogate, cache=cache)
    with pytest.raises(InputError, match="response to explain, or a model"):
        ropelime.explain(PROMPT, surrogate=tiny_surrogate, cache=cache)


def test_faithfulness_on_held_out_masks(tiny_surrogate, cache):
    from ropelime.faithfulness import evaluate_faithfulness, heldout_masks, removal_masks

    result = run(tiny_surrogate, cache, sampler="bernoulli", budget=64, kernel="uniform")
    report = evaluate_faithfulness(result, heldout=24, k=3, surrogate=tiny_surrogate, cache=cache)
    assert report.heldout_masks == 24 and report.k == 3
    assert report.lds > 0.2  # the linear model predicts the surrogate on masks it never saw
    assert report.cost.surrogate_forward_passes > 0
    again = evaluate_faithfulness(result, heldout=24, k=3, surrogate=tiny_surrogate, cache=cache)
    assert again.cost.surrogate_forward_passes == 0 and again.lds == report.lds
    d = len(result.features)
    held = heldout_masks(d, 24)
    assert len({row.tobytes() for row in held}) == 24
    removal = removal_masks(result, 3, 4)
    assert removal[0].all() and (~removal[1:]).sum(axis=1).tolist() == [3] * 5
    assert set(np.flatnonzero(~removal[1])) == {f.index for f in result.top(3)}


def test_caps_and_broken_text_are_refused_with_advice(tiny_surrogate, cache, monkeypatch):
    from ropelime.settings import Limits

    with pytest.raises(InputError, match="ROPELIME_MAX_PROMPT_TOKENS"):
        run(tiny_surrogate, cache, limits=Limits(max_prompt_tokens=10))
    with pytest.raises(InputError, match="ROPELIME_MAX_RESPONSE_TOKENS"):
        run(tiny_surrogate, cache, limits=Limits(max_response_tokens=2))
    with pytest.raises(InputError, match="exceed the limit of 5"):
        run(tiny_surrogate, cache, limits=Limits(max_features=5))
    monkeypatch.setenv("ROPELIME_MAX_FEATURES", "5")
    with pytest.raises(InputError, match="exceed the limit of 5"):
        run(tiny_surrogate, cache)
    monkeypatch.setenv("ROPELIME_MAX_FEATURES", "many")
    with pytest.raises(InputError, match="not a whole number"):
        run(tiny_surrogate, cache)
    monkeypatch.delenv("ROPELIME_MAX_FEATURES")
    with pytest.raises(InputError, match="not valid Unicode"):
        ropelime.explain(PROMPT + " \udcff", RESPONSE, surrogate=tiny_surrogate, cache=cache)
    with pytest.raises(InputError, match="not valid Unicode"):
        ropelime.explain(PROMPT, "Paris\ud800", surrogate=tiny_surrogate, cache=cache)


def test_control_characters_and_one_huge_word_are_explained(tiny_surrogate, cache):
    prompt = "Ctrl \x00\x07 chars.\tTabs \x1b[31m and escapes. " + "x" * 3000 + " end."
    result = ropelime.explain(prompt, RESPONSE, surrogate=tiny_surrogate, cache=cache, granularity="word", budget=8)
    assert "".join(f.text for f in result.features) == prompt
    assert any(len(f.text) > 3000 for f in result.features)


@pytest.mark.parametrize("kernel", ["rwmd_rope", "cosine", "uniform"])
def test_a_single_feature_is_explained(tiny_surrogate, cache, kernel):
    result = ropelime.explain("Paris is the capital of France.", RESPONSE, surrogate=tiny_surrogate, cache=cache,
                              granularity="sentence", kernel=kernel)
    assert len(result.features) == 1 and result.features[0].rank == 1
    assert np.isfinite(result.features[0].score) and result.diagnostics.samples == 2


def test_converged_ranking_stops_early_and_says_so(tiny_surrogate, cache):
    result = run(tiny_surrogate, cache, sampler="bernoulli", budget=200, converge_top_k=1)
    assert result.diagnostics.samples < result.diagnostics.planned_samples == 201
    assert any("settled" in note for note in result.diagnostics.notes)
    assert not any("time budget" in note for note in result.diagnostics.notes)


def test_the_config_records_the_values_used_and_the_id_does_not_depend_on_writing_them(tiny_surrogate, cache):
    result = run(tiny_surrogate, cache, sampler="sparse_k")
    d = len(result.features)
    assert result.config.k == -(-d // 4) and result.config.alpha == 1.0 and result.config.kernel_width == 0.5
    assert '"k":null' not in result.model_dump_json().replace(" ", "")
    explicit = run(tiny_surrogate, cache, sampler="sparse_k", k=result.config.k, alpha=1.0, kernel_width=0.5,
                   solver="ridge", target="kl")
    assert explicit.id == result.id  # the same inputs, written out or not
    assert run(tiny_surrogate, cache, sampler="sparse_k", k=2).id != result.id
    resumed = ropelime.explain(PROMPT, RESPONSE, explain=CONTEXT, config=result.config, surrogate=tiny_surrogate,
                               cache=cache)
    assert resumed.id == result.id and resumed.cost.surrogate_forward_passes == 0
    uniform = run(tiny_surrogate, cache, kernel="uniform", solver="ols", sampler="loo")
    assert uniform.config.kernel_width is None and uniform.config.alpha is None and uniform.config.k is None


def test_the_target_is_the_divergence_unless_given(tiny_surrogate, cache):
    """Unset, the target is the KL divergence at every granularity; the result records the target used,
    writing the default out names the same explanation, and a given target is kept."""
    words, sentences = run(tiny_surrogate, cache), run(tiny_surrogate, cache, granularity="sentence", budget=8)
    assert (words.config.target, sentences.config.target) == ("kl", "kl")
    assert run(tiny_surrogate, cache, granularity="sentence", budget=8, target="kl").id == sentences.id
    signed = run(tiny_surrogate, cache, granularity="sentence", budget=8, target="nll")
    assert signed.config.target == "nll" and signed.id != sentences.id
    assert [f.score for f in signed.features] != [f.score for f in sentences.features]
    assert any("target kl" in note for note in sentences.diagnostics.notes)  # unsigned: the reader is told
    assert not any("target" in note for note in signed.diagnostics.notes)


def test_the_default_is_single_removals_with_pair_intervals(tiny_surrogate, cache):
    """Unset, sentences and words use loo_pairs masks and the differences solver (each score is the KL change
    when the feature alone is removed); writing that out names the same explanation; the same scores refit
    by ridge need no scoring; a given sampler brings its own solver."""
    sentences = run(tiny_surrogate, cache, granularity="sentence", budget=8)
    d = len(sentences.features)
    assert (sentences.config.sampler, sentences.config.solver, sentences.config.alpha) == ("loo_pairs", "differences",
                                                                                           None)
    assert sentences.diagnostics.planned_samples == 1 + d + min(max(8 - d, 16), d * (d - 1) // 2)
    written = run(tiny_surrogate, cache, granularity="sentence", budget=8, sampler="loo_pairs", solver="differences")
    assert written.id == sentences.id and written.cost.surrogate_forward_passes == 0
    loo = run(tiny_surrogate, cache, granularity="sentence", sampler="loo", solver="differences", target="kl")
    assert [f.score for f in loo.features] == pytest.approx([f.score for f in sentences.features])  # the singletons
    samples = ropelime.score(PROMPT, RESPONSE, explain=CONTEXT, granularity="sentence", budget=8,
                             surrogate=tiny_surrogate, cache=cache)
    ridge = ropelime.fit_samples(samples, solver="ridge")
    assert (ridge.config.sampler, ridge.config.solver, ridge.config.alpha) == ("loo_pairs", "ridge", 1.0)
    assert [f.score for f in ridge.features] != [f.score for f in sentences.features]
    words = run(tiny_surrogate, cache)
    assert (words.config.sampler, words.config.solver) == ("loo_pairs", "differences")
    assert run(tiny_surrogate, cache, granularity="sentence", sampler="bernoulli", budget=8).config.solver == "ridge"


def test_a_few_features_say_how_many_distinct_masks_exist(tiny_surrogate, cache):
    prompt = "Context: The sky is blue. Paris is in France. Question: Where is Paris?"
    result = ropelime.explain(prompt, "In France.", granularity="sentence", sampler="sparse_k", budget=64,
                              surrogate=tiny_surrogate, cache=cache)
    assert len(result.features) == 3 and result.diagnostics.planned_samples == 4
    assert any("only 3 distinct perturbations exist for 3 features with sparse_k (k = 1)" in n
               for n in result.diagnostics.notes)
    assert result.diagnostics.reliability is not None
    default = ropelime.explain(prompt, "In France.", granularity="sentence", budget=64, surrogate=tiny_surrogate,
                               cache=cache)  # loo_pairs: the 3 singletons and the 3 pairs
    assert default.config.sampler == "loo_pairs" and default.diagnostics.planned_samples == 7
    assert any("only 6 distinct perturbations exist for 3 features with loo_pairs" in n for n in default.diagnostics.notes)
