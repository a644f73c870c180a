"""Does an MCP `explain_response` call with `verify=K` stay inside its time budget when the closed
model takes a while to answer? A local OpenAI-compatible endpoint on 127.0.0.1 answers after
`--latency` seconds ("Mara Tollet" while the demo's key sentence is in the prompt, else "I do not
know"); the server runs in process with the given surrogate and fresh caches (prepared models are reused).

    python benchmarks/verify_budget.py                          # embedded surrogate, 5 s answers, budget 40 s, K = 3
    python benchmarks/verify_budget.py --budget 20 --latency 5

For each call prints wall seconds against the budget, whether scoring completed, the closed-model
calls, the verdicts and how many features stayed unverified; the same call is then repeated (scores
and answers from the caches) until every verdict is in or nothing changes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import anyio
from mcp import Client

KEY = "Mara Tollet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogate", help="surrogate (default: the embedded one)")
    parser.add_argument("--latency", type=float, default=5.0, help="seconds the closed model takes per answer")
    parser.add_argument("--budget", type=float, default=40.0, help="time_budget_s of the call")
    parser.add_argument("--k", type=int, default=3, help="features to verify")
    parser.add_argument("--calls", type=int, default=3, help="most calls with the same arguments")
    args = parser.parse_args()
    from ropelime.settings import cache_dir

    models = cache_dir() / "models"  # prepared surrogates are reused; scores and answers start empty
    fresh = Path(tempfile.mkdtemp(prefix="ropelime-verify-budget-"))
    if models.is_dir():
        (fresh / "models").symlink_to(models, target_is_directory=True)
    os.environ["ROPELIME_CACHE_DIR"] = str(fresh)
    os.environ.setdefault("OPENAI_API_KEY", "local")
    anyio.run(run, args)


async def run(args) -> None:
    from ropelime.research.endpoint import OpenAIEndpoint, message_text
    from ropelime.schema import Explanation
    from ropelime_server.app import build_server
    from ropelime_server.engine import EngineOptions

    demo = json.loads(files("ropelime.examples").joinpath("demo.json").read_text(encoding="utf-8"))

    def reply(messages) -> str:
        time.sleep(args.latency)
        return f"{KEY} designed the bridge." if KEY in message_text(messages[-1]) else "I do not know."

    with OpenAIEndpoint(reply) as endpoint:
        server = build_server(EngineOptions(surrogate=args.surrogate, api_base=endpoint.base_url,
                                            closed_timeout=args.latency * 4))
        call = {"prompt": demo["prompt"], "explain": demo["explain"], "model": "openai/local", "verify": args.k,
                "time_budget_s": args.budget}
        async with Client(server) as client:
            for attempt in range(1, args.calls + 1):
                before, started = endpoint.requests, time.perf_counter()
                result = await client.call_tool("explain_response", call)
                seconds = time.perf_counter() - started
                if result.is_error:
                    print(f"call {attempt}: error {result.content[0].text}")
                    return
                explanation = Explanation.model_validate(result.structured_content)
                v = explanation.verification
                verdicts = [c.verdict for c in v.checks] if v else []
                print(f"call {attempt}: {seconds:.1f} s of a {args.budget:g} s budget "
                      f"({'inside' if seconds <= args.budget else 'OVER'}); scoring "
                      f"{'complete' if explanation.diagnostics.complete else 'partial'}; "
                      f"{endpoint.requests - before} closed-model request(s); verdicts {verdicts or 'none yet'}")
                if v and "unverified" not in verdicts:
                    return


if __name__ == "__main__":
    main()
