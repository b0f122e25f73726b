"""Markdown and CSV tables (and, through :mod:`rmm.report.plots`, PNG plots) rendered from ``results.json``
(no Ray, no torch)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rmm.config import DATA_DIR
from rmm.data.preprocess import COLD_INFO
from rmm.data.schema import INFO_FILE
from rmm.errors import DataError, NotFoundError
from rmm.report.results import best_by_validation, by_seed_group, validation_metric
from rmm.report.significance import ALPHA, BETTER_MARK, WORSE_MARK, PairedTest, against_baseline, best_id_only
from rmm.runs import RunRecord, load_results, results_path
from rmm.train.identity import changed_inputs

REPORT_FILE = "report.md"
CSV_FILE = "results.csv"
HEADLINE = ("recall@20", "ndcg@20")
DETAIL = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
ID_ONLY = "ID only"
#: A cold-start cell of an ID-only model, which cannot score an item it never trained.
NOT_SCORED = "n/a (ID only)"


def report_metrics(runs: Sequence[RunRecord]) -> tuple[tuple[str, str], tuple[str, ...]]:
    """The headline pair (recall@K, ndcg@K) and the detail columns for these runs: :data:`HEADLINE` and
    :data:`DETAIL` where every run has them, else the cut-offs ``train.eval.topk`` gave every run (largest K heads)."""
    common = set.intersection(*(set(r.test) for r in runs)) if runs else set(DETAIL)
    ks = sorted({int(m.split("@")[1]) for m in common
                 if m.startswith("recall@") and m.replace("recall", "ndcg") in common})
    if set(HEADLINE) <= common or not ks:
        return HEADLINE, tuple(m for m in DETAIL if m in common) or HEADLINE
    detail = tuple(f"{name}@{k}" for name in ("recall", "ndcg") for k in ks[-2:])
    return (f"recall@{ks[-1]}", f"ndcg@{ks[-1]}"), detail


def features_label(run: RunRecord) -> str:
    return "+".join(run.features) or ID_ONLY


def representation_label(run: RunRecord) -> str:
    """A column of the paper-style table: the features, with the fusion where several are fused
    (``image_stats+text_minilm (concat)``), so fusion variants of one feature set stay apart."""
    label = features_label(run)
    return f"{label} ({run.fusion})" if run.fusion and len(run.features) > 1 else label


def _fmt(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:.4f}"
    return f"**{text}**" if bold else text


def runs_table(runs: Sequence[RunRecord], metrics: Sequence[str] = DETAIL) -> list[str]:
    """One row per run, by test ``metrics[0]`` (a presentation order; nothing is chosen here): identity, best
    epoch, test metrics (best of each column in bold), training time."""
    best = {m: max((r.test.get(m, float("-inf")) for r in runs), default=None) for m in metrics}
    lines = ["| run | model | features | fusion | best epoch | " + " | ".join(f"test {m}" for m in metrics)
             + " | train s |", "|" + "---|" * (6 + len(metrics))]
    for run in sorted(runs, key=lambda r: -r.test.get(metrics[0], 0.0)):
        cells = [_fmt(run.test.get(m), run.test.get(m) == best[m]) for m in metrics]
        lines.append(f"| {run.run_name} | {run.model} | {features_label(run)} | {run.fusion or '–'} | "
                     f"{'–' if run.best_epoch is None else run.best_epoch} | " + " | ".join(cells)
                     + f" | {run.train_seconds:.1f} |")
    return lines


def representation_columns(runs: Sequence[RunRecord]) -> list[str]:
    """The representations of the runs, "ID only" first, then alphabetical."""
    return sorted({representation_label(r) for r in runs}, key=lambda c: (c != ID_ONLY, c))


def best_cells(runs: Sequence[RunRecord], metric: str = HEADLINE[0]) -> dict[tuple[str, str], RunRecord]:
    """``(model, representation) -> run`` with the best *validation* ``metric`` of that pair (the earlier run wins
    a tie; :func:`rmm.report.results.validation_metric` falls back when a run did not validate ``metric``); the
    report shows that run's test metrics. The candidates are seed groups (:func:`~rmm.report.results.by_seed_group`):
    a configuration trained with several seeds competes, and is shown, as one record of its means over them."""
    metric = validation_metric(runs, metric)
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for run in by_seed_group(runs):
        groups.setdefault((run.model, representation_label(run)), []).append(run)
    return {key: best for key, group in groups.items() if (best := best_by_validation(group, metric)) is not None}


def model_by_features_table(runs: Sequence[RunRecord], metrics: Sequence[str] = HEADLINE,
                            marks: Mapping[str, Mapping[str, str]] | None = None,
                            baseline: str | None = None) -> list[str]:
    """Paper-style table: rows are models, columns are representations, cells the test ``R@20 / N@20`` of the
    run of that pair with the best validation recall@20 (:func:`best_cells`); the cell of each row with the best
    test value is bold.

    Args:
        runs: run records.
        metrics: the cell's test metrics; the first, on validation, picks the cell's run, and on test, the row's
            bold cell.
        marks: ``run_name -> metric -> mark`` appended to a value (significance against the baseline).
        baseline: run_name of the baseline, whose cell is labelled ``(baseline)``.
    """
    marks = marks or {}
    models = sorted({r.model for r in runs})
    columns = representation_columns(runs)
    cell = best_cells(runs, metrics[0])
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for model in models:
        row = [cell.get((model, c)) for c in columns]
        top = max((r.test.get(metrics[0], 0) for r in row if r), default=None)
        texts = []
        for run in row:
            if run is None:
                texts.append("–")
                continue
            run_marks = marks.get(run.run_name, {})
            text = " / ".join(f"{_mean_std(run, m)}{run_marks.get(m, '')}" for m in metrics)
            text = f"**{text}**" if run.test.get(metrics[0], 0) == top else text
            texts.append(f"{text} (baseline)" if run.run_name == baseline else text)
        lines.append(f"| {model} | " + " | ".join(texts) + " |")
    return lines


def cold_start_table(runs: Sequence[RunRecord], metrics: Sequence[str] = HEADLINE) -> list[str]:
    """The paper-style table on the cold items: the same cells as :func:`model_by_features_table` (the run of each
    (model, representation) :func:`best_cells` chooses by validation ``metrics[0]``), showing its ``test_cold``
    metrics (a seed group's mean ± std); an ID-only run's cell reads ``n/a (ID only)`` (it never trained a cold
    item's embedding), a run without cold metrics ``–``. The best cold cell of each row is bold."""
    columns = representation_columns(runs)
    cell = best_cells(runs, metrics[0])
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for model in sorted({r.model for r in runs}):
        row = [cell.get((model, c)) for c in columns]
        scored = [r for r in row if r is not None and not r.test_cold_id_only and metrics[0] in r.test_cold]
        top = max((r.test_cold[metrics[0]] for r in scored), default=None)
        texts = []
        for run in row:
            if run in scored:
                text = " / ".join(_mean_std(run, m, "test_cold") for m in metrics)
                texts.append(f"**{text}**" if run.test_cold[metrics[0]] == top else text)
            else:
                texts.append(NOT_SCORED if run is not None and run.test_cold_id_only else "–")
        lines.append(f"| {model} | " + " | ".join(texts) + " |")
    return lines


def cold_start_section(out: Path, runs: Sequence[RunRecord], metrics: Sequence[str],
                       selected_by: str) -> list[str]:
    """The report's "Cold-start items" section (no lines when no run has cold-item metrics): how many cold items
    and cold test users the dataset has, and :func:`cold_start_table`."""
    if not any(run.test_cold for run in runs):
        return []
    recall, ndcg = (m.replace("recall", "Recall").replace("ndcg", "NDCG") for m in metrics)
    cold = _dataset_info(out).get(COLD_INFO) or {}
    items = f"{cold['count']} cold items ({cold.get('share', 0):.0%} of the items)" if "count" in cold else "cold items"
    users = cold.get("users", {}).get("test")
    return ["## Cold-start items", "",
            f"Test {recall} / {ndcg} on the dataset's {items}, held out of training: they occur only in valid and "
            f"test. Each user's truth is their cold test items ({users if users is not None else 'the'} test users "
            f"with one), ranked among all items with the same masking as above; each cell is the run the main "
            f"table shows (best validation {selected_by}). ID-only models never trained a cold item's embedding: "
            f"their cells read {NOT_SCORED}.", "",
            *cold_start_table(runs, metrics), ""]


def _mean_std(run: RunRecord, metric: str, split: str = "test") -> str:
    """``0.1234``, or for a seed group ``0.1234 ± 0.0021``: the mean and sample standard deviation over its seeds."""
    std = getattr(run, f"{split}_std").get(metric)
    text = f"{getattr(run, split).get(metric, 0):.4f}"
    return text if std is None else f"{text} ± {std:.4f}"


def seeds_table(runs: Sequence[RunRecord], metrics: Sequence[str] = DETAIL,
                valid_metric: str = HEADLINE[0]) -> list[str]:
    """For every seed group of several runs (:func:`~rmm.report.results.by_seed_group`): one row per seed (its
    run's validation ``valid_metric`` and test ``metrics``), then the group's mean ± std row. No lines when no
    configuration has several seeds."""
    groups = [group for group in by_seed_group(runs) if group.seeds]
    if not groups:
        return []
    by_name = {run.run_name: run for run in runs}
    lines = [f"| seed group | seed | run | valid {valid_metric} | " + " | ".join(f"test {m}" for m in metrics) + " |",
             "|" + "---|" * (4 + len(metrics))]
    for group in groups:
        for seed, name in zip(group.seeds, group.seed_runs, strict=True):
            run = by_name[name]
            lines.append(f"| {group.run_name} | {seed} | {name} | {_fmt(run.valid.get(valid_metric))} | "
                         + " | ".join(_fmt(run.test.get(m)) for m in metrics) + " |")
        lines.append(f"| {group.run_name} | mean ± std ({len(group.seeds)} seeds) | | "
                     f"{_mean_std(group, valid_metric, 'valid')} | "
                     + " | ".join(_mean_std(group, m) for m in metrics) + " |")
    return lines


def significance_table(runs: Sequence[RunRecord], tests: Mapping[str, Mapping[str, PairedTest]],
                       metrics: Sequence[str] = HEADLINE) -> list[str]:
    """One row per tested run: per metric the mean per-user difference to the baseline and both p-values."""
    header = "| run | users | " + " | ".join(f"Δ {m} | t-test p | Wilcoxon p" for m in metrics) + " |"
    lines = [header, "|" + "---|" * (2 + 3 * len(metrics))]
    for run in sorted(runs, key=lambda r: -r.test.get(metrics[0], 0.0)):
        tested = tests.get(run.run_name)
        if not tested:
            continue
        users = next(iter(tested.values())).num_users
        cells = []
        for metric in metrics:
            test = tested.get(metric)
            cells += (["–"] * 3 if test is None else
                      [f"{test.mean_diff:+.4f}{test.mark()}", _fmt_p(test.t_pvalue), _fmt_p(test.wilcoxon_pvalue)])
        lines.append(f"| {run.run_name} | {users} | " + " | ".join(cells) + " |")
    return lines


def _blank(value: int | None) -> int | str:
    """A CSV cell: the value, or empty for None."""
    return "" if value is None else value


def _fmt_p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def write_csv(runs: Sequence[RunRecord], path: Path,
              tests: Mapping[str, Mapping[str, PairedTest]] | None = None, baseline: str | None = None,
              tested_metrics: Sequence[str] = HEADLINE) -> Path:
    """One row per run: identity, seed group and seed, valid and test metrics, and (when ``tests`` is given)
    the baseline's name with each tested metric's mean per-user difference and the two p-values (empty for
    untested); a run of a seed group of several gets the group's test, which is on per-user metrics averaged
    over the group's seeds."""
    tests = tests or {}
    metric_names = sorted({m for r in runs for m in r.test})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run_name", "seed_group", "seed", "stage", "model", "features", "fusion", "best_epoch",
                         "train_seconds",
                         *(f"valid_{m}" for m in metric_names), *(f"test_{m}" for m in metric_names),
                         "baseline", *(f"{what}_{m}" for m in tested_metrics
                                       for what in ("delta", "p_ttest", "p_wilcoxon"))])
        for run in runs:
            tested = tests.get(run.run_name) or tests.get(str(run.seed_group), {})
            significance: list[float | str] = []
            for metric in tested_metrics:
                test = tested.get(metric)
                significance += (["", "", ""] if test is None else
                                 [test.mean_diff, test.t_pvalue, test.wilcoxon_pvalue])
            writer.writerow([run.run_name, run.seed_group or "", _blank(run.seed), run.stage,
                             run.model, features_label(run),
                             run.fusion or "", _blank(run.best_epoch), run.train_seconds,
                             *(run.valid.get(m, "") for m in metric_names),
                             *(run.test.get(m, "") for m in metric_names),
                             baseline or "", *significance])
    return path


