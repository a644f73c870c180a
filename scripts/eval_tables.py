"""Markdown tables and the quality-vs-budget plot from `ropelime eval --json` reports.

    python scripts/eval_tables.py docs/results/mmlu_b64.json ...        # one table per report
    python scripts/eval_tables.py --compact docs/results/refit/*.json  # one row per report and method
    python scripts/eval_tables.py --compact --base BASE.json OTHER.json ...  # plus paired differences
    python scripts/eval_tables.py --plot docs/eval_budget.png docs/results/budget/*.json
    python scripts/eval_tables.py --plot-surrogates docs/eval_surrogates.png docs/results/quality/mmlu_*_base.json
    python scripts/eval_tables.py --plot-surrogates PNG --timings TIMINGS.json REPORTS...  # seconds measured apart
    python scripts/eval_tables.py --merge ALL.json FIRST.json REST.json   # one report of their items
    python scripts/eval_tables.py --pooled BASE1.json VARIANT1.json BASE2.json VARIANT2.json  # Δ over all pairs
    python scripts/eval_tables.py --pooled --metric auroc --metric target_lds BASE1.json VARIANT1.json ...
    python scripts/eval_tables.py --versus OURS1.json BASELINES1.json ...  # a method against each baseline, paired
    python scripts/eval_tables.py --gold-gap supports --gold-gap opposes REPORT.json  # gold share − others'
    python scripts/eval_tables.py --position-gain REPORT.json  # AUROC with the scores adjusted for position
    python scripts/eval_tables.py --ensemble A.json B.json  # mean of the reports' z-scored scores, per item
    python scripts/eval_tables.py --fill docs/EVALUATION.md   # regenerate every marked table in place

In `--fill`, a table is the text between `<!-- eval_tables: ARGS -->` and `<!-- end -->`, replaced by
this script's output for ARGS (report paths, globs allowed, relative to the repository root).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import math
import re
import shlex
from pathlib import Path

from ropelime.research.evaluate import mean_ci

COLUMNS = [("auroc", "AUROC", 3), ("ap", "AP", 3), ("p_at_k", "P@k", 3), ("lds", "LDS", 3),
           ("topk_minus_random", "top-k − random-k drop", 3), ("target_lds", "LDS on its target", 3),
           ("target_topk_minus_random", "top-k − random-k on its target", 3),
           ("significant_gold", "gold with interval excluding 0", 2), ("significant_other", "others excluding 0", 2),
           ("supports_gold", "gold: supports", 2), ("opposes_gold", "gold: opposes", 2),
           ("supports_other", "others: supports", 2), ("opposes_other", "others: opposes", 2),
           ("closed_calls", "closed calls", 1),
           ("surrogate_passes", "surrogate passes", 1), ("seconds", "s / item", 1)]
OPTIONAL_COLUMNS = {"target_lds", "target_topk_minus_random", "significant_gold", "significant_other", "supports_gold",
                    "opposes_gold", "supports_other", "opposes_other"}
"""Columns shown only when a report has them (reports before they were measured lack them)."""

NO_VALUES = {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}


def columns(reports: list[dict]) -> list[tuple[str, str, int]]:
    """The COLUMNS these reports fill (the optional ones only if some method of some report has values)."""
    def filled(key: str) -> bool:
        return any(summary.get(key, NO_VALUES)["n"] for r in reports for summary in r["summary"].values())

    return [column for column in COLUMNS if column[0] not in OPTIONAL_COLUMNS or filled(column[0])]


def cell(stat: dict, digits: int) -> str:
    if not stat["n"] or math.isnan(stat["mean"]):
        return "–"
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def table(report: dict, path: str) -> str:
    shown = columns([report])
    lines = [f"`{path}` — {report['task']}, {report['items']} items{'' if report.get('complete') else ' (partial)'}, "
             f"budget {report['budget']}, fixed output: {report['fixed_output']}, surrogate {report['surrogate']}"
             f" ({report.get('precision', 'float32')})",
             "",
             "| method | n | " + " | ".join(title for _, title, _ in shown) + " |",
             "|---" * (len(shown) + 2) + "|"]
    for method, summary in report["summary"].items():
        lines.append(f"| {method} | {summary['auroc']['n']} | "
                     + " | ".join(cell(summary.get(key, NO_VALUES), digits) for key, _, digits in shown) + " |")
    return "\n".join(lines)


TRANSFER_COLUMNS = [("ap", "AP vs stand-in top 2", 3), ("auroc", "AUROC vs stand-in top 2", 3),
                    ("spearman", "Spearman vs stand-in LOO", 3), ("gold_auroc", "AUROC vs gold", 3),
                    ("top1_changed", "top-1 deletion changes answer", 2),
                    ("top3_changed", "top-3 deletion changes answer", 2),
                    ("top3_changed_much", "top-3 deletion changes answer much (F1 < 0.5)", 2),
                    ("closed_calls", "closed calls", 1),
                    ("seconds", "s / item", 1)]


def transfer_table(report: dict, path: str) -> str:
    """A transfer report (`ropelime eval --transfer`): recovery of the stand-in's own LOO, gold agreement,
    answer changes against random deletions, precision of `confirmed`, and paired differences."""
    first = next(iter(report["summary"].values()))
    lines = [f"`{path}` — {report['items']} items{'' if report.get('complete') else ' (partial)'}, budget "
             f"{report['budget']}, fixed output: {report['fixed_output']}, surrogate {report['surrogate']}, "
             f"stand-in {report['standin']}",
             "",
             "| method | n | " + " | ".join(title for _, title, _ in TRANSFER_COLUMNS)
             + " | top-3 / random-3 change (much) | confirmed precision (pooled) |",
             "|---" * (len(TRANSFER_COLUMNS) + 4) + "|"]
    for method, s in report["summary"].items():
        pooled = s["confirmed_pooled"]
        lines.append(f"| {method} | {s['ap']['n']} | " + " | ".join(cell(s[key], d) for key, _, d in TRANSFER_COLUMNS)
                     + f" | {s['top3_vs_random3']:.2f} ({s.get('top3_vs_random3_much', float('nan')):.2f}) | "
                     f"{pooled['precision']:.2f} of {pooled['confirmed']} |")
    lines += ["", f"Random deletions (shared by the methods): 1 feature changes the answer "
              f"{cell(first['random1_changed'], 2)}, 3 features {cell(first['random3_changed'], 2)} (much: "
              f"{cell(first.get('random3_changed_much', {'n': 0}), 2)}). "
              f"The stand-in's own LOO against gold: AUROC {cell(first['standin_gold_auroc'], 3)}, "
              f"AP {cell(first['standin_gold_ap'], 3)}."]
    reference = next(iter(report["summary"]))
    lines += ["", "Paired differences, mean [95% bootstrap interval]:",
              paired(report, reference, ("ap", "auroc", "spearman", "gold_auroc", "top3_changed"))]
    return "\n".join(lines)


def paired(report: dict, reference: str = "ropelime",
           metrics: tuple[str, ...] = ("auroc", "ap", "lds", "topk_minus_random")) -> str:
    """Per baseline: mean paired difference (reference − baseline) over the items both finished."""
    by = {(r["method"], r["id"]): r for r in report["records"] if "error" not in r}
    lines = []
    for method in report["summary"]:
        if method == reference:
            continue
        parts = []
        for metric in metrics:
            diffs = [by[(reference, i)][metric] - r[metric] for (m, i), r in by.items()
                     if m == method and (reference, i) in by and metric in r and metric in by[(reference, i)]]
            stat = mean_ci(diffs)
            parts.append(f"{metric} {cell(stat, 3)} (n={stat['n']})")
        lines.append(f"- {reference} − {method}: " + "; ".join(parts))
    return "\n".join(lines)


def per_item(report: dict, method: str, metric: str) -> dict[str, float]:
    """{item id: metric} of one method's records that have the metric."""
    return {x["id"]: x[metric] for x in report["records"] if x["method"] == method and metric in x}


