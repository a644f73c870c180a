"""Show an Explanation: a terminal heat map and table (rich), a self-contained HTML page, a PNG bar chart."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

from rich.color import Color
from rich.console import Console
from rich.panel import Panel
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ropelime.refine import summary_lines as refinement_lines
from ropelime.reliability import NOISE, excludes_zero
from ropelime.samples import DEFAULT_METHOD
from ropelime.schema import Explanation, FeatureScore
from ropelime.targets import TARGETS, Target
from ropelime.verify import summary_lines

RGB = tuple[int, int, int]

_WHITE: RGB = (255, 255, 255)
_WARM: tuple[RGB, RGB] = ((252, 174, 112), (196, 38, 30))
"""Supporting colours at half and at full intensity (light orange, deep red)."""
_COOL: tuple[RGB, RGB] = ((150, 190, 228), (33, 82, 162))
"""Opposing colours at half and at full intensity (light blue, deep blue)."""
_HEAT_TITLE = "prompt — warm: {positive}, cool: {negative}"
_TABLE_CAPTION = "rank 1 = highest score ({positive}), {d} = lowest ({negative}) · * = 95% interval excludes 0"
_DIRECTION_CAPTION = (" · direction: the response is less likely without the feature (supports the answer) or more"
                      " likely (opposes it), by the change of its log-likelihood in nats per token; unclear where"
                      " that change's 95% interval straddles 0")
_VERDICT_STYLE = {"high": "bold green", "medium": "bold yellow", "low": "bold red"}


def score_rgb(score: float, scale: float) -> RGB:
    """Background colour of a score on a diverging scale: white at 0, warm for support, cool for opposition."""
    t = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    half, full = _WARM if score > 0 else _COOL
    start, end, u = (_WHITE, half, 2 * t) if t <= 0.5 else (half, full, 2 * t - 1)
    return tuple(round(a + (b - a) * u) for a, b in zip(start, end))  # type: ignore[return-value]


def ink_rgb(background: RGB) -> RGB:
    """Black or white text, whichever contrasts more with the background (WCAG relative luminance)."""
    linear = [c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in background]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return (255, 255, 255) if 1.05 / (luminance + 0.05) > (luminance + 0.05) / 0.05 else (0, 0, 0)


def _scale(explanation: Explanation) -> float:
    return max((abs(f.score) for f in explanation.features), default=0.0)


def number(x: float) -> str:
    """Signed, three significant digits; 0 for float noise (|x| < NOISE), never "-0"."""
    return "0" if abs(x) < NOISE else f"{x + 0.0:+.3g}"


def _ci(feature: FeatureScore) -> str:
    return f"[{number(feature.ci_low)}, {number(feature.ci_high)}]"


def shown_features(explanation: Explanation, k: int) -> list[FeatureScore]:
    """The k features with the largest |score|, ordered by score (so their ranks increase down the list)."""
    return sorted(explanation.top(k, direction="both"), key=lambda f: f.rank)


def value_text(value: object) -> str:
    """A method, diagnostic or cost value for people: 3–4 significant digits, yes/no, — for not applicable."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key} {value_text(v)}" for key, v in value.items()) or "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(v) for v in value) or "—"
    return str(value)


def reliability_line(explanation: Explanation) -> str | None:
    """`reliability: medium — reason; reason`, or None for an explanation stored before the summary existed."""
    r = explanation.diagnostics.reliability
    return None if r is None else f"reliability: {r.verdict} — {'; '.join(r.reasons)}"


