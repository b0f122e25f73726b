"""``rmm report``: the paper-style table with significance marks, the CSV, and PNG plots referenced from it."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from rmm.report.plots import BARS_FILE, CURVES_FILE, PLOTS_DIR, curve_series
from rmm.report.significance import BETTER_MARK
from rmm.report.tables import CSV_FILE, best_cells, model_by_features_table, write_report
from tests.report.helpers import per_user, record, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Baseline lightgcn (ID only), a weaker ID-only bprmf, VBPR clearly better on image, VBPR identical to the
    baseline on text, and a VBPR sweep over lvlm with two trials (its best trial is the record's run)."""
    out = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 0.5, 120)
    gain = rng.uniform(0.05, 0.3, 120)
    write_run(out, "train-00-lightgcn", "lightgcn", [], per_user(base, base / 2), curve=(0.1, 0.3, 0.25))
    write_run(out, "train-01-bprmf", "bprmf", [], per_user(base * 0.9, base / 2 * 0.9))
    write_run(out, "train-02-vbpr-image", "vbpr", ["image"], per_user(base + gain, (base + gain) / 2))
    write_run(out, "train-03-vbpr-text", "vbpr", ["text"], per_user(base, base / 2))
    for fusion in ("concat", "mean"):  # fusion variants of one feature set: separate columns
        write_run(out, f"train-04-vbpr-image+text-{fusion}", "vbpr", ["image", "text"], per_user(base, base / 2),
                  fusion=fusion)
    trials = []
    for trial, lr in (("00000", 0.001), ("00001", 0.01)):
        trial_run = write_run(out, f"tune-00-vbpr-lvlm-{trial}", "vbpr", ["lvlm"], per_user(base * 0.95, base / 2),
                              curve=(0.05, 0.1 + lr), record=False)
        trials.append({"run_name": trial_run.run_name, "valid/recall@20": 0.1 + lr,
                       "params": {"train.learning_rate": lr}})
    write_run(out, "tune-00-vbpr-lvlm-00001", "vbpr", ["lvlm"], per_user(base * 0.95, base / 2),
              curve=(0.05, 0.11), record=True, stage="tune", cell="tune-00-vbpr-lvlm", trials=tuple(trials))
    write_report(out)
    return out


def cell(report: str, model: str, column: int) -> str:
    """The text of ``model``'s row in the paper-style table, ``column`` 0 = ID only."""
    row = next(line for line in report.splitlines() if line.startswith(f"| {model} |"))
    return row.strip("|").split("|")[column + 1].strip()


def test_paper_table_marks_only_the_significant_run(out: Path) -> None:
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| model |"))
    assert header == "| model | ID only | image | image+text (concat) | image+text (mean) | lvlm | text |"
    assert cell(report, "lightgcn", 0).endswith("(baseline)")
    assert BETTER_MARK not in cell(report, "lightgcn", 0) and BETTER_MARK not in cell(report, "bprmf", 0)
    image = cell(report, "vbpr", 1)
    assert re.fullmatch(rf"\*\*\d\.\d{{4}}{BETTER_MARK} / \d\.\d{{4}}{BETTER_MARK}\*\*", image), image  # best: bold
    text = cell(report, "vbpr", 5)
    assert re.fullmatch(r"\d\.\d{4} / \d\.\d{4}", text), text  # identical to the baseline: no mark
    # The footnote names the baseline and both tests.
    assert "ID-only baseline, lightgcn (run `train-00-lightgcn`)" in report
    assert "paired t-test" in report and "Wilcoxon signed-rank" in report and "p < 0.05" in report


