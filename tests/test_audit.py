"""Batch audits on the tiny model: bad lines become error records and the batch goes on, the results equal
one-by-one `explain`, a killed run resumes without losing or duplicating a request, errors are retried."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ropelime
from ropelime.audit import AuditOutput
from ropelime.cache import ScoreCache
from ropelime.errors import InputError
from ropelime.schema import ExplainConfig

CONTEXTS = [
    "The sky is blue. Paris is the capital of France. Cats sleep a lot.",
    "The bridge was designed by the engineer Mara Tollet in 1987. Rivers run past towns.",
    "Trout swim in rivers. Cables hold the bridge. Footpaths cross the towns.",
]


def request(i: int, **extra) -> dict:
    context = CONTEXTS[i % len(CONTEXTS)]
    return {"id": f"r{i}", "prompt": f"Context: {context}\nQuestion: what is said?", "explain": context,
            "response": ["Paris.", "Mara Tollet", "Trout and cables."][i % 3], **extra}


def write_jsonl(path: Path, lines: list[dict | str | bytes]) -> Path:
    with open(path, "wb") as handle:
        for line in lines:
            data = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
            handle.write(data + b"\n")
    return path


def records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def without_cost(record: dict) -> dict:
    """A record minus what depends on the score cache and the clock (cost: seconds, passes, cached samples)."""
    return {k: v for k, v in record.items() if k != "cost"}


def assert_same_result(got, expected) -> None:
    """Equal records: every text, rank and flag exactly, every number to float rounding (batches sized
    from the measured pace group prompts differently from run to run, which moves scores by ~1e-7; the tiny
    model's KL divergences are ~1e-4, so the differences of them that sentence scores are move by ~1e-3)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            assert_same_result(got[key], expected[key])
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected)
        for a, b in zip(got, expected):
            assert_same_result(a, b)
    elif isinstance(expected, float) and not isinstance(got, bool):
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-6)
    else:
        assert got == expected


