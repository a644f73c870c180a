"""Research code around the product: the evaluation on dev data (`evaluate`), the baselines it compares
with (`baselines`), transfer to a stand-in closed model (`transfer`) and the local OpenAI-compatible
endpoint that serves the stand-in (`endpoint`). The library's explanations do not depend on it."""
