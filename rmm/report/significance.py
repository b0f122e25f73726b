"""Paired significance tests of one run against a baseline on per-user test metrics (no Ray, no torch).

Each training run writes ``<out>/runs/<run>/per_user_test.parquet`` (``user_id`` plus one column per metric).
Two runs on the same dataset are compared user by user: the rows are aligned on ``user_id`` and the paired
differences tested with a two-sided paired t-test and a two-sided Wilcoxon signed-rank test (zero differences
dropped, scipy's default). A difference counts as significant only when *both* tests reject at ``alpha``.
No correction for multiple comparisons is applied; the report's footnote says so.

A configuration trained with several seeds (a seed group, :func:`rmm.report.results.by_seed_group`) is tested
as one: each user's metrics are averaged over its seeds first (:func:`seed_mean_per_user`), the baseline's too
when it has several, so seed noise does not pass for a per-user difference and no seed is picked.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rmm.report.results import best_by_validation, by_seed_group, validation_metric
from rmm.runs import PER_USER_FILE, RunRecord, run_dir

log = logging.getLogger(__name__)

ALPHA = 0.05
BETTER_MARK = "†"
WORSE_MARK = "‡"


@dataclass(frozen=True)
class PairedTest:
    """One metric of a run against the baseline over the users both were tested on.

    ``mean_diff`` is run minus baseline; p-values are two-sided (1.0 when every difference is zero).
    """

    metric: str
    num_users: int
    mean_diff: float
    t_pvalue: float
    wilcoxon_pvalue: float

    def significant(self, alpha: float = ALPHA) -> bool:
        """Both tests reject "no difference" at ``alpha``."""
        return self.t_pvalue < alpha and self.wilcoxon_pvalue < alpha

    def mark(self, alpha: float = ALPHA) -> str:
        """:data:`BETTER_MARK` for a significant improvement, :data:`WORSE_MARK` for a significant drop, else ''."""
        if not self.significant(alpha) or self.mean_diff == 0:
            return ""
        return BETTER_MARK if self.mean_diff > 0 else WORSE_MARK


def paired_tests(run: pd.DataFrame, baseline: pd.DataFrame, metrics: Sequence[str]) -> dict[str, PairedTest]:
    """Test each of ``metrics`` of ``run`` against ``baseline``, both per-user tables aligned on ``user_id``.

    Args:
        run: ``user_id`` plus metric columns of the run under test.
        baseline: the same for the baseline.
        metrics: metric columns to test; one missing from either table is skipped.

    Raises:
        ValueError: the two tables share no user (they were evaluated on different datasets).
    """
    merged = run.merge(baseline, on="user_id", suffixes=("_run", "_base"), validate="one_to_one")
    if merged.empty:
        raise ValueError(f"per-user tables share no user_id (run has {len(run)} users, baseline {len(baseline)}); "
                         f"were they trained on the same dataset?")
    tests = {}
    for metric in metrics:
        if metric not in run.columns or metric not in baseline.columns:
            continue
        a = merged[f"{metric}_run"].to_numpy(dtype=np.float64)
        b = merged[f"{metric}_base"].to_numpy(dtype=np.float64)
        t_p, w_p = _pvalues(a, b)
        tests[metric] = PairedTest(metric, len(merged), float(np.mean(a - b)), t_p, w_p)
    return tests


def _pvalues(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    diff = a - b
    if not np.any(diff):
        return 1.0, 1.0  # identical: nothing to test (scipy would answer NaN)
    with warnings.catch_warnings():
        # Near-identical samples make scipy warn about precision; the p-value it returns is still usable.
        warnings.simplefilter("ignore", RuntimeWarning)
        t_p = float(stats.ttest_rel(a, b).pvalue)
        w_p = float(stats.wilcoxon(a, b).pvalue)
    return (1.0 if math.isnan(t_p) else t_p), (1.0 if math.isnan(w_p) else w_p)


def load_per_user(out_dir: str | Path, run: RunRecord) -> pd.DataFrame | None:
    """The run's per-user test metrics (a seed group's averaged over its seeds, :func:`seed_mean_per_user`), or
    None (logged) when a run directory has none."""
    tables = []
    for name in run.seed_runs or (run.run_name,):  # a seed group's runs are train runs
        path = run_dir(out_dir, name) / PER_USER_FILE
        if not path.exists():
            log.warning("no per-user metrics at %s: %s gets no significance test", path, run.run_name)
            return None
        tables.append(pd.read_parquet(path))
    return tables[0] if len(tables) == 1 else seed_mean_per_user(tables)


def seed_mean_per_user(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-user metrics averaged over the runs of a seed group: ``user_id`` plus each metric column every table
    has, for the users every table holds (they were all tested on one dataset, so normally all of them)."""
    columns = [c for c in tables[0].columns if c != "user_id" and all(c in t.columns for t in tables)]
    grouped = pd.concat([t[["user_id", *columns]] for t in tables], ignore_index=True).groupby("user_id")
    mean = grouped[columns].mean()
    return mean[grouped.size() == len(tables)].reset_index()


def is_id_only(run: RunRecord) -> bool:
    return not run.features


def best_id_only(runs: Sequence[RunRecord], metric: str) -> RunRecord | None:
    """The ID-only run or seed group (no content features) with the best *validation* ``metric`` (resolved over
    all ``runs`` by :func:`~rmm.report.results.validation_metric`; a seed group by its mean over its seeds; the
    earlier one wins a tie); None when there is none."""
    metric = validation_metric(runs, metric)
    return best_by_validation([r for r in by_seed_group(runs) if is_id_only(r)], metric)


def against_baseline(out_dir: str | Path, runs: Sequence[RunRecord], baseline: RunRecord,
                     metrics: Sequence[str]) -> dict[str, dict[str, PairedTest]]:
    """``name -> metric -> PairedTest`` of every seed group of ``runs`` (:func:`~rmm.report.results.by_seed_group`,
    named by its ``run_name``: a lone run's own) except the baseline, itself one of them (:func:`best_id_only`);
    a seed group is tested on its per-user metrics averaged over its seeds, against the baseline's likewise.
    Those without per-user metrics (or sharing no user with the baseline) are left out."""
    base = load_per_user(out_dir, baseline)
    if base is None:
        return {}
    results = {}
    for run in by_seed_group(runs):
        if run.run_name == baseline.run_name:
            continue
        table = load_per_user(out_dir, run)
        if table is None:
            continue
        try:
            results[run.run_name] = paired_tests(table, base, metrics)
        except ValueError as err:
            log.warning("run %s not tested against %s: %s", run.run_name, baseline.run_name, err)
    return results
