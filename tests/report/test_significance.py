"""Paired t-test + Wilcoxon on per-user metrics: a clearly better run is marked, an identical one is not."""

from __future__ import annotations

import numpy as np
import pytest

from rmm.report.significance import BETTER_MARK, WORSE_MARK, best_id_only, paired_tests
from tests.report.helpers import METRICS, per_user, record

BASE_RECALL = np.random.default_rng(0).uniform(0.0, 0.5, 200)
BASE = per_user(BASE_RECALL, BASE_RECALL / 2)


def test_clearly_better_run_is_marked() -> None:
    gain = np.random.default_rng(1).uniform(0.05, 0.3, 200)
    tests = paired_tests(per_user(BASE_RECALL + gain, (BASE_RECALL + gain) / 2), BASE, METRICS)
    for metric in METRICS:
        assert tests[metric].t_pvalue < 1e-6 and tests[metric].wilcoxon_pvalue < 1e-6
        assert tests[metric].mean_diff > 0 and tests[metric].mark() == BETTER_MARK
        assert tests[metric].num_users == 200


def test_identical_run_is_not_marked() -> None:
    tests = paired_tests(BASE.copy(), BASE, METRICS)
    for metric in METRICS:
        assert (tests[metric].t_pvalue, tests[metric].wilcoxon_pvalue, tests[metric].mean_diff) == (1.0, 1.0, 0.0)
        assert tests[metric].mark() == ""


def test_noise_is_not_marked_and_a_clear_drop_is_marked_worse() -> None:
    noise = np.random.default_rng(2).normal(0, 0.05, 200)
    noisy = paired_tests(per_user(BASE_RECALL + noise - noise.mean(), BASE_RECALL / 2), BASE, ["recall@20"])
    assert noisy["recall@20"].mark() == ""
    worse = paired_tests(per_user(BASE_RECALL * 0.5, BASE_RECALL / 4), BASE, METRICS)
    assert worse["recall@20"].mark() == WORSE_MARK and worse["recall@20"].mean_diff < 0


def test_significance_needs_both_tests() -> None:
    # One user gains a lot, everyone else loses a little: the mean rises (t-test can't reject), the signed
    # ranks say "worse"; neither way may it be marked better.
    diff = np.full(200, -0.001)
    diff[0] = 1.0
    tests = paired_tests(per_user(BASE_RECALL + diff, BASE_RECALL / 2), BASE, ["recall@20"])
    test = tests["recall@20"]
    assert test.mean_diff > 0 and test.wilcoxon_pvalue < 0.05 and test.t_pvalue > 0.05
    assert test.mark() == ""


def test_users_are_aligned_on_user_id_not_row_order() -> None:
    better = per_user(BASE_RECALL + 0.1, BASE_RECALL / 2 + 0.05)
    shuffled = better.sample(frac=1.0, random_state=1)
    assert paired_tests(shuffled, BASE, METRICS) == paired_tests(better, BASE, METRICS)
    # Only the users both tables share are paired.
    partial = paired_tests(better.iloc[50:], BASE.iloc[:120], METRICS)
    assert partial["recall@20"].num_users == 70
    assert partial["recall@20"].mean_diff == pytest.approx(0.1)
    with pytest.raises(ValueError, match="share no user_id"):
        paired_tests(better.iloc[:10], BASE.iloc[100:], METRICS)


def test_baseline_is_the_id_only_run_best_on_validation_not_test() -> None:
    runs = [record("a", "lightgcn", valid=0.2, test=0.5),  # best ID-only on test
            record("b", "bprmf", valid=0.3, test=0.1),     # best ID-only on validation: the baseline
            record("c", "vbpr", ["image"], valid=0.9, test=0.9),
            record("d", "lightgcn", valid=0.3, test=0.4)]  # ties b on validation: the earlier run stays
    assert best_id_only(runs, "recall@20").run_name == "b"
    assert best_id_only(runs[2:3], "recall@20") is None

