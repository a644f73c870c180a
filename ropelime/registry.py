"""Name → implementation tables of the pipeline's stages (samplers, targets, kernels, solvers, perturbations).

Each stage module owns one `Registry`; its names are the choices of the matching `ExplainConfig`
field, so the CLI's `--help`, the MCP tools' enums, validation and the options resource all follow
the table. A new kernel (sampler, target, …) is one function and one line in its module's table.

A `Registry` is also the field's pydantic type (`Annotated[str, KERNELS]`): a name is valid while
it is in the table, and the JSON schema lists the table's names as an enum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic_core import PydanticCustomError, core_schema

from ropelime.errors import InputError

T = TypeVar("T")


def _spoken(names: list[str]) -> str:
    """'a', 'b' or 'c' (pydantic's wording for a literal's choices)."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class Registry(dict[str, T], Generic[T]):
    """One stage's implementations by name, in the order they are offered.

    `wrap` turns a bare callable given in place of a name (see `accept`) into an entry of the table.
    """

    def __init__(self, stage: str, entries: dict[str, T], wrap: Callable[[Callable], T] | None = None) -> None:
        super().__init__(entries)
        self.stage = stage
        self._wrap = wrap

    def __hash__(self) -> int:  # usable as Annotated metadata (pydantic hashes metadata)
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def names(self) -> list[str]:
        return list(self)

    def register(self, name: str, implementation: T) -> str:
        """Add an implementation under `name` (a new name, or the same implementation again); returns the name."""
        if self.get(name, implementation) is not implementation:
            raise InputError(f"a {self.stage} named {name!r} already exists; give yours another name.")
        self[name] = implementation
        return name

    def accept(self, choice: str | Callable) -> str:
        """The name to put in a config: a name as is, or a callable registered under its own name."""
        if isinstance(choice, str) or not callable(choice):
            return choice
        if self._wrap is None:
            raise InputError(f"a {self.stage} must be given by name: one of {_spoken(self.names())}.")
        for name, entry in self.items():
            if entry is choice or getattr(entry, "function", None) is choice:
                return name
        return self.register(getattr(choice, "__name__", type(choice).__name__), self._wrap(choice))

    def check(self, name: Any) -> str:
        """`name` when it is in the table; otherwise pydantic's literal error, naming the choices."""
        if not isinstance(name, str) or name not in self:
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": _spoken(self.names())})
        return name

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.check, serialization=core_schema.plain_serializer_function_ser_schema(str))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        return {"enum": self.names(), "type": "string"}
