"""A run's identity covers exactly what decides its numbers: model and train settings, the dataset's files and
each input feature's values; not how the run executes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from rmm.config import (
    Config,
    EvalConfig,
    FaultToleranceConfig,
    ModelConfig,
    OutputConfig,
    ScalingConfig,
    TrainConfig,
    build_model_config,
)
from rmm.data.schema import load_dataset
from rmm.errors import DataError
from rmm.features.store import write_feature
from rmm.runs import run_name
from rmm.train.identity import changed_inputs, run_inputs
from tests.train.planted import write_planted_dataset

VBPR = ModelConfig("vbpr", features=("image",))


def _write_inputs(cfg: Config, seed: int = 0, scale: float = 1.0) -> None:
    dataset = load_dataset(write_planted_dataset(cfg.dataset_dir, seed=seed))
    matrix = scale * np.random.default_rng(0).normal(size=(dataset.num_items, 4))
    write_feature(cfg.feature_root, "image", matrix, {"kind": "test", "items_sha256": dataset.items_sha256})


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    cfg = Config(output=OutputConfig(dir=str(tmp_path)),
                 train=TrainConfig(eval=EvalConfig(topk=(5, 10), metric="recall@10")))
    _write_inputs(cfg)
    return cfg


def _identity(cfg: Config, model: ModelConfig = VBPR, **train: object) -> str:
    return run_inputs(cfg, model, dataclasses.replace(cfg.train, **train)).identity


def test_identity_changes_with_what_decides_the_numbers(cfg: Config) -> None:
    base = _identity(cfg)
    assert _identity(cfg) == base  # deterministic
    assert _identity(cfg, learning_rate=0.01) != base
    assert _identity(cfg, seed=7) != base
    assert _identity(cfg, eval=EvalConfig(topk=(5, 20), metric="recall@20")) != base
    wider = build_model_config({"name": "vbpr", "features": ["image"], "embedding_dim": 32}, "model[0]")
    assert _identity(cfg, wider) != base


def test_identity_ignores_how_the_run_executes(cfg: Config) -> None:
    base = _identity(cfg)
    assert _identity(cfg, scaling=ScalingConfig(num_workers=1, cpus_per_worker=0.25, use_gpu=True),
                     fault_tolerance=FaultToleranceConfig(checkpoint_every=9, max_failures=3)) == base


def test_identity_changes_with_the_dataset_and_the_features(cfg: Config) -> None:
    base = _identity(cfg)
    name = run_name(VBPR, base)
    assert name.startswith("vbpr-image-") and len(name) == len("vbpr-image-") + 10
    recorded = run_inputs(cfg, VBPR, cfg.train).to_dict()

    _write_inputs(cfg, scale=2.0)  # same dataset, other feature values
    assert _identity(cfg) != base
    assert changed_inputs(recorded, cfg.out_dir, cfg.dataset.name) == ["feature image"]

    _write_inputs(cfg, seed=1)  # the dataset prepared again with another split
    assert _identity(cfg) != base
    assert "dataset interactions.parquet" in changed_inputs(recorded, cfg.out_dir, cfg.dataset.name)


def test_a_dataset_edited_after_preparation_is_refused(cfg: Config) -> None:
    interactions = cfg.dataset_dir / "interactions.parquet"
    interactions.write_bytes(interactions.read_bytes() + b"\0")
    with pytest.raises(DataError, match="interactions.parquet differ.*re-run `rmm data prepare CONFIG`"):
        run_inputs(cfg, VBPR, cfg.train)


def test_a_model_given_with_or_without_its_default_params_is_one_run(cfg: Config) -> None:
    spelled_out = build_model_config({"name": "vbpr", "features": ["image"]}, "model[0]")
    assert spelled_out.params is not None and VBPR.params is None
    assert _identity(cfg, spelled_out) == _identity(cfg, VBPR)
