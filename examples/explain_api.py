"""Explain a given answer to a RAG prompt with the Python API, offline, on the embedded surrogate.

Run from the repository's top folder:  python examples/explain_api.py
"""

from pathlib import Path

import ropelime

here = Path(__file__).parent
prompt = (here / "rag_prompt.txt").read_text(encoding="utf-8")
context = (here / "context.txt").read_text(encoding="utf-8").strip()
answer = "Ingrid Solvang founded it in 1902."

# The default method; method="paper" (or "contextcite", "loo") sets sampler, target, kernel and solver together.
result = ropelime.explain(prompt, answer, explain=context, granularity="sentence", budget=16)

print("explanation_id:", result.explanation_id)
print("reliability:", result.diagnostics.reliability.verdict)
for feature in result.top(3):
    print(f"#{feature.rank} {feature.score:+.4f} [{feature.ci_low:+.4f}, {feature.ci_high:+.4f}] "
          f"{feature.direction}: {feature.text.strip()}")

# Score once, fit many: attribute only a part of the answer, with no new surrogate pass.
year = ropelime.refit(result, "1902")
print("the year rests most on:", year.top(1)[0].text.strip())
