"""What an audit found, for people: the summary of an output file, printed or as an HTML page, and the
progress bar of a running audit."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from pydantic import BaseModel
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

SHOWN = 15
"""Rows per section in the terminal (the HTML page lists every row)."""


@dataclass
class RunStats:
    """What one `audit` call did."""

    requests: int = 0
    """Valid requests in the input."""
    skipped: int = 0
    """Requests already explained in the output (resumed)."""
    written: int = 0
    """Records written by this run (explanations and errors)."""
    processed: int = 0
    """Pending requests this run explained or failed (bad input lines not counted)."""
    retried: int = 0
    """Ray: requests sent again after their actor died."""
    workers_replaced: int = 0
    """Ray: actors that died and were replaced."""
    workers: int = 1
    seconds: float = 0.0


class WeakAnswer(BaseModel):
    """An answer whose features explain little, and why."""

    request_id: str | int
    r2: float
    surrogate_nll: float
    reasons: list[str]


class CitedFeature(BaseModel):
    text: str
    answers: int
    """Answers whose rank-1 feature has this text (whitespace collapsed)."""


class IncompleteAnswer(BaseModel):
    request_id: str | int
    samples: int
    planned_samples: int


class AuditError(BaseModel):
    request_id: str | int | None
    line: int | None
    error: str


class AuditSummary(BaseModel):
    """The whole output file at the end of an audit (earlier runs' records included) and this run's stats."""

    output: str
    explained: int
    errors: list[AuditError]
    weak: list[WeakAnswer]
    cited: list[CitedFeature]
    incomplete: list[IncompleteAnswer]
    weak_r2: float
    weak_nll: float
    run: dict[str, float | int]


def weak_reasons(record: dict, weak_r2: float, weak_nll: float) -> list[str]:
    """Why an explanation's features explain little: low fit, no 95% interval excluding 0, high surrogate NLL."""
    d, reasons = record["diagnostics"], []
    if d["r2"] < weak_r2:
        reasons.append(f"R² {d['r2']:.2f} < {weak_r2:g}")
    if not any(f["ci_low"] > 0 or f["ci_high"] < 0 for f in record["features"]):
        reasons.append("no 95% interval excludes 0")
    if d["surrogate_nll"] > weak_nll:
        reasons.append(f"surrogate NLL {d['surrogate_nll']:.2f} > {weak_nll:g}")
    return reasons


def summarise(records: Iterable[dict], stats: RunStats, *, output: object, weak_r2: float = 0.2,
              weak_nll: float = 4.0, cited: int = 20) -> AuditSummary:
    """Summarise an audit's records: weak answers, the `cited` most frequent rank-1 features, incomplete
    explanations and errors."""
    explained, errors, weak, incomplete, top1 = 0, [], [], [], Counter()
    for record in records:
        if "error" in record:
            errors.append(AuditError(request_id=record["request_id"], line=record.get("line"), error=record["error"]))
            continue
        explained += 1
        d = record["diagnostics"]
        if reasons := weak_reasons(record, weak_r2, weak_nll):
            weak.append(WeakAnswer(request_id=record["request_id"], r2=d["r2"], surrogate_nll=d["surrogate_nll"],
                                   reasons=reasons))
        if not d["complete"]:
            incomplete.append(IncompleteAnswer(request_id=record["request_id"], samples=d["samples"],
                                               planned_samples=d["planned_samples"]))
        first = [f for f in record["features"] if f["rank"] == 1]
        if first:
            top1[" ".join(first[0]["text"].split())] += 1
    weak.sort(key=lambda w: (-len(w.reasons), w.r2))
    return AuditSummary(output=str(output), explained=explained, errors=errors, weak=weak,
                        cited=[CitedFeature(text=t, answers=n) for t, n in top1.most_common(cited)],
                        incomplete=incomplete, weak_r2=weak_r2, weak_nll=weak_nll, run=asdict(stats))


def _run_line(summary: AuditSummary) -> str:
    run = summary.run
    parts = [f"{summary.explained} explained", f"{len(summary.errors)} errors",
             f"this run: {run['written']} written, {run['skipped']} already done, {run['seconds']:.1f} s"]
    if run["processed"] and run["seconds"]:
        parts[-1] += f" ({run['processed'] / run['seconds'] * 60:.1f} requests/min)"
    if run["retried"] or run["workers_replaced"]:
        parts.append(f"{run['workers_replaced']} workers replaced, {run['retried']} requests retried")
    return f"{summary.output}: " + " · ".join(parts)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left", min_width=len(title) + 2)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows[:SHOWN]:
        table.add_row(*row)
    if len(rows) > SHOWN:
        table.caption = f"… and {len(rows) - SHOWN} more (--html lists them all)"
    return table


def _sections(summary: AuditSummary) -> list[tuple[str, list[str], list[list[str]]]]:
    """Each section's title, columns and rows, shared by the terminal and the page."""
    share = lambda n: f"{n / summary.explained:.0%}" if summary.explained else "-"
    return [
        (f"answers whose features explain little ({len(summary.weak)} of {summary.explained})",
         ["request", "R²", "surrogate NLL", "why"],
         [[str(w.request_id), f"{w.r2:.2f}", f"{w.surrogate_nll:.2f}", "; ".join(w.reasons)] for w in summary.weak]),
        ("features cited most often (rank 1 across answers)", ["feature", "answers", "share"],
         [[c.text, str(c.answers), share(c.answers)] for c in summary.cited]),
        (f"explanations incomplete within their budget ({len(summary.incomplete)})", ["request", "samples scored"],
         [[str(i.request_id), f"{i.samples} of {i.planned_samples}"] for i in summary.incomplete]),
        (f"errors ({len(summary.errors)}; a rerun retries them)", ["line", "request", "error"],
         [[str(e.line), str(e.request_id), e.error] for e in summary.errors]),
    ]


def print_summary(summary: AuditSummary, console: Console) -> None:
    """Print the summary: one line of counts, then each non-empty section as a table."""
    console.print(Text(_run_line(summary), style="bold"))
    for title, columns, rows in _sections(summary):
        if rows:
            console.print(_table(title, columns, rows))


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; padding: 0 1rem; color: #1a1a1a; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.8rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border-bottom: 1px solid #e2e2e2; padding: .25rem .6rem; text-align: left; vertical-align: top; }
.facts { color: #555; }
"""


def summary_html(summary: AuditSummary) -> str:
    """The summary as a self-contained HTML page listing every row."""
    esc = lambda value: html.escape(str(value), quote=True)
    body = [f"<h1>RoPE-LIME audit</h1><p class=\"facts\">{esc(_run_line(summary))}</p>",
            f"<p class=\"facts\">Weak: R² below {summary.weak_r2:g}, no feature whose 95% interval excludes 0, "
            f"or surrogate NLL per token above {summary.weak_nll:g}.</p>"]
    for title, columns, rows in _sections(summary):
        body.append(f"<h2>{esc(title)}</h2>")
        if not rows:
            body.append("<p class=\"facts\">none</p>")
            continue
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        cells = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
        body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>RoPE-LIME audit</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


class ItemsPerSecond(ProgressColumn):
    """The task's speed in items per second."""

    def render(self, task: Task) -> Text:
        return Text("-- items/s" if task.speed is None else f"{task.speed:.2f} items/s", style="progress.data.speed")


def progress_bar(console: Console) -> Progress:
    """A progress bar for audits: done/total, items/s, elapsed time and ETA."""
    return Progress(TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), ItemsPerSecond(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    speed_estimate_period=600)  # items take seconds each: average over the last 10 minutes
