"""One record per (model, features, fusion): the best finished trial of each cell."""

from __future__ import annotations

import pytest

from rmm.tune.cells import ERROR, FINISHED, STOPPED, TrialOutcome, best_per_cell


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
