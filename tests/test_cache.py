"""The persistent score cache: round trips, survives a writer that dies mid-transaction, and
treats a corrupt or truncated entry as a miss that the next explanation recomputes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ropelime
from ropelime.cache import ScoreCache
from ropelime.schema import TokenScores

PROMPT = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
RESPONSE = "Paris."


def test_round_trip_with_and_without_divergences(tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    plain = TokenScores(np.array([-0.5, -1.25]))
    full = TokenScores(np.array([-0.5]), np.array([0.1]), np.array([0.05]))
    cache.put_many("ctx", {"a": plain, "b": full})
    found = cache.get_many("ctx", ["a", "b", "missing"])
    assert set(found) == {"a", "b"}
    np.testing.assert_array_equal(found["a"].logp, plain.logp)
    assert found["a"].kl is None
    np.testing.assert_array_equal(found["b"].js, full.js)
    assert cache.get_many("other context", ["a"]) == {}
    cache.close()


def test_a_writer_killed_mid_transaction_leaves_the_cache_whole(tmp_path):
    path = tmp_path / "scores.sqlite"
    cache = ScoreCache(path)
    cache.put_many("ctx", {"kept": TokenScores(np.array([-1.0]))})
    child = textwrap.dedent(f"""
        import os, numpy as np
        from ropelime.cache import ScoreCache, _pack
        from ropelime.schema import TokenScores
        cache = ScoreCache({str(path)!r})
        cache._db.execute("BEGIN")
        cache._db.execute("INSERT INTO scores VALUES ('ctx', 'lost', ?)", (_pack(TokenScores(np.array([-2.0]))),))
        os._exit(9)  # dies before the commit
    """)
    assert subprocess.run([sys.executable, "-c", child], timeout=120).returncode == 9
    found = cache.get_many("ctx", ["kept", "lost"])
    assert set(found) == {"kept"}
    cache.put_many("ctx", {"after": TokenScores(np.array([-3.0]))})
    assert set(cache.get_many("ctx", ["kept", "after"])) == {"kept", "after"}
    cache.close()


def test_corrupt_entries_are_recomputed(tiny_surrogate, tmp_path, caplog):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    first = ropelime.explain(PROMPT, RESPONSE, surrogate=tiny_surrogate, cache=cache, budget=6)
    with sqlite3.connect(cache.path) as db:
        rows = db.execute("SELECT rowid, value FROM scores").fetchall()
        assert len(rows) == first.diagnostics.samples
        db.execute("UPDATE scores SET value = ? WHERE rowid = ?", (rows[0][1][: len(rows[0][1]) // 2], rows[0][0]))
        db.execute("UPDATE scores SET value = ? WHERE rowid = ?", (b"not a numpy archive", rows[1][0]))
    again = ropelime.explain(PROMPT, RESPONSE, surrogate=tiny_surrogate, cache=cache, budget=6)
    assert "unreadable cached score" in caplog.text
    assert again.cost.cached_samples == first.diagnostics.samples - 2
    assert again.cost.surrogate_forward_passes > 0
    assert [f.score for f in again.features] == pytest.approx([f.score for f in first.features], abs=1e-5)  # batching
    third = ropelime.explain(PROMPT, RESPONSE, surrogate=tiny_surrogate, cache=cache, budget=6)
    assert third.cost.cached_samples == first.diagnostics.samples and third.cost.surrogate_forward_passes == 0
    cache.close()


def test_divergences_are_computed_only_for_targets_that_read_them(tiny_surrogate, tmp_path):
    """An NLL explanation stores log-probabilities alone; a KL one scores those masks again and stores the KL
    alone; a JS one scores them again keeping the KL; then every target is served from the cache, and the NLL
    attribution is the same either way."""
    cache = ScoreCache(tmp_path / "scores.sqlite")

    def stored() -> list[TokenScores]:
        with sqlite3.connect(cache.path) as db:
            keys = [key for (key,) in db.execute("SELECT sequence FROM scores")]
            context = db.execute("SELECT context FROM scores").fetchone()[0]
        return list(cache.get_many(context, keys).values())

    nll = ropelime.explain(PROMPT, RESPONSE, surrogate=tiny_surrogate, cache=cache, budget=6, target="nll")
    assert stored() and all(row.kl is None and row.js is None for row in stored())
    kl = ropelime.explain(PROMPT, RESPONSE, surrogate=tiny_surrogate, cache=cache, budget=6, target="kl")
    assert kl.cost.cached_samples == 0 and kl.cost.surrogate_forward_passes > 0
    assert all(row.kl is not None and row.js is None for row in stored())
    js = ropelime.explain(PROMPT, RESPONSE, surrogate=tiny_surrogate, cache=cache, budget=6, target="js")
    assert js.cost.cached_samples == 0 and all(row.kl is not None and row.js is not None for row in stored())
    for target in ("kl", "js", "nll"):
        again = ropelime.explain(PROMPT, RESPONSE, surrogate=tiny_surrogate, cache=cache, budget=6, target=target)
        assert again.cost.surrogate_forward_passes == 0
    assert [f.score for f in again.features] == pytest.approx([f.score for f in nll.features], abs=1e-5)  # batching: fp32 noise
    cache.close()


def test_a_file_locked_by_another_writer_delays_or_skips_storing_never_fails(tmp_path, caplog, monkeypatch):
    """SQLite in WAL mode can report a file locked at once; writes are retried, then given up with a warning."""
    import threading

    from ropelime import cache as caching

    path = tmp_path / "scores.sqlite"
    store = ScoreCache(path)
    store._db.execute("PRAGMA busy_timeout = 0")  # report the lock at once, as SQLite does in the cases retried
    scores = TokenScores(np.array([-0.5, -1.0]), None, None)
    other = sqlite3.connect(path, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    threading.Timer(0.25, other.commit).start()
    store.put_many("ctx", {"a": scores})  # retried until the other writer has finished
    assert "a" in store.get_many("ctx", ["a"])

    monkeypatch.setattr(caching, "LOCK_RETRIES", 1)
    other.execute("BEGIN IMMEDIATE")  # now it keeps the lock
    store.put_many("ctx", {"b": scores})
    assert "could not store 1 scores" in caplog.text and "locked" in caplog.text
    assert set(store.get_many("ctx", ["a", "b"])) == {"a"}  # readers are not blocked in WAL mode
    other.rollback()
    store.put_many("ctx", {"b": scores})
    assert set(store.get_many("ctx", ["a", "b"])) == {"a", "b"}


def test_kernel_distances_are_cached(tiny_surrogate, tmp_path, monkeypatch):
    """A repeated explanation measures no RWMD again (the distances come from the cache) and fits the same."""
    import ropelime
    from ropelime import rope

    calls = []
    measure = rope.rwmd
    monkeypatch.setattr(rope, "rwmd", lambda *args, **kwargs: calls.append(1) or measure(*args, **kwargs))
    cache = ScoreCache(tmp_path / "scores.sqlite")
    prompt = "The sky is blue. Paris is the capital of France. Cats sleep a lot. The bridge is long."
    try:
        first = ropelime.explain(prompt, "Paris.", sampler="sparse_k", budget=8, surrogate=tiny_surrogate, cache=cache)
        measured = len(calls)
        again = ropelime.explain(prompt, "Paris.", sampler="sparse_k", budget=8, surrogate=tiny_surrogate, cache=cache)
    finally:
        cache.close()
    assert measured > 0 and len(calls) == measured
    assert [f.score for f in again.features] == [f.score for f in first.features]