def test_significance_section_and_csv(out: Path) -> None:
    report = (out / "report.md").read_text()
    section = report.split("## Significance against the baseline")[1]
    row = next(line for line in section.splitlines() if line.startswith("| train-03-vbpr-text |"))
    assert "| +0.0000 | 1.0000 | 1.0000 |" in row
    with open(out / CSV_FILE) as handle:
        rows = {r["run_name"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"train-00-lightgcn", "train-01-bprmf", "train-02-vbpr-image", "train-03-vbpr-text",
                         "train-04-vbpr-image+text-concat", "train-04-vbpr-image+text-mean", "tune-00-vbpr-lvlm-00001"}
    assert all(r["baseline"] == "train-00-lightgcn" for r in rows.values())
    assert rows["train-00-lightgcn"]["p_ttest_recall@20"] == ""  # the baseline is not tested against itself
    assert float(rows["train-02-vbpr-image"]["p_ttest_recall@20"]) < 1e-6
    assert float(rows["train-02-vbpr-image"]["p_wilcoxon_ndcg@20"]) < 1e-6
    assert float(rows["train-03-vbpr-text"]["p_wilcoxon_recall@20"]) == 1.0
    # The sweep's row is tested on its best trial's per-user metrics.
    assert float(rows["tune-00-vbpr-lvlm-00001"]["delta_recall@20"]) < 0


def test_plots_are_written_and_referenced(out: Path) -> None:
    report = (out / "report.md").read_text()
    for name in (BARS_FILE, CURVES_FILE):
        path = out / PLOTS_DIR / name
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC
        assert f"]({PLOTS_DIR}/{name})" in report


def test_validation_curves_cover_runs_and_every_trial(out: Path) -> None:
    from rmm.runs import load_results

    series = curve_series(out, load_results(out), "recall@20")
    assert sorted(series) == ["bprmf", "lightgcn", "vbpr"]
    labels = [label for label, _, _ in series["vbpr"]]
    assert labels == ["train-02-vbpr-image", "train-03-vbpr-text", "train-04-vbpr-image+text-concat",
                      "train-04-vbpr-image+text-mean", "trial 00000 (learning_rate=0.001)",
                      "trial 00001 (learning_rate=0.01)"]
    assert series["lightgcn"] == [("train-00-lightgcn", [2, 4, 6], [0.1, 0.3, 0.25])]


def test_cells_are_chosen_on_validation_and_show_test() -> None:
    runs = [record("image-a", "vbpr", ["image"], valid=0.2, test=0.6),  # best image run on test
            record("image-b", "vbpr", ["image"], valid=0.4, test=0.3),  # best on validation: the cell
            record("image-c", "vbpr", ["image"], valid=0.4, test=0.5),  # ties image-b: the earlier stays
            record("id-a", "vbpr", valid=0.1, test=0.2), record("id-b", "vbpr", valid=0.3, test=0.1)]
    cells = best_cells(runs)
    assert {key: run.run_name for key, run in cells.items()} == {("vbpr", "image"): "image-b",
                                                                     ("vbpr", "ID only"): "id-b"}
    table = model_by_features_table(runs)
    assert table[0] == "| model | ID only | image |"
    assert table[2] == "| vbpr | 0.1000 / 0.0500 | **0.3000 / 0.1500** |"  # test values; bold: the row's best test


def test_report_chooses_cells_and_baseline_on_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.0, 0.5, 100)
    gain = rng.uniform(0.05, 0.3, 100)
    # lightgcn-a validates best but tests worse than lightgcn-b; vbpr-image-a likewise against vbpr-image-b.
    write_run(tmp_path, "train-00-lightgcn-a", "lightgcn", [], per_user(base * 0.8, base * 0.4), curve=(0.2, 0.5))
    write_run(tmp_path, "train-01-lightgcn-b", "lightgcn", [], per_user(base, base / 2), curve=(0.2, 0.3))
    write_run(tmp_path, "train-02-vbpr-image-a", "vbpr", ["image"], per_user(base + gain, (base + gain) / 2),
              curve=(0.4, 0.6))
    write_run(tmp_path, "train-03-vbpr-image-b", "vbpr", ["image"], per_user(base + 2 * gain, base / 2 + gain),
              curve=(0.3, 0.1))
    report = write_report(tmp_path).read_text()
    assert "best validation Recall@20" in report and "the numbers shown are their test metrics" in report
    assert "ID-only baseline, lightgcn (run `train-00-lightgcn-a`)" in report
    assert cell(report, "lightgcn", 0) == f"**{np.mean(base * 0.8):.4f} / {np.mean(base * 0.4):.4f}** (baseline)"
    image = cell(report, "vbpr", 1)
    assert image.startswith(f"**{np.mean(base + gain):.4f}{BETTER_MARK}"), image


def test_no_id_only_run_means_no_marks(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 20)
    write_run(tmp_path, "train-00-vbpr", "vbpr", ["image"], per_user(values, values))
    report = write_report(tmp_path).read_text()
    assert "No ID-only run" in report and BETTER_MARK not in report.split("## All runs")[0].split("|---|")[-1]


def test_runs_evaluated_at_other_cut_offs_head_the_report_with_theirs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 0.5, 80)
    write_run(tmp_path, "train-00-lightgcn", "lightgcn", [], per_user(base, base / 2, k=5), k=5)
    write_run(tmp_path, "train-01-vbpr-image", "vbpr", ["image"], per_user(base + 0.2, base / 2 + 0.1, k=5), k=5)
    report = write_report(tmp_path).read_text()
    assert "## Test Recall@5 / NDCG@5 by model and representation" in report
    assert f"{np.mean(base + 0.2):.4f}{BETTER_MARK}" in cell(report, "vbpr", 1)
    assert "test recall@5" in report and "Δ recall@5" in report


