"""RoPE-LIME: explain a closed LLM's fixed answer with a local RoPE surrogate.

    import ropelime
    result = ropelime.explain(prompt, response, explain=context, granularity="sentence")
    result.top(3)
"""

from ropelime.explain import Cancelled, explain, load_surrogate, refit
from ropelime.schema import Explanation, ExplainConfig, FeatureScore
from ropelime.surrogate import Surrogate

__all__ = ["Cancelled", "ExplainConfig", "Explanation", "FeatureScore", "Surrogate", "explain", "load_surrogate", "refit"]
