"""Persistent score cache: the surrogate's scores of a response after an exact token sequence.

Keyed by (surrogate, dtype, unperturbed prompt tokens, response tokens) and the perturbed prompt's
tokens, so any mask that yields an already-scored sequence costs nothing, across explanations and
processes. SQLite gives atomic, crash-safe writes; an unreadable entry counts as a miss, and so does
an entry that cannot be read or written while another process keeps the file locked (the scores
are then recomputed when needed: the cache saves work, it never fails an explanation).
"""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ropelime.schema import TokenScores

log = logging.getLogger(__name__)

LOCK_RETRIES = 5
"""Further attempts, after pauses of 0.1, 0.2, … 1.6 s, when SQLite reports the file locked: in WAL mode it
does so at once, without its own wait, e.g. while another process recovers after one was killed mid-write."""


def _retrying_locks(operation: Callable[[], object]) -> object:
    for attempt in range(LOCK_RETRIES + 1):
        try:
            return operation()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == LOCK_RETRIES:
                raise
            time.sleep(0.1 * 2 ** attempt)


def digest(*parts: object) -> str:
    """A stable hex digest of the parts' reprs."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _pack(scores: TokenScores) -> bytes:
    buffer = io.BytesIO()
    arrays = {"logp": scores.logp} | {name: values for name in ("kl", "js")
                                      if (values := getattr(scores, name)) is not None}
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

        def create() -> None:
            with self._lock, self._db:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS scores (context TEXT, sequence TEXT, value BLOB, "
                    "PRIMARY KEY (context, sequence))"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS distances (context TEXT, sequence TEXT, value REAL, "
                    "PRIMARY KEY (context, sequence))"
                )

        _retrying_locks(create)

    def get_many(self, context: str, sequences: Iterable[str]) -> dict[str, TokenScores]:
        """The cached scores among `sequences` (digests of token sequences)."""
        wanted = list(sequences)
        found: dict[str, TokenScores] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))

            def select() -> list:
                with self._lock:
                    return self._db.execute(
                        f"SELECT sequence, value FROM scores WHERE context = ? AND sequence IN ({marks})",
                        [context, *chunk],
                    ).fetchall()

            try:
                rows = _retrying_locks(select)
            except sqlite3.OperationalError as error:
                log.warning("could not read cached scores (%s); they will be computed", error)
                continue
            for sequence, blob in rows:
                try:
                    found[sequence] = _unpack(blob)
                except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
                    log.warning("ignoring an unreadable cached score (%s); it will be recomputed", error)
        return found

    def put_many(self, context: str, items: dict[str, TokenScores]) -> None:
        """Store scores; one transaction, so a crash stores all or none (and a file kept locked, none)."""
        rows = [(context, sequence, _pack(scores)) for sequence, scores in items.items()]

        def insert() -> None:
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)", rows)

        try:
            _retrying_locks(insert)
        except sqlite3.OperationalError as error:
            log.warning("could not store %d scores (%s); they will be recomputed when needed", len(rows), error)

    def get_distances(self, context: str, sequences: list[str]) -> dict[str, float]:
        """The cached kernel distances among `sequences` (a perturbed prompt's distance to the prompt of
        `context`), so that a repeated explanation measures none again."""
        found: dict[str, float] = {}
        for start in range(0, len(sequences), 500):
            chunk = sequences[start:start + 500]

            def select(chunk: list[str] = chunk) -> list:
                with self._lock:
                    return self._db.execute(
                        f"SELECT sequence, value FROM distances WHERE context = ? AND sequence IN "
                        f"({','.join('?' * len(chunk))})", [context, *chunk]).fetchall()

            try:
                found.update((sequence, float(value)) for sequence, value in _retrying_locks(select))
            except sqlite3.OperationalError as error:
                log.warning("could not read cached distances (%s); they will be measured", error)
        return found

    def put_distances(self, context: str, items: dict[str, float]) -> None:
        """Store kernel distances (one transaction)."""
        rows = [(context, sequence, value) for sequence, value in items.items()]

        def insert() -> None:
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO distances VALUES (?, ?, ?)", rows)

        try:
            _retrying_locks(insert)
        except sqlite3.OperationalError as error:
            log.warning("could not store %d distances (%s)", len(rows), error)

    def close(self) -> None:
        with self._lock:
            self._db.close()
