"""Weighted linear surrogate of the target over the masks, with bootstrap confidence intervals.

Ridge and OLS are solved in closed form, every bootstrap draw at once (the normal equations of the
weighted, centred problem; the intercept is not penalised, as in scikit-learn); lasso uses
scikit-learn's coordinate descent.

The `differences` solver reads each feature's score off its singleton mask (leave-one-out) and its
intervals off the masks that remove two or more features: how far their targets depart from the sum
of their singletons' effects (see `singleton_differences`).

Intervals of the regressions resample the scored masks and are symmetric about the estimate: estimate ± the 95th
percentile of the draws' distance from it. (Percentile intervals — the 2.5th to 97.5th percentile of
the draws — are lopsided here: a draw that misses the few masks removing a feature gives it a score
of 0, so its interval was pulled to one side and the estimate sat on an edge. A wild bootstrap that
keeps the masks fixed avoids that but ignores the ridge's bias and marked too many noise features
as excluding 0 in simulation.) Interval ends within float noise of 0 are 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from ropelime.registry import Registry

NOISE = 1e-12
"""Interval ends closer to 0 than this are 0 (float noise)."""


@dataclass
class LinearFit:
    """y ≈ intercept + masks @ coef; ci_low/ci_high bound each coefficient."""

    intercept: float
    coef: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    r2: float
    notes: list[str] = field(default_factory=list)

    def predict(self, masks: np.ndarray) -> np.ndarray:
        return self.intercept + masks.astype(np.float64) @ self.coef


def _normal_equations(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ridge (alpha > 0) or minimum-norm OLS (alpha = 0) for each row of weights w (B, n).

    Returns intercepts (B,) and coefficients (B, d).
    """
    total = w.sum(axis=1, keepdims=True)
    x_mean = (w @ x) / total
    y_mean = (w @ y)[:, None] / total
    gram = np.einsum("bn,ni,nj->bij", w, x, x) - total[:, :, None] * x_mean[:, :, None] * x_mean[:, None, :]
    moment = w @ (x * y[:, None]) - total * x_mean * y_mean
    if alpha > 0:
        coef = np.linalg.solve(gram + alpha * np.eye(x.shape[1]), moment[:, :, None])[:, :, 0]
    else:
        coef = np.einsum("bij,bj->bi", np.linalg.pinv(gram, hermitian=True), moment)
    return y_mean[:, 0] - np.einsum("bd,bd->b", x_mean, coef), coef


def ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ridge in closed form, one fit per row of weights w (B, n): intercepts (B,), coefficients (B, d)."""
    return _normal_equations(x, y, w, alpha)


def ols(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted minimum-norm least squares (alpha does not apply), one fit per row of weights w."""
    return _normal_equations(x, y, w, 0.0)


