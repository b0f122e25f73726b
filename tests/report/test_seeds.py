"""Seeds in the report: runs of one seed group are one configuration, chosen by their mean validation metric,
shown as mean ± std over the seeds and tested on per-user metrics averaged over the seeds."""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from rmm.report.results import by_seed_group
from rmm.report.significance import BETTER_MARK, best_id_only, paired_tests, seed_mean_per_user
from rmm.report.tables import CSV_FILE, best_cells, model_by_features_table, write_report
from tests.report.helpers import METRICS, per_user, record, write_run


def test_a_seed_group_is_one_record_of_means_and_sample_stds() -> None:
    runs = [record("lgn-b", "lightgcn", valid=0.2, test=0.3, seed_group="lgn-seeds", seed=7),
            record("vbpr", "vbpr", ["image"], valid=0.5, test=0.5),
            record("lgn-a", "lightgcn", valid=0.4, test=0.1, seed_group="lgn-seeds", seed=3),
            record("bpr", "bprmf", valid=0.1, test=0.1, seed_group="bpr-seeds", seed=1)]  # one seed: itself
    group, vbpr, bpr = by_seed_group(runs)
    assert (vbpr, bpr) == (runs[1], runs[3])
    assert group.run_name == group.seed_group == "lgn-seeds" and group.model == "lightgcn"
    assert group.seeds == (3, 7) and group.seed_runs == ("lgn-a", "lgn-b")  # in order of seed
    assert group.valid["recall@20"] == pytest.approx(0.3) and group.test["recall@20"] == pytest.approx(0.2)
    assert group.test["ndcg@20"] == pytest.approx(0.1)
    assert group.test_std["recall@20"] == pytest.approx(statistics.stdev([0.1, 0.3]))  # n - 1: 0.1414
    assert group.valid_std["recall@20"] == pytest.approx(statistics.stdev([0.2, 0.4]))


def test_a_cell_is_chosen_by_the_mean_validation_metric_of_its_seeds() -> None:
    runs = [  # one seed of "noisy" validates best of all runs and tests best of all runs
        record("noisy-1", "vbpr", ["image"], valid=0.6, test=0.9, seed_group="noisy", seed=1),
        record("noisy-2", "vbpr", ["image"], valid=0.1, test=0.1, seed_group="noisy", seed=2),
        record("steady-1", "vbpr", ["image"], valid=0.4, test=0.30, seed_group="steady", seed=1),
        record("steady-2", "vbpr", ["image"], valid=0.4, test=0.32, seed_group="steady", seed=2),
        record("lone", "vbpr", ["image"], valid=0.38, test=0.8),  # better mean test than "steady"
    ]
    cells = best_cells(runs)
    assert cells[("vbpr", "image")].run_name == "steady"  # mean validation 0.4 > 0.38 > 0.35
    table = model_by_features_table(runs)
    recall, ndcg = (f"{np.mean(v):.4f} ± {statistics.stdev(v):.4f}" for v in ([0.30, 0.32], [0.15, 0.16]))
    assert table[2] == f"| vbpr | **{recall} / {ndcg}** |"


def test_the_baseline_is_the_id_only_seed_group_best_on_mean_validation() -> None:
    runs = [record("lgn-1", "lightgcn", valid=0.5, test=0.1, seed_group="lgn", seed=1),  # best single validation
            record("lgn-2", "lightgcn", valid=0.3, test=0.1, seed_group="lgn", seed=2),
            record("bpr", "bprmf", valid=0.35, test=0.9),
            record("bpr-seeds-1", "bprmf", valid=0.45, test=0.2, seed_group="bpr", seed=1),
            record("bpr-seeds-2", "bprmf", valid=0.44, test=0.2, seed_group="bpr", seed=2),
            record("vbpr", "vbpr", ["image"], valid=0.9, test=0.9)]
    assert best_id_only(runs, "recall@20").run_name == "bpr"  # mean 0.445 over lgn's 0.4 and bpr's 0.35
    assert best_id_only(runs[:3], "recall@20").run_name == "lgn"  # mean 0.4 over 0.35, despite its test


