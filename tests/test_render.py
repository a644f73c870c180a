"""Rendering of a hand-built Explanation: terminal heat map and table, HTML page, PNG chart."""

from __future__ import annotations

import html
from html.parser import HTMLParser

import pytest
from rich.console import Console

from ropelime.render import heatmap_text, ink_rgb, plot_scores, print_explanation, score_rgb, to_html, top_table
from ropelime.schema import Cost, Diagnostics, ExplainConfig, Explanation, FeatureScore, SurrogateInfo

PROMPT = ('Answer briefly.\n\nContext: The <b>bridge</b> was designed by Mara Tollet & "friends".\n'
          "Tolls are $x^{ or $5 on the Oster River.\nLocal fishermen like trout.\n\nQuestion: Who designed it?")
SENTENCES = [  # (text, score, ci_low, ci_high)
    ('The <b>bridge</b> was designed by Mara Tollet & "friends".', 2.5, 1.1, 3.9),
    ("Tolls are $x^{ or $5 on the Oster River.", -0.8, -1.5, -0.1),
    ("Local fishermen like trout.", 0.05, -0.4, 0.5),
]


@pytest.fixture
def explanation() -> Explanation:
    features = []
    for index, (text, score, low, high) in enumerate(SENTENCES):
        start = PROMPT.index(text)
        features.append(dict(index=index, text=text, start=start, end=start + len(text), score=score,
                             ci_low=low, ci_high=high))
    for rank, feature in enumerate(sorted(features, key=lambda f: -f["score"]), start=1):
        feature["rank"] = rank
    first = features[0]["start"]
    return Explanation(
        id="test-1", prompt=PROMPT, explain_start=first, explain_end=features[-1]["end"],
        response="Mara Tollet designed the bridge.", response_source="given",
        features=[FeatureScore(**f) for f in features], config=ExplainConfig(),
        diagnostics=Diagnostics(r2=0.91, samples=33, planned_samples=64, complete=False, surrogate_nll=1.7,
                                notes=["time budget reached after 33 of 64 samples"]),
        cost=Cost(surrogate_forward_passes=33, tokens_scored=900, seconds=4.2),
        surrogate=SurrogateInfo(name="tiny", dtype="float32", device="cpu", chat_template=False),
    )


def _feature_styles(text) -> dict[str, object]:
    """Map each styled piece of a rich Text to its style."""
    return {text.plain[span.start:span.end]: span.style for span in text.spans}


def test_score_colours_diverge_and_stay_readable():
    assert score_rgb(0.0, 1.0) == (255, 255, 255)
    assert score_rgb(0.3, 0.0) == (255, 255, 255)
    red, green, blue = score_rgb(1.0, 1.0)
    assert red > blue
    red, green, blue = score_rgb(-1.0, 1.0)
    assert blue > red
    assert ink_rgb(score_rgb(0.1, 1.0)) == (0, 0, 0)
    assert ink_rgb(score_rgb(1.0, 1.0)) == (255, 255, 255)
    assert ink_rgb(score_rgb(-1.0, 1.0)) == (255, 255, 255)


def test_heatmap_keeps_the_prompt_and_colours_by_sign(explanation):
    text = heatmap_text(explanation)
    assert text.plain == PROMPT
    styles = _feature_styles(text)
    support = styles[SENTENCES[0][0]].bgcolor.get_truecolor()
    oppose = styles[SENTENCES[1][0]].bgcolor.get_truecolor()
    assert support.red > support.blue
    assert oppose.blue > oppose.red
    faint = styles[SENTENCES[2][0]].bgcolor.get_truecolor()
    assert min(faint) > min(support)  # weak score, lighter background
    assert styles["Answer briefly.\n\nContext: "] == "dim"


def test_top_table_orders_by_magnitude(explanation):
    table = top_table(explanation, k=2)
    assert table.row_count == 2
    texts = [str(cell) for cell in table.columns[1].cells]
    assert texts[0].startswith("The <b>bridge</b>")
    assert texts[1] == SENTENCES[1][0]
    assert [str(cell) for cell in table.columns[4].cells] == ["*", "*"]


class _BalanceChecker(HTMLParser):
    """Fails on unbalanced tags; records text."""

    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack)
        self.stack.pop()


def test_html_is_escaped_complete_and_well_formed(explanation):
    page = to_html(explanation)
    assert "<b>" not in page and "<script" not in page
    for text, score, low, high in SENTENCES:
        assert html.escape(text, quote=True) in page
        assert f"{score:+.3g}" in page
    assert "white-space: pre-wrap" in page
    assert "http" not in page  # no external resources
    assert html.escape(explanation.response) in page
    assert "time budget reached" in page
    checker = _BalanceChecker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert checker.tags.count("span") >= len(SENTENCES)


