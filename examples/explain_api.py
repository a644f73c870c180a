"""Explain a given answer to a RAG prompt with the Python API, offline, on the embedded surrogate (the README's
Python example). Run from the repository's top folder:  python examples/explain_api.py
"""

from pathlib import Path

import ropelime

prompt = Path("examples/rag_prompt.txt").read_text(encoding="utf-8")
context = Path("examples/context.txt").read_text(encoding="utf-8").strip()

result = ropelime.explain(prompt, "Ingrid Solvang founded it in 1902.", explain=context, budget=16)
for feature in result.top(3):
    print(feature.rank, f"{feature.score:+.3f} [{feature.ci_low:+.3f}, {feature.ci_high:+.3f}]", feature.direction,
          feature.text.strip())
print(result.explanation_id, result.diagnostics.reliability.verdict)
print(ropelime.refit(result, "1902").top(1)[0].text)  # only a part of the answer: no new surrogate pass
