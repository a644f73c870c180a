"""Audits on Ray: one actor per worker slot holds one loaded surrogate; the driver hands each idle actor
the next request, writes results in completion order, and replaces an actor that dies, retrying its
request a bounded number of times.

Every actor scores through the score cache of its node's cache directory ($ROPELIME_CACHE_DIR on
that node): a SQLite file in WAL mode, safe for several processes on one machine's local disk (not
on a network file system). Results do not depend on the cache, so they equal the local run's.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable

from ropelime.audit import RayOptions, Record, Request, error_record, run_request
from ropelime.audit_report import RunStats
from ropelime.errors import InputError

try:
    import ray
    from ray.exceptions import RayActorError, RayError
except ImportError:
    raise InputError("Ray is not installed; install the extra: pip install 'ropelime[ray]'.") from None

log = logging.getLogger(__name__)


@ray.remote
class AuditWorker:
    """Holds one loaded surrogate and explains requests one at a time with `threads` torch threads."""

    def __init__(self, surrogate: str | None, device: str | None, dtype: str | None, threads: int,
                 api_base: str | None) -> None:
        import torch

        from ropelime.explain import load_surrogate

        torch.set_num_threads(threads)
        self.surrogate = load_surrogate(surrogate, device, dtype)
        self.api_base = api_base

    def ready(self) -> int:
        """The actor's process id, once the surrogate is loaded."""
        return os.getpid()

    def run(self, request: Request) -> Record:
        return run_request(request, self.surrogate, self.api_base)


def connect(address: str, log_to_driver: bool) -> bool:
    """Join the cluster at `address` ('local' starts one here); True when this call started Ray."""
    if ray.is_initialized():
        return False
    ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING,
             **({"include_dashboard": False} if address == "local" else {}))
    return True


def run_on_ray(requests: list[Request], write: Callable[[Record], None], options: RayOptions, stats: RunStats, *,
               surrogate: str | None = None, device: str | None = None, dtype: str | None = None,
               api_base: str | None = None) -> None:
    """Explain `requests` on Ray actors, passing each record to `write` as it completes.

    Joins the cluster of `options` unless Ray is already initialised in this process (then that one is
    used). Each request is written once: an actor that dies is replaced and its request sent again, up
    to `options.max_retries` times, then it gets an error record.
    """
    gpu = (device or os.environ.get("ROPELIME_DEVICE") or "").startswith("cuda")
    started_here = connect(options.address, options.log_to_driver)
    try:
        resources = ray.cluster_resources()
        per_worker = {"num_cpus": options.cpus_per_worker, "num_gpus": 1 if gpu else 0}
        fits = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 0)) // options.cpus_per_worker
        workers = options.workers or max(fits, 1)
        if workers > fits:
            raise InputError(f"{workers} workers need {workers} GPU(s)" if gpu else
                             f"{workers} workers × {options.cpus_per_worker} CPUs need "
                             f"{workers * options.cpus_per_worker} CPUs"
                             f", but the Ray cluster has {resources.get('GPU' if gpu else 'CPU', 0):g}; "
                             "lower --ray-workers or --ray-cpus-per-worker, or add nodes.")
        stats.workers = workers
        name = ray.get_runtime_context().get_job_id()

        def start(slot: int, generation: int):
            return AuditWorker.options(name=f"ropelime-audit-{name}-{slot}.{generation}", **per_worker).remote(
                surrogate, device, dtype, options.cpus_per_worker, api_base)

        actors = [start(slot, 0) for slot in range(workers)]
        try:
            ray.get([actor.ready.remote() for actor in actors])  # a surrogate that cannot load fails here, once
        except RayActorError as error:
            raise InputError(f"the Ray workers could not load the surrogate: {error}") from None
        _dispatch(requests, write, options, stats, actors, start)
        for actor in actors:
            ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()


def _dispatch(requests: list[Request], write: Callable[[Record], None], options: RayOptions, stats: RunStats,
              actors: list, start: Callable) -> None:
    """Keep every actor busy with one request until all are written; replace actors that die."""
    queue = deque(requests)
    attempts: dict[object, int] = {}
    generations = [0] * len(actors)
    idle = list(range(len(actors)))
    in_flight: dict[object, tuple[int, Request]] = {}
    while queue or in_flight:
        while idle and queue:
            slot, request = idle.pop(), queue.popleft()
            in_flight[actors[slot].run.remote(request)] = (slot, request)
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        slot, request = in_flight.pop(ref)
        try:
            record = ray.get(ref)
        except RayActorError as error:
            generations[slot] += 1
            stats.workers_replaced += 1
            log.warning("Ray worker %d died (%s); replacing it", slot, error)
            ray.kill(actors[slot])  # if it is only unreachable, free its resources for the replacement
            actors[slot] = start(slot, generations[slot])
            attempts[request.id] = attempts.get(request.id, 0) + 1
            if attempts[request.id] <= options.max_retries:
                stats.retried += 1
                queue.appendleft(request)
            else:
                write(error_record(request.id, f"its Ray worker died {attempts[request.id]} times; the last "
                                   f"time: {error}", request.line))
        except RayError as error:
            write(error_record(request.id, f"Ray could not run it: {error}", request.line))
        else:
            write(record)
        idle.append(slot)
