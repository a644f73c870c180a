"""Talk to the RoPE-LIME MCP server as an MCP host does: start `ropelime-mcp` over stdio with the MCP SDK's
client, list its tools, explain an answer and ask for its top features. Offline (the answer is given).

Run from the repository's top folder:  python examples/mcp_client.py
"""

import os
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

here = Path(__file__).parent
prompt = (here / "rag_prompt.txt").read_text(encoding="utf-8")
context = (here / "context.txt").read_text(encoding="utf-8").strip()

# The server this Python runs (`ropelime-mcp` on the PATH is the same program); hosts pass env like this.
server = StdioServerParameters(command=sys.executable, args=["-m", "ropelime_server"], env=dict(os.environ))


async def main() -> None:
    async with Client(server) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(tool.name for tool in tools.tools))
        explained = await client.call_tool("explain_response", {
            "prompt": prompt, "explain": context, "response": "Ingrid Solvang founded it in 1902.",
            "budget": 16, "method": "default"})
        print(explained.content[0].text)  # the short text a model reads
        explanation_id = explained.structured_content["explanation_id"]  # the full explanation is structured
        top = await client.call_tool("top_features", {"explanation_id": explanation_id, "k": 2})
        print(top.content[0].text)


anyio.run(main)
