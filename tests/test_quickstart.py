"""The quickstart end to end at small size: every stage on the shared local Ray, then report and recommend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmm.cli import main

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SMALL = ["dataset.synthetic.num_users=120", "dataset.synthetic.num_items=90",
         "dataset.synthetic.interactions_per_user=15", "train.epochs=4", "train.eval_every=2"]


@pytest.mark.ray
def test_quickstart_runs_every_stage(ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "qs"
    args = ["run", str(QUICKSTART), "--set", f"output.dir={out}"]
    for override in SMALL:
        args += ["--set", override]
    assert main(args) == 0
    assert f"outputs in {out}" in capsys.readouterr().out

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
    tuned = next(r for r in runs.values() if r["stage"] == "tune")
    assert len(tuned["trials"]) == 2
    assert {t["params"]["train.learning_rate"] for t in tuned["trials"]} == {0.001, 0.01}
    for name, run in runs.items():
        assert {"recall@20", "ndcg@20", "recall@10", "ndcg@10"} <= set(run["test"])
        record_dir = out / "runs" / name
        record = json.loads((record_dir / "run.json").read_text())
        assert record["seed"] == 2024 and "torch" in record["library_versions"]
        per_user = pd.read_parquet(record_dir / "per_user_test.parquet")
        assert per_user["recall@20"].mean() == pytest.approx(run["test"]["recall@20"])

    report = (out / "report.md").read_text()
    assert "| lightgcn |" in report and "| vbpr |" in report and "image_stats+text_minilm" in report

    assert main(["recommend", str(out), "--user", "0", "-k", "3"]) == 0
    printed = capsys.readouterr().out
    titles = set(pd.read_parquet(out / "data" / "synthetic" / "items.parquet")["title"])
    assert sum(any(t in line for t in titles) for line in printed.splitlines()) >= 3
