"""RoPE-LIME: explain a closed LLM's fixed answer with a local RoPE surrogate.

    import ropelime
    result = ropelime.explain(prompt, response, explain=context, granularity="sentence")
    result.top(3)
    ropelime.verify(result, 3, model="openai/gpt-4o-mini")   # check the top 3 with the closed model
"""

from ropelime.audit import audit
from ropelime.explain import Cancelled, explain, load_surrogate, refit
from ropelime.schema import Explanation, ExplainConfig, FeatureScore
from ropelime.surrogate import Surrogate
from ropelime.verify import verify

__all__ = ["Cancelled", "ExplainConfig", "Explanation", "FeatureScore", "Surrogate", "audit", "explain", "load_surrogate",
           "refit", "verify"]
