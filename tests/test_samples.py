"""Score once, fit many: fitting the scored samples again gives what a whole explanation with the changed
fit options gives, with no surrogate pass; options that choose what is scored are refused."""

from __future__ import annotations

import numpy as np
import pytest

import ropelime
from ropelime.cache import ScoreCache
from ropelime.errors import InputError

CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge was designed by Mara."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
RESPONSE = "Paris is the capital of France."
METHOD = {"granularity": "word", "budget": 24, "sampler": "sparse_k", "target": "nll"}
"""A linear fit over many masks, the refit this module is about (the default fits single removals)."""


@pytest.fixture
def cache(tmp_path):
    store = ScoreCache(tmp_path / "scores.sqlite")
    yield store
    store.close()


def comparable(explanation: ropelime.Explanation) -> dict:
    """The explanation without what depends on when and how often it was computed."""
    return explanation.model_dump(exclude={"cost"})


def test_fitting_scored_samples_is_explaining(tiny_surrogate, cache):
    samples = ropelime.score(PROMPT, RESPONSE, explain=CONTEXT, surrogate=tiny_surrogate, cache=cache, **METHOD)
    assert samples.complete and len(samples.scores) == len(samples.masks) == 25
    assert samples.masks[0].all() and samples.distances is not None and len(samples.distances) == 25
    explained = ropelime.explain(PROMPT, RESPONSE, explain=CONTEXT, surrogate=tiny_surrogate, cache=cache, **METHOD)
    assert comparable(ropelime.fit_samples(samples)) == comparable(explained)
    assert explained.cost.surrogate_forward_passes == 0  # scored once, by `score`


@pytest.mark.parametrize("option", [{"target": "logit_prob"}, {"solver": "lasso"}, {"kernel": "cosine"},
                                    {"kernel_width": 0.2}, {"kernel_normalise": False}, {"adjust_position": True}])
def test_a_refit_with_other_fit_options_equals_a_new_explanation(tiny_surrogate, cache, option):
    samples = ropelime.score(PROMPT, RESPONSE, explain=CONTEXT, surrogate=tiny_surrogate, cache=cache, **METHOD)
    refitted = ropelime.fit_samples(samples, **option)
    explained = ropelime.explain(PROMPT, RESPONSE, explain=CONTEXT, surrogate=tiny_surrogate, cache=cache,
                                 **{**METHOD, **option})
    assert comparable(refitted) == comparable(explained)
    assert [f.score for f in refitted.features] != [f.score for f in ropelime.fit_samples(samples).features]


def test_a_part_of_the_response_is_a_refit(tiny_surrogate, cache):
    samples = ropelime.score(PROMPT, RESPONSE, explain=CONTEXT, surrogate=tiny_surrogate, cache=cache, **METHOD)
    whole = ropelime.fit_samples(samples)
    part = ropelime.fit_samples(samples, output_span="France")
    assert comparable(part) == comparable(ropelime.refit(whole, "France", surrogate=tiny_surrogate, cache=cache))
    assert comparable(part) == comparable(ropelime.refit(whole, "France", samples=samples))
    france = samples.positions("France")
    assert np.array_equal(samples.targets(output_span="France"),
                          [-s.logp[france].mean() for s in samples.scores])


def test_options_that_choose_what_is_scored_are_refused(tiny_surrogate, cache):
    samples = ropelime.score(PROMPT, RESPONSE, explain=CONTEXT, surrogate=tiny_surrogate, cache=cache,
                             kernel="uniform", **METHOD)
    with pytest.raises(InputError, match="choose what is scored"):
        ropelime.fit_samples(samples, sampler="loo")
    with pytest.raises(InputError, match="needs distances measured on the surrogate"):
        ropelime.fit_samples(samples, kernel="rwmd_rope")
    with pytest.raises(InputError, match="not a substring of the response"):
        ropelime.fit_samples(samples, output_span="Lyon")


@pytest.mark.parametrize("method", [{"granularity": "word", "budget": 40},  # the default: loo_pairs, differences, kl
                                    {**METHOD, "target": "js"}])
def test_an_unsigned_score_comes_with_its_direction_on_the_likelihood(tiny_surrogate, cache, method):
    """Under kl/js each feature also gets the same fit on the response's NLL (its likelihood effect) and a
    direction read off that fit's interval; under the NLL itself the direction is the score's own."""
    samples = ropelime.score(PROMPT, RESPONSE, explain=CONTEXT, surrogate=tiny_surrogate, cache=cache, **method)
    unsigned = ropelime.fit_samples(samples)
    on_nll = ropelime.fit_samples(samples, target="nll")
    assert [f.score for f in unsigned.features] != [f.score for f in on_nll.features]
    for divergence, nll in zip(unsigned.features, on_nll.features, strict=True):
        assert divergence.likelihood_effect == pytest.approx(nll.score, abs=1e-12)
        assert divergence.direction == nll.direction
        assert nll.likelihood_effect is None
        expected = "supports" if nll.ci_low > 0 else "opposes" if nll.ci_high < 0 else "unclear"
        assert nll.direction == expected
    assert {f.direction for f in on_nll.features} >= {"supports", "opposes"}  # the tiny model's scores go both ways
    opposing = unsigned.top(3, "opposing")
    assert opposing and all(f.likelihood_effect < 0 for f in opposing)
    assert [f.score for f in opposing] == sorted((f.score for f in opposing), reverse=True)
    assert [f.index for f in on_nll.top(3, "opposing")] == [f.index for f in sorted(on_nll.features,
                                                                                   key=lambda f: f.score)[:3]]