def test_per_user_means_cover_the_users_and_metrics_every_seed_has() -> None:
    first = per_user(np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.1, 0.2]), users=[0, 1, 2])
    second = per_user(np.array([0.3, 0.4]), np.array([0.2, 0.3]), users=[2, 0]).assign(map_extra=1.0)
    mean = seed_mean_per_user([first, second]).sort_values("user_id").reset_index(drop=True)
    assert list(mean.columns) == ["user_id", "recall@20", "ndcg@20"]
    assert mean["user_id"].tolist() == [0, 2]  # user 1 is missing from the second seed
    assert mean["recall@20"].tolist() == pytest.approx([0.25, 0.3])
    assert mean["ndcg@20"].tolist() == pytest.approx([0.15, 0.2])


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """LightGCN (the ID-only baseline) and VBPR on image, two seeds each. Each VBPR seed alone is lost in seed
    noise that the other seed cancels user by user: only the per-user means over the seeds show the gain."""
    out = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(5)
    base = rng.uniform(0.2, 0.6, 150)
    gain = rng.uniform(0.02, 0.06, 150)
    base_noise, noise = rng.normal(0, 0.2, 150), rng.normal(0, 0.4, 150)
    tables = {"lgn-1": base + base_noise, "lgn-2": base - base_noise,
              "vbpr-1": base + gain + noise, "vbpr-2": base + gain - noise}
    curves = {"lgn-1": (0.1, 0.3), "lgn-2": (0.1, 0.31), "vbpr-1": (0.2, 0.4), "vbpr-2": (0.2, 0.41)}
    for name, values in tables.items():
        model, seed = name.split("-")
        write_run(out, name, "lightgcn" if model == "lgn" else "vbpr", [] if model == "lgn" else ["image"],
                  per_user(values, values / 2), curve=curves[name], seed_group=f"{model}-seeds-0a1b", seed=int(seed))
    write_report(out)
    return out, tables


def cell(report: str, model: str, column: int) -> str:
    row = next(line for line in report.splitlines() if line.startswith(f"| {model} |"))
    return row.strip("|").split("|")[column + 1].strip()


def test_report_shows_mean_and_std_over_seeds_and_lists_each_seed(seeded) -> None:
    out, tables = seeded
    report = (out / "report.md").read_text()
    means = [float(np.mean(tables[f"vbpr-{seed}"])) for seed in (1, 2)]
    image = cell(report, "vbpr", 1)
    assert image.startswith(f"**{np.mean(means):.4f} ± {statistics.stdev(means):.4f}{BETTER_MARK} / "), image
    baseline = cell(report, "lightgcn", 0)
    assert re.fullmatch(r"\*\*0\.\d{4} ± 0\.\d{4} / 0\.\d{4} ± 0\.\d{4}\*\* \(baseline\)", baseline), baseline
    assert "by its validation Recall@20 averaged over its seeds" in report
    seeds = report.split("## Seeds")[1].split("\n## ")[0]
    rows = [line for line in seeds.splitlines() if line.startswith("| vbpr-seeds-0a1b |")]
    assert [row.split("|")[2:4] for row in rows] == [[" 1 ", " vbpr-1 "], [" 2 ", " vbpr-2 "],
                                                     [" mean ± std (2 seeds) ", " "]]
    assert f"| {means[0]:.4f} |" in rows[0] and "0.4050 ± 0.0071" in rows[2]  # valid recall@20: 0.40 and 0.41


def test_significance_compares_per_user_means_over_the_seeds(seeded) -> None:
    out, tables = seeded
    report = (out / "report.md").read_text()
    assert "seed group `lgn-seeds-0a1b`, 2 seeds" in report
    assert "tested on each user's metrics averaged over its seeds" in report
    averaged = {model: seed_mean_per_user([per_user(tables[f"{model}-{s}"], tables[f"{model}-{s}"] / 2)
                                           for s in (1, 2)]) for model in ("lgn", "vbpr")}
    expected = paired_tests(averaged["vbpr"], averaged["lgn"], METRICS)["recall@20"]
    assert expected.mark() == BETTER_MARK
    # Any one seed against any one baseline seed is not significant: a single seed cannot have been tested.
    for run in ("vbpr-1", "vbpr-2"):
        for base in ("lgn-1", "lgn-2"):
            single = paired_tests(per_user(tables[run], tables[run] / 2), per_user(tables[base], tables[base] / 2),
                                  ["recall@20"])
            assert single["recall@20"].mark() == ""
    with open(out / CSV_FILE) as handle:
        rows = {r["run_name"]: r for r in csv.DictReader(handle)}
    assert {name: (r["seed_group"], r["seed"]) for name, r in rows.items()} == {
        "lgn-1": ("lgn-seeds-0a1b", "1"), "lgn-2": ("lgn-seeds-0a1b", "2"),
        "vbpr-1": ("vbpr-seeds-0a1b", "1"), "vbpr-2": ("vbpr-seeds-0a1b", "2")}
    for name in ("vbpr-1", "vbpr-2"):  # each seed's row carries its group's test
        assert rows[name]["baseline"] == "lgn-seeds-0a1b"
        assert float(rows[name]["delta_recall@20"]) == pytest.approx(expected.mean_diff)
        assert float(rows[name]["p_ttest_recall@20"]) == pytest.approx(expected.t_pvalue)
        assert float(rows[name]["p_wilcoxon_recall@20"]) == pytest.approx(expected.wilcoxon_pvalue)
    section = report.split("## Significance against the baseline")[1]
    assert next(line for line in section.splitlines() if line.startswith("| vbpr-seeds-0a1b | 150 |"))