def settled_line(explanation: Explanation, k: int = 3) -> str:
    """`38 of 40 features scored; the top 3 could still change: 5 others' 95% intervals reach theirs, 2 not yet
    scored` — or that the top k is settled (its intervals lie above every other feature's)."""
    d, unscored = len(explanation.features), explanation.diagnostics.unscored_features
    scored = f"{d - unscored} of {d} features scored"
    k = min(k, d - 1)
    if k < 1:
        return scored
    rivals = explanation.rivals(k)
    if rivals == 0:
        return f"{scored}; the top {k} is settled: its 95% intervals lie above every other feature's"
    overlapping = rivals - unscored
    reach = "other's 95% interval reaches" if overlapping == 1 else "others' 95% intervals reach"
    why = [f"{overlapping} {reach} theirs"] if overlapping else []
    why += [f"{unscored} not yet scored"] if unscored else []
    return f"{scored}; the top {k} could still change: {', '.join(why)}"


def _shorten(text: str, width: int = 80) -> str:
    """One line: newlines shown as ⏎, tabs as spaces, cut with … beyond width characters."""
    line = text.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", " ").strip(" ")
    return line if len(line) <= width else line[: width - 1] + "…"


def _pieces(explanation: Explanation) -> Iterator[tuple[str, FeatureScore | None]]:
    """The prompt cut into consecutive pieces, each a feature's span or fixed text (None)."""
    prompt, cursor = explanation.prompt, 0
    for feature in sorted(explanation.features, key=lambda f: f.start):
        start, end = max(feature.start, cursor), min(feature.end, len(prompt))
        if start >= end:
            continue
        if start > cursor:
            yield prompt[cursor:start], None
        yield prompt[start:end], feature
        cursor = end
    if cursor < len(prompt):
        yield prompt[cursor:], None


def _rich_style(score: float, scale: float) -> Style:
    background = score_rgb(score, scale)
    return Style(bgcolor=Color.from_rgb(*background), color=Color.from_rgb(*ink_rgb(background)))


def heatmap_text(explanation: Explanation) -> Text:
    """The whole prompt, each feature on a background coloured by its score; fixed text dim."""
    scale, text = _scale(explanation), Text()
    for piece, feature in _pieces(explanation):
        text.append(piece, style="dim" if feature is None else _rich_style(feature.score, scale))
    return text


def target_of(explanation: Explanation) -> Target:
    """The target the explanation's scores measure."""
    config = explanation.config
    return TARGETS[config.target or DEFAULT_METHOD["target"]]


def _meaning(explanation: Explanation) -> dict[str, str]:
    """What a positive and a negative score say under the explanation's target."""
    target = target_of(explanation)
    return {"positive": target.positive, "negative": target.negative}


def _heat_title(explanation: Explanation) -> str:
    return _HEAT_TITLE.format(**_meaning(explanation))


def _table_caption(explanation: Explanation) -> str:
    caption = _TABLE_CAPTION.format(d=len(explanation.features), **_meaning(explanation))
    return caption + (_DIRECTION_CAPTION if _unsigned(explanation) else "")


def _verdicts(explanation: Explanation) -> dict[int, str]:
    """Verdict of each verified feature, by index (empty without a verification)."""
    checks = explanation.verification.checks if explanation.verification else []
    return {c.feature: c.verdict.replace("_", " ") for c in checks}


