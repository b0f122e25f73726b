"""One record per (model, features, fusion): the best finished trial of each cell."""

from __future__ import annotations

import pytest

from rmm.report.results import best_by_validation
from rmm.tune.cells import ERROR, FINISHED, STOPPED, TrialOutcome, best_per_cell
from tests.report.helpers import record


def outcome(name: str, cell: str, value: float | None, status: str = FINISHED) -> TrialOutcome:
    return TrialOutcome(run_name=name, cell=cell, params={"train.learning_rate": 0.1}, status=status, value=value)


def test_best_finished_trial_per_cell_in_order_of_appearance() -> None:
    cells = best_per_cell([
        outcome("t1", "vbpr-concat", 0.20), outcome("t2", "vbpr-mean", 0.35), outcome("t3", "vbpr-concat", 0.30),
        outcome("t4", "vbpr-concat", 0.90, STOPPED),  # stopped early: no test metrics, never the cell's best
        outcome("t5", "vbpr-mean", None, ERROR), outcome("t6", "freedom", 0.25, STOPPED),
        outcome("t7", "vbpr-mean", 0.35),  # a tie keeps the earlier trial
    ])
    assert [c.key for c in cells] == ["vbpr-concat", "vbpr-mean", "freedom"]
    assert [c.best.run_name if c.best else None for c in cells] == ["t3", "t2", None]
    assert [t.run_name for t in cells[0].finished] == ["t1", "t3"]
    assert [t.run_name for t in cells[1].trials] == ["t2", "t5", "t7"]
    assert best_per_cell([outcome("a", "x", 0.2), outcome("b", "x", 0.1)], mode="min")[0].best.run_name == "b"
    with pytest.raises(ValueError, match="mode"):
        best_per_cell([], mode="best")


def test_best_trial_is_chosen_on_validation_as_the_report_chooses() -> None:
    # Trial run records whose validation and test rankings disagree; a trial's value is what it reported to
    # Tune: its record's valid metrics (rmm.tune.search._trial).
    trials = [record(name, "vbpr", ["image"], valid=valid, test=test)
              for name, valid, test in (("t1", 0.30, 0.10), ("t2", 0.10, 0.50), ("t3", 0.30, 0.40), ("t4", 0.20, 0.45))]
    outcomes = [outcome(t.run_name, "vbpr-image", t.valid["recall@20"]) for t in trials]
    outcomes.append(outcome("t5", "vbpr-image", float("nan")))  # a diverged trial never wins
    best = best_per_cell(outcomes)[0].best
    assert best.run_name == "t1" == best_by_validation(trials, "recall@20").run_name
    assert best_per_cell([outcome("t0", "x", float("nan")), outcome("t1", "x", 0.1)])[0].best.run_name == "t1"
