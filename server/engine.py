"""The server's one engine: the surrogate (loaded in the background while the server already answers),
the score cache, the explanation store, and the one lock on which concurrent calls queue. Library
work runs in a worker thread, reports progress to the caller, and stops between batches when the
call is cancelled."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from ropelime.closed import scrub
from ropelime.errors import Cancelled, InputError, RopeLimeError
from ropelime.store import ExplanationStore

if TYPE_CHECKING:  # torch loads in the background, after the server already answers
    from ropelime.cache import ScoreCache
    from ropelime.surrogate import Surrogate

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]

LOADING_PROGRESS_EVERY_S = 2.0
"""How often a call waiting for the surrogate to load reports progress."""


@dataclass
class Engine:
    """What every tool call shares; built once per server run (see `lifespan_for`).

    `surrogate` and `cache` are set by a background thread; `ready` is set when it is done, with
    `load_error` saying why when it failed.
    """

    store: ExplanationStore
    api_base: str | None = None
    default_model: str | None = None
    closed_timeout: float = 60.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    surrogate: Surrogate | None = None
    cache: ScoreCache | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    load_error: str | None = None
    loading_since: float = field(default_factory=time.perf_counter)


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
        (and ROPELIME_CLOSED_TIMEOUT), read by `ropelime.settings`."""
        from ropelime import settings

        return cls(surrogate=given.get("surrogate") or settings.surrogate(),
                   device=given.get("device") or settings.device(),
                   api_base=given.get("api_base") or settings.api_base(),
                   default_model=given.get("default_model") or settings.closed_model(),
                   closed_timeout=settings.closed_timeout(cls.closed_timeout))


def load_engine(engine: Engine, options: EngineOptions) -> None:
    """Load the surrogate and open the score cache into `engine` (run in a background thread)."""
    try:
        from ropelime.cache import ScoreCache
        from ropelime.explain import load_surrogate
        from ropelime.settings import cache_dir, hide_library_progress_bars

        if not log.isEnabledFor(logging.INFO):
            hide_library_progress_bars()
        log.info("loading surrogate %s", options.surrogate or "(default)")
        engine.surrogate = load_surrogate(options.surrogate, options.device)
        engine.cache = ScoreCache(cache_dir() / "scores.sqlite")
        log.info("surrogate %s ready on %s in %.1f s; cache %s", engine.surrogate.name, engine.surrogate.device,
                 time.perf_counter() - engine.loading_since, engine.cache.path)
        import matplotlib.backends.backend_agg  # noqa: F401 - compare_samplers' plot, imported before a call waits for it
    except InputError as error:
        engine.load_error = f"the surrogate could not be loaded: {error}"
        log.error("%s", engine.load_error)
    except Exception as error:  # noqa: BLE001 - reported to every tool call instead of a silent dead server
        engine.load_error = (f"the surrogate could not be loaded ({type(error).__name__}: {scrub(str(error))[:200]}); "
                             "the server log (stderr) has the details")
        log.exception("loading the surrogate failed")
    finally:
        engine.ready.set()


def lifespan_for(options: EngineOptions) -> Callable[[Any], Any]:
    """An MCPServer lifespan that yields the Engine at once and loads the surrogate in a background thread."""

    @asynccontextmanager
    async def lifespan(_server: Any) -> AsyncIterator[Engine]:
        engine = Engine(store=ExplanationStore(), api_base=options.api_base, default_model=options.default_model,
                        closed_timeout=options.closed_timeout)
        threading.Thread(target=load_engine, args=(engine, options), name="ropelime-load", daemon=True).start()
        try:
            yield engine
        finally:
            if engine.cache is not None:
                engine.cache.close()

    return lifespan


def engine_of(ctx: Context) -> Engine:
    """The Engine from the server's lifespan."""
    return ctx.request_context.lifespan_context


async def wait_until_loaded(ctx: Context, engine: Engine, deadline: float | None) -> None:
    """Wait for the background load, reporting progress; ToolError when it failed or outlasts `deadline`."""
    last_report = None
    while not engine.ready.is_set():
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            raise ToolError(f"the surrogate is still loading ({now - engine.loading_since:.0f} s so far; the first "
                            "start prepares it once, about a minute); call again shortly.")
        if last_report is None or now - last_report >= LOADING_PROGRESS_EVERY_S:
            last_report = now
            try:
                await ctx.report_progress(0, None, f"loading the surrogate ({now - engine.loading_since:.0f} s)")
            except Exception as error:  # noqa: BLE001 - a lost progress message must not fail the call
                log.debug("progress not delivered: %s", error)
        await anyio.sleep(0.1)
    if engine.load_error:
        raise ToolError(engine.load_error)


async def run_job(ctx: Context, job: Callable[[Progress, ShouldStop], T], *, started: float | None = None,
                  time_budget_s: float | None = None, needs_surrogate: bool = True) -> T:
    """Run `job(progress, should_stop)` in a worker thread, one job at a time on the engine.

    A job that `needs_surrogate` first waits for it to load (at most until `time_budget_s` after `started`).
    Progress goes to the caller as progress notifications. When the call is cancelled this
    returns at once; the job sees `should_stop()` turn true and stops at its next batch (its
    scores so far stay cached), and only then releases the engine to the next queued call.
    """
    engine = engine_of(ctx)
    started = time.perf_counter() if started is None else started
    if needs_surrogate:
        await wait_until_loaded(ctx, engine, None if time_budget_s is None else started + time_budget_s)
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


def validation_problems(error: ValidationError) -> str:
    """`name: what is wrong (got value)` for each problem, on one line, without pydantic's links."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']} (got {one_line(repr(e.get('input')))[:80]})"
                     for e in error.errors())


def one_line(text: str) -> str:
    """The text with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


@contextmanager
def tool_errors() -> Iterator[None]:
    """Turn every failure into a ToolError whose text tells the model what happened and what to do: the
    server's one mapping of the library's errors (`ropelime.errors`)."""
    try:
        yield
    except ToolError:
        raise
    except Cancelled as error:
        raise ToolError(f"{error}; call again with the same arguments to continue") from None
    except RopeLimeError as error:
        raise ToolError(one_line(str(error))) from None
    except ValidationError as error:
        raise ToolError(f"invalid option: {validation_problems(error)}") from None
    except Exception as error:
        log.exception("unexpected failure")
        raise ToolError(f"internal error ({type(error).__name__}: {scrub(str(error))[:200]}); "
                        "the server log (stderr) has the details") from None