@pytest.mark.slow  # a subprocess importing pandas and matplotlib
def test_rendering_imports_neither_ray_nor_torch(out: Path) -> None:
    import subprocess

    code = ("import sys; from rmm.report.tables import write_report; write_report(sys.argv[1]); "
            "print('ray' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False False"


def test_runs_on_changed_inputs_are_listed_and_left_out_of_the_tables(tmp_path: Path) -> None:
    from rmm.config import Config, ModelConfig, OutputConfig
    from rmm.train.identity import run_inputs
    from tests.train.planted import write_planted_dataset

    cfg = Config(output=OutputConfig(dir=str(tmp_path)))
    write_planted_dataset(cfg.dataset_dir)
    old_inputs = run_inputs(cfg, ModelConfig("lightgcn"), cfg.train).to_dict()
    table = per_user(np.full(40, 0.9), np.full(40, 0.4))
    write_run(tmp_path, "lightgcn-old", "lightgcn", [], table, inputs=old_inputs, dataset="synthetic")
    write_planted_dataset(cfg.dataset_dir, seed=1)  # prepared again: other interactions, other split
    current = run_inputs(cfg, ModelConfig("lightgcn"), cfg.train).to_dict()
    write_run(tmp_path, "lightgcn-new", "lightgcn", [], per_user(np.full(40, 0.2), np.full(40, 0.1)),
              inputs=current, dataset="synthetic")

    report = write_report(tmp_path).read_text()
    tables, changed = report.split("## Runs whose inputs changed since they trained")
    assert "lightgcn-new" in tables and "lightgcn-old" not in tables and "0.9000" not in tables
    assert "| lightgcn-old | lightgcn | dataset interactions.parquet |" in changed
    assert "1 runs on the current inputs, 1 on changed ones" in report


def test_cold_start_section_uses_the_main_tables_cells_and_shows_id_only_as_na(tmp_path: Path) -> None:
    import json

    from rmm.report.tables import NOT_SCORED, cold_start_table

    dataset = tmp_path / "data" / "planted"
    dataset.mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({
        "name": "planted", "counts": {"users": 120, "items": 80, "interactions": 1200},
        "cold_items": {"share": 0.25, "count": 20, "item_ids": "1,5", "users": {"valid": 99, "test": 97}}}))
    table = per_user(np.linspace(0.1, 0.5, 40), np.linspace(0.05, 0.25, 40))
    cold = {"recall@20": 0.1234, "ndcg@20": 0.0617}
    write_run(tmp_path, "train-00-lightgcn", "lightgcn", [], table, test_cold=cold, test_cold_id_only=True)
    # vbpr-image-a validates best (the cell of both tables) but is worse on the cold items than vbpr-image-b.
    write_run(tmp_path, "train-01-vbpr-image-a", "vbpr", ["image"], table, curve=(0.2, 0.6),
              test_cold={"recall@20": 0.5, "ndcg@20": 0.25}, test_cold_id_only=False)
    write_run(tmp_path, "train-02-vbpr-image-b", "vbpr", ["image"], table, curve=(0.2, 0.4),
              test_cold={"recall@20": 0.9, "ndcg@20": 0.45}, test_cold_id_only=False)
    write_run(tmp_path, "train-03-vbpr-text", "vbpr", ["text"], table, curve=(0.2, 0.3), test_cold={},
              test_cold_id_only=False)  # no cold test user: no number, and no NaN either

    report = write_report(tmp_path).read_text()
    section = report.split("## Cold-start items")[1]
    assert "20 cold items (25% of the items)" in section and "97 test users" in section
    assert cell(section, "lightgcn", 0) == NOT_SCORED
    assert cell(section, "vbpr", 1) == "**0.5000 / 0.2500**"  # image-a, as in the main table; not image-b's 0.9
    assert cell(section, "vbpr", 2) == "–"
    assert cell(report, "vbpr", 1).startswith(f"**{table['recall@20'].mean():.4f}")
    # A record without the flag (older runs) counts as ID-only when it read no feature.
    runs = [record("bprmf-old", "bprmf", valid=0.3, test=0.2, test_cold=cold),
            record("vbpr-new", "vbpr", ["image"], valid=0.3, test=0.2, test_cold=cold)]
    assert cold_start_table(runs)[2:] == [f"| bprmf | {NOT_SCORED} | – |", "| vbpr | – | **0.1234 / 0.0617** |"]


def test_no_cold_metrics_no_cold_start_section(out: Path) -> None:
    assert "Cold-start" not in (out / "report.md").read_text()
