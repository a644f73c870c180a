"""Method presets (`ropelime.presets`): one name sets sampler, target, kernel and solver on every surface (Python,
CLI, MCP), and an option given explicitly next to it wins."""

from __future__ import annotations

import pytest
from mcp import Client

import ropelime
from ropelime.cache import ScoreCache
from ropelime.cli import build_parser
from ropelime.options import RUN, config_from_args
from ropelime.presets import PRESET_FIELDS, PRESETS
from ropelime.research.evaluate import BASELINES
from ropelime.schema import ExplainConfig, Explanation
from ropelime_server.app import build_server
from ropelime_server.engine import EngineOptions

CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge was designed by Mara."
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
RESPONSE = "Paris is the capital of France."


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_sets_its_four_options(name):
    config = ExplainConfig(method=name)
    assert {f: getattr(config, f) for f in PRESET_FIELDS} == PRESETS[name]
    assert set(PRESETS[name]) == set(PRESET_FIELDS)


def test_the_paper_preset_is_the_published_setting():
    assert PRESETS["paper"] == {"sampler": "sparse_k", "kernel": "rwmd_rope", "target": "nll", "solver": "ridge",
                                "prior_weight": 0.0}  # the surrogate alone, as published


def test_the_default_preset_is_the_default_config():
    unnamed = ExplainConfig().model_dump(exclude={"method"})
    assert ExplainConfig(method="default").model_dump(exclude={"method"}) == unnamed


@pytest.mark.parametrize("name", ["loo", "contextcite"])
def test_baseline_presets_match_the_evaluated_baselines(name):
    """The evaluation's baselines (whose measured quality the docs quote) are the presets of the same name."""
    shared = set(BASELINES[name]) & set(PRESET_FIELDS)
    assert shared and {f: BASELINES[name][f] for f in shared} == {f: PRESETS[name][f] for f in shared}


def test_an_explicit_option_wins_over_the_preset():
    config = ExplainConfig(method="contextcite", kernel="rwmd_rope", solver="ridge")
    assert (config.sampler, config.target, config.kernel, config.solver) == ("bernoulli", "logit_prob", "rwmd_rope",
                                                                            "ridge")


def test_an_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="'default', 'paper', 'contextcite' or 'loo'"):
        ExplainConfig(method="lime")


def cli_config(*argv: str) -> ExplainConfig:
    args = build_parser().parse_args(["explain", "--demo", *argv])
    return config_from_args(args, RUN)


def test_cli_method_and_overrides():
    assert cli_config("--method", "loo").model_dump() == ExplainConfig(method="loo").model_dump()
    overridden = cli_config("--method", "contextcite", "--kernel", "rwmd_rope", "--no-kernel-normalise")
    assert overridden.kernel == "rwmd_rope" and overridden.sampler == "bernoulli" and not overridden.kernel_normalise
    assert cli_config("--sampler", "loo").kernel == "rwmd_rope"  # no preset: the defaults


def test_audit_and_eval_take_the_method():
    for argv in (["audit", "in.jsonl", "--out", "o.jsonl", "--method", "paper"], ["eval", "mmlu", "--method", "paper"]):
        args = build_parser().parse_args(argv)
        assert args.method == "paper"
        assert config_from_args(args, ("method", "sampler", "kernel")).sampler == "sparse_k"


def test_python_method_keyword(tiny_surrogate, tmp_path):
    """`explain(method=...)` equals spelling the preset's options out (the same explanation id: the preset's name
    is a label, not part of the identity); an explicit option next to it wins."""
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        named = ropelime.explain(PROMPT, RESPONSE, explain=CONTEXT, method="paper", budget=8, surrogate=tiny_surrogate,
                                 cache=cache)
        spelled = ropelime.explain(PROMPT, RESPONSE, explain=CONTEXT, budget=8, surrogate=tiny_surrogate, cache=cache,
                                   **PRESETS["paper"])
        mixed = ropelime.explain(PROMPT, RESPONSE, explain=CONTEXT, method="paper", target="kl", budget=8,
                                 surrogate=tiny_surrogate, cache=cache)
    finally:
        cache.close()
    assert named.config.method == "paper" and named.config.sampler == "sparse_k"
    assert named.id == spelled.id and [f.score for f in named.features] == [f.score for f in spelled.features]
    assert mixed.config.target == "kl" and mixed.config.sampler == "sparse_k" and mixed.id != named.id


@pytest.mark.anyio
async def test_the_tool_takes_the_method(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ROPELIME_DTYPE", "float32")
    server = build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu"))
    args = {"prompt": PROMPT, "response": RESPONSE, "explain": CONTEXT, "budget": 8}
    async with Client(server) as client:
        loo = await client.call_tool("explain_response", {**args, "method": "loo"})
        mixed = await client.call_tool("explain_response", {**args, "method": "loo", "kernel": "rwmd_rope",
                                                            "solver": "ridge"})
    assert not loo.is_error and not mixed.is_error, (loo.content[0].text, mixed.content[0].text)
    config = Explanation.model_validate(loo.structured_content).config
    assert (config.method, config.sampler, config.target, config.kernel, config.solver) == ("loo", "loo", "nll",
                                                                                            "uniform", "ols")
    config = Explanation.model_validate(mixed.structured_content).config
    assert (config.sampler, config.kernel, config.solver) == ("loo", "rwmd_rope", "ridge")


def test_the_compare_methods_prompt_names_every_preset_and_sampler():
    from pathlib import Path

    from ropelime.options import choices

    text = (Path(__file__).resolve().parents[1] / "prompts" / "compare_methods.md").read_text(encoding="utf-8")
    assert all(f'"{name}"' in text for name in PRESETS)
    assert all(f'"{name}"' in text for name in choices("sampler"))


def test_an_audit_request_takes_a_method_over_the_defaults():
    from ropelime.audit import parse_request

    defaults = ExplainConfig(budget=8, kernel="cosine")  # a batch default given explicitly
    request = parse_request({"id": 1, "prompt": "p", "response": "r", "method": "loo"}, 1, defaults)
    assert (request.config.sampler, request.config.target, request.config.solver) == ("loo", "nll", "ols")
    assert request.config.kernel == "cosine" and request.config.budget == 8  # given for the batch: it wins
    plain = parse_request({"id": 2, "prompt": "p", "response": "r", "seed": 3}, 2, defaults)
    assert plain.config.seed == 3 and plain.config.kernel == "cosine" and plain.config.sampler is None
