"""Plain data passed between the stages and returned to callers (pydantic models, and the numpy records of
`ropelime.records`).

`ExplainConfig` is the one declaration of every method option: its fields (type, default, choices,
description) also make the CLI's options and the MCP tools' parameters (`ropelime.options`). The
choices of the pluggable stages are the names in their registries (`ropelime.registry`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, computed_field, model_validator

from ropelime.fit import SOLVERS
from ropelime.kernels import KERNELS
from ropelime.perturb import PERTURBATIONS
from ropelime.presets import DESCRIPTION as PRESET_DESCRIPTION
from ropelime.presets import PRESETS, apply_preset
from ropelime.records import EncodedPrompt, Feature, KernelCost, TokenScores  # noqa: F401 - the data model's records
from ropelime.samplers import SAMPLERS, SIZE_DISTRIBUTIONS
from ropelime.targets import TARGETS

Granularity = Literal["word", "sentence", "paragraph", "segments"]
Sampler = Annotated[str, SAMPLERS]
SizeDistribution = Annotated[str, SIZE_DISTRIBUTIONS]
Target = Annotated[str, TARGETS]
Kernel = Annotated[str, KERNELS]
Perturbation = Annotated[str, PERTURBATIONS]
Solver = Annotated[str, SOLVERS]
PromptFormatChoice = Literal["auto", "chat", "plain"]
Method = Literal[tuple(PRESETS)]  # the preset names (ropelime.presets)


Direction = Literal["supports", "opposes", "unclear"]

SETTLED_MAX = 10
"""The most first-ranked features `Explanation.settled_top` checks."""


class FeatureScore(Feature):
    """A feature with its attribution; a positive score = the feature supports the response (under a signed
    target) or the answer rests on it (kl, js)."""

    score: float
    ci_low: float
    ci_high: float
    rank: int = Field(description="1 = first: features measured on the closed model (refine) by their effect, "
                      "then the others by score")
    likelihood_effect: float | None = Field(None, description="kl, js: the same fit on the response's mean negative "
                                            "log-likelihood, as support: > 0 the feature makes the response more "
                                            "likely, < 0 less likely; None under a signed target (the score is that)")
    direction: Direction | None = Field(None, description="whether the feature supports or opposes the response: "
                                        "the 95% interval of its likelihood effect (kl, js) or of its score lies "
                                        "above or below 0, or straddles it (unclear)")
    evidence: Literal["estimated", "measured", "unscored"] = Field(
        "estimated", description="measured: the closed model itself was asked without this feature (refine); "
        "estimated: the surrogate's score; unscored: no perturbation that removes it was scored yet (a partial "
        "explanation), so its score (0) says nothing and it is never listed as supporting or opposing")
    closed_effect: float | None = Field(None, description="refine: the closed model's own effect of deleting the "
                                        "feature, > 0 = it supports the answer (the drop of the log-odds of the "
                                        "answer's first token, or 1 − token F1 of its new answer when the provider "
                                        "gives no log-probabilities); None = not measured")


class ExplainConfig(BaseModel):
    """Every method choice of an explanation; the defaults are the project's chosen method."""

    method: Method | None = Field(None, description=PRESET_DESCRIPTION)
    granularity: Granularity = Field("sentence", description="the unit of a feature: word, sentence or paragraph "
                                     "(the library and the CLI also take caller-given character spans)")
    sampler: Sampler | None = Field(None, description="how the masks are drawn: sparse_k (a few features removed "
                                    "each, balanced coverage), loo (one at a time), loo_pairs (one at a time, then "
                                    "pairs for the intervals), bernoulli (each kept with probability 1/2); unset = "
                                    "loo_pairs (measured best)")
    budget: int = Field(64, ge=1, le=100_000, description="perturbed prompts to score (loo uses one per feature, "
                        "loo_pairs one per feature and at least 16 pairs); more is slower and steadier")
    k: int | None = Field(None, ge=1, description="sparse_k: largest number of features removed per mask; "
                                                  "unset = chosen from the number of features")
    sizes: SizeDistribution = Field("uniform", description="sparse_k: how many features a mask removes, 1..k: "
                                    "uniform, or harmonic (probability ∝ 1/size)")
    target: Target | None = Field(None, description="what is measured per perturbed prompt: nll (the response's "
                                  "mean negative log-likelihood; signed), logit_prob (its log-odds), kl, js "
                                  "(divergence of the next-token distributions; unsigned: how much the answer rests "
                                  "on a feature); unset = kl (measured best)")
    kernel: Kernel = Field("rwmd_rope", description="locality weighting of the perturbed prompts (rwmd_rope: "
                           "relaxed word mover's distance in RoPE embedding space; cosine: LIME's; uniform: none)")
    kernel_width: float | None = Field(None, gt=0, description="sigma of the locality kernel; unset = the kernel's default")
    kernel_cost: KernelCost = Field("euclidean", description="rwmd_rope: ground cost between RoPE token vectors in "
                                    "the RWMD: euclidean distance, or cosine (1 − cosine similarity, 0..2)")
    kernel_normalise: bool = Field(True, description="rwmd_rope: divide the distances by their largest finite value "
                                   "before sqrt(exp(−D²/σ²)); False = kernel_width applies to the raw distances")
    perturb: Perturbation = Field("delete", description="delete the masked text, or replace it by a placeholder "
                                  "that keeps token positions")
    prompt_format: PromptFormatChoice = Field("auto", description="how the surrogate reads the prompt: chat (its chat "
                                              "template, the response as the assistant turn), plain (the text as "
                                              "is), or auto (the format measured best for the surrogate)")
    solver: Solver | None = Field(None, description="the linear fit: ridge, ols or lasso over the masks, or "
                                  "differences (each feature's change when removed alone, intervals from the "
                                  "pairs); unset = the sampler's (differences for loo_pairs, else ridge)")
    alpha: float | None = Field(None, ge=0, description="regularisation of ridge / lasso; unset = the solver's default")
    adjust_position: bool = Field(False, description="divide every score by the surrogate's sensitivity to removals "
                                  "at the feature's position (measured a tie, so off: docs/EVALUATION.md 8.18)")
    prior_weight: float | None = Field(None, ge=0, le=100, description="weight of the question-overlap prior "
                                       "added to the scores; unset = 2 for sentences, 0 for words")
    seed: int = Field(0, description="masks and intervals are deterministic per seed")
    time_budget_s: float | None = Field(None, gt=0, description="stop scoring before this many seconds would pass "
                                        "and return a partial result marked incomplete (null: no limit)")
    converge_top_k: int | None = Field(None, ge=1, description="stop scoring once the top-k features and their "
                                       "order stayed the same for two chunks; unset = score the whole budget")
    segments: list[tuple[int, int]] | None = Field(
        None, description="granularity=segments: (start, end) character spans into the prompt"
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, values: Any) -> Any:
        """A `method` preset fills in the sampler, target, kernel and solver not given (`ropelime.presets`)."""
        return apply_preset(values) if isinstance(values, dict) else values