def paired_difference(report: dict, base: dict, method: str, metric: str) -> dict:
    """Mean [interval] of report − base for `method` over the items both have the metric for."""
    ours, theirs = per_item(report, method, metric), per_item(base, method, metric)
    return mean_ci([ours[i] - theirs[i] for i in ours if i in theirs])


def pooled(pairs: list[tuple[dict, dict]], metric: str = "auroc") -> str:
    """Per method: the paired difference variant − base over the items of every (base, variant) pair together
    (e.g. one pair per surrogate: each item counts once per surrogate)."""
    lines = []
    for method in pairs[0][1]["summary"]:
        diffs = []
        for base, variant in pairs:
            ours, theirs = per_item(variant, method, metric), per_item(base, method, metric)
            diffs += [ours[i] - theirs[i] for i in ours if i in theirs]
        stat = mean_ci(diffs)
        lines.append(f"- {method}: Δ {metric} {cell(stat, 3)} (n={stat['n']})")
    return "\n".join(lines)


def method_label(report: dict, method: str) -> str:
    """`method (sampler, target)` as the report ran it ("default" where it left the code's default)."""
    settings = report["methods"][method]
    return f"{method} ({settings.get('sampler') or 'default'}, {settings.get('target') or 'default'})"


def versus(pairs: list[tuple[dict, dict]], paths: list[str], metric: str = "auroc") -> str:
    """A table: for each pair (OURS, BASELINES), the first method of OURS against every method of BASELINES on
    the items both have: each one's mean metric there and the paired difference (e.g. the default method's
    report against a report of the baselines, one pair per surrogate and task)."""
    lines = [f"| report | method | baseline | n | method's {metric} | baseline's | method − baseline |",
             "|---|---|---|---|---|---|---|"]
    for (ours_report, baselines), path in zip(pairs, paths[::2]):
        method = next(iter(ours_report["methods"]))
        ours = per_item(ours_report, method, metric)
        for baseline in baselines["methods"]:
            theirs = per_item(baselines, baseline, metric)
            common = [i for i in ours if i in theirs]
            lines.append(f"| {Path(path).stem} | {method_label(ours_report, method)} | {method_label(baselines, baseline)} "
                         f"| {len(common)} | {cell(mean_ci(ours[i] for i in common), 3)} "
                         f"| {cell(mean_ci(theirs[i] for i in common), 3)} "
                         f"| {cell(mean_ci(ours[i] - theirs[i] for i in common), 3)} |")
    return "\n".join(lines)


