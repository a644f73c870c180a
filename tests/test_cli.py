"""The command line refuses bad arguments and output paths at once, in one line, before it imports torch
or loads a model; one exit code per class of mistake (2: usage or input, 1: a failure at run time)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ropelime.cli import main

CHECK = """
import sys
from ropelime.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
assert "torch" not in sys.modules, "torch was imported"
sys.exit(code)
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`ropelime ARGS` in a fresh interpreter that fails if torch got imported."""
    return subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--demo", "--html", "/nonexistent/dir/out.html"], "the folder /nonexistent/dir does not exist"),
    (["--demo", "--budget", "0"], "--budget must be greater than or equal to 1, got 0."),
    (["--demo", "--time-budget", "-3"], "--time-budget must be greater than 0, got -3.0."),
    (["--demo", "--k", "0"], "--k must be greater than or equal to 1"),
    (["--prompt", "Where is Paris?"], "give --response/--response-file, or --model"),
    (["--prompt-file", "/nonexistent/prompt.txt", "--response", "x"], "cannot read /nonexistent/prompt.txt"),
    (["--demo", "--segment", "a:b"], "--segment takes START:END"),
])
def test_bad_arguments_fail_at_once_in_one_line(args, message):
    done = run_cli("explain", *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert "pydantic" not in done.stderr and "Traceback" not in done.stderr


def test_help_and_usage_errors_do_not_import_torch():
    assert run_cli("--help").returncode == 0
    assert run_cli("explain", "--help").returncode == 0
    usage = run_cli("explain", "--bogus")
    assert usage.returncode == 2 and "unrecognized arguments" in usage.stderr


def test_a_closed_model_failure_exits_with_1(tiny_model_dir, monkeypatch, capsys):
    from ropelime import closed

    def refuse(*args, **kwargs):
        raise closed.ClosedModelError("openai/gpt-x: the provider refused the request (401); check OPENAI_API_KEY.")

    monkeypatch.setattr(closed, "fetch_response", refuse)
    code = main(["explain", "--prompt", "Where is Paris?", "--model", "openai/gpt-x", "--surrogate",
                 str(tiny_model_dir), "--device", "cpu"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: openai/gpt-x: the provider refused the request (401); check OPENAI_API_KEY."]
