"""configs/mmrec_parity.yaml, MMRec's setup end to end, trains every model it names on an MMRec-format folder
under ``protocol: mmrec`` with MMRec's conventions in every run's recorded config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rmm.cli import main
from rmm.models.registry import MODELS
from rmm.runs import load_results
from tests.train.planted import write_mmrec_folder

PARITY = Path(__file__).resolve().parents[1] / "configs" / "mmrec_parity.yaml"
#: Registered models MMRec has no counterpart of; every other model must be in the parity config.
RMM_ONLY = {"profile"}


@pytest.mark.ray
def test_parity_config_trains_every_model_with_mmrecs_conventions(ray_cluster, tmp_path: Path) -> None:
    folder = write_mmrec_folder(tmp_path / "baby")
    out = tmp_path / "out"
    overrides = [f"dataset.path={folder}", f"output.dir={out}", "stages=[data, train, report]", "train.epochs=2",
                 "train.eval.topk=[5, 10, 20]", "train.batch_size=256"]  # 30 items: no cut-off 50; each model once
    assert main(["run", str(PARITY), *(a for o in overrides for a in ("--set", o))]) == 0

    runs = {r.model: r for r in load_results(out)}
    assert set(runs) == set(MODELS) - RMM_ONLY
    for model, run in runs.items():
        train = run.config["train"]
        assert train["eval"]["test_masks_valid"] is False and train["negatives"] == "train_items", model
        assert train["seed"] == 999 and train["eval"]["patience"] == 21 and train["batch_size"] == 256, model
        assert all(math.isfinite(v) for v in run.test.values()) and run.test["recall@20"] > 0, model
    assert runs["lattice"].config["train"]["lr_decay"] == runs["mgcn"].config["train"]["lr_decay"] == [0.96, 50]
    assert runs["lightgcn"].config["train"]["lr_decay"] == [1.0, 50]
    assert runs["lattice"].config["model"]["knn_self"] and runs["freedom"].config["model"]["knn_self"]
    assert runs["lattice"].config["model"]["ui_normalization"] == "row_self_loops"
    assert runs["freedom"].config["model"]["modality_weights"] == [0.1, 0.9]
    assert runs["bprmf"].config["model"]["reg_norm"] == "frobenius"
    assert runs["slmrec"].config["train"]["weight_decay"] == 1e-4
    assert runs["lightgcn"].config["train"]["weight_decay"] == 0
    assert (out / "report.md").exists()
