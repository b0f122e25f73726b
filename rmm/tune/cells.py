"""The best trial of each cell of a sweep, a cell being one (model, features, fusion): pure bookkeeping on
trial outcomes, no Ray.

A sweep over ``model.features`` and ``model.fusion`` answers "which representation, which fusion" only if every
combination keeps its own best configuration; the best trial of the whole space would leave one cell filled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from rmm.runs import first_best

FINISHED = "finished"  # trained to the end: its run.json holds valid and test metrics
STOPPED = "stopped"    # stopped early by the scheduler (ASHA): no test metrics
ERROR = "error"


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    """One trial as the sweep saw it.

    Attributes:
        run_name: the trial's training run (``<out>/runs/<run_name>/``).
        cell: the trial's cell: one key per (model entry, features, fusion), e.g. the name of the cell's record
            ``tune-01-vbpr-image_stats+text_minilm-mean``.
        params: the searched values that applied to it (dotted key -> value).
        status: FINISHED, STOPPED or ERROR.
        value: the validation metric: the best epoch's when FINISHED, the last reported when STOPPED.
        iterations: validation reports made.
    """

    run_name: str
    cell: str
    params: Mapping[str, Any]
    status: str
    value: float | None = None
    iterations: int = 0


@dataclasses.dataclass(frozen=True)
class Cell:
    """The trials of one (model, features, fusion) and the best finished one (None when none finished)."""

    key: str
    best: TrialOutcome | None
    trials: tuple[TrialOutcome, ...]

    @property
    def finished(self) -> tuple[TrialOutcome, ...]:
        return tuple(t for t in self.trials if t.status == FINISHED)


def best_per_cell(outcomes: Iterable[TrialOutcome], mode: str = "max") -> list[Cell]:
    """Group ``outcomes`` by cell (in order of first appearance) and pick each cell's best finished trial by
    ``value``, its validation metric (``mode`` max or min; the earlier trial wins a tie, a NaN value never wins),
    with :func:`rmm.runs.first_best`, the rule the report chooses its cells by."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    groups: dict[str, list[TrialOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.cell, []).append(outcome)
    return [Cell(key=key, best=first_best((t for t in trials if t.status == FINISHED), lambda t: t.value, mode),
                 trials=tuple(trials)) for key, trials in groups.items()]
