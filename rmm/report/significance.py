"""Paired significance tests of one run against a baseline on per-user test metrics (no Ray, no torch).

Each training run writes ``<out>/runs/<run>/per_user_test.parquet`` (``user_id`` plus one column per metric).
Two runs on the same dataset are compared user by user: the rows are aligned on ``user_id`` and the paired
differences tested with a two-sided paired t-test and a two-sided Wilcoxon signed-rank test (zero differences
dropped, scipy's default). A difference counts as significant only when *both* tests reject at ``alpha``.
No correction for multiple comparisons is applied; the report's footnote says so.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rmm.report.results import PER_USER_FILE, best_by_validation, run_dir, trained_run_name, validation_metric

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


def load_per_user(out_dir: str | Path, run: Mapping[str, Any]) -> pd.DataFrame | None:
    """The run's per-user test metrics, or None (logged) when the run directory has none."""
    path = run_dir(out_dir, trained_run_name(run)) / PER_USER_FILE
    if not path.exists():
        log.warning("no per-user metrics at %s: run %s gets no significance test", path, run["run_name"])
        return None
    return pd.read_parquet(path)


def is_id_only(run: Mapping[str, Any]) -> bool:
    return not run.get("features")


def best_id_only(runs: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any] | None:
    """The ID-only run (no content features) with the best *validation* ``metric`` (resolved over all ``runs``
    by :func:`~rmm.report.results.validation_metric`; the earlier run wins a tie); None when there is none."""
    metric = validation_metric(runs, metric)
    return best_by_validation([r for r in runs if is_id_only(r)], metric)


def against_baseline(out_dir: str | Path, runs: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any],
                     metrics: Sequence[str]) -> dict[str, dict[str, PairedTest]]:
    """``run_name -> metric -> PairedTest`` of every run except the baseline; runs without per-user metrics
    (or sharing no user with the baseline) are left out."""
    base = load_per_user(out_dir, baseline)
    if base is None:
        return {}
    results = {}
    for run in runs:
        if run["run_name"] == baseline["run_name"]:
            continue
        table = load_per_user(out_dir, run)
        if table is None:
            continue
        try:
            results[run["run_name"]] = paired_tests(table, base, metrics)
        except ValueError as err:
            log.warning("run %s not tested against %s: %s", run["run_name"], baseline["run_name"], err)
    return results
