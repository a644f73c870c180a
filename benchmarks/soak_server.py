"""Soak test of the MCP server: N sequential small explanations through a `ropelime-mcp` stdio
subprocess, with the server process's resident memory after warm-up and at the end.

    python benchmarks/soak_server.py                      # tiny random-weight RoPE model (from tests/conftest.py)
    python benchmarks/soak_server.py --surrogate gemma3-270m --calls 200

Each call has its own prompt (a numbered sentence), so they are not cache hits. The cache
directory is a fresh temporary one. Prints RSS after warm-up, at the end, and the growth in %.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio
import psutil
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = "The sky is blue. Paris is the capital of France. Cats sleep a lot. Note {i}: the river is {j} km long."


def server_process() -> psutil.Process:
    """The ropelime-mcp child of this process."""
    for child in psutil.Process().children(recursive=True):
        if any("ropelime-mcp" in part for part in child.cmdline()):
            return child
    raise RuntimeError("the ropelime-mcp subprocess was not found")


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


async def soak(surrogate: str, calls: int, warmup: int, budget: int) -> None:
    env = {**os.environ, "ROPELIME_SURROGATE": surrogate, "ROPELIME_DEVICE": "cpu"}
    params = StdioServerParameters(command=str(Path(sys.executable).parent / "ropelime-mcp"), env=env)
    started = time.perf_counter()
    async with Client(params) as client:
        process = server_process()
        baseline = None
        for i in range(calls):
            context = CONTEXT.format(i=i, j=i * 7 % 113)
            result = await client.call_tool("explain_response", {
                "prompt": f"Context: {context}\nQuestion: Where is Paris?", "response": "In France.",
                "explain": context, "budget": budget, "seed": i % 3})
            if result.is_error:
                raise RuntimeError(result.content[0].text)
            if i + 1 == warmup:
                baseline = rss_mb(process)
                print(f"after warm-up ({warmup} calls): RSS {baseline:.1f} MB", flush=True)
            elif (i + 1) % 50 == 0:
                print(f"{i + 1} calls: RSS {rss_mb(process):.1f} MB", flush=True)
        final = rss_mb(process)
    growth = 100 * (final - baseline) / baseline
    print(f"end ({calls} calls, {time.perf_counter() - started:.0f} s): RSS {final:.1f} MB; "
          f"growth after warm-up {growth:+.1f}% ({'under' if growth < 10 else 'OVER'} 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogate", help="surrogate for the server (default: a tiny random-weight RoPE model)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--budget", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["ROPELIME_CACHE_DIR"] = str(Path(folder) / "cache")
        surrogate = args.surrogate
        if surrogate is None:
            sys.path.insert(0, str(ROOT))
            from tests.conftest import build_tiny_model

            surrogate = str(build_tiny_model(Path(folder) / "tiny"))
        anyio.run(soak, surrogate, args.calls, args.warmup, args.budget)


if __name__ == "__main__":
    main()
