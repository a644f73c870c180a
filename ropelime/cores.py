"""How many CPU threads the surrogate's matrix products get: the cores other processes leave free.

torch's threads wait for each other at the end of every parallel region, so when another process
keeps a core busy, a thread sharing that core holds all the others back (measured on 2 cores with one
other busy process, an MMLU explanation took 60 s with 2 threads and 47 s with 1; `benchmarks/threads.py`).
So, unless $ROPELIME_THREADS names a number, each scoring run uses the cores that no other process is
running on at its start, never more than torch's own thread setting.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ropelime import settings

SAMPLES = 5
"""Readings of the run queue, averaged (one reading is one instant)."""
SAMPLE_INTERVAL_S = 0.01


def _runnable_of_others() -> int | None:
    """Threads of other processes running or ready to run now (Linux), or None where unknown."""
    try:
        everyone = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        ours = sum(stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
                   for stat in Path("/proc/self/task").glob("*/stat"))
    except (OSError, IndexError, ValueError):
        return None
    return max(0, everyone - ours)


def busy_cores() -> float:
    """How many cores other processes keep busy now (mean of a few readings; 0 where unknown)."""
    readings = []
    for i in range(SAMPLES):
        if i:
            time.sleep(SAMPLE_INTERVAL_S)
        reading = _runnable_of_others()
        if reading is None:
            return 0.0
        readings.append(reading)
    return sum(readings) / len(readings)


def threads_to_use(available: int) -> int:
    """$ROPELIME_THREADS when set, else the `available` threads minus the cores others keep busy (≥ 1)."""
    wanted = settings.threads()
    if wanted is not None:
        return wanted
    return max(1, min(available, (os.cpu_count() or available) - round(busy_cores())))


@contextlib.contextmanager
def cpu_threads() -> Iterator[int]:
    """Run the block with torch using `threads_to_use` threads (yielded); torch's setting is restored after."""
    import torch

    before = torch.get_num_threads()
    chosen = threads_to_use(before)
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(before)
