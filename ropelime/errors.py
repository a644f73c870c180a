"""Every error a caller can act on, in one hierarchy; their messages say what to do instead.

    RopeLimeError
    ├── InputError            bad input or options (the CLI exits 2; a tool error in the MCP server)
    │   ├── SurrogateError    a surrogate that cannot be loaded or used
    │   ├── CatalogueError    a catalogued surrogate not installed, not prepared, or failing its checksum
    │   └── FeatureError      a prompt that cannot be split as asked
    ├── ClosedModelError      the closed model gave no answer (the CLI exits 1)
    ├── Cancelled             `should_stop` asked to stop
    └── OutOfTime             a deadline came before every mask was scored

The CLI maps them in `ropelime.cli.main`, the MCP server in `ropelime_server.engine.tool_errors`.
"""

from __future__ import annotations


class RopeLimeError(Exception):
    """The base of every error RoPE-LIME raises on purpose."""


class InputError(RopeLimeError, ValueError):
    """Bad input (prompt, response, options, model path); the message says how to fix it."""


class SurrogateError(InputError):
    """A surrogate that cannot be loaded or used; the message says what to do."""


class CatalogueError(InputError):
    """A catalogued surrogate that is not installed, not prepared or fails its checksum."""


class FeatureError(InputError):
    """The prompt cannot be split as asked; the message says what to do instead."""


class ClosedModelError(RopeLimeError, RuntimeError):
    """The closed model could not give an answer; the message (one line) says what to do."""


class Cancelled(RopeLimeError):
    """Raised when `should_stop` asks to stop; every score computed so far is already cached."""


class OutOfTime(RopeLimeError):
    """Scoring stopped at its deadline before every mask was scored; the scores so far are cached."""

    def __init__(self, message: str, surrogate_passes: int = 0) -> None:
        super().__init__(message)
        self.surrogate_passes = surrogate_passes
