"""Choosing among the run records of ``results.json`` (:mod:`rmm.runs`): on the validation metric only.

Every choice among runs (a cell of the report's table, the ID-only baseline, ``rmm recommend``'s default run) is
made on the validation metric by :func:`best_by_validation`, with :func:`rmm.runs.first_best`, the rule a sweep
picks its cells' best trials by; test metrics are only reported, never used to choose. The report chooses among
seed groups (:func:`by_seed_group`): a configuration trained with several seeds competes with the mean of its
validation metric over the seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from rmm.runs import RunRecord, first_best


def validation_metric(runs: Iterable[RunRecord], preferred: str) -> str:
    """The validation metric that chooses among ``runs``: ``preferred`` (the report's headline, e.g. recall@20)
    when every run validated it; else the metric the first run early-stopped on (``config.train.eval.metric``) when
    every run validated that; else ``preferred`` (the runs that lack it are then chosen last)."""
    runs = list(runs)
    for metric in (preferred, runs[0].train_metric if runs else None):
        if metric and all(metric in run.valid for run in runs):
            return metric
    return preferred


def selection_key(run: RunRecord, metric: str) -> float:
    """What chooses ``run``: its validation ``metric`` (the best epoch's); ``-inf`` when the run did not validate
    it or it is not a finite number."""
    value = run.valid.get(metric)
    if value is None or not math.isfinite(value):
        return float("-inf")
    return float(value)


def best_by_validation(runs: Iterable[RunRecord], metric: str) -> RunRecord | None:
    """The run with the best validation ``metric`` (:func:`selection_key`; the earlier run wins a tie, a run
    that did not validate ``metric`` is chosen only when none did); None when there is no run. Resolve
    ``metric`` with :func:`validation_metric` over every run being compared first."""
    return first_best(runs, lambda run: selection_key(run, metric))


def seed_group_name(run: RunRecord) -> str:
    """A record's seed group: its ``seed_group`` (written by ``rmm train``, shared by the runs whose inputs differ
    in the seed alone); a record without one (a sweep's, or one written before seeds) is a group of its own,
    named by its ``run_name``."""
    return run.seed_group or run.run_name


def by_seed_group(runs: Iterable[RunRecord]) -> list[RunRecord]:
    """One record per seed group of ``runs``, in order of first appearance: what the report chooses among (with
    :func:`best_by_validation`, so a configuration trained with several seeds is chosen by its mean validation
    metric), shows and tests.

    A group of one run is that run's record. A group of several is a record of the configuration: the first
    run's model, label, features, fusion, stage, dataset and config, ``run_name`` and ``seed_group`` the group's
    name, ``valid`` and ``test`` (and ``test_cold`` where every run has it) the mean over its runs of each metric
    all of them have, ``valid_std`` and ``test_std`` (``test_cold_std``) the sample standard deviation (n - 1)
    over the runs, ``seeds`` and ``seed_runs`` (their run names) in order of seed; what belongs to one run alone
    (history, inputs, seed, run directory, timing) is left empty.
    """
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(seed_group_name(run), []).append(run)
    units = []
    for name, group in groups.items():
        if len(group) == 1:
            units.append(group[0])
            continue
        group = sorted(group, key=lambda run: (run.seed is None, run.seed or 0))
        first = group[0]
        mean: dict[str, dict[str, float]] = {}
        std: dict[str, dict[str, float]] = {}
        for split in ("valid", "test", *(["test_cold"] if all(run.test_cold for run in group) else [])):
            values = [getattr(run, split) for run in group]
            common = [metric for metric in values[0] if all(metric in value for value in values)]
            mean[split] = {metric: statistics.fmean(value[metric] for value in values) for metric in common}
            std[split] = {metric: statistics.stdev(value[metric] for value in values) for metric in common}
        units.append(RunRecord(
            run_name=name, seed_group=name, seeds=tuple(run.seed for run in group),
            seed_runs=tuple(run.run_name for run in group), model=first.model, label=first.label,
            features=first.features, fusion=first.fusion, stage=first.stage, dataset=first.dataset,
            config=first.config, test_cold_id_only=first.test_cold_id_only, valid=mean["valid"], test=mean["test"],
            test_cold=mean.get("test_cold", {}), valid_std=std["valid"], test_std=std["test"],
            test_cold_std=std.get("test_cold", {})))
    return units