def test_html_escapes_script_in_prompt(explanation):
    hostile = explanation.model_copy(update={"prompt": "<script>alert(1)</script>" + PROMPT})
    assert "<script>" not in to_html(hostile)


@pytest.mark.parametrize("k", [2, 15])
def test_plot_writes_png(explanation, tmp_path, k):
    path = plot_scores(explanation, tmp_path / "scores.png", k=k)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_features_still_renders(explanation, tmp_path):
    empty = explanation.model_copy(update={"features": []})
    assert heatmap_text(empty).plain == PROMPT
    assert top_table(empty).row_count == 0
    assert "<table>" in to_html(empty)
    assert plot_scores(empty, tmp_path / "empty.png").stat().st_size > 0


def test_print_explanation(explanation):
    console = Console(record=True, width=100)
    print_explanation(explanation, console)
    output = console.export_text()
    assert "Mara Tollet designed the bridge." in output
    assert "The <b>bridge</b> was designed" in output
    assert "partial" in output and "33/64 samples" in output
    assert "time budget reached" in output


def _with_scores(explanation: Explanation, scores: list[tuple[float, float, float]]) -> Explanation:
    """The explanation with new (score, ci_low, ci_high) per feature and ranks that follow the scores."""
    features = [f.model_copy(update=dict(score=s, ci_low=lo, ci_high=hi))
                for f, (s, lo, hi) in zip(explanation.features, scores)]
    for rank, f in enumerate(sorted(features, key=lambda f: -f.score), start=1):
        f.rank = rank
    return explanation.model_copy(update={"features": features})


def test_the_table_lists_the_largest_scores_in_rank_order(explanation):
    # |score| picks the rows (the weak third is left out), the signed score orders them: ranks only increase
    mixed = _with_scores(explanation, [(0.4, 0.1, 0.7), (-2.0, -3.0, -1.0), (0.01, -0.2, 0.2)])
    table = top_table(mixed, k=2)
    ranks = [int(str(cell)) for cell in table.columns[0].cells]
    assert ranks == [1, 3] and ranks == sorted(ranks)
    page = to_html(mixed)
    html_ranks = [int(cell) for cell in _cells(page)[0::5][1:]]  # rank column, header skipped
    assert html_ranks == sorted(html_ranks)


def test_intervals_print_without_float_noise_and_only_real_exclusions_get_a_star(explanation):
    noisy = _with_scores(explanation, [(0.944, -1.77e-15, 0.944), (-0.204, -0.204, 0.0), (0.5, 0.2, 0.8)])
    table = top_table(noisy, k=3)
    intervals = [str(cell) for cell in table.columns[3].cells]
    assert "[0, +0.944]" in intervals and "[-0.204, 0]" in intervals
    assert not any("e-" in interval for interval in intervals)
    stars = dict(zip((str(c) for c in table.columns[2].cells), (str(c) for c in table.columns[4].cells)))
    assert stars == {"+0.944": "", "-0.204": "", "+0.5": "*"}


def _cells(page: str) -> list[str]:
    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cells, self.inside = [], False

        def handle_starttag(self, tag, attrs):
            if tag in ("td", "th"):
                self.inside = True
                self.cells.append("")

        def handle_endtag(self, tag):
            self.inside = False if tag in ("td", "th") else self.inside

        def handle_data(self, data):
            if self.inside:
                self.cells[-1] += data

    parser = Cells()
    parser.feed(page.split("<h2>Top features")[1].split("<h2>Method")[0])
    return parser.cells


def test_the_html_method_table_shows_formatted_values(explanation):
    resolved = explanation.model_copy(update={"config": ExplainConfig(k=2, alpha=1.0, kernel_width=0.5)})
    resolved.diagnostics.r2 = 0.912345678
    page = to_html(resolved)
    method = page.split("<h2>Method")[1]
    assert "0.9123" in method and "0.912345678" not in method
    assert ">True<" not in method and ">False<" not in method and ">yes<" in method and ">no<" in method
    assert "<td>k</td><td>2</td>" in method and "<td>alpha</td><td>1</td>" in method  # values, not "auto"
    assert "<td>segments</td><td>—</td>" in method  # not applicable


def test_the_reliability_summary_is_shown_everywhere(explanation):
    from ropelime.reliability import assess
    from ropelime_server.results import explanation_text

    explanation.diagnostics.reliability = assess(explanation.diagnostics, explanation.features)
    assert explanation.diagnostics.reliability.verdict == "medium"  # partial, otherwise sound
    console = Console(record=True, width=120)
    print_explanation(explanation, console)
    for shown in (console.export_text(), to_html(explanation), explanation_text(explanation)):
        assert "reliability: medium" in html.unescape(shown) and "partial: 33 of 64" in html.unescape(shown)


