"""MCP prompt templates as Markdown files, loaded by the server (see ropelime_server.prompt_files)."""
