"""Stopping rules of anytime scoring: time left for a chunk, convergence of the top-k ranking."""

from __future__ import annotations

import time

import numpy as np

from ropelime.anytime import Pace, RankingWatch


def test_pace_stops_before_a_chunk_that_would_overrun():
    pace = Pace(time.perf_counter() - 30.0, budget_s=40.0)
    assert pace.fits(10_000)  # nothing measured yet: always try
    pace.record(tokens=10_000, seconds=30.0)
    assert pace.fits(2_000)  # about 6 s more
    assert not pace.fits(10_000)  # about 30 s more
    assert Pace(time.perf_counter() - 100.0, budget_s=None).fits(10**9)


def test_ranking_watch_converges_on_a_clear_signal_and_not_before():
    rng = np.random.default_rng(0)
    d = 12
    beta = np.zeros(d)
    beta[[2, 7, 9]] = [3.0, 2.0, 1.0]
    masks = rng.random((120, d)) < 0.7
    y = masks @ beta + rng.normal(0, 0.01, len(masks))
    watch = RankingWatch(top_k=3, patience=2)
    assert not watch.update(masks[:d], y[:d], sign=1.0)  # fewer samples than features + 1
    verdicts = [watch.update(masks[:n], y[:n], sign=1.0) for n in (40, 60, 80)]
    assert verdicts == [False, False, True]
    assert watch._last == (2, 7, 9)


def test_ranking_watch_restarts_when_the_ranking_moves():
    watch = RankingWatch(top_k=1, patience=1, min_samples=2)
    masks = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    assert not watch.update(masks, np.array([1.0, 0.0, 1.0, 0.0]), sign=1.0)
    assert not watch.update(masks, np.array([0.0, 1.0, 1.0, 0.0]), sign=1.0)  # top feature changed
    assert watch.update(masks, np.array([0.0, 1.0, 1.0, 0.0]), sign=1.0)
