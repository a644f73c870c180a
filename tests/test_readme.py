"""The README as a newcomer reads it: short, its test command the one CI runs, its JSON configs valid, its Python
example the shipped script, and every command and snippet that needs no API key runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
NEEDS_A_KEY = re.compile(r"API_KEY|--model |claude mcp")
SET_UP = ("python3 -m venv ", ". .venv/bin/activate", "pip install ", "python -m pytest")
"""Steps of the README's set-up lines that the test's own environment already took (or that would recurse)."""


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def commands() -> list[str]:
    """Every shell command of the README that needs no API key, set-up steps left out of its chains."""
    found = []
    for block in blocks("bash"):
        for line in block.strip().splitlines():
            if NEEDS_A_KEY.search(line):
                continue
            steps = [s for s in line.split(" && ") if not s.strip().startswith(SET_UP)]
            if steps:
                found.append(" && ".join(steps))
    return found


def test_the_readme_is_short_and_starts_where_a_newcomer_is():
    lines = README.splitlines()
    assert len(lines) <= 300
    first_screen = "\n".join(lines[:30])
    assert "![" in first_screen and (ROOT / "docs" / "demo.svg").exists()  # the picture
    assert "ropelime explain --demo" in first_screen and "python -m pytest -q" in first_screen
    headings = [line[3:] for line in lines if line.startswith("## ")]
    assert headings[0] == "Contents" and headings[1].startswith("Use it from Claude Desktop")
    assert "--refine" in README and "ropelime replay" in README  # the closed-model fidelity section
    for link in re.findall(r"\]\(((?:docs|examples)/[^)#]+)", README):
        assert (ROOT / link).exists(), link


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    test_command = ci[-1]
    assert test_command.endswith("python -m pytest -q")
    assert test_command in [line for block in blocks("bash") for line in block.splitlines()]


def test_the_readme_configs_are_valid_json():
    configs = [json.loads(block) for block in blocks("json")]
    assert len(configs) == 3
    for config in configs:
        servers = config.get("mcpServers") or config["servers"]
        assert servers["ropelime"]["command"].endswith("ropelime-mcp")


def test_the_python_example_is_the_shipped_script():
    [snippet] = blocks("python")
    assert (ROOT / "examples" / "explain_api.py").read_text(encoding="utf-8").endswith(snippet)


def test_the_readme_commands_are_found():
    found = commands()
    assert "ropelime explain --demo" in found and "python examples/mcp_client.py" in found
    assert not any("pip install" in c or "pytest" in c for c in found)
    assert len(found) >= 7


@pytest.mark.slow
def test_every_readme_command_and_snippet_runs(tmp_path):
    """Run from a fresh folder holding only examples/ (as a clone's top folder), with the user's prepared models
    but an empty cache otherwise; the commands take the embedded surrogate, as the README says."""
    from tests.conftest import USER_CACHE, load_embedded

    load_embedded()  # prepared once in the user's cache (about a minute the first time)
    work = tmp_path / "clone"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(USER_CACHE / "models")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "ROPELIME_CACHE_DIR": str(cache), "ROPELIME_SURROGATE": "gemma3-270m",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("OPENAI_API_KEY", None)
    for command in commands():
        done = subprocess.run(["bash", "-c", "set -eo pipefail; " + command], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    [snippet] = blocks("python")
    done = subprocess.run([sys.executable, "-c", snippet], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Ingrid Solvang" in done.stdout.splitlines()[0]  # the sentence holding the answer ranks first
    assert json.loads((work / "demo.json").read_text())["config"]["method"] == "paper"
    assert (work / "demo.html").read_text().startswith("<!DOCTYPE html>")
    assert len((work / "audit.jsonl").read_text().splitlines()) == 2