def gold_gap(reports: list[dict], paths: list[str], fields: list[str]) -> str:
    """Per report, method and field (e.g. `supports`): the per-item share among gold features minus the share
    among the others (`FIELD_gold − FIELD_other`), mean [interval] over the items."""
    lines = []
    for report, path in zip(reports, paths):
        for method in report["summary"]:
            for field in fields:
                stat = mean_ci(r[f"{field}_gold"] - r[f"{field}_other"] for r in report["records"]
                               if r["method"] == method and f"{field}_gold" in r)
                lines.append(f"- {Path(path).stem} {method}: {field}, gold − others {cell(stat, 3)} (n={stat['n']})")
    return "\n".join(lines)


def position_gain(reports: list[dict], paths: list[str]) -> str:
    """Per report and method: AUROC as recorded, with the scores adjusted for position (`ropelime.position`, as
    `adjust_position` does), and the paired difference adjusted − recorded over the items (records that keep
    their scores; the report's own method must not have adjusted them)."""
    import numpy as np

    from ropelime.position import position_factors
    from ropelime.research.evaluate import agreement

    lines = []
    for report, path in zip(reports, paths):
        for method in report["summary"]:
            if report["methods"].get(method, {}).get("adjust_position"):
                raise SystemExit(f"{path}: {method} already adjusted its scores for position; use a report without.")
            recorded, adjusted = [], []
            for r in report["records"]:
                if r["method"] != method or "scores" not in r or not math.isfinite(r.get("auroc", math.nan)):
                    continue
                scores = np.array(r["scores"])
                gold = np.isin(np.arange(len(scores)), r["gold_features"])
                factors = position_factors(scores)
                recorded.append(r["auroc"])
                adjusted.append(agreement(scores * factors[0], gold)["auroc"] if factors else r["auroc"])
            if recorded:
                diff = mean_ci(a - b for a, b in zip(adjusted, recorded))
                lines.append(f"- {Path(path).stem} {method}: AUROC {cell(mean_ci(recorded), 3)} as scored, "
                             f"{cell(mean_ci(adjusted), 3)} adjusted for position; Δ {cell(diff, 3)} (n={diff['n']})")
    return "\n".join(lines)


