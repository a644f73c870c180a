"""RoPE-LIME MCP server: a thin layer over the `ropelime` library (tools, resources, prompts)."""