def test_the_tool_text_lists_support_and_opposition_once_each(explanation):
    from ropelime_server.results import explanation_text

    mostly_opposing = _with_scores(explanation, [(0.4, 0.1, 0.7), (-2.0, -3.0, -1.0), (-0.3, -0.5, -0.1)])
    unsigned = explanation_text(mostly_opposing.model_copy(update={"config": ExplainConfig(target="kl")}), k=5)
    assert "top 1 the answer rests on" in unsigned and "opposing" not in unsigned  # a divergence has no direction
    mostly_opposing = mostly_opposing.model_copy(update={"config": ExplainConfig(target="nll")})
    text = explanation_text(mostly_opposing, k=5)
    supporting, opposing = text.split("most opposing:")
    assert "-2" not in supporting and "-0.3" not in supporting and "+0.4" in supporting
    assert "top 1 supporting" in supporting
    assert opposing.count("Tolls are") == 1 and "+0.4" not in opposing
    none = _with_scores(explanation, [(-0.4, -0.7, -0.1), (-2.0, -3.0, -1.0), (-0.3, -0.5, -0.1)])
    assert "none supports the response" in explanation_text(none)


def _with_directions(explanation: Explanation, effects: list[tuple[float, str]]) -> Explanation:
    """An unsigned (kl) explanation whose features carry these (likelihood effect, direction) pairs."""
    features = [f.model_copy(update=dict(likelihood_effect=effect, direction=direction))
                for f, (effect, direction) in zip(explanation.features, effects)]
    return explanation.model_copy(update={"features": features, "config": ExplainConfig(target="kl")})


def test_unsigned_scores_show_their_direction_everywhere(explanation):
    """Under kl the answer rests on a feature whatever its direction: the table, the page, the tool text and
    top(opposing) read the direction off the likelihood effect, not off the (unsigned) score."""
    from ropelime_server.results import explanation_text

    resting = _with_scores(explanation, [(2.5, 1.1, 3.9), (0.8, 0.1, 1.5), (0.05, -0.4, 0.5)])
    directed = _with_directions(resting, [(0.31, "supports"), (-0.12, "opposes"), (0.01, "unclear")])
    console = Console(record=True, width=250)
    print_explanation(directed, console)
    terminal = console.export_text()
    rows = {line.split("│")[2].strip()[:5]: line.split("│")[6].strip() for line in terminal.splitlines()
            if line.count("│") > 6 and line.split("│")[1].strip().isdigit()}
    assert rows == {"The <": "supports the answer: +0.31 nats/token", "Tolls": "opposes the answer: -0.12 nats/token",
                    "Local": "unclear: +0.01 nats/token"} and "direction:" in terminal
    assert "score (nats/token)" in terminal
    page = html.unescape(to_html(directed))
    assert "<th>direction</th>" in page and "<td>opposes the answer: -0.12 nats/token</td>" in page
    assert [f.index for f in directed.top(3, "opposing")] == [1]  # the only one whose removal makes it likelier
    text = explanation_text(directed, k=5)
    resting_on, opposing = text.split("most opposing:")
    assert ("supports the answer: +0.31 nats/token 'The <b>bridge</b>" in resting_on
            and "opposes the answer: -0.12 nats/token 'Tolls are" in resting_on)
    assert opposing.count("Tolls are") == 1 and "bridge" not in opposing
    unclear = _with_directions(resting, [(0.31, "supports"), (-0.12, "unclear"), (0.01, "unclear")])
    assert "most opposing" not in explanation_text(unclear, k=5)  # a negative effect within its interval is not listed
    stored_before = resting.model_copy(update={"config": ExplainConfig(target="kl")})  # no likelihood effects
    console = Console(record=True, width=250)
    print_explanation(stored_before, console)
    assert "direction" not in console.export_text() and "most opposing" not in explanation_text(stored_before)


@pytest.mark.parametrize("target, positive, negative", [("nll", "supports", "opposes"),
                                                        ("kl", "answer rests on it", "does not")])
def test_legends_say_what_a_score_means_under_the_target(explanation, target, positive, negative):
    """A signed target's scores support or oppose the answer; a divergence's say how much the answer rests on
    a feature, and every legend (terminal, HTML) says which."""
    shown = explanation.model_copy(update={"config": ExplainConfig(target=target)})
    console = Console(record=True, width=200)
    print_explanation(shown, console)
    terminal = console.export_text()
    assert f"warm: {positive}, cool: {negative}" in terminal and f"rank 1 = highest score ({positive})" in terminal
    page = html.unescape(to_html(shown))
    assert f"{positive}</span>" in page and f"<span>{negative} " in page