def write_report(out_dir: str | Path) -> Path:
    """Render ``report.md``, ``results.csv`` and the PNG plots under ``plots/`` next to ``results.json``;
    returns the report's path."""
    from rmm.report import plots

    out = Path(out_dir)
    recorded = load_results(out)
    if not recorded:
        raise NotFoundError(f"no runs in {results_path(out)}; run `rmm train CONFIG` first")
    changed = stale_runs(out, recorded)
    runs = [run for run in recorded if run.run_name not in changed]
    if not runs:
        raise DataError(f"every run in {results_path(out)} was trained on inputs that changed since (dataset or "
                        f"features): rerun `rmm train CONFIG` (or `rmm tune CONFIG`) on the current ones")
    dataset = _dataset_line(out)
    headline, detail = report_metrics(runs)
    recall, ndcg = (m.replace("recall", "Recall").replace("ndcg", "NDCG") for m in headline)
    valid_metric = validation_metric(runs, headline[0])
    selected_by = valid_metric.replace("recall", "Recall").replace("ndcg", "NDCG")
    seeds = seeds_table(runs, detail, valid_metric)
    baseline = best_id_only(runs, headline[0])
    tests = against_baseline(out, runs, baseline, headline) if baseline else {}
    tests = {name: tested for name, tested in tests.items() if tested}
    marks = {name: {m: t.mark() for m, t in tested.items()} for name, tested in tests.items()}
    models = sorted({r.model for r in runs})
    columns = representation_columns(runs)
    bars = plots.metric_by_representation(best_cells(runs, headline[0]), models, columns, headline,
                                          out / plots.PLOTS_DIR / plots.BARS_FILE)
    curve_metric = _curve_metric(runs)
    curves = plots.validation_curves(plots.curve_series(out, runs, curve_metric), curve_metric,
                                     out / plots.PLOTS_DIR / plots.CURVES_FILE)
    lines = [
        "# rmm report", "",
        f"Output directory: `{out.resolve()}`  ",
        f"Dataset: {dataset}  ",
        f"Rendered: {time.strftime('%Y-%m-%d %H:%M:%S')} from `{results_path(out).name}` ({len(runs)} runs on the "
        f"current inputs{f', {len(changed)} on changed ones' if changed else ''})"
        + (f"; {unrecorded} run(s) predate input recording, so whether their inputs changed is unknown"
           if (unrecorded := sum(not run.inputs for run in runs)) else ""), "",
        f"## Test {recall} / {ndcg} by model and representation", "",
        f"Each cell is the run of that (model, representation) with the best validation {selected_by} (the "
        f"earlier run on a tie), and the baseline the ID-only run with the best validation {selected_by}; the "
        "numbers shown are their test metrics. A representation is the feature set, with its fusion where "
        "several features are fused. Best test cell of each row in bold."
        + (f" A configuration trained with several seeds (`train.seeds`) is one candidate, by its validation "
           f"{selected_by} averaged over its seeds, and its cell shows the mean ± sample standard deviation of its "
           "test metrics over them (see Seeds)." if seeds else ""), "",
        *model_by_features_table(runs, headline, marks=marks, baseline=baseline.run_name if baseline else None),
        "", *_significance_note(baseline, tests, bool(seeds)), "",
        f"![Test {recall} and {ndcg} by representation, per model]({bars.relative_to(out).as_posix()})", "",
        "## All runs", "",
        "Test metrics of the epoch with the best validation metric (train and valid items masked), runs sorted by "
        f"test {detail[0]}; the best test value of each column in bold.", "",
        *runs_table(runs, detail), "",
        *(["## Seeds", "",
           "Configurations trained once per seed (`train.seeds`): each seed's run (also in All runs), then the mean ± "
           "sample standard deviation over the seeds, which is what the table by model and representation shows, "
           f"what chooses its cells (validation {selected_by}) and what the significance tests compare "
           "(per-user metrics averaged over the seeds).", "", *seeds, ""] if seeds else []),
        "## Validation curves", "",
        f"Validation {curve_metric} against the epoch for every training run and every sweep trial.", "",
        f"![Validation {curve_metric} per run and trial]({curves.relative_to(out).as_posix()})", "",
    ]
    lines += cold_start_section(out, runs, headline, selected_by)
    if changed:
        lines += ["## Runs whose inputs changed since they trained", "",
                  "Left out of every table and test above: their dataset or features are not the current ones, so "
                  "their numbers are not comparable (rerun them to include them).", "",
                  "| run | model | what changed |", "|---|---|---|",
                  *(f"| {run.run_name} | {run.model} | {', '.join(changed[run.run_name])} |"
                    for run in recorded if run.run_name in changed), ""]
    if tests and baseline is not None:
        lines += ["## Significance against the baseline", "",
                  f"Per-user test metrics of each run (of a seed group: averaged over its seeds) minus those of "
                  f"`{baseline.run_name}` (mean over the users both were tested on), with two-sided p-values.",
                  "", *significance_table(by_seed_group(runs), tests, headline), ""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines))
    write_csv(runs, out / CSV_FILE, tests, baseline.run_name if baseline else None, headline)
    return path


