"""PNG plots rendered from ``results.json`` and the run records (no Ray, no torch).

Figures are built on :class:`matplotlib.figure.Figure` and written by its Agg canvas, without pyplot: nothing
global changes (no backend switch, no figure registry), so rendering is safe in any process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rmm.runs import RunRecord, load_run_record

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
BARS_FILE = "metric_by_representation.png"
CURVES_FILE = "validation_curves.png"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def metric_by_representation(cells: Mapping[tuple[str, str], RunRecord], models: Sequence[str],
                             columns: Sequence[str], metrics: Sequence[str], path: Path) -> Path:
    """Grouped bars: one panel per metric, one group per model, one bar per representation (test metric of
    the (model, representation) cell's run; of a seed group, the mean over its seeds with the standard deviation
    as an error bar); each group centres the bars it has.

    Args:
        cells: ``(model, representation) -> run record``, the runs (or seed groups, with ``test_std``) of the
            paper-style table.
        models: the groups, in order.
        columns: the representations, in order (one colour each).
        metrics: test metrics, one panel each.
        path: the PNG to write.
    """
    fig_width = min(16.0, max(5.0, 1.6 * len(models) * max(1, len(columns)) / 2 + 2))  # a page, not a banner
    fig = Figure(figsize=(fig_width, 3.6 * len(metrics)), layout="constrained")
    width = 0.8 / max(1, max((sum((m, c) in cells for c in columns) for m in models), default=1))
    for row, metric in enumerate(metrics):
        ax = fig.add_subplot(len(metrics), 1, row + 1)
        xs: dict[str, list[float]] = {c: [] for c in columns}
        heights: dict[str, list[float]] = {c: [] for c in columns}
        errors: dict[str, list[float]] = {c: [] for c in columns}
        for i, model in enumerate(models):
            present = [c for c in columns if (model, c) in cells and metric in cells[(model, c)].test]
            for j, column in enumerate(present):
                xs[column].append(i + width * (j + 0.5 - len(present) / 2))
                heights[column].append(cells[(model, column)].test[metric])
                errors[column].append(cells[(model, column)].test_std.get(metric, 0.0))
        for column in columns:
            bars = ax.bar(xs[column], heights[column], width, label=column,
                          yerr=errors[column] if any(errors[column]) else None, capsize=2)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel(f"test {metric}")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
        ax.grid(axis="y", alpha=0.3)
        if row == 0:
            ax.set_title("Test metric by representation, per model")
            ax.legend(fontsize=8, title="representation", title_fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def curve_series(out_dir: str | Path, runs: Sequence[RunRecord], metric: str) -> dict[str, list[
        tuple[str, list[int], list[float]]]]:
    """``model -> [(label, epochs, values)]``: the validation curve of every train run and of every trial of
    every sweep (read from the trials' ``run.json``); runs whose history lacks ``valid/<metric>`` are skipped.
    """
    key = f"valid/{metric}"
    series: dict[str, list[tuple[str, list[int], list[float]]]] = {}

    def add(model: str, label: str, history: Sequence[Mapping[str, float]]) -> None:
        points = [(int(h["epoch"]), float(h[key])) for h in history if key in h]
        if points:
            series.setdefault(model, []).append((label, [p[0] for p in points], [p[1] for p in points]))

    for run in runs:
        if not run.trials:
            add(run.model, run.run_name, run.history)
            continue
        for trial in run.trials:
            try:
                record = load_run_record(out_dir, trial["run_name"])
            except FileNotFoundError as err:
                log.warning("no validation curve for trial %s: %s", trial["run_name"], err)
                continue
            params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in (trial.get("params") or {}).items())
            trial_id = trial["run_name"].rsplit("-", 1)[-1]
            add(run.model, f"trial {trial_id} ({params})" if params else trial["run_name"], record.history)
    return series


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return str(value)


def validation_curves(series: Mapping[str, Sequence[tuple[str, Sequence[int], Sequence[float]]]], metric: str,
                      path: Path) -> Path:
    """One panel per model, one line per run or trial: ``valid/<metric>`` against the epoch."""
    models = sorted(series)
    cols = min(2, max(1, len(models)))
    rows = -(-max(1, len(models)) // cols)
    # Constrained layout keeps a panel's title clear of the x-axis label of the panel above it.
    fig = Figure(figsize=(6.2 * cols, 3.6 * rows), layout="constrained")
    for index, model in enumerate(models):
        ax = fig.add_subplot(rows, cols, index + 1)
        for label, epochs, values in series[model]:
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"valid {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not models:
        fig.add_subplot(1, 1, 1).text(0.5, 0.5, f"no run recorded valid/{metric}", ha="center", va="center")
    return _save(fig, path)
