"""Batch audits: explain every request of a JSONL file into a JSONL file of explanations, resumably.

Each input line is one request: `id`, `prompt`, `response` or `model`, optional `system`, `explain`
and any `ExplainConfig` field (`granularity`, `budget`, `seed`, …) overriding the batch's defaults.
Each output line is the request's Explanation JSON plus `request_id` (the input `id`; the
explanation keeps its own content-hash `id`), or an error record
`{"request_id": ..., "error": "...", "line": N}`. A bad line never stops the batch.

The output file is the checkpoint: every record is appended with one `write()` of a whole line and
an fsync, so a kill loses at most the requests in flight; a rerun cuts a torn last line, drops the
error records (their requests are tried again) and skips the ids already explained.

Where the requests run is a `Runner`: `Local` (the default: one surrogate in this process) or another
module's, such as `ropelime.audit_ray.RayOptions`. This module knows no runner but its own; the Ray
runner depends on it, not the other way round.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from ropelime.audit_report import AuditSummary, RunStats, summarise, summary_html
from ropelime.errors import ClosedModelError, InputError
from ropelime.explain import Progress, explain, load_surrogate, method_config
from ropelime.files import write_atomic
from ropelime.schema import ExplainConfig
from ropelime.surrogate import Surrogate

log = logging.getLogger(__name__)

RequestId = str | int
Record = dict[str, object]

REQUEST_KEYS = ("id", "prompt", "response", "model", "system", "explain")
METHOD_KEYS = tuple(ExplainConfig.model_fields)


class _RequestFields(BaseModel):
    """The non-method keys of a request line, type-checked without coercion."""

    model_config = ConfigDict(strict=True)

    id: StrictStr | StrictInt
    prompt: StrictStr
    response: StrictStr | None = None
    model: StrictStr | None = None
    system: StrictStr | None = None
    explain: StrictStr | None = None


@dataclass(frozen=True)
class Request:
    """One valid request of the input file."""

    id: RequestId
    line: int
    prompt: str
    response: str | None
    model: str | None
    system: str | None
    explain: str | None
    config: ExplainConfig


def error_record(request_id: RequestId | None, message: str, line: int) -> Record:
    """The output record of a request that could not be explained."""
    return {"request_id": request_id, "error": message, "line": line}


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in error.errors())


def parse_request(data: dict, line: int, defaults: ExplainConfig) -> Request:
    """A request from one decoded input line; `defaults` give the method options the line leaves out."""
    unknown = sorted(set(data) - set(REQUEST_KEYS) - set(METHOD_KEYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], REQUEST_KEYS + METHOD_KEYS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; {hint}"
                         f"a request takes {', '.join(REQUEST_KEYS)} and the method options of ExplainConfig "
                         "(granularity, budget, seed, …; see `ropelime audit -h`).")
    for key in ("id", "prompt"):
        if key not in data:
            raise InputError(f"missing key {key!r}; every request needs an id and a prompt.")
    try:
        fields = _RequestFields.model_validate({k: v for k, v in data.items() if k in REQUEST_KEYS})
        config = method_config(defaults, {k: v for k, v in data.items() if k in METHOD_KEYS})  # a "method" too
    except ValidationError as error:
        raise InputError(_describe(error)) from None
    if fields.response is None and not fields.model:
        raise InputError("give 'response' (the answer to explain) or 'model' (a closed model to ask once).")
    return Request(id=fields.id, line=line, prompt=fields.prompt, response=fields.response, model=fields.model,
                   system=fields.system, explain=fields.explain, config=config)


def read_requests(path: Path, defaults: ExplainConfig) -> tuple[list[Request], list[Record]]:
    """The valid requests of an input JSONL file, and an error record for each bad line.

    Blank lines are skipped; a line whose id an earlier line already has is refused.
    """
    requests: list[Request] = []
    errors: list[Record] = []
    first_line: dict[RequestId, int] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            request_id = None
            try:
                try:
                    data = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise InputError("the line is not UTF-8 text; save the input file as UTF-8.") from None
                except json.JSONDecodeError as error:
                    raise InputError(f"not valid JSON ({error.msg} at column {error.colno}); "
                                     "write one JSON object per line.") from None
                if not isinstance(data, dict):
                    raise InputError("a request must be a JSON object, e.g. {\"id\": \"a1\", \"prompt\": \"…\", "
                                     "\"response\": \"…\"}.")
                if isinstance(data.get("id"), (str, int)) and not isinstance(data.get("id"), bool):
                    request_id = data["id"]
                    if request_id in first_line:
                        raise InputError(f"duplicate id {request_id!r} (first on line {first_line[request_id]}); "
                                         "give every request its own id.")
                    first_line[request_id] = number
                requests.append(parse_request(data, number, defaults))
            except InputError as error:
                errors.append(error_record(request_id, str(error), number))
    return requests, errors


class AuditOutput:
    """The output JSONL file, written one whole line at a time (append, fsync).

    Opening it repairs a previous run's file: a torn last line is cut, error records are dropped
    (their requests run again), and the ids already explained are remembered in `done`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[RequestId] = set()
        self.dropped_errors = 0
        self._fd: int | None = None

    def __enter__(self) -> AuditOutput:
        kept = []
        data = self.path.read_bytes() if self.path.exists() else b""
        complete = data[:data.rfind(b"\n") + 1]
        for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), 1):
            record = _output_record(line, self.path, number)
            if record is None:
                continue
            if "error" in record:
                self.dropped_errors += 1
                continue
            self.done.add(record["request_id"])
            kept.append(line)
        if complete != data or self.dropped_errors:
            write_atomic(self.path, "".join(line + "\n" for line in kept))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, record: Record) -> bool:
        """Append one record as one line and fsync; an explanation of an id already done is not written
        again (returns False)."""
        explained = "error" not in record
        if explained and record["request_id"] in self.done:
            log.warning("request %r is already in %s; not written twice", record["request_id"], self.path)
            return False
        view = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        if explained:
            self.done.add(record["request_id"])
        return True


