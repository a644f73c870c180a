"""Errors caused by what the caller gave; their messages say what to do instead."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (prompt, response, options, model path); the message says how to fix it."""
