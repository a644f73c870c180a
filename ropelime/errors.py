"""Errors a caller can act on; their messages say what to do instead."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (prompt, response, options, model path); the message says how to fix it."""


class Cancelled(Exception):
    """Raised when `should_stop` asks to stop; every score computed so far is already cached."""


class OutOfTime(Exception):
    """Scoring stopped at its deadline before every mask was scored; the scores so far are cached."""

    def __init__(self, message: str, surrogate_passes: int = 0) -> None:
        super().__init__(message)
        self.surrogate_passes = surrogate_passes
