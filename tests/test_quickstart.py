"""The quickstart end to end at small size, as a user runs it: ``rmm run`` in its own process (its own local
Ray), then report and recommend; what its console shows, and that Ray's output went to the logs instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmm.cli import main
from rmm.console import LOGS_DIR, NATIVE_LOG, RMM_LOG, WORKERS_LOG

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SMALL = ["dataset.synthetic.num_users=120", "dataset.synthetic.num_items=90",
         "dataset.synthetic.interactions_per_user=15", "train.epochs=4", "train.eval.every=2"]
#: What Ray prints by itself, which the console must not show without -v (each was on it before).
RAY_NOISE = ("TrainingReport", "core_worker.cc", "logging_progress", "Checkpoint successfully created",
             "(RayTrainWorker", "Configuration for experiment")


def rmm(*args: str) -> subprocess.CompletedProcess[str]:
    """``rmm ARGS`` in a fresh process, stdout and stderr together as a terminal shows them."""
    return subprocess.run([sys.executable, "-m", "rmm.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)


@pytest.mark.ray
def test_quickstart_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "qs"
    overrides = [arg for override in [f"output.dir={out}", *SMALL] for arg in ("--set", override)]
    run = rmm("run", str(QUICKSTART), *overrides)
    assert run.returncode == 0, run.stdout[-5000:]

    console = run.stdout.splitlines()
    assert len(console) <= 60, run.stdout
    summaries = {"data": " users, ", "extract": " features", "train": " runs; best valid recall@20 ",
                 "tune": " trials; best valid recall@20 ", "report": "report.md"}
    for stage, says in summaries.items():  # one summary line each (besides sparse progress lines, no terminal)
        assert sum(line.startswith(f"{stage} ") and says in line for line in console) == 1, (stage, run.stdout)
    assert any(line.split()[:2] == ["run", "stage"] for line in console), run.stdout  # the table of runs
    assert f"done: outputs in {out}" in console[-1] and f"logs: {out / LOGS_DIR}" in console[-1]
    assert not [noise for noise in RAY_NOISE if noise in run.stdout], run.stdout
    logs = out / LOGS_DIR
    workers = (logs / WORKERS_LOG).read_text()
    assert "(RayTrainWorker" in workers and "TrainingReport" in workers and "epoch 4 loss" in workers
    assert "core_worker" in (logs / NATIVE_LOG).read_text()
    assert "stage train" in (logs / RMM_LOG).read_text()

    info = json.loads((out / "data" / "synthetic" / "dataset.json").read_text())
    num_items = info["counts"]["items"]
    assert (out / "config.yaml").exists()
    for feature in ("lvlm_tinyqwen2vl_mean", "text_minilm", "image_stats"):
        matrix = np.load(out / "features" / "synthetic" / feature / "matrix.npy")
        manifest = json.loads((out / "features" / "synthetic" / feature / "manifest.json").read_text())
        assert matrix.shape == (num_items, manifest["dim"]) and np.isfinite(matrix).all()
        assert manifest["counts"]["done"] == num_items

    runs = {r["run_name"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert sorted(r["stage"] for r in runs.values()) == ["train", "train", "train", "tune"]
    assert all(name in run.stdout for name in runs)  # one table row each
    tuned = next(r for r in runs.values() if r["stage"] == "tune")
    assert len(tuned["trials"]) == 2
    assert {t["params"]["train.learning_rate"] for t in tuned["trials"]} == {0.001, 0.01}
    for name, record_summary in runs.items():
        assert {"recall@20", "ndcg@20", "recall@10", "ndcg@10"} <= set(record_summary["test"])
        record_dir = out / "runs" / name
        record = json.loads((record_dir / "run.json").read_text())
        assert record["seed"] == 2024 and "torch" in record["library_versions"]
        per_user = pd.read_parquet(record_dir / "per_user_test.parquet")
        assert per_user["recall@20"].mean() == pytest.approx(record_summary["test"]["recall@20"])

    report = (out / "report.md").read_text()
    assert "| lightgcn |" in report and "| vbpr |" in report and "image_stats+text_minilm" in report

    assert main(["recommend", str(out), "--user", "0", "-k", "3"]) == 0
    printed = capsys.readouterr().out
    titles = set(pd.read_parquet(out / "data" / "synthetic" / "items.parquet")["title"])
    assert sum(any(t in line for t in titles) for line in printed.splitlines()) >= 3

    # -v brings Ray's own output back: one more (short) training run, as Ray prints it.
    verbose = rmm("-v", "train", str(QUICKSTART), *overrides, "--set", "model=[{name: lightgcn}]",
                  "--set", "tune=null", "--set", "train.epochs=2")
    assert verbose.returncode == 0, verbose.stdout[-5000:]
    assert "(RayTrainWorker" in verbose.stdout and "TrainingReport" in verbose.stdout
