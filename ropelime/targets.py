"""Turn per-position scores of the fixed response into one scalar per mask.

A target is a `Target` in `TARGETS`: its value over the selected response positions of one mask's
scores, and the sign that turns a regression coefficient into support.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ropelime.registry import Registry

if TYPE_CHECKING:
    from ropelime.records import TokenScores

Positions = slice | np.ndarray


@dataclass(frozen=True)
class Target:
    """`function(scores, positions) -> float`; `sign` = -1 for loss-like targets (lower = more support);
    `divergences`: the divergences from the unperturbed prompt's next-token distributions it reads ("kl",
    "js"), which scoring computes over the whole vocabulary only for such targets; `signed`: whether a score
    says if a feature supports or opposes the response (if not, only how much the answer rests on it, and the
    explanation adds each feature's effect on the response's likelihood); `note`: what a reader of its scores
    should know (added to the explanation's notes); `positive`, `negative`: what a positive and a negative
    score say, for legends; `unit`: the unit of a score, for people (None: unknown, e.g. a caller's target)."""

    function: Callable[[TokenScores, Positions], float]
    sign: float = -1.0
    divergences: frozenset[str] = frozenset()
    signed: bool = True
    note: str | None = None
    positive: str = "supports"
    negative: str = "opposes"
    unit: str | None = None


def nll(scores: TokenScores, positions: Positions) -> float:
    """Mean -log p(y_t)."""
    return float(-scores.logp[positions].mean())


def logit_prob(scores: TokenScores, positions: Positions) -> float:
    """log(p / (1 - p)) of the whole selected output (ContextCite)."""
    total = float(scores.logp[positions].sum())
    return total - float(np.log(-np.expm1(min(total, -1e-12))))


def _divergence(name: str) -> Callable[[TokenScores, Positions], float]:
    def mean_divergence(scores: TokenScores, positions: Positions) -> float:
        values = getattr(scores, name)
        if values is None:
            raise ValueError(f"target {name!r} needs the reference distributions; score with reference=...")
        return float(values[positions].mean())

    mean_divergence.__doc__ = f"Mean {name.upper()} divergence from the unperturbed next-token distributions."
    return mean_divergence


UNSIGNED = ("target {}: a score says how much the answer rests on the feature (how far the surrogate's "
            "next-token distributions move without it), not whether it argues for or against the answer; "
            "each feature's likelihood_effect (the same fit on the response's NLL) gives that direction")
"""The note of the divergence targets ({} = the target's name)."""


TARGETS: Registry[Target] = Registry("target", {
    "nll": Target(nll, -1.0, unit="nats/token"),
    "logit_prob": Target(logit_prob, 1.0, unit="log-odds"),
    "kl": Target(_divergence("kl"), -1.0, divergences=frozenset({"kl"}), signed=False, note=UNSIGNED,
                 positive="answer rests on it", negative="does not", unit="nats/token"),
    "js": Target(_divergence("js"), -1.0, divergences=frozenset({"js"}), signed=False, note=UNSIGNED,
                 positive="answer rests on it", negative="does not", unit="nats/token"),
}, wrap=Target)
"""The targets by name (the choices of `ExplainConfig.target`); a bare function given as a target is loss-like."""


def target_notes(target: str) -> list[str]:
    """What a reader of this target's scores should know (none for the signed targets)."""
    note = TARGETS[target].note
    return [note.format(target)] if note else []


def support_sign(target: str) -> float:
    """The sign that turns a regression coefficient (or a target value) into support for the response."""
    return TARGETS[target].sign


def divergences_read(target: str) -> frozenset[str]:
    """The divergences ("kl", "js") the target reads besides the response's log-probabilities."""
    return TARGETS[target].divergences


def target_value(scores: TokenScores, target: str, positions: Positions = slice(None)) -> float:
    """The scalar target of one mask, optionally over a subset of response positions."""
    return TARGETS[target].function(scores, positions)


def target_vector(rows: list[TokenScores], target: str, positions: Positions = slice(None)) -> np.ndarray:
    """target_value for every row."""
    return np.array([target_value(r, target, positions) for r in rows], dtype=np.float64)
