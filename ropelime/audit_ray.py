"""Audits on Ray: one actor per worker slot holds one loaded surrogate; the driver hands each idle actor
the next request, writes results in completion order, and replaces an actor that dies, retrying its
request a bounded number of times.

Every actor scores through the score cache of its node's cache directory ($ROPELIME_CACHE_DIR on
that node): a SQLite file in WAL mode, safe for several processes on one machine's local disk (not
on a network file system). Results do not depend on the cache, so they equal the local run's.

`RayOptions` is the audit's runner (`ropelime.audit(..., runner=RayOptions(...))`): this module depends on the
audit core (`ropelime.audit`), never the other way round. Ray itself is imported when a pool starts, so the
options can be built (and refused) without it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from ropelime import settings
from ropelime.audit import Record, Request, Run, error_record, run_request
from ropelime.audit_report import RunStats
from ropelime.errors import InputError
from ropelime.surrogate import Surrogate

log = logging.getLogger(__name__)


def _ray() -> ModuleType:
    """The ray module; InputError saying how to install it when it is missing."""
    try:
        import ray
        import ray.exceptions  # noqa: F401 - RayActorError, RayError
    except ImportError:
        raise InputError("Ray is not installed; install the extra: pip install 'ropelime[ray]'.") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run an audit on Ray: the runner of `ropelime.audit(..., runner=RayOptions(...))`."""

    address: str = "local"
    """'local' = start a Ray instance on this machine; 'auto' = the cluster of $RAY_ADDRESS (or the one running
    here); or an address such as 'ray://head:10001' or 'head:6379'."""
    workers: int | None = None
    """Actors, each holding one loaded surrogate; None = as many as the cluster's CPUs (or GPUs) allow."""
    cpus_per_worker: int = 1
    """CPUs reserved per actor; also its torch thread count."""
    max_retries: int = 2
    """Times a request is retried after its actor died, before it gets an error record."""
    log_to_driver: bool = False

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--ray-workers must be at least 1, got {self.workers}.")
        if self.cpus_per_worker < 1:
            raise InputError(f"--ray-cpus-per-worker must be at least 1, got {self.cpus_per_worker}.")
        if self.max_retries < 0:
            raise InputError(f"max_retries must be 0 or more, got {self.max_retries}.")

    def check(self, surrogate: Surrogate | str | None) -> None:
        """Refuse what cannot run on Ray before any input is read: a loaded surrogate, or no ray installed."""
        if isinstance(surrogate, Surrogate):
            raise InputError("on Ray give the surrogate by name (each actor loads its own copy), not a loaded "
                             "Surrogate.")
        _ray()

    def start(self, stats: RunStats, stack: contextlib.ExitStack, *, surrogate: str | None, device: str | None,
              dtype: str | None, api_base: str | None) -> Run:
        """Start the actors (stopped when `stack` closes); the function that runs requests on them."""
        return stack.enter_context(RayPool(self, stats, surrogate=surrogate, device=device, dtype=dtype,
                                           api_base=api_base)).run


@functools.cache
def _remote_worker():
    """AuditWorker as a Ray actor class (made once ray is imported)."""
    return _ray().remote(AuditWorker)


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
    ray = _ray()
    if ray.is_initialized():
        return False
    ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING,
             **({"include_dashboard": False} if address == "local" else {}))
    return True


class RayPool:
    """Actors holding one loaded surrogate each, on the cluster of `options`; use as a context manager.

    Joins the cluster unless Ray is already initialised in this process (then that one is used) and
    starts the actors, checking that the cluster has room for them and that they load the surrogate.
    Leaving kills the actors and shuts down a Ray instance this pool started.
    """

    def __init__(self, options: RayOptions, stats: RunStats, *, surrogate: str | None = None,
                 device: str | None = None, dtype: str | None = None, api_base: str | None = None) -> None:
        self.options, self.stats = options, stats
        gpu = (device or settings.device() or "").startswith("cuda")
        self._resources = {"num_cpus": options.cpus_per_worker, "num_gpus": 1 if gpu else 0}
        self._arguments = (surrogate, device, dtype, options.cpus_per_worker, api_base)
        self._started_ray = connect(options.address, options.log_to_driver)
        self.actors: list = []
        ray = _ray()
        try:
            resources = ray.cluster_resources()
            kind = "GPU" if gpu else "CPU"
            fits = int(resources.get(kind, 0)) // (1 if gpu else options.cpus_per_worker)
            workers = options.workers or max(fits, 1)
            if workers > fits:
                need = workers * (1 if gpu else options.cpus_per_worker)
                raise InputError(f"{workers} workers need {need} {kind}s, but the Ray cluster has "
                                 f"{resources.get(kind, 0):g}; lower --ray-workers or --ray-cpus-per-worker, "
                                 "or add nodes.")
            stats.workers = workers
            self._job = ray.get_runtime_context().get_job_id()
            self.actors = [self._start(slot, 0) for slot in range(workers)]
            try:
                ray.get([actor.ready.remote() for actor in self.actors])  # a surrogate that cannot load fails here
            except ray.exceptions.RayActorError as error:
                raise InputError(f"the Ray workers could not load the surrogate: {error}") from None
        except BaseException:
            self.close()
            raise

    def _start(self, slot: int, generation: int):
        return _remote_worker().options(name=f"ropelime-audit-{self._job}-{slot}.{generation}",
                                   **self._resources).remote(*self._arguments)

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def run(self, requests: list[Request], write: Callable[[Record], None]) -> None:
        """Explain `requests`, passing each record to `write` as it completes; every request is written once.

        An actor that dies is replaced and its request sent again, up to `max_retries` times, then the
        request gets an error record.
        """
        ray = _ray()
        RayActorError, RayError = ray.exceptions.RayActorError, ray.exceptions.RayError  # noqa: N806
        queue = deque(requests)
        attempts: dict[object, int] = {}
        generations = [0] * len(self.actors)
        idle = list(range(len(self.actors)))
        in_flight: dict[object, tuple[int, Request]] = {}
        while queue or in_flight:
            while idle and queue:
                slot, request = idle.pop(), queue.popleft()
                in_flight[self.actors[slot].run.remote(request)] = (slot, request)
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            slot, request = in_flight.pop(ref)
            try:
                record = ray.get(ref)
            except RayActorError as error:
                log.warning("Ray worker %d died (%s); replacing it", slot, error)
                ray.kill(self.actors[slot])  # if it is only unreachable, free its resources for the replacement
                generations[slot] += 1
                self.actors[slot] = self._start(slot, generations[slot])
                self.stats.workers_replaced += 1
                attempts[request.id] = attempts.get(request.id, 0) + 1
                if attempts[request.id] <= self.options.max_retries:
                    self.stats.retried += 1
                    queue.appendleft(request)
                else:
                    write(error_record(request.id, f"its Ray worker died {attempts[request.id]} times; the last "
                                       f"time: {error}", request.line))
            except RayError as error:
                write(error_record(request.id, f"Ray could not run it: {error}", request.line))
            else:
                write(record)
            idle.append(slot)