def ensemble(reports: list[dict], paths: list[str]) -> str:
    """Per method: AUROC of the mean of each report's per-item z-scored scores (an ensemble of the reports'
    surrogates, equal weights), paired with each report alone, over the items every report has with the same
    features."""
    import numpy as np

    from ropelime.research.evaluate import agreement

    lines = []
    for method in reports[0]["summary"]:
        by = [{r["id"]: r for r in report["records"] if r["method"] == method and "scores" in r
               and math.isfinite(r.get("auroc", math.nan))} for report in reports]
        items = [i for i in by[0] if all(i in b and b[i]["d"] == by[0][i]["d"] for b in by)]
        if not items:
            continue
        combined = []
        for i in items:
            z = [(s - s.mean()) / (s.std() or 1.0) for s in (np.array(b[i]["scores"]) for b in by)]
            gold = np.isin(np.arange(by[0][i]["d"]), by[0][i]["gold_features"])
            combined.append(agreement(np.mean(z, axis=0), gold)["auroc"])
        lines.append(f"- {method}: ensemble AUROC {cell(mean_ci(combined), 3)} (n={len(items)})")
        for b, path in zip(by, paths):
            diff = mean_ci(c - b[i]["auroc"] for c, i in zip(combined, items))
            alone = mean_ci(b[i]["auroc"] for i in items)
            lines.append(f"  - Δ over {Path(path).stem} ({cell(alone, 3)}): {cell(diff, 3)}")
    return "\n".join(lines)


def compact(reports: list[dict], paths: list[str], base: dict | None = None) -> str:
    """One row per report and method, labelled by the file name: for sweeps of one option. With
    `base`, three more columns: the paired AUROC, LDS and top-k drop differences against the base report."""
    shown = columns(reports)
    deltas = {"auroc": "Δ AUROC vs base", "lds": "Δ LDS vs base", "topk_minus_random": "Δ top-k drop vs base",
              "target_lds": "Δ LDS on its target vs base",
              "target_topk_minus_random": "Δ top-k drop on its target vs base"}
    deltas = {key: title for key, title in deltas.items() if any(key == k for k, _, _ in shown)} if base else {}
    lines = ["| variant | method | n | " + " | ".join([title for _, title, _ in shown] + list(deltas.values())) + " |",
             "|---" * (len(shown) + 3 + len(deltas)) + "|"]
    for report, path in zip(reports, paths):
        for method, summary in report["summary"].items():
            cells = [cell(summary.get(key, NO_VALUES), digits) for key, _, digits in shown]
            if base:
                cells += [cell(paired_difference(report, base, method, m), 3) for m in deltas]
            lines.append(f"| {Path(path).stem} | {method} | {summary['auroc']['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(reports: list[dict], out: Path, metrics: tuple[str, ...] = ("auroc", "lds")) -> None:
    """Mean of each metric with its interval against the budget, one panel per metric, one line per method/sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[float, dict]] = {}
    for report in reports:
        mean_d = sum(r["d"] for r in report["records"] if "d" in r) / max(1, sum("d" in r for r in report["records"]))
        for method, summary in report["summary"].items():
            config = report["methods"][method]
            sampler = config["sampler"] if isinstance(config, dict) else "bernoulli"
            label = f"{method} ({sampler})" if method == "ropelime" else method
            x = mean_d if report["budget"] == "d" or sampler == "loo" else float(report["budget"])
            series.setdefault(label, {})[round(x, 1)] = summary  # loo (budget d) appears once
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    for ax, metric in zip(axes, metrics):
        for label, by_budget in sorted(series.items()):
            points = sorted(by_budget.items())
            mean = [p[1][metric]["mean"] for p in points]
            ax.errorbar([p[0] for p in points], mean,
                        yerr=[[m - p[1][metric]["low"] for m, p in zip(mean, points)],
                              [p[1][metric]["high"] - m for m, p in zip(mean, points)]],
                        marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (perturbed prompts)")
        ax.set_ylabel(metric.upper())
        if metric == "auroc":
            ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=8)
    n = "/".join(map(str, sorted({len({rec["id"] for rec in r["records"]}) for r in reports})))
    fig.suptitle(f"{reports[0]['task']}, {n} items: agreement with gold (AUROC) and faithfulness (LDS) vs budget")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_surrogates(reports: list[dict], out: Path, timings: dict | None = None) -> None:
    """AUROC (mean and interval) of each method against the surrogate's size and against seconds per
    explanation of the report's task: from `timings` (`benchmarks/surrogates.py --json`: one machine, fresh
    cache) when given, else the reports' own mean for the default method (which mixes machines and caches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ropelime import catalogue

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    measured = {t["surrogate"]: t[reports[0]["task"]]["seconds_mean"] for t in (timings or {}).get("results", [])}

    def seconds(report: dict) -> float:
        return measured[report["surrogate"]] if timings else report["summary"]["ropelime"]["seconds"]["mean"]

    methods = sorted({m for r in reports for m in r["summary"]})
    for method in methods:
        points = sorted((catalogue.CATALOGUE[r["surrogate"]].parameters_b, seconds(r),
                         r["summary"][method]["auroc"]) for r in reports if method in r["summary"])
        for ax, x in zip(axes, ([p[0] for p in points], [p[1] for p in points])):
            mean = [p[2]["mean"] for p in points]
            ax.errorbar(x, mean, yerr=[[m - p[2]["low"] for m, p in zip(mean, points)],
                                       [p[2]["high"] - m for m, p in zip(mean, points)]],
                        marker="o", capsize=3, label=method)
    axes[0].set_xlabel("surrogate parameters (billions)")
    axes[1].set_xlabel("seconds per explanation (default method, budget 64" + (", timed apart)" if timings else ")"),
                       fontsize=9)
    for ax in axes:
        ax.set_ylabel("AUROC against gold")
        ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=8)
    n = "/".join(map(str, sorted({len({rec["id"] for rec in r["records"]}) for r in reports})))
    fig.suptitle(f"{reports[0]['task']}, {n} items: agreement with gold by surrogate")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


