"""Markdown and CSV tables rendered from ``results.json`` (no Ray, no torch)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmm.report.results import load_results, results_path

REPORT_FILE = "report.md"
CSV_FILE = "results.csv"
HEADLINE = ("recall@20", "ndcg@20")
DETAIL = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def features_label(run: dict[str, Any]) -> str:
    return "+".join(run.get("features") or []) or "ID only"


def _fmt(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:.4f}"
    return f"**{text}**" if bold else text


def runs_table(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = DETAIL) -> list[str]:
    """One row per run: identity, best epoch, test metrics (best of each column in bold), training time."""
    best = {m: max((r["test"].get(m, float("-inf")) for r in runs), default=None) for m in metrics}
    lines = ["| run | model | features | fusion | best epoch | " + " | ".join(f"test {m}" for m in metrics)
             + " | train s |", "|" + "---|" * (6 + len(metrics))]
    for run in sorted(runs, key=lambda r: -r["test"].get("recall@20", 0.0)):
        cells = [_fmt(run["test"].get(m), run["test"].get(m) == best[m]) for m in metrics]
        lines.append(f"| {run['run_name']} | {run['model']} | {features_label(run)} | {run.get('fusion') or '–'} | "
                     f"{run.get('best_epoch', '–')} | " + " | ".join(cells)
                     + f" | {run.get('train_seconds', 0):.1f} |")
    return lines


def model_by_features_table(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = HEADLINE) -> list[str]:
    """Paper-style table: rows are models, columns are representations, cells ``R@20 / N@20`` of the best run
    of that pair (by test recall@20); the best cell of each row is bold."""
    models = sorted({r["model"] for r in runs})
    columns = sorted({features_label(r) for r in runs}, key=lambda c: (c != "ID only", c))
    cell: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        key = (run["model"], features_label(run))
        if key not in cell or run["test"].get(metrics[0], 0) > cell[key]["test"].get(metrics[0], 0):
            cell[key] = run
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for model in models:
        row = [cell.get((model, c)) for c in columns]
        top = max((r["test"].get(metrics[0], 0) for r in row if r), default=None)
        texts = []
        for run in row:
            if run is None:
                texts.append("–")
                continue
            text = " / ".join(f"{run['test'].get(m, 0):.4f}" for m in metrics)
            texts.append(f"**{text}**" if run["test"].get(metrics[0], 0) == top else text)
        lines.append(f"| {model} | " + " | ".join(texts) + " |")
    return lines


def write_csv(runs: Sequence[dict[str, Any]], path: Path) -> Path:
    metric_names = sorted({m for r in runs for m in r["test"]})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run_name", "stage", "model", "features", "fusion", "best_epoch", "train_seconds",
                         *(f"valid_{m}" for m in metric_names), *(f"test_{m}" for m in metric_names)])
        for run in runs:
            writer.writerow([run["run_name"], run.get("stage", ""), run["model"], features_label(run),
                             run.get("fusion") or "", run.get("best_epoch", ""), run.get("train_seconds", ""),
                             *(run["valid"].get(m, "") for m in metric_names),
                             *(run["test"].get(m, "") for m in metric_names)])
    return path


def write_report(out_dir: str | Path) -> Path:
    """Render ``report.md`` and ``results.csv`` next to ``results.json``; returns the report's path."""
    out = Path(out_dir)
    runs = load_results(out)
    if not runs:
        raise FileNotFoundError(f"no runs in {results_path(out)}; run `rmm train CONFIG` first")
    dataset = _dataset_line(out)
    lines = [
        "# rmm report", "",
        f"Output directory: `{out.resolve()}`  ",
        f"Dataset: {dataset}  ",
        f"Rendered: {time.strftime('%Y-%m-%d %H:%M:%S')} from `{results_path(out).name}` ({len(runs)} runs)", "",
        "## Test Recall@20 / NDCG@20 by model and representation", "",
        "Best run of each (model, representation) by test Recall@20; best cell of each row in bold.", "",
        *model_by_features_table(runs), "",
        "## All runs", "",
        "Test metrics of the epoch with the best validation metric (train and valid items masked).", "",
        *runs_table(runs), "",
    ]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines))
    write_csv(runs, out / CSV_FILE)
    return path


def _dataset_line(out: Path) -> str:
    infos = sorted((out / "data").glob("*/dataset.json"))
    if not infos:
        return "unknown"
    info = json.loads(infos[0].read_text())
    counts = info.get("counts", {})
    return (f"{info.get('name', infos[0].parent.name)} ({counts.get('users', '?')} users, "
            f"{counts.get('items', '?')} items, {counts.get('interactions', '?')} interactions, "
            f"split {info.get('split', {}).get('strategy', '?')})")