def test_bad_lines_become_error_records_and_the_batch_goes_on(tiny_surrogate, tmp_path):
    lines = [
        request(0, budget=8),
        "{not json",
        request(1, colour="red", budget=8),
        {"id": "no-prompt", "response": "x"},
        request(2, budget=8),
        {"id": "r0", "prompt": "again", "response": "x"},
        request(3, budget=0),
        {"id": "neither", "prompt": "a prompt"},
        b'{"id": "latin1", "prompt": "caf\xe9", "response": "x"}',
        "[1, 2]",
        "",
        request(4, granularity="word", budget=8),
    ]
    summary = ropelime.audit(write_jsonl(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl",
                             surrogate=tiny_surrogate)
    out = records(tmp_path / "out.jsonl")
    errors = {r["line"]: r for r in out if "error" in r}
    assert sorted(errors) == [2, 3, 4, 6, 7, 8, 9, 10]
    assert errors[2]["request_id"] is None and "not valid JSON" in errors[2]["error"]
    assert errors[3]["request_id"] == "r1" and "unknown key 'colour'" in errors[3]["error"]
    assert "missing key 'prompt'" in errors[4]["error"]
    assert "duplicate id 'r0' (first on line 1)" in errors[6]["error"]
    assert errors[7]["request_id"] == "r3" and "budget" in errors[7]["error"]
    assert "'response'" in errors[8]["error"] and "'model'" in errors[8]["error"]
    assert "UTF-8" in errors[9]["error"]
    assert "JSON object" in errors[10]["error"]
    explained = [r for r in out if "error" not in r]
    assert [r["request_id"] for r in explained] == ["r0", "r2", "r4"]
    assert explained[2]["config"]["granularity"] == "word" and explained[0]["config"]["granularity"] == "sentence"
    assert summary.explained == 3 and len(summary.errors) == 8
    assert summary.run["requests"] == 3 and summary.run["written"] == 11


def test_audit_equals_explain_one_by_one(tiny_surrogate, tmp_path):
    defaults = ExplainConfig(budget=12, seed=2)
    lines = [request(0), request(1, granularity="word"), request(2, seed=5, sampler="bernoulli"),
             request(3, system="Answer briefly.", budget=20)]
    ropelime.audit(write_jsonl(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl", config=defaults,
                   surrogate=tiny_surrogate)
    out = records(tmp_path / "out.jsonl")
    assert [r["request_id"] for r in out] == [line["id"] for line in lines]
    separate = ScoreCache(tmp_path / "other" / "scores.sqlite")  # no score shared with the audit
    for line, record in zip(lines, out):
        options = {k: v for k, v in line.items() if k not in ("id", "prompt", "response", "explain", "system")}
        expected = ropelime.explain(line["prompt"], line["response"], explain=line["explain"],
                                    system=line.get("system"), config=defaults, surrogate=tiny_surrogate,
                                    cache=separate, **options)
        assert expected.cost.cached_samples == 0
        assert_same_result(without_cost(record), {"request_id": line["id"], **without_cost(expected.model_dump(mode="json"))})


def test_summary_flags_weak_incomplete_and_most_cited(tiny_surrogate, tmp_path):
    twin = request(0, budget=8)
    lines = [twin, {**twin, "id": "twin"}, request(1, granularity="word", budget=64, time_budget_s=0.001), request(2, budget=8)]
    html = tmp_path / "summary.html"
    summary = ropelime.audit(write_jsonl(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl",
                             surrogate=tiny_surrogate, html=html, weak_r2=1.01, weak_nll=1e9)
    out = {r["request_id"]: r for r in records(tmp_path / "out.jsonl")}
    assert [i.request_id for i in summary.incomplete] == ["r1"]
    assert out["r1"]["diagnostics"]["samples"] < out["r1"]["diagnostics"]["planned_samples"]
    assert {w.request_id for w in summary.weak} == set(out)  # every R² is below 1.01
    assert all(any(reason.startswith("R²") for reason in w.reasons) for w in summary.weak)
    assert not any("NLL" in reason for w in summary.weak for reason in w.reasons)
    top1 = next(f["text"] for f in out["r0"]["features"] if f["rank"] == 1)
    assert summary.cited[0].text == " ".join(top1.split()) and summary.cited[0].answers >= 2
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "r1" in page and "incomplete" in page


def test_a_rerun_retries_error_records(tiny_surrogate, tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [request(0, budget=8), request(1, budget=8)])
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("ROPELIME_MAX_PROMPT_TOKENS", "20")  # too small for every prompt: both fail
    first = ropelime.audit(source, out, surrogate=tiny_surrogate)
    assert first.explained == 0 and len(first.errors) == 2 and "ROPELIME_MAX_PROMPT_TOKENS" in first.errors[0].error
    monkeypatch.delenv("ROPELIME_MAX_PROMPT_TOKENS")
    second = ropelime.audit(source, out, surrogate=tiny_surrogate)
    assert second.explained == 2 and not second.errors
    assert [r["request_id"] for r in records(out)] == ["r0", "r1"]  # the old error records are gone


def test_output_that_is_not_an_audit_is_refused_before_any_work(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [request(0)])
    other = tmp_path / "notes.jsonl"
    other.write_text('{"request_id": "a", "error": "x", "line": 1}\nhello\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2 is not an audit record"):
        ropelime.audit(source, other, surrogate="no/such-model")
    assert other.read_text(encoding="utf-8").endswith("hello\n")  # untouched
    with pytest.raises(InputError, match="the input file"):
        ropelime.audit(source, source, surrogate="no/such-model")
    with pytest.raises(InputError, match="not found"):
        ropelime.audit(tmp_path / "missing.jsonl", tmp_path / "out.jsonl")


def test_output_repair_cuts_a_torn_line_and_keeps_whole_ones(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"request_id": "a", "features": []}\n{"request_id": "b", "err')
    with AuditOutput(path) as output:
        assert output.done == {"a"}
        assert output.write({"request_id": "b", "features": []})
        assert not output.write({"request_id": "a", "features": []})  # never twice
    assert path.read_text(encoding="utf-8") == ('{"request_id": "a", "features": []}\n'
                                                '{"request_id": "b", "features": []}\n')


def test_cli_resumes_after_a_kill_without_loss_or_duplicates(tiny_model_dir, env, tmp_path):
    lines = [request(i, granularity="word", budget=48) for i in range(16)] + ["{broken"]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "ropelime.cli", "audit", str(source), "--out", str(out),
               "--surrogate", str(tiny_model_dir), "--device", "cpu"]
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # a safety net only: the kill waits for the first explanation
        while not (out.exists() and b'"features"' in out.read_bytes()):
            assert child.poll() is None, "the audit ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    first = out.read_bytes()
    done_first = [json.loads(line)["request_id"] for line in first.splitlines() if b'"features"' in line]
    assert 1 <= len(done_first) < 16
    with open(out, "ab") as handle:  # as if the kill had come in the middle of a write
        handle.write(b'{"request_id": "r15", "id": "0123')
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr  # the broken line stays an error
    assert f"{len(done_first)} already done" in " ".join(rerun.stdout.split())
    final = records(out)
    explained = [r["request_id"] for r in final if "error" not in r]
    assert sorted(explained) == sorted(f"r{i}" for i in range(16))  # all there, none twice
    assert explained[:len(done_first)] == done_first  # the first run's records kept as they were
    assert [r["line"] for r in final if "error" in r] == [17]
    assert out.read_bytes().startswith(b"".join(line + b"\n" for line in first.splitlines()
                                                 if b'"features"' in line))


def imported_modules(module: str) -> set[str]:
    """The ropelime modules a module imports, anywhere in it (lazy imports inside functions included)."""
    import ast
    import importlib.util

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("ropelime")}


def test_the_ray_runner_depends_on_the_audit_core_not_the_other_way_round():
    assert "ropelime.audit" in imported_modules("ropelime.audit_ray")
    assert not any(n.startswith("ropelime.audit_ray") for n in imported_modules("ropelime.audit"))


class Recording:
    """A runner that records what it is asked and explains nothing (every request gets an error record)."""

    def __init__(self) -> None:
        self.checked, self.started = [], 0

    def check(self, surrogate) -> None:
        self.checked.append(surrogate)

    def start(self, stats, stack, *, surrogate, device, dtype, api_base):
        self.started += 1
        return lambda requests, write: [write({"request_id": r.id, "error": "not run", "line": r.line})
                                        for r in requests]


def test_a_runner_chooses_where_requests_run(tmp_path):
    runner = Recording()
    summary = ropelime.audit(write_jsonl(tmp_path / "in.jsonl", [request(0), request(1)]), tmp_path / "out.jsonl",
                             surrogate="by-name", runner=runner)
    assert runner.checked == ["by-name"] and runner.started == 1
    assert len(summary.errors) == 2 and [r["error"] for r in records(tmp_path / "out.jsonl")] == ["not run", "not run"]


def test_the_ray_runner_refuses_a_loaded_surrogate_before_reading_input(tiny_surrogate, tmp_path):
    from ropelime.audit_ray import RayOptions

    with pytest.raises(InputError, match="by name"):
        ropelime.audit(write_jsonl(tmp_path / "in.jsonl", [request(0)]), tmp_path / "out.jsonl",
                       surrogate=tiny_surrogate, runner=RayOptions())
    assert not (tmp_path / "out.jsonl").exists()