MARKED = re.compile(r"(<!-- eval_tables: (.*?) -->\n)(.*?)(<!-- end -->)", re.DOTALL)


def fill(document: Path) -> None:
    """Regenerate every marked table of `document` from the reports its marker names."""
    def regenerate(match: re.Match) -> str:
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output):
                main([path for word in shlex.split(match.group(2)) for path in (sorted(glob.glob(word)) or [word])])
        except FileNotFoundError as missing:
            output = io.StringIO(f"_No report yet: `{missing.filename}`._")
        return f"{match.group(1)}{output.getvalue().rstrip()}\n{match.group(4)}"

    document.write_text(MARKED.sub(regenerate, document.read_text(encoding="utf-8")), encoding="utf-8")


MERGED_KEYS = ("task", "layout", "answer_part", "fixed_output", "surrogate", "budget", "faithfulness")
"""What the reports joined by --merge must share (precision may differ: each part's is listed; the methods
kept are those every part ran)."""


def merge(reports: list[dict], paths: list[str]) -> dict:
    """One report of the items of `reports` (e.g. items 1–40 and 41–60), each item once, summary recomputed."""
    from ropelime.research.evaluate import summarise

    first = reports[0]
    for report, path in zip(reports[1:], paths[1:]):
        differ = [key for key in MERGED_KEYS if report.get(key) != first.get(key)]
        if differ:
            raise SystemExit(f"{path} differs from {paths[0]} in {', '.join(differ)}: not merged")
    methods = {m: about for m, about in first["methods"].items() if all(m in r["methods"] for r in reports)}
    records, seen = [], set()
    for report in reports:
        ids = {r["id"] for r in report["records"]} - seen
        records += [r for r in report["records"] if r["id"] in ids and r["method"] in methods]
        seen |= ids
    precisions = sorted({r["precision"] for r in reports})
    return {**{key: first.get(key) for key in MERGED_KEYS}, "methods": methods,
            "precision": precisions[0] if len(precisions) == 1 else " + ".join(precisions),
            "parts": [{"report": path, "command": r.get("command"), "precision": r["precision"], "items": r["items"]}
                      for r, path in zip(reports, paths)],
            "scores": first.get("scores"), "items": len(seen), "complete": all(r.get("complete") for r in reports),
            "errors": sum("error" in r for r in records), "summary": summarise(records, list(methods), seed=0),
            "records": records}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="*")
    parser.add_argument("--fill", metavar="MARKDOWN", help="regenerate the marked tables of this document")
    parser.add_argument("--plot", metavar="PNG", help="plot AUROC and LDS against budget from these reports")
    parser.add_argument("--plot-surrogates", metavar="PNG",
                        help="plot AUROC against surrogate size and seconds, one report per surrogate")
    parser.add_argument("--timings", metavar="JSON", help="--plot-surrogates: seconds per explanation from "
                        "`benchmarks/surrogates.py --json` instead of the reports' own")
    parser.add_argument("--compact", action="store_true", help="one table, one row per report and method")
    parser.add_argument("--base", metavar="REPORT", help="--compact: add paired differences against this report")
    parser.add_argument("--merge", metavar="OUT", help="join these reports' items into one report (same settings)")
    parser.add_argument("--pooled", action="store_true", help="the reports are pairs BASE VARIANT ...: paired AUROC "
                        "differences per method over the items of all pairs together")
    parser.add_argument("--versus", action="store_true", help="the reports are pairs OURS BASELINES ...: OURS' "
                        "first method against each of BASELINES' methods, paired on their common items")
    parser.add_argument("--metric", action="append", metavar="FIELD",
                        help="--pooled, --versus: a record field to difference (repeat for more; default auroc)")
    parser.add_argument("--gold-gap", action="append", metavar="FIELD", help="per report and method: FIELD_gold − "
                        "FIELD_other per item, e.g. supports or significant (repeat for more)")
    parser.add_argument("--position-gain", action="store_true", help="per report and method: AUROC with the "
                        "recorded scores adjusted for position (as adjust_position does), paired with as recorded")
    parser.add_argument("--ensemble", action="store_true", help="per method: AUROC of the mean of the reports' "
                        "per-item z-scored scores (same items, one report per surrogate), paired with each alone")
    args = parser.parse_args(argv)
    if args.fill:
        fill(Path(args.fill))
        print(f"filled {args.fill}")
        return
    reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.reports]
    if args.merge:
        Path(args.merge).write_text(json.dumps(merge(reports, args.reports), indent=1), encoding="utf-8")
        print(f"wrote {args.merge}")
        return
    if args.plot:
        plot(reports, Path(args.plot))
        print(f"wrote {args.plot}")
        return
    if args.plot_surrogates:
        timings = json.loads(Path(args.timings).read_text(encoding="utf-8")) if args.timings else None
        plot_surrogates(reports, Path(args.plot_surrogates), timings)
        print(f"wrote {args.plot_surrogates}")
        return
    if args.gold_gap:
        print(gold_gap(reports, args.reports, args.gold_gap))
        return
    if args.ensemble:
        print(ensemble(reports, args.reports))
        return
    if args.position_gain:
        print(position_gain(reports, args.reports))
        return
    if args.versus:
        print("\n\n".join(versus(list(zip(reports[::2], reports[1::2])), args.reports, metric)
                          for metric in args.metric or ["auroc"]))
        return
    if args.pooled:
        print("\n".join(pooled(list(zip(reports[::2], reports[1::2])), metric) for metric in args.metric or ["auroc"]))
        return
    if args.compact:
        base = json.loads(Path(args.base).read_text(encoding="utf-8")) if args.base else None
        print(compact(reports, args.reports, base))
        return
    for report, path in zip(reports, args.reports):
        if report.get("mode") == "transfer":
            print(transfer_table(report, path), end="\n\n")
            continue
        print(table(report, path), end="\n\n")
        if "ropelime" in report["summary"] and len(report["summary"]) > 1:
            print("Paired differences, mean [95% bootstrap interval]:\n" + paired(report), end="\n\n")


if __name__ == "__main__":
    main()
