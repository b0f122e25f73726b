"""Sweeps end to end on the planted dataset: a killed sweep resumes without rerunning finished trials and writes
one record per (model, features, fusion); ASHA stops weak trials on the per-evaluation reports; Optuna and
HyperOpt (when installed) search within each cell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmm.config import config_from_dict
from rmm.console import LOGS_DIR, RMM_LOG
from rmm.runs import load_results
from tests.tune.helpers import sweep_config, write_config, write_inputs

pytestmark = pytest.mark.ray

# Three cells of one VBPR entry: two fusions of feat_a+feat_b, and feat_a alone (no fusion, so one trial).
CELLS = {"tune-00-vbpr-feat_a+feat_b-concat", "tune-00-vbpr-feat_a+feat_b-mean", "tune-00-vbpr-feat_a"}
SEARCH = {"model.features": {"grid": ["feat_a+feat_b", "feat_a"]}, "model.fusion": {"grid": ["concat", "mean"]}}


def _rmm_tune(config: Path, log: Path) -> subprocess.Popen:
    # A process group of its own (the local Ray it starts included), so the test can kill all of it at once;
    # RAY_ADDRESS=local: never join a cluster another test left behind.
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-m", "rmm.cli", "tune", str(config)], stdout=handle,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _run_files(out: Path) -> dict[str, int]:
    """run name -> mtime (ns) of its run.json, for every finished training run."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/run.json")}


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_inputs(out)
    raw = sweep_config(out, search=SEARCH, max_concurrent_trials=2)
    raw["ray"]["dashboard"] = False
    config = write_config(tmp_path / "sweep.yaml", raw)

    first = _rmm_tune(config, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    try:
        while not _run_files(out) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        finished = _run_files(out)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started: a lost machine
        first.wait(30)
    assert 1 <= len(finished) < 3, f"no kill between trials; log:\n{(tmp_path / 'first.log').read_text()}"

    second = _rmm_tune(config, tmp_path / "second.log")
    log = tmp_path / "second.log"
    assert second.wait(300) == 0, log.read_text()
    assert "resuming sweep" in (out / LOGS_DIR / RMM_LOG).read_text()  # an info record: in the log, not on the console

    runs = _run_files(out)
    assert {name: runs[name] for name in finished} == finished  # finished trials were not trained again
    assert len(runs) == 3  # one training run per cell: no trial repeated
    records = {r.cell: r for r in load_results(out)}
    assert set(records) == CELLS
    assert set(finished) < {r.run_name for r in records.values()}
    for cell, record in records.items():
        assert record.stage == "tune" and len(record.trials) == 1 and not record.unfinished_trials
        assert {"recall@10", "ndcg@10"} <= set(record.test)
        assert record.run_name.startswith(cell.removeprefix("tune-00-") + "-")  # label + identity hash
    assert records["tune-00-vbpr-feat_a+feat_b-mean"].fusion == "mean"
    assert records["tune-00-vbpr-feat_a"].features == ("feat_a",) and records["tune-00-vbpr-feat_a"].fusion is None


def test_asha_stops_a_weak_trial_on_its_evaluation_reports(ray_cluster, tmp_path: Path) -> None:
    from rmm.tune.search import tune_models

    out = tmp_path / "out"
    write_inputs(out)
    raw = sweep_config(out, model=[{"name": "bprmf"}], scheduler="asha", asha_grace_period=1,
                       search={"train.learning_rate": {"grid": [0.05, 1.0e-7]}})
    raw["train"].update(epochs=4, batch_size=32)
    [record] = tune_models(config_from_dict(raw))

    # The good rate ran all 4 evaluations; the useless one fell below the first rung and was stopped there.
    assert record.search == {"train.learning_rate": 0.05}
    assert [t["params"] for t in record.trials] == [{"train.learning_rate": 0.05}]
    [stopped] = record.unfinished_trials
    assert stopped["status"] == "stopped" and stopped["params"] == {"train.learning_rate": 1.0e-7}
    assert stopped["evaluations"] < 4
    assert [p.parent.name for p in (out / "runs").glob("*/run.json")] == [record.run_name]  # none for it
    assert len(record.history) == 4


@pytest.mark.parametrize("search_alg", ["optuna", "hyperopt"])
def test_model_based_search_runs_within_each_cell(ray_cluster, tmp_path: Path, search_alg: str) -> None:
    pytest.importorskip(search_alg)  # optional extras: rmm[optuna], rmm[hyperopt]
    from rmm.tune.search import tune_models

    out = tmp_path / "out"
    write_inputs(out)
    raw = sweep_config(out, search_alg=search_alg, num_samples=2, max_concurrent_trials=2,
                       search={"model.features": {"grid": ["feat_a", "feat_b"]},
                               "train.learning_rate": {"loguniform": [1.0e-3, 1.0e-1]}})
    raw["train"]["epochs"] = 1
    records = {r.cell: r for r in tune_models(config_from_dict(raw))}
    assert set(records) == {"tune-00-vbpr-feat_a", "tune-00-vbpr-feat_b"}
    for record in records.values():
        rates = [t["params"]["train.learning_rate"] for t in record.trials]
        assert len(rates) == 2 and len(set(rates)) == 2 and all(1e-3 <= r <= 1e-1 for r in rates)
    assert sorted(p.name for p in (out / "tune").iterdir() if p.is_dir()) == [
        "tune-00-vbpr-feat_a-p00", "tune-00-vbpr-feat_b-p01"]
