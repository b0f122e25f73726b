"""``<out>/results.json``: the record of every training run of an output directory (the results contract: one record per run, keyed by ``run_name``).

Runs are keyed by ``run_name``, so rerunning a stage replaces its records instead of piling up duplicates. The
file is strict JSON: a non-finite number (NaN, Infinity) is refused on write and on read.

Every choice among runs (a cell of the report's table, the ID-only baseline, ``rmm recommend``'s default run, a
sweep cell's best trial) is made on the validation metric by :func:`best_by_validation` / :func:`first_best`;
test metrics are only reported, never used to choose. The report chooses among seed groups (:func:`by_seed_group`):
a configuration trained with several seeds competes with the mean of its validation metric over the seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping
from numbers import Real
from pathlib import Path
from typing import Any, TypeVar

from rmm.errors import NotFoundError

RESULTS_FILE = "results.json"
RUNS_DIR = "runs"
# The files of a run directory, written by rmm.train.ray_trainer (which must not be imported here: it imports
# Ray and torch).
RUN_FILE = "run.json"
PER_USER_FILE = "per_user_test.parquet"
MODEL_FILE = "model.pt"

T = TypeVar("T")


def results_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / RESULTS_FILE


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """The runs recorded in ``out_dir`` (empty when nothing was trained yet)."""
    path = results_path(out_dir)
    if not path.exists():
        return []

    def refuse(constant: str) -> float:
        raise ValueError(f"{path} holds {constant}, which is not JSON (results.json is strict JSON); replace it "
                         f"with null or train that run again")

    try:
        return list(json.loads(path.read_text(), parse_constant=refuse)["runs"])
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path} is not a results file ({err}); expected {{\"runs\": [...]}}") from err


def record_runs(out_dir: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Add run records, replacing earlier ones with the same ``run_name``; written atomically.

    Raises:
        ValueError: a record holds a non-finite number (nothing is written then).
    """
    runs = {run["run_name"]: run for run in load_results(out_dir)}
    for record in records:
        for key, value in _numbers(record):
            if not math.isfinite(value):
                raise ValueError(f"run {record['run_name']}: {key} is {value}; results.json is strict JSON "
                                 f"without NaN or Infinity (a diverged model gives NaN metrics and losses: lower "
                                 f"train.learning_rate and train it again)")
        runs[record["run_name"]] = dict(record)
    path = results_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": list(runs.values())}, indent=2, default=str, allow_nan=False))
    tmp.replace(path)
    return path