def _significance_note(baseline: RunRecord | None, tests: Mapping[str, Mapping[str, PairedTest]],
                       seeded: bool = False) -> list[str]:
    if baseline is None:
        return ["No ID-only run (a model without content features) to test against: no significance marks."]
    if not tests:
        return [f"Baseline: {baseline.model} (ID only, {_run_or_group(baseline)}); no other run has per-user "
                f"test metrics to compare, so no significance marks."]
    users = sorted({t.num_users for tested in tests.values() for t in tested.values()})
    n = str(users[0]) if len(users) == 1 else f"{users[0]}–{users[-1]}"
    return [f"{BETTER_MARK} / {WORSE_MARK}: significantly better / worse than the ID-only baseline, "
            f"{baseline.model} ({_run_or_group(baseline)}), at p < {ALPHA} in both a two-sided paired t-test "
            f"and a two-sided Wilcoxon signed-rank test on per-user test metrics (users paired by user_id, "
            f"n = {n}; no correction for multiple comparisons)."
            + (" A configuration trained with several seeds is tested on each user's metrics averaged over its "
               "seeds, against the baseline's averaged over its own seeds where it has several." if seeded else "")]


def _run_or_group(run: RunRecord) -> str:
    """``run `NAME``` or, for a seed group, ``seed group `NAME`, 3 seeds``."""
    if run.seeds:
        return f"seed group `{run.run_name}`, {len(run.seeds)} seeds"
    return f"run `{run.run_name}`"


