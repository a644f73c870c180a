"""Audits on a local Ray cluster (2 workers of one CPU each): a worker killed mid-batch loses and duplicates
nothing, and the results equal the local run's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ropelime
from ropelime.audit_ray import RayOptions
from ropelime.errors import InputError
from tests.test_audit import assert_same_result, records, request, without_cost, write_jsonl

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray


def local_records(tiny_model_dir, source, tmp_path, monkeypatch) -> dict:
    """The local run's records by id, scored through a cache of its own."""
    monkeypatch.setenv("ROPELIME_CACHE_DIR", str(tmp_path / "local-cache"))
    ropelime.audit(source, tmp_path / "local.jsonl", surrogate=str(tiny_model_dir), device="cpu", dtype="float32")
    return {r["request_id"]: without_cost(r) for r in records(tmp_path / "local.jsonl")}


def test_a_killed_worker_loses_and_duplicates_nothing(tiny_model_dir, tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [request(i, granularity="word", budget=24) for i in range(8)])
    expected = local_records(tiny_model_dir, source, tmp_path, monkeypatch)
    monkeypatch.setenv("ROPELIME_CACHE_DIR", str(tmp_path / "ray-cache"))  # the workers' own score cache
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    killed = []

    def kill_a_worker(done: int, total: int) -> None:
        if done == 1 and not killed:
            names = sorted(n for n in ray.util.list_named_actors() if n.startswith("ropelime-audit-"))
            ray.kill(ray.get_actor(names[0]))
            killed.append(names[0])

    try:
        summary = ropelime.audit(source, tmp_path / "ray.jsonl", surrogate=str(tiny_model_dir), device="cpu",
                                 dtype="float32", runner=RayOptions(workers=2, cpus_per_worker=1),
                                 progress=kill_a_worker)
    finally:
        ray.shutdown()
    assert killed and summary.run["workers_replaced"] == 1 and summary.run["retried"] == 1
    out = records(tmp_path / "ray.jsonl")
    ids = [r["request_id"] for r in out]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))  # 0 lost, 0 duplicated
    errors = [r["error"] for r in out if "error" in r]
    assert not errors, errors
    for record in out:
        assert_same_result(without_cost(record), expected[record["request_id"]])  # same scores, intervals, ranks
    assert (tmp_path / "ray-cache" / "scores.sqlite").exists()


def test_cli_starts_a_local_ray_instance(tiny_model_dir, env, tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [request(i, budget=8) for i in range(3)] + ["{broken"])
    expected = local_records(tiny_model_dir, source, tmp_path, monkeypatch)
    out = tmp_path / "ray.jsonl"
    done = subprocess.run([sys.executable, "-m", "ropelime.cli", "audit", str(source), "--out", str(out),
                           "--surrogate", str(tiny_model_dir), "--device", "cpu", "--ray", "--ray-workers", "2"],
                          env={**env, "ROPELIME_CACHE_DIR": str(tmp_path / "ray-cache")}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1, done.stderr  # the broken line is an error record
    assert "3 explained · 1 errors" in " ".join(done.stdout.split())
    got = {r["request_id"]: without_cost(r) for r in records(out)}
    assert_same_result(got, expected)


def test_more_workers_than_the_cluster_holds_is_refused(tiny_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [request(0)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(InputError, match="need 4 CPUs"):
            ropelime.audit(source, tmp_path / "out.jsonl", surrogate=str(tiny_model_dir),
                           runner=RayOptions(workers=2, cpus_per_worker=2))
    finally:
        ray.shutdown()
    assert json.loads((tmp_path / "out.jsonl").read_text() or "null") is None  # nothing written
