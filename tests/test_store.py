"""The explanation store: JSON files by id, atomic writes, clear errors."""

from __future__ import annotations

import pytest

import ropelime
from ropelime.errors import InputError
from ropelime.store import ExplanationStore

PROMPT = "Context: The sky is blue. Paris is the capital of France.\nQuestion: What is the capital of France?"


@pytest.fixture(scope="module")
def explanation(tiny_surrogate, tmp_path_factory):
    from ropelime.cache import ScoreCache

    cache = ScoreCache(tmp_path_factory.mktemp("store") / "scores.sqlite")
    yield ropelime.explain(PROMPT, "Paris.", surrogate=tiny_surrogate, cache=cache, budget=4)
    cache.close()


def test_saved_explanation_loads_back_equal(tmp_path, explanation):
    store = ExplanationStore(tmp_path / "explanations")
    path = store.save(explanation)
    assert path.name == f"{explanation.id}.json"
    assert store.load(explanation.id) == explanation
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_a_new_store_on_the_same_folder_sees_earlier_explanations(tmp_path, explanation):
    ExplanationStore(tmp_path).save(explanation)
    assert ExplanationStore(tmp_path).load(explanation.id).id == explanation.id


def test_default_folder_is_in_the_cache_directory(explanation):
    from ropelime.settings import cache_dir

    assert ExplanationStore().save(explanation).parent == cache_dir() / "explanations"


@pytest.mark.parametrize("bad", ["../secrets", "/etc/passwd", "ABC", "", "a" * 65])
def test_ids_that_are_not_hex_are_refused(tmp_path, bad):
    with pytest.raises(InputError, match="not an explanation id"):
        ExplanationStore(tmp_path).load(bad)


def test_unknown_and_unreadable_ids_say_what_to_do(tmp_path):
    store = ExplanationStore(tmp_path)
    with pytest.raises(InputError, match="run explain_response first"):
        store.load("0123abcd")
    (tmp_path / "0123abcd.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable"):
        store.load("0123abcd")
