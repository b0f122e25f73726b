"""One-worker runs trained in the command's own process (``train.scaling.launcher``): when a run does, that it
starts no Ray, that it gives exactly the numbers of the same run in a Ray Train worker, and that a failure says
how to resume and a rerun does, on the uninterrupted curve."""

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
    RayConfig,
    ScalingConfig,
    TrainConfig,
)
from rmm.data.schema import load_dataset
from rmm.errors import ConfigError
from rmm.features.store import write_feature
from rmm.storage import RAY_RESULTS_DIR
from rmm.train.in_process import CHECKPOINT_PREFIX, trains_in_process
from rmm.train.run import train_model
from tests.train.faults import FailOnceAt
from tests.train.planted import write_planted_dataset

MODEL = ModelConfig("vbpr", features=("image_tiny",))


def _train(**changes: object) -> TrainConfig:
    fields: dict[str, object] = {"epochs": 3, "batch_size": 64, "learning_rate": 0.01,
                                 "eval": EvalConfig(topk=(5, 10), metric="recall@10"),
                                 "scaling": ScalingConfig(num_workers=1, cpus_per_worker=1),
                                 "fault_tolerance": FaultToleranceConfig(checkpoint_every=1)}
    return TrainConfig(**{**fields, **changes})  # type: ignore[arg-type]


def _scaling(**changes: object) -> ScalingConfig:
    return dataclasses.replace(ScalingConfig(num_workers=1), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("scaling", "max_failures", "address", "expected"), [
    (_scaling(), 0, None, True),
    (_scaling(num_workers=2), 0, None, False),  # DDP needs Ray Train's workers
    (_scaling(), 1, None, False),  # restarts need Ray Train
    (_scaling(), 0, "auto", False),  # a cluster
    (_scaling(launcher="ray_train"), 0, None, False),
    (_scaling(launcher="in_process", use_gpu=True), 0, None, True),
])
def test_auto_trains_in_process_only_what_needs_no_ray_train(scaling: ScalingConfig, max_failures: int,
                                                             address: str | None, expected: bool) -> None:
    cfg = Config(ray=RayConfig(address=address))
    train = TrainConfig(scaling=scaling, fault_tolerance=FaultToleranceConfig(max_failures=max_failures))
    assert trains_in_process(cfg, train) is expected


def test_in_process_is_refused_where_it_cannot_do_what_the_config_asks() -> None:
    with pytest.raises(ValueError, match="launcher in_process trains one worker, got num_workers 2"):
        ScalingConfig(num_workers=2, launcher="in_process")
    with pytest.raises(ValueError, match="in_process cannot restart a failed run itself"):
        TrainConfig(scaling=_scaling(launcher="in_process"), fault_tolerance=FaultToleranceConfig(max_failures=2))
    with pytest.raises(ValueError, match="launcher must be one of"):
        ScalingConfig(launcher="local")
    with pytest.raises(ConfigError, match="not on the Ray cluster at auto"):
        trains_in_process(Config(ray=RayConfig(address="auto")), TrainConfig(scaling=_scaling(launcher="in_process")))


def _numbers(history: tuple[dict[str, float], ...]) -> list[dict[str, float]]:
    """A run's history without its timings."""
    return [{key: value for key, value in entry.items() if not key.endswith("_seconds")} for entry in history]


@pytest.fixture
def run_cfg(tmp_path: Path) -> Config:
    cfg = Config(output=OutputConfig(dir=str(tmp_path / "out")), train=_train())
    dataset = load_dataset(write_planted_dataset(cfg.dataset_dir))
    matrix = np.random.default_rng(0).normal(size=(dataset.num_items, 8))
    write_feature(cfg.feature_root, "image_tiny", matrix, {"kind": "test", "items_sha256": dataset.items_sha256})
    return cfg


@pytest.mark.slow
def test_a_failed_in_process_run_says_how_to_resume_and_a_rerun_continues_the_same_curve(
        run_cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    import rmm.train.ray_trainer

    def tripped(*args: object, **kwargs: object) -> None:
        raise AssertionError("a one-worker run on a local machine started Ray")

    monkeypatch.setattr(ray, "init", tripped)
    monkeypatch.setattr(rmm.train.ray_trainer, "fit_with_ray_train", tripped)
    reference = train_model(run_cfg, MODEL)
    fail = FailOnceAt(epoch=3, marker=tmp_path / "failed")  # epochs 1 and 2 are checkpointed, 3 never is
    with pytest.raises(RuntimeError, match="InjectedFailure.*rerun the same command to resume from epoch 2"):
        train_model(run_cfg, MODEL, fresh=True, wrap_report=fail)
    ray_dir = run_cfg.out_dir / RAY_RESULTS_DIR / reference.run_name
    assert [path.name for path in ray_dir.iterdir()] == [f"{CHECKPOINT_PREFIX}000002"]  # the newest one only

    resumed = train_model(run_cfg, MODEL)  # the same command again, as the message says

    assert fail.marker.exists() and resumed.resumed_after_epoch == 2 and resumed.run_name == reference.run_name
    assert _numbers(resumed.history) == _numbers(reference.history)
    assert resumed.test == reference.test and resumed.best_epoch == reference.best_epoch


@pytest.mark.ray
def test_an_in_process_run_gives_exactly_the_numbers_of_the_same_run_in_a_ray_train_worker(
        ray_cluster, run_cfg: Config) -> None:
    in_ray_train = train_model(run_cfg, MODEL, train_cfg=_train(scaling=_scaling(cpus_per_worker=1,
                                                                               launcher="ray_train")))
    in_process = train_model(run_cfg, MODEL, train_cfg=_train(scaling=_scaling(cpus_per_worker=1,
                                                                             launcher="in_process")), fresh=True)

    assert in_process.run_name == in_ray_train.run_name  # how a run executes is not part of its identity
    assert in_ray_train.resumed_after_epoch is None and in_process.resumed_after_epoch is None  # both trained
    assert _numbers(in_process.history) == _numbers(in_ray_train.history)  # losses, metrics, epoch by epoch
    assert in_process.test == in_ray_train.test and in_process.valid == in_ray_train.valid
