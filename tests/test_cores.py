"""CPU threads for scoring: $ROPELIME_THREADS, or the cores other processes leave free (ropelime.cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ropelime import cores
from ropelime.errors import InputError
from ropelime.explain import explain


def test_a_set_thread_count_is_used_inside_and_torch_is_restored_after(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("ROPELIME_THREADS", "1")
    with cores.cpu_threads() as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_is_refused_with_what_to_set(monkeypatch, value):
    monkeypatch.setenv("ROPELIME_THREADS", value)
    with pytest.raises(InputError, match="ROPELIME_THREADS=.*e.g. 2, or to auto"):
        cores.threads_to_use(2)


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="reads the run queue from /proc (Linux)")
def test_a_core_kept_busy_by_another_process_is_left_to_it(monkeypatch):
    monkeypatch.delenv("ROPELIME_THREADS", raising=False)
    spinner = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout.readline().strip() == "spinning"
        assert cores.busy_cores() >= 1  # the spinner is always running or ready to run
        cpus = os.cpu_count() or 1
        assert cores.threads_to_use(cpus) <= max(1, cpus - 1)
    finally:
        spinner.kill()
        spinner.wait()


def test_an_explanation_records_the_threads_it_scored_with(tiny_surrogate, monkeypatch):
    monkeypatch.setenv("ROPELIME_THREADS", "1")
    fresh = explain("The cat sat on the mat.", "It sat.", surrogate=tiny_surrogate, budget=8, seed=0)
    assert fresh.cost.threads == 1
    again = explain("The cat sat on the mat.", "It sat.", surrogate=tiny_surrogate, budget=8, seed=0)
    assert again.cost.cached_samples > 0 and again.cost.threads is None  # every score from the cache