class Reliability(BaseModel):
    """How far to trust an explanation at a glance, from its measured signals (see `ropelime.reliability`)."""

    verdict: Literal["high", "medium", "low"]
    reasons: list[str] = Field(default_factory=list, description="one short reason per signal that lowered the "
                               "verdict, or what supports a high one")
    significant_features: int = Field(description="features whose 95% interval excludes 0")


class Diagnostics(BaseModel):
    r2: float = Field(description="weighted R² of the linear surrogate on the scored masks")
    samples: int = Field(description="masks scored, the unperturbed prompt included")
    planned_samples: int
    complete: bool = Field(description="False when the time budget stopped scoring early")
    unscored_features: int = Field(0, description="features no scored perturbation removed yet (evidence "
                                   "'unscored'); 0 once every feature has been scored")
    surrogate_nll: float = Field(description="mean negative log-likelihood per token of the response "
                                 "under the surrogate; high values warn that the surrogate finds it unlikely")
    notes: list[str] = Field(default_factory=list)
    reliability: Reliability | None = Field(None, description="verdict and reasons derived from the fit, the "
                                            "surrogate's NLL, the intervals and completeness")
    expected_fidelity: str | None = Field(None, description="how far this surrogate's ranking agrees with a closed "
                                          "model's own, as measured (docs/EVALUATION.md, fidelity), and what "
                                          "refine=K adds")


class Cost(BaseModel):
    closed_model_calls: int = 0
    surrogate_forward_passes: int = 0
    tokens_scored: int = 0
    cached_samples: int = Field(0, description="masks whose scores came from the score cache")
    threads: int | None = Field(None, description="CPU threads the surrogate scored with (None: nothing scored)")
    seconds: float = 0.0
    closed_model_usage: dict[str, float] = Field(default_factory=dict)


class SurrogateInfo(BaseModel):
    name: str
    dtype: str
    device: str
    chat_template: bool
    prompt_format: str | None = Field(None, description="the prompt format used: chat or plain")
    chosen_because: str | None = Field(None, description="why this surrogate was used (surrogate='auto')")


Verdict = Literal["confirmed", "not_confirmed", "inconclusive", "unverified"]


class ClosedCheck(BaseModel):
    """The closed model's answer to the prompt with some features deleted, compared with its original answer."""

    answer: str | None = Field(None, description="None when the call failed or was not made")
    similarity: float | None = Field(None, description="token F1 of the answer to the original answer, 0..1")
    support_drop: float | None = Field(None, description="how much lower the log-odds of the original answer's "
                                       "first token is than on the whole prompt (> 0: the deletion weakened the "
                                       "answer); None when the provider returns no log-probabilities")
    cached: bool = Field(False, description="the answer came from the on-disk cache (no call)")
    error: str | None = Field(None, description="why there is no answer")


class FeatureCheck(ClosedCheck):
    """One verified feature: the answer without it, and the verdict against the control."""

    feature: int = Field(description="index of the removed feature")
    text: str = Field(description="the removed text")
    verdict: Verdict


class ControlCheck(ClosedCheck):
    """The control: features drawn at random from outside the verified ones, removed together."""

    features: list[int]
    texts: list[str]


