"""Method presets: one name that sets the sampler, target, kernel and solver together.

This table is the one declaration of the presets. `ExplainConfig.method` takes its names (so the
CLI's `--method`, `ropelime.explain(method=...)` and the MCP tools' `method` parameter all offer
them); an option given explicitly next to a preset still wins over the preset's value.

Measured quality (AUROC against gold evidence, Gemma 3 270M, budget 64; docs/EVALUATION.md, Summary):

| preset | HotpotQA sentences | MMLU words |
|---|---|---|
| default | 0.824 [0.782, 0.862] (60 items; with the question-overlap prior added since: 0.857 on 30, section 9.2) | 0.644 [0.595, 0.694] (60) |
| paper | 0.691 [0.629, 0.749] (60) | 0.511 [0.453, 0.567] (60) |
| loo | 0.682 [0.620, 0.745] (60) | 0.503 [0.440, 0.563] (60) |
| contextcite | 0.643 [0.561, 0.717] (30) | 0.498 [0.448, 0.548] (60) |
"""

from __future__ import annotations

from typing import Any

PRESET_FIELDS = ("sampler", "target", "kernel", "solver", "prior_weight")
"""The options a preset sets (every preset sets all of them; None = the default method's choice)."""

PRESETS: dict[str, dict[str, Any]] = {
    "default": {"sampler": None, "target": None, "kernel": "rwmd_rope", "solver": None, "prior_weight": None},
    "paper": {"sampler": "sparse_k", "target": "nll", "kernel": "rwmd_rope", "solver": "ridge", "prior_weight": 0.0},
    "contextcite": {"sampler": "bernoulli", "target": "logit_prob", "kernel": "uniform", "solver": "lasso",
                    "prior_weight": 0.0},
    "loo": {"sampler": "loo", "target": "nll", "kernel": "uniform", "solver": "ols", "prior_weight": 0.0},
}
"""Each preset's sampler, target, kernel, solver and text prior. default: today's defaults (loo_pairs masks, the
KL target, the differences fit, the question-overlap prior for sentences; the RWMD kernel, which single removals
do not use); paper: the published RoPE-LIME setting (Sparse-K masks, RWMD in RoPE space, NLL, ridge);
contextcite: ContextCite's (Bernoulli-1/2 masks, log-odds, lasso, no locality kernel); loo: classic
leave-one-out on the NLL (OLS, no kernel). The three published methods read the surrogate alone (no prior)."""

DESCRIPTION = ("sets sampler, target, kernel, solver and prior_weight together (any given too wins): default "
               "(loo_pairs, kl, differences, the question-overlap prior for sentences: best measured), paper (published RoPE-LIME: sparse_k, rwmd_rope, nll, ridge), "
               "contextcite (bernoulli, logit_prob, lasso, uniform), loo (loo, nll, ols, uniform)")


def apply_preset(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (an ExplainConfig's given fields) with its `method` preset's options filled in where not given."""
    name = values.get("method")
    if not isinstance(name, str) or name not in PRESETS:
        return values  # no preset, or a bad name: validation names the choices
    return {**PRESETS[name], **values}
