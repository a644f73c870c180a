"""The server's one engine: the surrogate loaded once, the score cache, the explanation store, and
the one lock on which concurrent calls queue. Library work runs in a worker thread, reports
progress to the caller, and stops between batches when the call is cancelled."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from ropelime.cache import ScoreCache
from ropelime.closed import ClosedModelError, scrub
from ropelime.errors import InputError
from ropelime.explain import Cancelled, load_surrogate
from ropelime.settings import cache_dir
from ropelime.store import ExplanationStore
from ropelime.surrogate import Surrogate

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


@dataclass
class Engine:
    """What every tool call shares; built once per server run (see `lifespan`)."""

    surrogate: Surrogate
    cache: ScoreCache
    store: ExplanationStore
    api_base: str | None = None
    default_model: str | None = None
    closed_timeout: float = 60.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class EngineOptions:
    """How to build the engine: surrogate name and device, closed-model endpoint and default model."""

    surrogate: str | None = None
    device: str | None = None
    api_base: str | None = None
    default_model: str | None = None
    closed_timeout: float = 60.0
    """Seconds per closed-model attempt (ROPELIME_CLOSED_TIMEOUT)."""

    @classmethod
    def from_env(cls, **given: str | None) -> EngineOptions:
        """Given values first, then ROPELIME_SURROGATE / ROPELIME_DEVICE / ROPELIME_API_BASE / ROPELIME_MODEL
        (and ROPELIME_CLOSED_TIMEOUT)."""
        names = {"surrogate": "ROPELIME_SURROGATE", "device": "ROPELIME_DEVICE", "api_base": "ROPELIME_API_BASE",
                 "default_model": "ROPELIME_MODEL"}
        values = {key: given.get(key) or os.environ.get(var) or None for key, var in names.items()}
        timeout = os.environ.get("ROPELIME_CLOSED_TIMEOUT")
        try:
            closed_timeout = float(timeout) if timeout else cls.closed_timeout
        except ValueError:
            raise InputError(f"ROPELIME_CLOSED_TIMEOUT={timeout!r} is not a number of seconds; set it to one, "
                             "e.g. 60.") from None
        if closed_timeout <= 0:
            raise InputError(f"ROPELIME_CLOSED_TIMEOUT must be more than 0 seconds, got {timeout}.")
        return cls(**values, closed_timeout=closed_timeout)


def lifespan_for(options: EngineOptions) -> Callable[[Any], Any]:
    """An MCPServer lifespan that loads the surrogate once (off the event loop) and yields the Engine."""

    @asynccontextmanager
    async def lifespan(_server: Any) -> AsyncIterator[Engine]:
        log.info("loading surrogate %s", options.surrogate or "(default)")
        surrogate = await anyio.to_thread.run_sync(load_surrogate, options.surrogate, options.device)
        cache = ScoreCache(cache_dir() / "scores.sqlite")
        log.info("surrogate %s ready on %s; cache %s", surrogate.name, surrogate.device, cache.path)
        try:
            yield Engine(surrogate=surrogate, cache=cache, store=ExplanationStore(),
                         api_base=options.api_base, default_model=options.default_model,
                         closed_timeout=options.closed_timeout)
        finally:
            cache.close()

    return lifespan


def engine_of(ctx: Context) -> Engine:
    """The Engine from the server's lifespan."""
    return ctx.request_context.lifespan_context


async def run_job(ctx: Context, job: Callable[[Progress, ShouldStop], T]) -> T:
    """Run `job(progress, should_stop)` in a worker thread, one job at a time on the engine.

    Progress goes to the caller as progress notifications. When the call is cancelled this
    returns at once; the job sees `should_stop()` turn true and stops at its next batch (its
    scores so far stay cached), and only then releases the engine to the next queued call.
    """
    engine = engine_of(ctx)
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        if stop.is_set():
            return
        try:
            anyio.from_thread.run(ctx.report_progress, done, total, f"{done} of {total} done")
        except Exception as error:  # noqa: BLE001 - a lost progress message must not fail the job
            log.debug("progress not delivered: %s", error)

    def locked() -> T:
        with engine.lock:
            if stop.is_set():
                raise Cancelled("cancelled before it started")
            return job(progress, stop.is_set)

    try:
        return await anyio.to_thread.run_sync(locked, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        stop.set()
        log.info("call cancelled; the worker stops at its next batch")
        raise


@contextmanager
def tool_errors() -> Iterator[None]:
    """Turn every failure into a ToolError whose text tells the model what happened and what to do."""
    try:
        yield
    except ToolError:
        raise
    except (InputError, ClosedModelError) as error:
        raise ToolError(str(error)) from None
    except Cancelled as error:
        raise ToolError(f"{error}; call again with the same arguments to continue") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in error.errors())
        raise ToolError(f"invalid option: {problems}") from None
    except Exception as error:
        log.exception("unexpected failure")
        raise ToolError(f"internal error ({type(error).__name__}: {scrub(str(error))[:200]}); "
                        "the server log (stderr) has the details") from None