def lasso(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted lasso by scikit-learn's coordinate descent, one fit per row of weights w."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    intercepts, coefs = np.empty(len(w)), np.empty((len(w), x.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for b, weights in enumerate(w):
            used = weights > 0
            model = Lasso(alpha=alpha, max_iter=5000).fit(x[used], y[used], sample_weight=weights[used])
            intercepts[b], coefs[b] = model.intercept_, model.coef_
    return intercepts, coefs


class MissingSingletons(ValueError):
    """The masks lack the unperturbed prompt or some feature's singleton (the `differences` solver needs them)."""


def singleton_differences(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Each coefficient is the target's fall when its feature alone is removed: y(all kept) − y(singleton),
    the same for every row of w; the intercept makes the all-kept row exact. MissingSingletons without them."""
    d = x.shape[1]
    removed = d - x.sum(axis=1)
    full, single = np.flatnonzero(removed == 0), np.flatnonzero(removed == 1)
    which = np.argmin(x[single], axis=1)
    missing = d - len(np.unique(which))
    if not len(full) or missing:
        raise MissingSingletons("the differences solver needs the unperturbed prompt and every feature's singleton "
                                f"mask; {missing or 'the unperturbed'} {'are' if missing > 1 else 'is'} missing")
    coef = np.zeros(d)
    coef[which] = y[full[0]] - y[single]
    intercept = y[full[0]] - coef.sum()
    return np.full(len(w), intercept), np.tile(coef, (len(w), 1))


def pair_residual_intervals(x: np.ndarray, y: np.ndarray, w: np.ndarray, intercept: float, coef: np.ndarray,
                            level: float) -> tuple[np.ndarray, list[str]]:
    """Half-widths for `singleton_differences`: how far a feature's effect moves when others are removed too.

    If a mask removing the set S departs from the sum of its singletons by independent per-feature
    deviations of variance σ², its residual has variance |S|·σ²; σ² is estimated from the weighted residuals
    of the masks removing two or more features, and every interval is ± z·σ (z of the normal at `level`).
    Without such masks the intervals are ± the score itself, and a note says they were not measured."""
    from statistics import NormalDist  # the standard library's, not scipy.stats' (a quarter second to import)

    removed = x.shape[1] - x.sum(axis=1)
    several = (removed >= 2) & (w > 0)
    if not several.any():
        return np.abs(coef), ["no mask removed two or more features, so the intervals (± each score) are not "
                              "measured; give a budget above the number of features"]
    residuals = y[several] - (intercept + x[several] @ coef)
    sigma = np.sqrt(np.sum(w[several] * residuals**2) / np.sum(w[several] * removed[several]))
    return np.full(len(coef), NormalDist().inv_cdf(0.5 + level / 2) * sigma), []


@dataclass(frozen=True)
class Solver:
    """`function(x, y, w, alpha) -> (intercepts, coefficients)` for each row of weights w (B, n).

    `default_alpha` is None for a solver without regularisation; `sparse` marks one that may zero every
    coefficient (then refitted with a smaller alpha, see `fit_linear`); `closed_form` one whose time grows
    with its arithmetic (`ropelime.anytime` predicts it), else each fit is timed as an iterative one;
    `intervals(x, y, w, intercept, coef, level) -> (half-widths, notes)` a solver's own intervals instead of
    the bootstrap."""

    function: Callable[[np.ndarray, np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]
    default_alpha: float | None = None
    sparse: bool = False
    closed_form: bool = True
    intervals: Callable[..., tuple[np.ndarray, list[str]]] | None = None


SOLVERS: Registry[Solver] = Registry("solver", {
    "ridge": Solver(ridge, 1.0),
    "ols": Solver(ols),
    "lasso": Solver(lasso, 0.01, sparse=True, closed_form=False),
    "differences": Solver(singleton_differences, intervals=pair_residual_intervals),
}, wrap=Solver)
"""The solvers by name (the choices of `ExplainConfig.solver`)."""


def _solve_many(x: np.ndarray, y: np.ndarray, w: np.ndarray, solver: str,
                alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Intercepts (B,) and coefficients (B, d), one fit per row of weights w (B, n)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: choose {', '.join(SOLVERS)}")
    return SOLVERS[solver].function(x, y, w, alpha)


def _solve(x: np.ndarray, y: np.ndarray, w: np.ndarray, solver: str, alpha: float) -> tuple[float, np.ndarray]:
    intercepts, coefs = _solve_many(x, y, w[None, :], solver, alpha)
    return float(intercepts[0]), coefs[0]


def _lasso_alpha_max(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """The smallest lasso alpha at which every coefficient is zero (weighted, with intercept)."""
    xc = x - np.average(x, axis=0, weights=w)
    yc = y - np.average(y, weights=w)
    return float(np.max(np.abs((w * yc) @ xc)) / w.sum())


def weighted_r2(y: np.ndarray, predicted: np.ndarray, w: np.ndarray) -> float:
    """1 - weighted residual / weighted total sum of squares (0 when y is constant)."""
    mean = np.average(y, weights=w)
    total = float(np.sum(w * (y - mean) ** 2))
    if total <= 0:
        return 0.0
    return 1.0 - float(np.sum(w * (y - predicted) ** 2)) / total


def fit_linear(
    masks: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    *,
    solver: str = "ridge",
    alpha: float | None = None,
    seed: int = 0,
    bootstrap: int = 200,
    level: float = 0.95,
) -> LinearFit:
    """Fit with intercept; intervals are symmetric bootstrap intervals over the scored masks (see the module),
    or the solver's own.

    Lasso that zeroes every coefficient is refitted at a tenth of the smallest all-zero alpha and
    says so in `notes`, and weights that leave a single mask (every coefficient 0) are named there
    too, so it never returns a silent all-zero attribution; `differences` without every singleton (a
    time budget stopped scoring first, or another sampler's masks) falls back to ridge, with a note.
    """
    x = masks.astype(np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = np.where(w > 1e-12 * w.max(initial=0.0), w, 0.0)  # negligible weights (and denormals) count as none
    w = w / w.mean() if w.mean() > 0 else np.ones_like(w)
    alpha = (SOLVERS[solver].default_alpha or 0.0) if alpha is None else alpha
    notes: list[str] = []
    if np.count_nonzero(w) == 1:
        notes.append("only one mask has weight, so every score is 0: widen the locality kernel (kernel_width)")
    try:
        intercept, coef = _solve(x, y, w, solver, alpha)
    except MissingSingletons as missing:
        solver, alpha = "ridge", SOLVERS["ridge"].default_alpha
        notes.append(f"{missing}: fitted by ridge instead")
        intercept, coef = _solve(x, y, w, solver, alpha)
    if SOLVERS[solver].sparse and not np.any(coef) and _lasso_alpha_max(x, y, w) > 0:
        alpha = _lasso_alpha_max(x, y, w) / 10
        notes.append(f"lasso zeroed every feature; alpha lowered to {alpha:.3g}")
        intercept, coef = _solve(x, y, w, solver, alpha)

    r2 = weighted_r2(y, intercept + x @ coef, w)
    if SOLVERS[solver].intervals is not None:
        half, more = SOLVERS[solver].intervals(x, y, w, intercept, coef, level)
        notes += more
    else:
        half = _bootstrap_half_widths(x, y, w, coef, solver, alpha, seed, bootstrap, level)
    low, high = (np.where(np.abs(end) < NOISE, 0.0, end) for end in (coef - half, coef + half))
    return LinearFit(intercept, coef, np.minimum(low, coef), np.maximum(high, coef), r2, notes)


def _bootstrap_half_widths(x: np.ndarray, y: np.ndarray, w: np.ndarray, coef: np.ndarray, solver: str, alpha: float,
                           seed: int, bootstrap: int, level: float) -> np.ndarray:
    """The `level` percentile of the draws' distance from `coef`, refitting on resampled masks."""
    rng = np.random.default_rng(seed)
    weighted = np.flatnonzero(w > 0)  # rows of zero weight change no fit: resample the others
    counts = np.zeros((bootstrap, len(y)))
    for b in range(bootstrap):
        np.add.at(counts[b], rng.choice(weighted, len(weighted)), 1.0)
    with threadpool_limits(1, user_api="blas"):  # many small solves: threads only contend (with torch's too)
        draws = _solve_many(x, y, counts * w, solver, alpha)[1]
    return np.percentile(np.abs(draws - coef), level * 100, axis=0)
