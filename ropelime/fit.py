"""Weighted linear surrogate of the target over the masks, with wild-bootstrap confidence intervals.

Ridge and OLS are solved in closed form (the normal equations of the weighted, centred problem; the
intercept is not penalised, as in scikit-learn); lasso uses scikit-learn's coordinate descent.

Intervals come from a wild bootstrap: the masks stay fixed and each draw refits the fitted values
plus the residuals with random signs (Rademacher, in antithetic pairs), the residuals scaled up by
the degrees of freedom the fit uses. An interval is the estimate plus the 2.5th and 97.5th
percentiles of the draws' deviations from their mean, so it always contains the estimate. (A
bootstrap that resamples the masks themselves leaves a feature out of every draw that misses the
few masks removing it; those draws give it a score of 0, which pulled its percentile interval to
one side of the estimate.) Ridge and OLS are linear in the target, so their draws are one matrix
product; lasso is refitted per draw. A fit with no residual degrees of freedom left (as many
parameters as weighted samples, e.g. leave-one-out) cannot measure its error: its intervals are
widened to include 0 and a note says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso

from ropelime.schema import Solver

DEFAULT_ALPHA: dict[str, float] = {"ridge": 1.0, "lasso": 0.01, "ols": 0.0}


WIDTH_TOLERANCE = 1e-9
"""Interval ends within this fraction of the largest |coefficient| of 0 count as 0 (float noise)."""


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


def _solve_many(x: np.ndarray, y: np.ndarray, w: np.ndarray, solver: Solver,
                alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Intercepts (B,) and coefficients (B, d), one fit per row of weights w (B, n)."""
    if solver in ("ridge", "ols"):
        return _normal_equations(x, y, w, alpha if solver == "ridge" else 0.0)
    if solver != "lasso":
        raise ValueError(f"unknown solver {solver!r}: choose ridge, ols or lasso")
    intercepts, coefs = np.empty(len(w)), np.empty((len(w), x.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for b, weights in enumerate(w):
            used = weights > 0
            model = Lasso(alpha=alpha, max_iter=5000).fit(x[used], y[used], sample_weight=weights[used])
            intercepts[b], coefs[b] = model.intercept_, model.coef_
    return intercepts, coefs


def _solve(x: np.ndarray, y: np.ndarray, w: np.ndarray, solver: Solver, alpha: float) -> tuple[float, np.ndarray]:
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
    solver: Solver = "ridge",
    alpha: float | None = None,
    seed: int = 0,
    bootstrap: int = 200,
    level: float = 0.95,
) -> LinearFit:
    """Fit with intercept; intervals are a wild bootstrap with the masks fixed (see the module).

    Lasso that zeroes every coefficient is refitted at a tenth of the smallest all-zero alpha and
    says so in `notes`, and weights that leave a single mask (every coefficient 0) are named there
    too, so it never returns a silent all-zero attribution.
    """
    x = masks.astype(np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = np.where(w > 1e-12 * w.max(initial=0.0), w, 0.0)  # negligible weights (and denormals) count as none
    w = w / w.mean() if w.mean() > 0 else np.ones_like(w)
    alpha = DEFAULT_ALPHA[solver] if alpha is None else alpha
    notes: list[str] = []
    if np.count_nonzero(w) == 1:
        notes.append("only one mask has weight, so every score is 0: widen the locality kernel (kernel_width)")
    intercept, coef = _solve(x, y, w, solver, alpha)
    if solver == "lasso" and not np.any(coef) and _lasso_alpha_max(x, y, w) > 0:
        alpha = _lasso_alpha_max(x, y, w) / 10
        notes.append(f"lasso zeroed every feature; alpha lowered to {alpha:.3g}")
        intercept, coef = _solve(x, y, w, solver, alpha)

    r2 = weighted_r2(y, intercept + x @ coef, w)
    deviations, spare = _wild_deviations(x, y, w, intercept, coef, solver, alpha, bootstrap, seed)
    tail = (1 - level) / 2 * 100
    low, high = coef + np.percentile(deviations, [tail, 100 - tail], axis=0)
    if spare < 1 and np.count_nonzero(w) > 1:  # no residual left to measure the error with: claim nothing
        half = (high - low) / 2
        low, high = np.minimum(coef, 0.0) - half, np.maximum(coef, 0.0) + half
        notes.append("as many fit parameters as weighted samples: the intervals cannot measure the fit's error, "
                     "so each is widened to include 0; score more perturbed prompts (a larger budget, or a "
                     "larger k with sparse_k)")
    tolerance = WIDTH_TOLERANCE * max(float(np.max(np.abs(coef), initial=0.0)), 1e-300)
    low, high = (np.where(np.abs(end) < tolerance, 0.0, end) for end in (low, high))
    return LinearFit(intercept, coef, np.minimum(low, coef), np.maximum(high, coef), r2, notes)


def _wild_deviations(x: np.ndarray, y: np.ndarray, w: np.ndarray, intercept: float, coef: np.ndarray,
                     solver: Solver, alpha: float, bootstrap: int, seed: int) -> tuple[np.ndarray, float]:
    """Each wild-bootstrap draw's coefficients minus the draws' mean (bootstrap, d), and the residual
    degrees of freedom (weighted samples less the fit's effective parameters)."""
    used = w > 0
    fitted = intercept + x @ coef
    xc = x - np.average(x, axis=0, weights=w)
    gram = (xc * w[:, None]).T @ xc
    eigen = np.linalg.eigvalsh(gram)
    penalty = alpha if solver == "ridge" else 0.0
    effective = 1.0 + float(np.sum(eigen / (eigen + penalty))) if penalty > 0 else 1.0 + np.linalg.matrix_rank(gram)
    spare = float(np.count_nonzero(used)) - effective
    residuals = (y - fitted) * np.sqrt(np.count_nonzero(used) / max(spare, 1.0))
    rng = np.random.default_rng(seed)
    half = rng.choice([-1.0, 1.0], size=(max(bootstrap // 2, 1), len(y)))
    noise = np.vstack([half, -half]) * residuals  # antithetic pairs: the draws are symmetric about the fit
    if solver in ("ridge", "ols"):
        inverse = np.linalg.inv(gram + penalty * np.eye(len(coef))) if penalty > 0 else np.linalg.pinv(gram, hermitian=True)
        draws = noise @ (inverse @ (xc * w[:, None]).T).T  # the coefficients' change for each draw's noise
    else:
        draws = _solve_many_targets(x, fitted + noise, w, solver, alpha)
    return draws - draws.mean(axis=0), spare


def _solve_many_targets(x: np.ndarray, targets: np.ndarray, w: np.ndarray, solver: Solver, alpha: float) -> np.ndarray:
    """Coefficients (B, d) of one fit per row of targets (B, n), with the same weights."""
    return np.array([_solve(x, target, w, solver, alpha)[1] for target in targets])
