"""Stopping rules of anytime scoring: time left for a chunk, convergence of the top-k ranking."""

from __future__ import annotations

import math
import time

import numpy as np

from ropelime.anytime import MAX_CHUNK, MIN_STEP_TOKENS, PROGRESS_EVERY_S, Deadline, Rate, pace_of, plan_chunk, RankingWatch


def test_the_first_chunk_is_one_mask_until_the_pace_is_measured():
    pace = Rate()
    assert plan_chunk([500] * 40, pace, lambda j: 100.0, first=True) == 1
    pace.record(units=1000, seconds=0.1)  # 1e-4 s per token: 0.05 s per mask of 500 tokens
    assert plan_chunk([500] * 100, pace, lambda j: 100.0, first=False) == MAX_CHUNK
    slow = Rate(1e-4)  # 0.2 s per mask of 2,000 tokens: a few seconds per chunk at most
    assert plan_chunk([2000] * 40, slow, lambda j: 100.0, first=False) == int(PROGRESS_EVERY_S / 0.2)


def test_a_slow_surrogate_still_scores_an_efficient_batch_per_step_unless_the_deadline_is_near():
    slow = Rate(1e-2)  # 1 s per mask of 100 tokens: the progress interval alone would allow 2 masks
    assert plan_chunk([100] * 40, slow, lambda j: 100.0, first=False) == math.ceil(MIN_STEP_TOKENS / 100)
    assert plan_chunk([100] * 40, slow, lambda j: 20.0, first=False) == 5  # up to a quarter of the time left
    assert plan_chunk([100] * 40, slow, lambda j: 3.2, first=False) == 2  # 1.5 s per mask against the deadline


def test_a_chunk_stops_before_the_deadline_but_the_first_always_scores_one():
    pace = Rate(1e-3)  # 0.5 s per mask of 500 tokens, checked against the deadline as 0.75 s
    assert plan_chunk([500] * 40, pace, lambda j: 1.6, first=False) == 2
    assert plan_chunk([500] * 40, pace, lambda j: 0.1, first=False) == 0
    assert plan_chunk([500] * 40, pace, lambda j: -5.0, first=True) == 1  # the unperturbed prompt is needed


def test_the_deadline_keeps_room_for_the_work_after_scoring():
    deadline = Deadline(time.perf_counter() + 10.0, per_mask_s=0.05, fixed_s=1.0)
    assert 8.0 < deadline.scoring_left(10) <= 8.5  # 10 s - 1 s - 10 * 0.05 s
    before = deadline.scoring_left(10)
    deadline.leave_room_for_fit(d=40, solver="ridge", bootstrap=200)
    assert deadline.scoring_left(10) < before
    twice = Deadline(deadline.end, per_mask_s=0.05, fixed_s=1.0)
    twice.leave_room_for_fit(d=40, solver="ridge", bootstrap=200, fits=2)  # an unsigned target fits the NLL too
    assert math.isclose(twice.per_mask_s - 0.05, 2 * (deadline.per_mask_s - 0.05))
    assert math.isclose(twice.fixed_s - 1.0, 2 * (deadline.fixed_s - 1.0)) and twice.fixed_s > deadline.fixed_s
    assert Deadline.after(time.perf_counter(), None).scoring_left(10**6) == float("inf")


def test_the_pace_is_remembered_per_surrogate():
    class Model:
        pass

    a, b = Model(), Model()
    pace_of(a).record(100, 1.0)
    assert pace_of(a).seconds_per_unit == 0.01 and pace_of(b).seconds_per_unit is None


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
