"""Persistent score cache: the surrogate's scores of a response after an exact token sequence.

Keyed by (surrogate, dtype, unperturbed prompt tokens, response tokens) and the perturbed prompt's
tokens, so any mask that yields an already-scored sequence costs nothing, across explanations and
processes. SQLite gives atomic, crash-safe writes; an unreadable entry counts as a miss.
"""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ropelime.schema import TokenScores

log = logging.getLogger(__name__)


def digest(*parts: object) -> str:
    """A stable hex digest of the parts' reprs."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _pack(scores: TokenScores) -> bytes:
    buffer = io.BytesIO()
    arrays = {"logp": scores.logp}
    if scores.kl is not None:
        arrays |= {"kl": scores.kl, "js": scores.js}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _unpack(blob: bytes) -> TokenScores:
    with np.load(io.BytesIO(blob)) as data:
        return TokenScores(data["logp"], data.get("kl"), data.get("js"))


class ScoreCache:
    """A SQLite file of packed TokenScores; safe to share between threads and processes."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS scores (context TEXT, sequence TEXT, value BLOB, "
                "PRIMARY KEY (context, sequence))"
            )

    def get_many(self, context: str, sequences: Iterable[str]) -> dict[str, TokenScores]:
        """The cached scores among `sequences` (digests of token sequences)."""
        wanted = list(sequences)
        found: dict[str, TokenScores] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT sequence, value FROM scores WHERE context = ? AND sequence IN ({marks})",
                    [context, *chunk],
                ).fetchall()
                for sequence, blob in rows:
                    try:
                        found[sequence] = _unpack(blob)
                    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
                        log.warning("ignoring an unreadable cached score (%s); it will be recomputed", error)
        return found

    def put_many(self, context: str, items: dict[str, TokenScores]) -> None:
        """Store scores; one transaction, so a crash stores all or none."""
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?)",
                [(context, sequence, _pack(scores)) for sequence, scores in items.items()],
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