class Verification(BaseModel):
    """The top supporting features checked with the closed model itself (`ropelime.verify`)."""

    k: int = Field(description="features asked for; fewer are verified when fewer qualify (see notes)")
    model: str
    original: str = Field(description="the model's answer to the unperturbed prompt, which every answer is compared with")
    similarity: Literal["token_f1"] = "token_f1"
    margin: float = Field(description="confirmed when the control's similarity exceeds the feature's by this much")
    checks: list[FeatureCheck] = Field(description="one per verified feature, in rank order")
    control: ControlCheck | None = None
    closed_model_calls: int = Field(0, description="calls made by the verification (cached answers are free)")
    cached_answers: int = 0
    seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)


class RefinedFeature(BaseModel):
    """One feature whose deletion the closed model was asked about (`ropelime.refine`)."""

    feature: int
    text: str
    effect: float | None = Field(None, description="the closed model's measured effect (see FeatureScore.closed_effect)")
    answer: str | None = Field(None, description="the closed model's answer without the feature")
    cached: bool = False
    error: str | None = Field(None, description="why there is no measurement")


class Refinement(BaseModel):
    """The closed model's own effects of deleting the surrogate's best candidates (`refine=K`)."""

    k: int
    model: str
    signal: Literal["logprob", "similarity"] = Field(description="logprob: the drop of the log-odds of the answer's "
                                                     "first token; similarity: 1 − token F1 of the new answer (the "
                                                     "provider returned no log-probabilities)")
    candidates: Literal["surrogate", "random", "given"] = Field("surrogate", description="how the features to "
                                                                "measure were chosen: the surrogate's highest upper "
                                                                "interval bounds, or at random (a control)")
    original_support: float | None = Field(None, description="log-odds of the answer's first token on the whole "
                                           "prompt (signal logprob)")
    features: list[RefinedFeature]
    closed_model_calls: int = 0
    cached_answers: int = 0
    seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)


class Explanation(BaseModel):
    """The result of `ropelime.explain`: JSON is its `model_dump`."""

    # also reads the former name "id" (explanations stored before issue 31)
    explanation_id: str = Field(validation_alias=AliasChoices("explanation_id", "id"),
                                description="content hash of the inputs and method; the same name on every surface")
    prompt: str
    system: str | None = None
    explain_start: int = Field(description="start of the explainable part in the prompt")
    explain_end: int
    response: str
    response_source: Literal["given", "closed_model"]
    output_span: str | None = Field(None, description="the part of the response attributed (None = all of it)")
    closed_model: str | None = None
    features: list[FeatureScore]
    config: ExplainConfig
    diagnostics: Diagnostics
    cost: Cost
    surrogate: SurrogateInfo
    provenance: dict[str, str] = Field(default_factory=dict)
    verification: Verification | None = Field(None, description="the top features checked with the closed model "
                                                                "(verify=K), or None")
    refinement: Refinement | None = Field(None, description="the closed model's own effects of deleting the best "
                                          "candidates (refine=K): those features rank first, marked measured")

    @computed_field(description="False when the time budget stopped scoring early (diagnostics say how far it got)")
    @property
    def complete(self) -> bool:
        return self.diagnostics.complete

    @computed_field(description="the largest k whose top k can no longer change (their 95% intervals lie above the "
                    "rest's, all scored)")
    @property
    def settled_top(self) -> int:
        """The largest k (at most SETTLED_MAX) with rivals(k) == 0; 0 = even the first could still change."""
        return next((k for k in range(min(SETTLED_MAX, len(self.features) - 1), 0, -1) if self.rivals(k) == 0), 0)

    @property
    def id(self) -> str:
        """The explanation_id (its former name)."""
        return self.explanation_id

    def rivals(self, k: int) -> int:
        """How many features outside the top k supporting ones could still enter it: those not yet scored, and
        those whose 95% interval reaches the lowest lower bound in the top k. 0 = the top k is settled."""
        top = self.top(k)
        if len(top) < k:
            return len(self.features) - len(top)
        floor, chosen = min(f.ci_low for f in top), {f.index for f in top}
        return sum(f.evidence == "unscored" or f.ci_high >= floor for f in self.features if f.index not in chosen)

    def top(self, k: int = 5, direction: Literal["supporting", "opposing", "both"] = "supporting") -> list[FeatureScore]:
        """The k features with the highest scores (supporting), the largest |score| (both), or the strongest
        opposition: the lowest scores, or under kl/js the highest among those whose removal makes the response
        more likely (negative likelihood effect)."""
        scored = [f for f in self.features if f.evidence != "unscored"]
        if direction == "supporting":  # by rank: measured features (refine) first, then by score
            ordered = sorted(scored, key=lambda f: (f.rank, -f.score))
        elif direction == "opposing" and any(f.likelihood_effect is not None for f in scored):
            ordered = sorted((f for f in scored if (f.likelihood_effect or 0.0) < 0), key=lambda f: -f.score)
        elif direction == "opposing":
            ordered = sorted(scored, key=lambda f: f.score)
        else:
            ordered = sorted(scored, key=lambda f: -abs(f.score))
        return ordered[:k]
