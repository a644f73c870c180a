"""The explanation options, declared once, as command-line options and MCP tool parameters.

The method options are the fields of `ExplainConfig`; the options of an explanation call that are not
part of its method (`verify`) are the fields of `CallOptions` below. `ropelime.explain` takes both as
keyword arguments, `ropelime explain` as `--flags`, the explain_response tool as parameters.

Each `ExplainConfig` field gives its type, default, choices (a `Literal`, or a stage registry) and
description; the CLI's `--flags` and the tools' parameters are made from them here, so no default or
choice is written twice. A caller may narrow a field's choices or give it another default (the MCP
tools offer no caller-given segments and a time budget that fits a host's call limit); the test
`tests/test_options.py` checks that `--help`, the tools' input schemas and `ExplainConfig` agree.
"""

from __future__ import annotations

import argparse
import inspect
import types
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from ropelime.presets import PRESET_FIELDS
from ropelime.registry import Registry
from ropelime.schema import ExplainConfig


class CallOptions(BaseModel):
    """The options of an explanation call that are not its method: each field is offered by
    `ropelime.explain` (a keyword argument of the same name), `ropelime explain` (`--flag`) and the
    explain_response tool (a parameter), and `tests/test_options.py` checks all three. A new one is one
    field here (and its use in `ropelime.explain`)."""

    verify: int = Field(0, ge=0, le=20, description="check the top K supporting features with the closed model "
                        "itself: ask it again without each one, plus one control call (K + 1 calls, cached); "
                        "needs a model. 0 = no check", json_schema_extra={"metavar": "K"})
    refine: int = Field(0, ge=0, le=20, description="measure the closed model's own effect of deleting the K best "
                        "candidates (K calls, cached): they rank first, marked measured; needs a model",
                        json_schema_extra={"metavar": "K"})


CALL = tuple(CallOptions.model_fields)
"""The call options (`CallOptions`) every surface that explains one prompt takes."""

METHOD = ("method", "sampler", "k", "sizes", "target", "kernel", "kernel_width", "kernel_cost", "kernel_normalise",
          "perturb", "prompt_format", "solver", "alpha", "adjust_position", "prior_weight", "seed")
"""The method choices every command that explains takes (`explain`, `audit`, `eval`)."""

RUN = ("granularity", "budget", *METHOD, "time_budget_s", "converge_top_k")
"""The options of a whole explanation run (`explain`, `audit`); caller-given segments have their own syntax."""

EXPLAIN = (*RUN, *CALL)
"""Every option of one explanation: `ropelime.explain`, `ropelime explain` and the explain_response tool."""

FLAGS = {"time_budget_s": "--time-budget", "segments": "--segment"}
"""Fields whose command-line option is not --<field-with-dashes>."""

F = TypeVar("F", bound=Callable)


def field(name: str) -> FieldInfo:
    """The declaration of one option: a field of `ExplainConfig` or of `CallOptions`."""
    return ExplainConfig.model_fields.get(name) or CallOptions.model_fields[name]


class _Given(argparse.Action):
    """Records in the namespace that the option was given on the command line (so a `--method` preset fills
    in only the options not given, see `explicit`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        given = getattr(namespace, GIVEN, None) or set()
        setattr(namespace, GIVEN, given | {self.dest})


class _GivenValue(_Given, argparse._StoreAction):
    pass


class _GivenBool(_Given, argparse.BooleanOptionalAction):
    pass


GIVEN = "_given_options"
"""The namespace attribute naming the options given on the command line."""


def explicit(values: dict[str, Any], given: set[str] | None) -> dict[str, Any]:
    """`values` without the preset options (sampler, target, kernel, solver) that were not `given` explicitly, so
    that a `method` preset chooses them (None for `given`: all were given)."""
    if given is None:
        return values
    return {k: v for k, v in values.items() if k in given or k not in PRESET_FIELDS}


def flag(name: str) -> str:
    """The command-line option of a field."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def choices(name: str) -> list[Any] | None:
    """The values a field may take (None: not a choice)."""
    info = field(name)
    optional = [a for a in get_args(_value_type(info.annotation)) if isinstance(a, Registry)]  # Registry | None
    for meta in [*info.metadata, *optional]:
        if isinstance(meta, Registry):
            return meta.names()
    kind = _value_type(info.annotation)
    return list(get_args(kind)) if get_origin(kind) is Literal else None


def _value_type(annotation: Any) -> Any:
    """`int` of `int | None` (the type a command-line value is read as)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def add_options(group: argparse._ActionsContainer, names: Sequence[str]) -> None:
    """Add the command-line options of these fields, with their defaults, choices and descriptions."""
    for name in names:
        info = field(name)
        help_text = (info.description or "").replace("%", "%%")
        kind = _value_type(info.annotation)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if kind is bool:
            action = group.add_argument(flag(name), dest=name, action=_GivenBool, default=info.default, help=help_text)
        else:
            options = choices(name)
            action = group.add_argument(flag(name), dest=name, default=info.default, help=help_text, action=_GivenValue,
                                        **({"metavar": extra["metavar"]} if "metavar" in extra else {}),
                                        **({"choices": options} if options else {"type": kind}))
        if info.default is not None and "%(default)" not in (action.help or ""):
            action.help = f"{action.help} (default: %(default)s)"


def config_from_args(args: argparse.Namespace, names: Sequence[str], **extra: Any) -> ExplainConfig:
    """The ExplainConfig of the parsed options of these fields (`extra` fields added or overriding); a `--method`
    preset chooses the stage options not given on the command line."""
    values = {name: getattr(args, name) for name in names if name in ExplainConfig.model_fields}
    return ExplainConfig(**(explicit(values, getattr(args, GIVEN, set())) | extra))


def call_from_args(args: argparse.Namespace) -> CallOptions:
    """The CallOptions of the parsed options."""
    return CallOptions(**{name: getattr(args, name) for name in CALL})


def tool_parameter(name: str, *, narrowed: Any = None, default: Any = ...,
                   description: str | None = None) -> inspect.Parameter:
    """A field as an MCP tool parameter: its type, constraints, default and description.

    `narrowed` replaces the field's type (e.g. a Literal of fewer choices); `default` its default;
    `description` its description (e.g. a pointer to the same parameter of another tool, to keep tools/list small)."""
    info = field(name)
    metadata = [m for m in info.metadata if narrowed is None or not isinstance(m, Registry)]
    annotation = Annotated[(narrowed if narrowed is not None else info.annotation, *metadata,
                            Field(description=description or info.description))]
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation,
                             default=info.default if default is ... else default)


def with_method_parameters(names: Sequence[str], *, after: str, narrowed: dict[str, Any] | None = None,
                           defaults: dict[str, Any] | None = None,
                           described: Callable[[str], str] | None = None) -> Callable[[F], F]:
    """Publish these fields as parameters of a tool function, after its parameter `after`.

    The function takes them in `**method`; its published signature (what the MCP SDK reads) lists
    them like hand-written parameters. `narrowed` and `defaults` are per-field overrides (see
    `tool_parameter`); `described(name)`, when given, replaces each field's description."""
    narrowed, defaults = narrowed or {}, defaults or {}

    def decorate(function: F) -> F:
        signature = inspect.signature(function, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = [p.name for p in own].index(after) + 1
        method = [tool_parameter(n, narrowed=narrowed.get(n), default=defaults.get(n, ...),
                                 description=described(n) if described else None) for n in names]
        function.__signature__ = signature.replace(parameters=own[:at] + method + own[at:])
        return function

    return decorate