def top_table(explanation: Explanation, k: int = 10) -> Table:
    """The k features with the largest |score|, ordered by score: rank, text, score, 95% interval, * when it
    excludes 0, and the closed model's verdict when verified."""
    shown, scale, verdicts = shown_features(explanation, k), _scale(explanation), _verdicts(explanation)
    table = Table(title=f"top {len(shown)} of {len(explanation.features)} features by |score|, ordered by score",
                  caption=_table_caption(explanation), caption_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("feature", overflow="fold", min_width=24, ratio=1)
    table.add_column(score_header(explanation), justify="right", no_wrap=True)
    table.add_column("95% interval", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    directed = _unsigned(explanation)
    if directed:
        table.add_column("direction", overflow="fold")
    if verdicts:
        table.add_column("closed model", no_wrap=True)
    refined = explanation.refinement is not None
    if refined:
        table.add_column("evidence", overflow="fold")
    for f in shown:
        table.add_row(str(f.rank), Text(_shorten(f.text)), Text(number(f.score), style=_rich_style(f.score, scale)),
                      _ci(f), "*" if excludes_zero(f) else "", *([direction_text(f)] if directed else []),
                      *([verdicts.get(f.index, "")] if verdicts else []), *([evidence_text(f)] if refined else []))
    return table


def evidence_text(feature: FeatureScore) -> str:
    """`measured +2.8` (the closed model's own effect, refine) or `estimate` (the surrogate's score only)."""
    return "estimate" if feature.closed_effect is None else f"measured {number(feature.closed_effect)}"


def _unsigned(explanation: Explanation) -> bool:
    """Whether the scores are unsigned and the features carry their likelihood effect (explanations stored
    before it existed do not)."""
    return any(f.likelihood_effect is not None for f in explanation.features)


LIKELIHOOD_UNIT = "nats/token"
"""The unit of a likelihood effect (the change of the response's mean log-likelihood per token)."""


def direction_text(feature: FeatureScore) -> str:
    """`supports the answer: +0.12 nats/token`: the feature's direction in words and its effect on the response's
    likelihood, with its unit ("unclear: …" when its interval straddles 0)."""
    if feature.likelihood_effect is None:
        return ""
    said = "unclear" if feature.direction in (None, "unclear") else f"{feature.direction} the answer"
    return f"{said}: {number(feature.likelihood_effect)} {LIKELIHOOD_UNIT}"


def score_header(explanation: Explanation) -> str:
    """`score (nats/token)`: the score column's header, with the target's unit when known."""
    unit = target_of(explanation).unit
    return f"score ({unit})" if unit else "score"


def _summary_parts(explanation: Explanation) -> tuple[str, list[str], list[str]]:
    """Where the response came from, the run's cost and its fit: shared by the terminal and the HTML page."""
    d, c = explanation.diagnostics, explanation.cost
    source = f"from {explanation.closed_model}" if explanation.response_source == "closed_model" else "given"
    cost = [f"{c.seconds:.1f} s", f"{c.closed_model_calls} closed-model call{'' if c.closed_model_calls == 1 else 's'}"]
    fit = [f"surrogate {explanation.surrogate.name}", f"{d.samples}/{d.planned_samples} samples",
           "complete" if d.complete else "partial", f"R² {d.r2:.2f}", f"surrogate NLL {d.surrogate_nll:.2f}"]
    return source, cost, fit


def summary_text(explanation: Explanation) -> Text:
    """Two lines: the response (shortened), where it came from and the cost; the surrogate, samples and fit."""
    source, cost, fit = _summary_parts(explanation)
    text = Text.assemble(("response ", "bold"), f"“{_shorten(explanation.response, 60)}”", f" ({source})")
    for i, fact in enumerate(cost + fit):
        text.append("\n" if i == len(cost) else " · ", style="dim")
        text.append(fact, style="bold yellow" if fact == "partial" else "")
    return text


def print_explanation(explanation: Explanation, console: Console, k: int = 10) -> None:
    """Print the summary, the heat map of the prompt, the top-k table and any diagnostic notes."""
    console.print(summary_text(explanation))
    console.print(Panel(heatmap_text(explanation), title=_heat_title(explanation), title_align="left",
                        subtitle=f"full colour at |score| {_scale(explanation):.3g}", subtitle_align="right"))
    console.print(top_table(explanation, k))
    console.print(Text(settled_line(explanation), style="dim"))
    reliability = explanation.diagnostics.reliability
    if reliability is not None:
        console.print(Text.assemble(("reliability: ", "bold"), (reliability.verdict, _VERDICT_STYLE[reliability.verdict]),
                                    " — " + "; ".join(reliability.reasons)))
    if explanation.diagnostics.expected_fidelity:
        console.print(Text.assemble(("fidelity: ", "bold"), explanation.diagnostics.expected_fidelity))
    if explanation.refinement:
        console.print(Text("\n".join(refinement_lines(explanation.refinement))))
    if explanation.verification:
        console.print(Text("\n".join(summary_lines(explanation.verification))))
    for note in explanation.diagnostics.notes:
        console.print(Text.assemble(("note: ", "bold yellow"), note))


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #1a1a1a; background: #fff; line-height: 1.5; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.8rem; }
.box { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 6px; padding: .8rem; background: #fff; }
.prompt { line-height: 1.9; }
.fixed { color: #8a8a8a; }
.f { border-radius: 3px; padding: .1em 0; }
.facts { color: #555; }
.legend { display: flex; align-items: center; gap: .6rem; font-size: .9rem; color: #555; margin: .4rem 0; }
.bar { width: 16rem; height: .9rem; border: 1px solid #ccc; border-radius: 3px; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border-bottom: 1px solid #e2e2e2; padding: .25rem .6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.group { background: #f4f4f4; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _style_attr(score: float, scale: float) -> str:
    background = score_rgb(score, scale)
    return f"background:rgb{background};color:rgb{ink_rgb(background)}"


def _tooltip(f: FeatureScore) -> str:
    direction = f", {direction_text(f)} (likelihood)" if f.likelihood_effect is not None else ""
    return f"score {number(f.score)}, 95% interval {_ci(f)}, rank {f.rank}{direction}"


def _html_prompt(explanation: Explanation, scale: float) -> str:
    return "".join(
        f'<span class="fixed">{_esc(piece)}</span>' if f is None else
        f'<span class="f" style="{_style_attr(f.score, scale)}" title="{_esc(_tooltip(f))}">{_esc(piece)}</span>'
        for piece, f in _pieces(explanation))


def _html_legend(explanation: Explanation, scale: float) -> str:
    stops = ", ".join(f"rgb{score_rgb(t * scale, scale)}" for t in (-1, -0.5, 0, 0.5, 1))
    meaning = _meaning(explanation)
    return (f'<div class="legend"><span>{_esc(meaning["negative"])} {number(-scale)}</span>'
            f'<span class="bar" style="background:linear-gradient(to right, {stops})"></span>'
            f'<span>{number(scale)} {_esc(meaning["positive"])}</span><span class="fixed">grey: fixed text</span></div>')


def _html_top(explanation: Explanation, scale: float, k: int = 20) -> str:
    verdicts, directed = _verdicts(explanation), _unsigned(explanation)
    rows = "".join(
        f'<tr><td class="num">{f.rank}</td><td>{_esc(_shorten(f.text, 120))}</td>'
        f'<td class="num" style="{_style_attr(f.score, scale)}">{number(f.score)}</td>'
        f'<td class="num">{_esc(_ci(f))}</td><td>{"*" if excludes_zero(f) else ""}</td>'
        + (f"<td>{_esc(direction_text(f))}</td>" if directed else "")
        + (f"<td>{_esc(verdicts.get(f.index, ''))}</td>" if verdicts else "")
        + (f"<td>{_esc(evidence_text(f))}</td>" if explanation.refinement else "") + "</tr>"
        for f in shown_features(explanation, k))
    extra = ("<th>direction</th>" if directed else "") + ("<th>closed model</th>" if verdicts else "") + (
        "<th>evidence</th>" if explanation.refinement else "")
    return (f"<table><thead><tr><th>rank</th><th>feature</th><th>{_esc(score_header(explanation))}</th>"
            "<th>95% interval</th><th></th>"
            f"{extra}</tr></thead><tbody>{rows}</tbody></table>"
            f'<p class="facts">{_esc(_table_caption(explanation))}</p>'
            f'<p class="facts">{_esc(settled_line(explanation))}</p>')


def _html_method(explanation: Explanation) -> str:
    groups = {
        "method": explanation.config.model_dump(),
        "diagnostics": explanation.diagnostics.model_dump(exclude={"notes", "reliability"}),
        "cost": explanation.cost.model_dump(),
        "surrogate": explanation.surrogate.model_dump(),
        "provenance": explanation.provenance,
    }
    rows = []
    for group, values in groups.items():
        if values:
            rows.append(f'<tr><th class="group" colspan="2">{group}</th></tr>')
            rows.extend(f"<tr><td>{_esc(key)}</td><td>{_esc(value_text(value))}</td></tr>"
                        for key, value in values.items())
    notes = "".join(f"<li>{_esc(note)}</li>" for note in explanation.diagnostics.notes)
    return f"<table>{''.join(rows)}</table>" + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")


def _html_verification(explanation: Explanation) -> str:
    """The verification's verdicts, control and cost as a list (nothing without a verification)."""
    if explanation.verification is None:
        return ""
    items = "".join(f"<li>{_esc(line)}</li>" for line in summary_lines(explanation.verification, width=120))
    return f"\n<h2>Verified with the closed model</h2>\n<ul>{items}</ul>"


def _html_refinement(explanation: Explanation) -> str:
    """The closed model's measured effects as a list (nothing without a refinement)."""
    if explanation.refinement is None:
        return ""
    items = "".join(f"<li>{_esc(line)}</li>" for line in refinement_lines(explanation.refinement, width=120))
    return f"\n<h2>Measured on the closed model</h2>\n<ul>{items}</ul>"


def _html_reliability(explanation: Explanation) -> str:
    line = reliability_line(explanation)
    fidelity = explanation.diagnostics.expected_fidelity
    return ("" if line is None else f'\n<p class="reliability"><strong>{_esc(line)}</strong></p>') + (
        f'\n<p class="facts">fidelity: {_esc(fidelity)}</p>' if fidelity else "")


def to_html(explanation: Explanation) -> str:
    """A self-contained HTML page: response, colour-coded prompt with tooltips, legend, tables."""
    scale = _scale(explanation)
    source, cost, fit = _summary_parts(explanation)
    system = (f'<h2>System prompt</h2><div class="box fixed">{_esc(explanation.system)}</div>'
              if explanation.system else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>RoPE-LIME explanation {_esc(explanation.id)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>RoPE-LIME explanation</h1>
<p class="facts">{_esc(" · ".join(fit + cost))}</p>{_html_reliability(explanation)}
<h2>Response ({_esc(source)})</h2>
<div class="box">{_esc(explanation.response)}</div>{system}
<h2>{_esc(_heat_title(explanation).capitalize())}</h2>
{_html_legend(explanation, scale)}
<div class="box prompt">{_html_prompt(explanation, scale)}</div>
<h2>Top features by |score|</h2>
{_html_top(explanation, scale)}{_html_refinement(explanation)}{_html_verification(explanation)}
<h2>Method, diagnostics and cost</h2>
{_html_method(explanation)}
</body>
</html>
"""


def plot_scores(explanation: Explanation, path: Path, k: int = 15) -> Path:
    """Save a horizontal bar chart of the top-k |score| features with their 95% intervals as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown, scale = shown_features(explanation, k)[::-1], _scale(explanation)
    figure = Figure(figsize=(8, 1.2 + 0.4 * max(len(shown), 1)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = range(len(shown))
    errors = [[max(f.score - f.ci_low, 0.0) for f in shown], [max(f.ci_high - f.score, 0.0) for f in shown]]
    axes.barh(positions, [f.score for f in shown], xerr=errors, capsize=3, edgecolor="#555", linewidth=0.6,
              color=[tuple(c / 255 for c in score_rgb(f.score, scale)) for f in shown], ecolor="#333")
    labels = [f"#{f.rank} {_shorten(f.text, 40)}".replace("$", r"\$") for f in shown]  # $ would start mathtext
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.axvline(0, color="#333", linewidth=0.8)
    axes.set_xlabel(f"score (positive: {_meaning(explanation)['positive']}) with 95% interval")
    axes.set_title(f"RoPE-LIME: top {len(shown)} features by |score|, ordered by score")
    path = Path(path)
    figure.savefig(path, format="png", dpi=150)
    return path
