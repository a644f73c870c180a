"""MCP prompts from the files of the `prompts/` folder (installed as `ropelime_server.prompts`).

Each `<name>.md` starts with a header between `---` lines:

    ---
    title: A short title
    description: One line on what the prompt does.
    arguments:
      context: required. What the argument holds.
      answer: optional. What the argument holds; empty when not given.
    ---
    The body, with $context and $answer where the arguments go ($$ for a literal $).
"""

from __future__ import annotations

from importlib.resources import files
from string import Template

from mcp.server.mcpserver.prompts.base import Prompt, PromptArgument

PACKAGE = "ropelime_server.prompts"
NOT_GIVEN = "(not given)"


def parse_prompt(name: str, text: str) -> Prompt:
    """A Prompt from one file's text; raises ValueError (or KeyError for an unknown $name) when malformed."""
    parts = text.split("---\n", 2)
    if len(parts) != 3 or parts[0].strip():
        raise ValueError(f"prompt file {name}.md must start with a '---' header")
    header, body = parts[1], parts[2].strip()
    fields: dict[str, str] = {}
    arguments: list[PromptArgument] = []
    for line in header.splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition(":")
        if line.startswith("  "):
            need, _, description = value.strip().partition(". ")
            if need not in ("required", "optional"):
                raise ValueError(f"prompt {name}: argument {key.strip()} must say 'required.' or 'optional.'")
            arguments.append(PromptArgument(name=key.strip(), description=description, required=need == "required"))
        else:
            fields[key.strip()] = value.strip()
    template = Template(body)
    template.substitute({a.name: "" for a in arguments})  # a placeholder without an argument fails here

    def render(**values: str) -> str:
        given = {a.name: values.get(a.name) or NOT_GIVEN for a in arguments}
        return template.substitute(given)

    return Prompt(name=name, title=fields.get("title"), description=fields.get("description", ""),
                  arguments=arguments, fn=render)


def load_prompts() -> list[Prompt]:
    """Every prompt file of the package, sorted by name."""
    folder = files(PACKAGE)
    return [parse_prompt(entry.name.removesuffix(".md"), entry.read_text(encoding="utf-8"))
            for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".md")]