def _numbers(value: Any, key: str = "") -> Iterator[tuple[str, float]]:
    """``(key, number)`` for every number nested in ``value``; keys join the path with ``/``
    (``test/recall@20``, ``history/3/loss``)."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from _numbers(item, f"{key}/{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{key}/{index}" if key else str(index))
    elif isinstance(value, Real) and not isinstance(value, bool):
        yield key, float(value)


def validation_metric(runs: Iterable[Mapping[str, Any]], preferred: str) -> str:
    """The validation metric that chooses among ``runs``: ``preferred`` (the report's headline, e.g. recall@20)
    when every run validated it; else the metric the first run early-stopped on (``config.train.metric``) when
    every run validated that; else ``preferred`` (the runs that lack it are then chosen last)."""
    runs = list(runs)
    for metric in (preferred, runs[0].get("config", {}).get("train", {}).get("metric") if runs else None):
        if metric and all(metric in (run.get("valid") or {}) for run in runs):
            return str(metric)
    return preferred


def selection_key(run: Mapping[str, Any], metric: str) -> float:
    """What chooses ``run``: its validation ``metric`` (the record's ``valid`` dict, the best epoch's); ``-inf``
    when the run did not validate it or it is not a finite number."""
    value = (run.get("valid") or {}).get(metric)
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        return float("-inf")
    return float(value)


def first_best(items: Iterable[T], key: Callable[[T], float | None], mode: str = "max") -> T | None:
    """The item with the highest (``mode`` max) or lowest (min) ``key``; the earliest wins a tie, an item whose
    key is None or NaN is never chosen; None when nothing qualifies."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    best, best_value = None, 0.0
    for item in items:
        value = key(item)
        if value is None or math.isnan(value):
            continue
        if best is None or (value > best_value if mode == "max" else value < best_value):
            best, best_value = item, value
    return best


def best_by_validation(runs: Iterable[Mapping[str, Any]], metric: str) -> Mapping[str, Any] | None:
    """The run with the best validation ``metric`` (:func:`selection_key`; the earlier run wins a tie, a run
    that did not validate ``metric`` is chosen only when none did); None when there is no run. Resolve
    ``metric`` with :func:`validation_metric` over every run being compared first."""
    return first_best(runs, lambda run: selection_key(run, metric))


def seed_group_name(run: Mapping[str, Any]) -> str:
    """A record's seed group: its ``seed_group`` (written by ``rmm train``, shared by the runs whose inputs differ
    in the seed alone); a record without one (a sweep's, or one written before seeds) is a group of its own,
    named by its ``run_name``."""
    return str(run.get("seed_group") or run["run_name"])


def by_seed_group(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per seed group of ``runs``, in order of first appearance: what the report chooses among (with
    :func:`best_by_validation`, so a configuration trained with several seeds is chosen by its mean validation
    metric), shows and tests.

    A group of one run is that run's record. A group of several is a record of the configuration: the first
    run's model, label, features, fusion, stage, dataset and config, ``run_name`` and ``seed_group`` the group's
    name, ``valid`` and ``test`` (and ``test_cold`` where every run has it) the mean over its runs of each metric
    all of them have, ``valid_std`` and ``test_std`` (``test_cold_std``) the sample standard deviation (n - 1)
    over the runs, ``seeds`` and ``seed_runs`` (their run names) in order of seed.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(seed_group_name(run), []).append(run)
    units = []
    for name, group in groups.items():
        if len(group) == 1:
            units.append(dict(group[0]))
            continue
        group = sorted(group, key=lambda run: (run.get("seed") is None, run.get("seed") or 0))
        unit = {key: group[0][key] for key in _GROUP_FIELDS if key in group[0]}
        unit.update(run_name=name, seed_group=name, seeds=[run.get("seed") for run in group],
                    seed_runs=[run["run_name"] for run in group])
        for split in ("valid", "test", *(["test_cold"] if all(run.get("test_cold") for run in group) else [])):
            values = [run.get(split) or {} for run in group]
            common = [metric for metric in values[0] if all(metric in value for value in values)]
            unit[split] = {metric: statistics.fmean(value[metric] for value in values) for metric in common}
            unit[f"{split}_std"] = {metric: statistics.stdev(value[metric] for value in values) for metric in common}
        units.append(unit)
    return units


#: The fields a seed group's record takes from its first run: what the runs share (the seed aside).
_GROUP_FIELDS = ("model", "label", "features", "fusion", "stage", "dataset", "config", "test_cold_id_only")


def run_dir(out_dir: str | Path, run_name: str) -> Path:
    """Where one training run keeps its record, per-user metrics and checkpoint: ``<out>/runs/<run_name>/``."""
    return Path(out_dir) / RUNS_DIR / run_name


def trained_run_name(run: Mapping[str, Any]) -> str:
    """The run directory holding a record's weights and per-user metrics (a sweep's record points at its best
    trial)."""
    return str(run.get("best_trial") or run["run_name"])


def load_run_record(out_dir: str | Path, run_name: str) -> dict[str, Any]:
    """The ``run.json`` a training run wrote (its full record, as returned by ``train_model``)."""
    path = run_dir(out_dir, run_name) / RUN_FILE
    if not path.exists():
        raise NotFoundError(f"no run record {path}: run {run_name!r} did not finish")
    return json.loads(path.read_text())