def _output_record(line: str, path: Path, number: int) -> Record | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or "request_id" not in record:
        raise InputError(f"{path} line {number} is not an audit record; give another --out file "
                         "(or remove that line to resume).")
    return record


def read_output(path: Path) -> Iterator[Record]:
    """The records of an output file, one at a time (a torn last line is ignored)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if line.endswith("\n"):
                record = _output_record(line, path, number)
                if record is not None:
                    yield record


def run_request(request: Request, surrogate: Surrogate, api_base: str | None = None) -> Record:
    """One request's output record: its explanation, or an error record. Never raises for one request's
    failure, so the batch goes on."""
    try:
        result = explain(request.prompt, request.response, model=request.model, system=request.system,
                         explain=request.explain, config=request.config, surrogate=surrogate, api_base=api_base)
    except (InputError, ClosedModelError) as error:
        return error_record(request.id, str(error), request.line)
    except Exception as error:  # noqa: BLE001 — an unexpected failure of one request must not stop the batch
        log.warning("request %r (line %d) failed", request.id, request.line, exc_info=True)
        return error_record(request.id, f"{type(error).__name__}: {error}", request.line)
    return {"request_id": request.id, **result.model_dump(mode="json")}


Run = Callable[[list[Request], Callable[[Record], None]], None]
"""Explains requests, passing each output record to the callback as it completes."""


class Runner(Protocol):
    """Where an audit's requests run: `check` refuses a setting that cannot work before any input is read;
    `start` readies the workers (closing them with `stack`) and returns the function that runs requests."""

    def check(self, surrogate: Surrogate | str | None) -> None: ...

    def start(self, stats: RunStats, stack: contextlib.ExitStack, *, surrogate: Surrogate | str | None,
              device: str | None, dtype: str | None, api_base: str | None) -> Run: ...


class Local:
    """The default runner: the surrogate loaded once in this process, the requests one after another."""

    def check(self, surrogate: Surrogate | str | None) -> None:
        pass

    def start(self, stats: RunStats, stack: contextlib.ExitStack, *, surrogate: Surrogate | str | None,
              device: str | None, dtype: str | None, api_base: str | None) -> Run:
        loaded = surrogate if isinstance(surrogate, Surrogate) else load_surrogate(surrogate, device, dtype)

        def run(requests: list[Request], write: Callable[[Record], None]) -> None:
            for request in requests:
                write(run_request(request, loaded, api_base))

        return run


def audit(
    input: str | Path,
    out: str | Path,
    *,
    config: ExplainConfig | None = None,
    surrogate: Surrogate | str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    api_base: str | None = None,
    runner: Runner | None = None,
    html: str | Path | None = None,
    weak_r2: float = 0.2,
    weak_nll: float = 4.0,
    progress: Progress | None = None,
) -> AuditSummary:
    """Explain every request of the JSONL file `input` into the JSONL file `out`; returns an `AuditSummary`.

    `config` holds the method defaults (a request's own keys override them). The surrogate is loaded
    once (`surrogate`: a loaded Surrogate or a name; on Ray a name, loaded once per actor). A rerun
    skips the ids already explained in `out` and retries its error records. `runner` says where the
    requests run (default `Local()`; `ropelime.audit_ray.RayOptions(...)` runs them on Ray actors).
    `html` also writes the summary as a page; `weak_r2` and `weak_nll` are the summary's
    thresholds for answers whose features explain little. `progress(done, total)` follows this run's
    pending requests.
    """
    input, out = Path(input), Path(out)
    started = time.perf_counter()
    if not input.is_file():
        raise InputError(f"input file {input} not found; give a JSONL file with one request per line.")
    if out.exists() and out.resolve() == input.resolve():
        raise InputError("--out is the input file; give another path for the results.")
    runner = runner or Local()
    runner.check(surrogate)
    requests, bad_lines = read_requests(input, config or ExplainConfig())
    stats = RunStats(requests=len(requests))
    with AuditOutput(out) as output, contextlib.ExitStack() as stack:
        pending = [r for r in requests if r.id not in output.done]
        stats.skipped = len(requests) - len(pending)
        if pending:
            run = runner.start(stats, stack, surrogate=surrogate, device=device, dtype=dtype, api_base=api_base)
        for record in bad_lines:  # once the surrogate or the Ray workers are ready: a failed start writes nothing
            stats.written += output.write(record)

        def write(record: Record) -> None:
            stats.written += output.write(record)
            stats.processed += 1
            if progress:
                progress(stats.processed, len(pending))

        if pending:
            if progress:
                progress(0, len(pending))
            run(pending, write)
    stats.seconds = round(time.perf_counter() - started, 3)
    summary = summarise(read_output(out), stats, output=out, weak_r2=weak_r2, weak_nll=weak_nll)
    if html:
        write_atomic(Path(html), summary_html(summary))
    return summary
