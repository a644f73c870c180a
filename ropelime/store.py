"""Explanations kept as JSON files by id, so they can be read again across calls and restarts.

One file per explanation, `<root>/<id>.json`, written atomically (a temporary file in the same
directory, then `os.replace`; see `ropelime.files`), so a reader never sees half a file.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError

from ropelime.errors import InputError
from ropelime.files import write_atomic
from ropelime.schema import Explanation
from ropelime.settings import cache_dir

_ID = re.compile(r"[0-9a-f]{1,64}")


class ExplanationStore:
    """Explanations on disk, keyed by `Explanation.id` (default folder: `cache_dir()/explanations`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "explanations"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, explanation_id: str) -> Path:
        """The file of an id; refuses anything that is not a hex id (no path tricks)."""
        if not _ID.fullmatch(explanation_id):
            raise InputError(f"{explanation_id[:80]!r} is not an explanation id; ids are the hex strings "
                             "that explain_response returns as explanation_id.")
        return self.root / f"{explanation_id}.json"

    def save(self, explanation: Explanation) -> Path:
        """Write (or replace) an explanation atomically; returns its file."""
        path = self.path(explanation.id)
        write_atomic(path, explanation.model_dump_json())
        return path

    def get(self, explanation_id: str) -> Explanation | None:
        """The stored explanation, or None when there is none or it is unreadable."""
        try:
            return self.load(explanation_id)
        except InputError:
            return None

    def load(self, explanation_id: str) -> Explanation:
        """The stored explanation; InputError when there is none (or it is unreadable)."""
        path = self.path(explanation_id)
        try:
            return Explanation.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise InputError(f"no explanation with id {explanation_id!r}; run explain_response first "
                             "(ids are kept in the cache directory).") from None
        except (OSError, ValidationError) as error:
            raise InputError(f"the stored explanation {explanation_id!r} is unreadable ({type(error).__name__}); "
                             "run explain_response again to rebuild it.") from None
