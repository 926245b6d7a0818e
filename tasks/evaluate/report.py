"""Something to look at: the eval report in Markdown (metrics, intervals, side-by-side examples) and a chart.

The chart (one bar group per metric in [0, 1], one bar per model; :func:`tasks.charts.metric_bars`) needs
matplotlib; without it the report says so and the run goes on. Prompts and answers in the report are the already-scrubbed test rows.
"""

from pathlib import Path

import pandas as pd

SHOWN_ORDER = ("base", "base_fewshot", "candidate", "champion")


def _cell(text: str, limit: int = 300) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def write_chart(path: Path, metrics: dict[str, dict[str, float]]) -> Path | None:
    """The per-metric bar chart (:func:`tasks.charts.metric_bars`); None without matplotlib or metrics."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from tasks.charts import metric_bars

    return metric_bars(metrics, path) if metrics else None


def _metrics_table(metrics: dict[str, dict[str, float]]) -> list[str]:
    models = list(metrics)
    keys = sorted({k for m in metrics.values() for k in m})
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for k in keys:
        vals = [metrics[m].get(k) for m in models]
        lines.append(f"| {k} | " + " | ".join("" if v is None else f"{v:.4f}" for v in vals) + " |")
    return lines


def _examples(items: pd.DataFrame, preds: dict[str, list[str]], n: int) -> list[str]:
    shown = [m for m in SHOWN_ORDER if m in preds] + [m for m in preds if m not in SHOWN_ORDER]
    lines = ["| prompt | reference | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for i in range(min(n, len(items))):
        prompt = items["prompt_msgs"].iloc[i][-1]["content"]
        ref = items["refs"].iloc[i][0]
        lines.append(f"| {_cell(prompt)} | {_cell(ref)} | " + " | ".join(_cell(preds[m][i]) for m in shown) + " |")
    return lines


def write_report(out: Path, report: dict, items: pd.DataFrame, preds: dict[str, list[str]], n_examples: int):
    """Write ``eval_report.md`` and ``eval_metrics.png`` into ``out``; returns (markdown path, chart path)."""
    chart = write_chart(out / "eval_metrics.png", report["metrics"])
    lines = [f"# Evaluation ({report['task']}, {report['rows']} test prompts)", ""]
    lines += _metrics_table(report["metrics"])
    lines += ["", f"![metrics]({chart.name})" if chart else "(no chart: matplotlib is not installed)", ""]
    if report.get("intervals"):
        lines += [f"## Candidate minus each model ({report['confidence']:.0%} paired bootstrap)", ""]
        lines += ["| vs | metric | diff | low | high |", "|---|---|---:|---:|---:|"]
        for other, per in report["intervals"].items():
            lines += [
                f"| {other} | {k} | {v['diff']:+.4f} | {v['low']:+.4f} | {v['high']:+.4f} |" for k, v in per.items()
            ]
        lines.append("")
    if report.get("forgetting") is not None:
        lines += [
            f"Forgetting (answer loss on general instructions, candidate − base): {report['forgetting']:+.4f}",
            "",
        ]
    if report.get("judge"):
        j = report["judge"]
        lines += [f"Judge vs {j.get('against')}: " + ", ".join(f"{k}={v}" for k, v in j.items() if k != "against"), ""]
    if report.get("skipped"):
        lines += [f"- skipped {k}: {v}" for k, v in report["skipped"].items()] + [""]
    if n_examples and preds:
        lines += ["## Side by side", ""] + _examples(items, preds, n_examples)
    md = out / "eval_report.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md, chart
