"""What a host sees of `ropelime-mcp` over stdio: time to answer `initialize` and `tools/list`, and the
wall time of tool calls with their default arguments on a HotpotQA-size prompt, from a Python MCP
client with a host-like 60 s read timeout.

    python benchmarks/host_timing.py start [--cache-dir DIR]        # initialize and tools/list latency
    python benchmarks/host_timing.py calls --data ../shared/data/hotpotqa_dev.jsonl [--row 25]

`start` with an empty --cache-dir measures a cold start (the surrogate still has to be prepared);
without it, the cache in $ROPELIME_CACHE_DIR (prepared: a warm start). `calls` runs explain_response
and then compare_samplers with every argument at its default but the prompt, the response (the
gold answer), `explain` (the context) and `granularity` (sentence), each in a fresh server, and
prints the wall time of each call from the client's side, with /proc/loadavg.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

BIN = Path(sys.executable).parent
HOST_TIMEOUT = 60.0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def start(cache_dir: str | None) -> None:
    env = {**os.environ, **({"ROPELIME_CACHE_DIR": cache_dir} if cache_dir else {})}
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "timing", "version": "0"}}}
    started = time.perf_counter()
    child = subprocess.Popen([str(BIN / "ropelime-mcp")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        child.stdin.write(json.dumps(hello) + "\n")
        child.stdin.flush()
        json.loads(child.stdout.readline())
        initialized = time.perf_counter() - started
        child.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        child.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}) + "\n")
        child.stdin.flush()
        tools = json.loads(child.stdout.readline())["result"]["tools"]
        listed = time.perf_counter() - started
    finally:
        child.kill()
    print(f"initialize answered after {initialized:.2f} s, tools/list ({len(tools)} tools) after {listed:.2f} s; "
          f"cache {'given: ' + cache_dir if cache_dir else os.environ.get('ROPELIME_CACHE_DIR', '~/.cache/ropelime')}; "
          f"load average {loadavg()}")


async def one_call(tool: str, arguments: dict) -> None:
    params = StdioServerParameters(command=str(BIN / "ropelime-mcp"), env=dict(os.environ))
    async with Client(params, read_timeout_seconds=HOST_TIMEOUT) as client:
        await client.list_tools()
        started = time.perf_counter()
        result = await client.call_tool(tool, arguments, read_timeout_seconds=HOST_TIMEOUT)
        took = time.perf_counter() - started
    data = result.structured_content or {}
    if tool == "explain_response" and data:
        d = data["diagnostics"]
        detail = f"{d['samples']}/{d['planned_samples']} samples, complete={d['complete']}, " \
                 f"reliability {(d.get('reliability') or {}).get('verdict')}"
    elif data:
        detail = f"{len(data['runs'])}/{data['runs_planned']} runs, {data['surrogate_passes']} surrogate passes"
    else:
        detail = result.content[0].text[:200]
    print(f"{tool}: {took:.1f} s from the client (error={result.is_error}; {detail}); load average {loadavg()}")


def calls(data: Path, row: int) -> None:
    from ropelime.research.evaluate import hotpotqa_item, read_jsonl

    item = hotpotqa_item(read_jsonl(data)[row])
    arguments = {"prompt": item.prompt, "response": item.answer, "explain": item.explain, "granularity": "sentence"}
    print(f"HotpotQA row {row}: {len(item.prompt)} characters, answer {item.answer!r}")
    for tool in ("explain_response", "compare_samplers"):
        anyio.run(one_call, tool, arguments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("start")
    s.add_argument("--cache-dir", help="a cache directory (empty: cold start)")
    c = sub.add_parser("calls")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--row", type=int, default=25)
    args = parser.parse_args()
    start(args.cache_dir) if args.what == "start" else calls(args.data, args.row)


if __name__ == "__main__":
    main()
