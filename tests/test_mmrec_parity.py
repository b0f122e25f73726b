"""configs/mmrec_parity.yaml, MMRec's setup end to end: every registered model MMRec (or its authors' MMRec-based
code) has is in it, and under ``protocol: mmrec`` each gets MMRec's conventions; ``rmm run`` of the config trains
on an MMRec-format folder and records them in every run.

Every model trains through Ray Train in tests/train/test_ray_zoo.py; the end-to-end run here takes a subset (a
Ray Train job per model costs ~15 s on 2 cores) that covers each kind of setting the config carries: the protocol's
train conventions, a model entry's own ``train:`` block (LATTICE's lr_decay, SLMRec's weight_decay), model switches
(kNN self-loops, LATTICE's normalisation, FREEDOM's modality weights, BPR-MF's EmbLoss norm)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from rmm.cli import main
from rmm.config import load_config, protocol_defaults
from rmm.models.registry import MODELS
from rmm.runs import load_results
from tests.train.planted import write_mmrec_folder

PARITY = Path(__file__).resolve().parents[1] / "configs" / "mmrec_parity.yaml"
#: Registered models MMRec has no counterpart of; every other model must be in the parity config.
RMM_ONLY = {"profile"}
#: The models the end-to-end run trains.
END_TO_END = ("bprmf", "lightgcn", "lattice", "freedom", "slmrec")


def _has_mmrecs_train_conventions(train: dict) -> bool:
    """``overall.yaml``'s values and MMRec's evaluation and sampling rules, in a recorded train section."""
    return (train["eval"]["test_masks_valid"] is False and train["negatives"] == "train_items"
            and train["seed"] == 999 and train["eval"]["patience"] == 21)


def test_parity_config_names_every_mmrec_model_with_its_mmrec_switches() -> None:
    cfg = load_config(PARITY)  # validates every entry's keys and grid against its model's config
    assert {m.name for m in cfg.model} == set(MODELS) - RMM_ONLY
    entries = {entry["name"]: entry for entry in yaml.safe_load(PARITY.read_text())["model"]}
    for model in cfg.model:
        train = dataclasses.asdict(cfg.train_for(model))
        assert _has_mmrecs_train_conventions(train) and train["batch_size"] == 2048, model.name
        params = dataclasses.asdict(model.params)
        for key, value in protocol_defaults(type(model.params), "mmrec").items():
            if key not in entries[model.name]:  # an explicit value in the entry wins
                assert params[key] == value, (model.name, key)


@pytest.mark.ray
def test_parity_config_trains_with_mmrecs_conventions_recorded(ray_cluster, tmp_path: Path) -> None:
    config = yaml.safe_load(PARITY.read_text())
    config["model"] = [entry for entry in config["model"] if entry["name"] in END_TO_END]
    subset = tmp_path / "parity.yaml"
    subset.write_text(yaml.safe_dump(config))
    folder = write_mmrec_folder(tmp_path / "baby")
    out = tmp_path / "out"
    overrides = [f"dataset.path={folder}", f"output.dir={out}", "stages=[data, train, report]", "train.epochs=2",
                 "train.eval.topk=[5, 10, 20]", "train.batch_size=256"]  # 30 items: no cut-off 50; each model once
    assert main(["run", str(subset), *(a for o in overrides for a in ("--set", o))]) == 0

    runs = {r.model: r for r in load_results(out)}
    assert set(runs) == set(END_TO_END)
    for model, run in runs.items():
        assert _has_mmrecs_train_conventions(run.config["train"]), model
        assert run.config["train"]["batch_size"] == 256, model
        assert all(math.isfinite(v) for v in run.test.values()) and run.test["recall@20"] > 0, model
    assert runs["lattice"].config["train"]["lr_decay"] == [0.96, 50]
    assert runs["lightgcn"].config["train"]["lr_decay"] == [1.0, 50]
    assert runs["lattice"].config["model"]["knn_self"] and runs["freedom"].config["model"]["knn_self"]
    assert runs["lattice"].config["model"]["ui_normalization"] == "row_self_loops"
    assert runs["freedom"].config["model"]["modality_weights"] == [0.1, 0.9]
    assert runs["bprmf"].config["model"]["reg_norm"] == "frobenius"
    assert runs["slmrec"].config["train"]["weight_decay"] == 1e-4
    assert runs["lightgcn"].config["train"]["weight_decay"] == 0
    assert (out / "report.md").exists()