def _curve_metric(runs: Sequence[RunRecord]) -> str:
    """recall@20 when the runs validated it, else the metric the first run early-stopped on."""
    keys = {k for r in runs for h in r.history for k in h}
    if "valid/recall@20" in keys or not runs:
        return "recall@20"
    return runs[0].train_metric or "recall@20"


def stale_runs(out: Path, runs: Sequence[RunRecord]) -> dict[str, list[str]]:
    """``run_name -> what changed`` for the runs whose recorded inputs (dataset files, feature matrices) differ
    from what ``out`` holds now. A record without inputs (written before rmm recorded them) cannot be checked
    and is not listed (the report counts such runs in its header)."""
    changed = {}
    for run in runs:
        if run.inputs:
            what = changed_inputs(run.inputs, out, run.dataset)
            if what:
                changed[run.run_name] = what
    return changed


def _dataset_info(out: Path) -> dict[str, Any]:
    """The ``dataset.json`` of the (first) dataset under ``out``; empty without one."""
    infos = sorted((out / DATA_DIR).glob(f"*/{INFO_FILE}"))
    return json.loads(infos[0].read_text()) if infos else {}


def _dataset_line(out: Path) -> str:
    infos = sorted((out / DATA_DIR).glob(f"*/{INFO_FILE}"))
    if not infos:
        return "unknown"
    info = json.loads(infos[0].read_text())
    counts = info.get("counts", {})
    return (f"{info.get('name', infos[0].parent.name)} ({counts.get('users', '?')} users, "
            f"{counts.get('items', '?')} items, {counts.get('interactions', '?')} interactions, "
            f"split {info.get('split', {}).get('strategy', '?')})")
