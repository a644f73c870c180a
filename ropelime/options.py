"""The method options, declared once in `ExplainConfig`, as command-line options and MCP tool parameters.

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

from pydantic import Field
from pydantic.fields import FieldInfo

from ropelime.registry import Registry
from ropelime.schema import ExplainConfig

METHOD = ("sampler", "k", "sizes", "target", "kernel", "kernel_width", "kernel_cost", "kernel_normalise", "perturb",
          "prompt_format", "solver", "alpha", "adjust_position", "prior_weight", "seed")
"""The method choices every command that explains takes (`explain`, `audit`, `eval`)."""

RUN = ("granularity", "budget", *METHOD, "time_budget_s", "converge_top_k")
"""The options of a whole explanation run (`explain`, `audit`); caller-given segments have their own syntax."""

FLAGS = {"time_budget_s": "--time-budget", "segments": "--segment"}
"""Fields whose command-line option is not --<field-with-dashes>."""

F = TypeVar("F", bound=Callable)


def field(name: str) -> FieldInfo:
    """The declaration of one method option."""
    return ExplainConfig.model_fields[name]


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
    return list(get_args(info.annotation)) if get_origin(info.annotation) is Literal else None


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
        if kind is bool:
            action = group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                        default=info.default, help=help_text)
        else:
            options = choices(name)
            action = group.add_argument(flag(name), dest=name, default=info.default, help=help_text,
                                        **({"choices": options} if options else {"type": kind}))
        if info.default is not None and "%(default)" not in (action.help or ""):
            action.help = f"{action.help} (default: %(default)s)"


def config_from_args(args: argparse.Namespace, names: Sequence[str], **extra: Any) -> ExplainConfig:
    """The ExplainConfig of the parsed options of these fields (`extra` fields added or overriding)."""
    return ExplainConfig(**({name: getattr(args, name) for name in names} | extra))


def tool_parameter(name: str, *, narrowed: Any = None, default: Any = ...) -> inspect.Parameter:
    """A field as an MCP tool parameter: its type, constraints, default and description.

    `narrowed` replaces the field's type (e.g. a Literal of fewer choices); `default` its default."""
    info = field(name)
    metadata = [m for m in info.metadata if narrowed is None or not isinstance(m, Registry)]
    annotation = Annotated[(narrowed if narrowed is not None else info.annotation, *metadata,
                            Field(description=info.description))]
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation,
                             default=info.default if default is ... else default)


def with_method_parameters(names: Sequence[str], *, after: str, narrowed: dict[str, Any] | None = None,
                           defaults: dict[str, Any] | None = None) -> Callable[[F], F]:
    """Publish these fields as parameters of a tool function, after its parameter `after`.

    The function takes them in `**method`; its published signature (what the MCP SDK reads) lists
    them like hand-written parameters. `narrowed` and `defaults` are per-field overrides (see
    `tool_parameter`)."""
    narrowed, defaults = narrowed or {}, defaults or {}

    def decorate(function: F) -> F:
        signature = inspect.signature(function, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = [p.name for p in own].index(after) + 1
        method = [tool_parameter(n, narrowed=narrowed.get(n), default=defaults.get(n, ...)) for n in names]
        function.__signature__ = signature.replace(parameters=own[:at] + method + own[at:])
        return function

    return decorate
