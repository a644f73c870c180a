"""One declaration per method option: the CLI's `--help`, the MCP tools' input schemas, the options resource
and `ExplainConfig` agree on every option's choices and default; a stage added to its registry reaches
all of them; a callable stage is accepted by `explain`."""

from __future__ import annotations

import argparse
import json
import re
from typing import get_args

import numpy as np
import pytest
from mcp import Client

import ropelime
from ropelime.cli import build_parser, main
from ropelime.kernels import KERNELS
from ropelime import options as declared
from ropelime.options import CALL, EXPLAIN, METHOD, RUN, choices, flag
from ropelime.schema import ExplainConfig
from ropelime_server.app import COMPARE_OPTIONS, EXPLAIN_OPTIONS, TOOL_DEFAULTS, ToolGranularity, build_server
from ropelime_server.engine import EngineOptions

DEFAULTS = ExplainConfig()


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return dict(sub.choices) if sub else {}


def parsers() -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers, as `main` builds them ("eval mmlu" for a subcommand's own)."""
    found = subparsers(build_parser())
    return found | {f"{name} {task}": parser for name in list(found) for task, parser in subparsers(found[name]).items()}


@pytest.mark.parametrize("command, names", [("explain", EXPLAIN), ("audit", RUN), ("eval hotpotqa", METHOD),
                                            ("eval mmlu", METHOD), ("eval fidelity", METHOD)])
def test_cli_options_are_the_config_fields(command, names, capsys):
    actions = {a.dest: a for a in parsers()[command]._actions}
    text = help_of(capsys, *command.split())
    for name in names:
        action = actions[name]
        assert flag(name) in action.option_strings
        assert action.default == declared.field(name).default, name
        if choices(name):
            assert list(action.choices) == choices(name), name
            assert "{" + ",".join(choices(name)) + "}" in text, name
        if action.default is not None:
            assert f"(default: {action.default})" in text, name
        description = declared.field(name).description
        assert " ".join(description.split())[:40] in text, name


@pytest.mark.parametrize("task", ["hotpotqa", "mmlu", "fidelity"])
def test_eval_budget_default_is_the_configs(task, capsys):
    """eval's --budget also takes 'd' (one per feature), so it is its own option, with the config's default."""
    budget = next(a for a in parsers()[f"eval {task}"]._actions if a.dest == "budget")
    assert budget.default == str(DEFAULTS.budget)
    assert f"(default: {DEFAULTS.budget})" in help_of(capsys, "eval", task).split("--budget BUDGET")[-1]


@pytest.fixture
def server(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ROPELIME_DTYPE", "float32")
    return build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu"))


def enum_of(schema: dict) -> list | None:
    if "enum" in schema:
        return schema["enum"]
    for branch in schema.get("anyOf", []):
        if "enum" in branch:
            return branch["enum"]
    return None


@pytest.mark.anyio
async def test_tool_parameters_are_the_config_fields(server):
    async with Client(server) as client:
        tools = {t.name: t.input_schema for t in (await client.list_tools()).tools}
        options = json.loads((await client.read_resource("ropelime://options")).contents[0].text)
    explain = tools["explain_response"]["properties"]
    for name in EXPLAIN_OPTIONS:
        expected_choices = list(get_args(ToolGranularity)) if name == "granularity" else choices(name)
        assert enum_of(explain[name]) == expected_choices, name
        assert explain[name]["default"] == TOOL_DEFAULTS.get(name, declared.field(name).default), name
        assert explain[name]["description"] == declared.field(name).description
    assert explain["budget"]["minimum"] == 1 and explain["budget"]["maximum"] == 100_000
    compare = tools["compare_samplers"]["properties"]
    assert compare["samplers"]["items"]["enum"] == choices("sampler")
    assert enum_of(compare["granularity"]) == list(get_args(ToolGranularity))
    assert compare["time_budget_s"]["default"] == TOOL_DEFAULTS["time_budget_s"]
    for name in COMPARE_OPTIONS:
        assert compare[name]["default"] == getattr(DEFAULTS, name), name
        assert enum_of(compare[name]) == choices(name), name
    for name in ("method", "sampler", "target", "kernel", "perturb", "solver"):
        assert options[name] == choices(name)
    assert options["defaults"] == {**DEFAULTS.model_dump(exclude={"segments", "time_budget_s"}),
                                   "target": "kl", "sampler": "loo_pairs",
                                   "solver": "the sampler's: differences for loo_pairs, else ridge",
                                   "time_budget_s": TOOL_DEFAULTS["time_budget_s"]}


def closest_first(masks: np.ndarray, distances: np.ndarray | None, width: float, normalise: bool) -> np.ndarray:
    """A kernel for the test: weight 1 / (1 + features removed)."""
    return 1.0 / (1.0 + (~masks).sum(axis=1))


def test_a_registered_kernel_reaches_config_cli_and_tools(monkeypatch, capsys):
    from ropelime.kernels import Kernel

    monkeypatch.setitem(KERNELS, "closest_first", Kernel(closest_first))
    assert ExplainConfig(kernel="closest_first").kernel == "closest_first"
    assert "closest_first" in choices("kernel")
    assert "{rwmd_rope,cosine,uniform,closest_first}" in help_of(capsys, "explain")
    assert "closest_first" in json.dumps(ExplainConfig.model_json_schema())


@pytest.mark.anyio
async def test_a_registered_kernel_reaches_the_tools(tiny_model_dir, monkeypatch):
    from ropelime.kernels import Kernel

    monkeypatch.setitem(KERNELS, "closest_first", Kernel(closest_first))
    async with Client(build_server(EngineOptions(surrogate=str(tiny_model_dir), device="cpu"))) as client:
        tools = {t.name: t.input_schema for t in (await client.list_tools()).tools}
    assert enum_of(tools["explain_response"]["properties"]["kernel"]) == choices("kernel")
    assert "closest_first" in choices("kernel")


def test_an_unknown_stage_name_reads_like_a_literal_error():
    with pytest.raises(Exception, match=re.escape("Input should be 'rwmd_rope', 'cosine' or 'uniform'")):
        ExplainConfig(kernel="gaussian")


def test_explain_takes_a_callable_stage(tiny_surrogate, tmp_path):
    from ropelime.cache import ScoreCache

    cache = ScoreCache(tmp_path / "scores.sqlite")
    prompt = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
    try:
        named = ropelime.explain(prompt, "Paris.", kernel="uniform", sampler="sparse_k", surrogate=tiny_surrogate,
                                 cache=cache, budget=6)
        given = ropelime.explain(prompt, "Paris.", kernel=closest_first, sampler="sparse_k", surrogate=tiny_surrogate,
                                 cache=cache, budget=6)
    finally:
        KERNELS.pop("closest_first", None)
        cache.close()
    assert given.config.kernel == "closest_first" and given.id != named.id
    assert given.cost.surrogate_forward_passes == 0  # the same masks: only the weights differ
    assert [f.score for f in given.features] != [f.score for f in named.features]


def summed_nll(scores, positions) -> float:
    """A target for the test: the summed (not mean) negative log-likelihood."""
    return float(-scores.logp[positions].sum())


def test_explain_takes_a_callable_target(tiny_surrogate, tmp_path):
    from ropelime.cache import ScoreCache
    from ropelime.targets import TARGETS

    cache = ScoreCache(tmp_path / "scores.sqlite")
    prompt, response = "The sky is blue. Paris is the capital of France. Cats sleep a lot.", "Paris is in France."
    try:
        mean = ropelime.explain(prompt, response, surrogate=tiny_surrogate, cache=cache, budget=6)
        summed = ropelime.explain(prompt, response, target=summed_nll, surrogate=tiny_surrogate, cache=cache,
                                  budget=6)
        samples = ropelime.score(prompt, response, target="summed_nll", surrogate=tiny_surrogate, cache=cache,
                                 budget=6)
        summed_targets = samples.targets()
    finally:
        TARGETS.pop("summed_nll", None)
        cache.close()
    assert summed.config.target == "summed_nll" and summed.cost.surrogate_forward_passes == 0
    assert [f.score for f in summed.features] != [f.score for f in mean.features]
    tokens = len(tiny_surrogate.encode_response(response))
    np.testing.assert_allclose(summed_targets, tokens * samples.targets("nll"))


def test_every_explanation_option_is_on_every_surface(capsys):
    """The options of one explanation: every ExplainConfig field (but caller-given segments, which the CLI takes
    as --segment and the tools do not offer) and every CallOptions field, on the CLI's explain, the Python
    `explain` and the explain_response tool. A field added to either declaration fails here until every surface
    has it."""
    declared_names = set(ExplainConfig.model_fields) - {"segments"} | set(declared.CallOptions.model_fields)
    assert set(EXPLAIN) == declared_names and set(EXPLAIN_OPTIONS) == declared_names
    explain_cli = {a.dest for a in parsers()["explain"]._actions}
    assert declared_names <= explain_cli
    assert "--segment" in help_of(capsys, "explain")
    import inspect

    from ropelime.explain import explain

    python = inspect.signature(explain).parameters
    for name in CALL:  # method options go through **options into ExplainConfig
        assert name in python and python[name].default == declared.field(name).default, name


@pytest.mark.anyio
async def test_the_tool_offers_every_explanation_option(server):
    async with Client(server) as client:
        tools = {t.name: t.input_schema for t in (await client.list_tools()).tools}
    assert set(EXPLAIN) <= set(tools["explain_response"]["properties"])
    assert tools["explain_response"]["properties"]["verify"]["maximum"] == 20


@pytest.mark.anyio
async def test_tools_list_is_small(server):
    """Every tool repeated a ~15 KB output schema (49 KB in all): the listed output schemas are compact, the full
    ones a resource."""
    async with Client(server) as client:
        listed = await client.list_tools()
        schemas = json.loads((await client.read_resource("ropelime://schemas")).contents[0].text)
    size = len(listed.model_dump_json(by_alias=True, exclude_none=True))
    assert size <= 15_000, size
    explain = next(t for t in listed.tools if t.name == "explain_response")
    assert set(explain.output_schema["required"]) == set(schemas["explain_response"]["required"])
    assert "$defs" in schemas["explain_response"] and "$defs" not in explain.output_schema
