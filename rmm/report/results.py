"""``<out>/results.json``: the record of every training run of an output directory (DESIGN results contract).

Runs are keyed by ``run_name``, so rerunning a stage replaces its records instead of piling up duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
RUNS_DIR = "runs"
# The files of a run directory, written by rmm.train.ray_trainer (which must not be imported here: it imports
# Ray and torch).
RUN_FILE = "run.json"
PER_USER_FILE = "per_user_test.parquet"
MODEL_FILE = "model.pt"


def results_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / RESULTS_FILE


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """The runs recorded in ``out_dir`` (empty when nothing was trained yet)."""
    path = results_path(out_dir)
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text())["runs"])
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path} is not a results file ({err}); expected {{\"runs\": [...]}}") from err


def record_runs(out_dir: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Add run records, replacing earlier ones with the same ``run_name``; written atomically."""
    runs = {run["run_name"]: run for run in load_results(out_dir)}
    for record in records:
        runs[record["run_name"]] = dict(record)
    path = results_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": list(runs.values())}, indent=2, default=str))
    tmp.replace(path)
    return path


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
        raise FileNotFoundError(f"no run record {path}: run {run_name!r} did not finish")
    return json.loads(path.read_text())
