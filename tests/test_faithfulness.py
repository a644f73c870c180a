"""The faithfulness metrics on planted data: LDS is the rank agreement of predicted and true support."""

from __future__ import annotations

import numpy as np
import pytest

from ropelime.faithfulness import default_k, lds
from ropelime.schema import Explanation, FeatureScore


def with_scores(scores: np.ndarray) -> Explanation:
    features = [FeatureScore(index=i, text="w ", start=2 * i, end=2 * i + 2, score=float(s), ci_low=float(s),
                             ci_high=float(s), rank=1) for i, s in enumerate(scores)]
    return Explanation.model_construct(features=features)


def test_lds_is_one_for_an_exact_linear_explanation():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=6)
    masks = rng.random((40, 6)) < 0.5
    explanation = with_scores(weights)
    assert lds(explanation, masks, masks @ weights) == pytest.approx(1.0)
    assert lds(explanation, masks, -(masks @ weights)) == pytest.approx(-1.0)
    assert lds(explanation, masks, np.zeros(40)) == 0.0
    noisy = masks @ weights + rng.normal(0, 2.0, 40)
    assert 0 < lds(explanation, masks, noisy) < 1


def test_default_k_stays_inside_the_features():
    assert [default_k(d) for d in (2, 5, 10, 40, 100)] == [1, 1, 1, 4, 10]
