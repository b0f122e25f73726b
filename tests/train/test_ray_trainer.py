"""Ray Train wiring: 2-worker runs write the run record; sharded evaluation equals one worker's exactly; a
worker failure is survived from the last checkpoint and the run continues the uninterrupted curve."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rmm.config import Config, EvalConfig, FaultToleranceConfig, ModelConfig, OutputConfig, ScalingConfig, TrainConfig
from rmm.data.schema import TEST, load_dataset
from rmm.features.store import write_feature
from rmm.runs import PER_USER_FILE, RUN_FILE, RunRecord
from rmm.train.run import train_model
from tests.train.faults import FailOnceAt
from tests.train.planted import write_planted_dataset

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cfg = Config(output=OutputConfig(dir=str(tmp_path_factory.mktemp("out"))),
                 train=TrainConfig(epochs=2, batch_size=64, learning_rate=0.01,
                                   eval=EvalConfig(topk=(5, 10), metric="recall@10"),
                                   scaling=ScalingConfig(num_workers=2, cpus_per_worker=0.5),
                                   fault_tolerance=FaultToleranceConfig(checkpoint_every=1)))
    dataset = load_dataset(write_planted_dataset(cfg.dataset_dir))
    matrix = np.random.default_rng(0).normal(size=(dataset.num_items, 8))
    write_feature(cfg.feature_root, "image_tiny", matrix, {"kind": "test", "items_sha256": dataset.items_sha256})
    return cfg


@pytest.fixture(scope="module")
def trained(run_cfg: Config) -> Callable[[ModelConfig], RunRecord]:
    """The record of a plain 2-worker run of a model on ``run_cfg``, trained once per module (a worker group
    costs ~10 s to start): the record test and the failure test's reference share the LightGCN run."""
    records: dict[str, RunRecord] = {}

    def get(model_cfg: ModelConfig) -> RunRecord:
        if model_cfg.label not in records:
            records[model_cfg.label] = train_model(run_cfg, model_cfg)
        return records[model_cfg.label]

    return get


@pytest.mark.parametrize("model_cfg", [ModelConfig("lightgcn"), ModelConfig("vbpr", features=("image_tiny",))],
                         ids=lambda m: m.name)
def test_two_worker_run_returns_and_writes_the_record(ray_cluster, run_cfg: Config, trained,
                                                      model_cfg: ModelConfig) -> None:
    record = trained(model_cfg)

    assert record.model == model_cfg.name and record.features == model_cfg.features
    assert record.fusion is None  # one feature: nothing fused
    assert {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "map@10"} <= set(record.test)
    assert [h["epoch"] for h in record.history] == [1, 2] and record.resumed_after_epoch is None
    assert record.valid["recall@10"] == record.history[record.best_epoch - 1]["valid/recall@10"]
    run_dir = Path(record.run_dir)
    saved = json.loads((run_dir / RUN_FILE).read_text())
    assert saved["test"] == record.test and saved["seed"] == run_cfg.train.seed and "torch" in saved[
        "library_versions"]
    per_user = pd.read_parquet(run_dir / PER_USER_FILE)
    assert len(per_user) == load_dataset(run_cfg.dataset_dir).split(TEST)["user_id"].nunique()
    assert per_user["recall@10"].mean() == pytest.approx(record.test["recall@10"])
    assert (run_dir / "config.yaml").exists()


def test_two_workers_evaluate_a_fixed_model_exactly_like_one(ray_cluster, run_cfg: Config,
                                                             tmp_path: Path) -> None:
    import ray.train

    from rmm.train.ray_trainer import LeanTorchTrainer

    def evaluate_both_ways(config: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        import torch

        from rmm.data.graph import TrainGraph
        from rmm.data.schema import TEST, load_dataset
        from rmm.models.base import build_model
        from rmm.train.loop import EvalSplit, evaluate_split, rank_and_world

        data = load_dataset(config["dataset_dir"])
        torch.manual_seed(0)
        model = build_model(ModelConfig("lightgcn"), TrainGraph.from_dataset(data), {})
        split = EvalSplit.from_dataset(data, TEST)
        rank, world_size = rank_and_world()
        assert world_size == 2
        sharded = evaluate_split(model, split, (5, 10), rank=rank, world_size=world_size, batch_users=16)
        return sharded, evaluate_split(model, split, (5, 10), batch_users=16)

    trainer = LeanTorchTrainer(evaluate_both_ways, local_ray=True,
                               train_loop_config={"dataset_dir": str(run_cfg.dataset_dir.resolve())},
                               scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                               run_config=ray.train.RunConfig(name="eval-equality", storage_path=str(tmp_path)))
    sharded, single = trainer.fit().return_value
    pd.testing.assert_frame_equal(sharded, single, check_exact=True)


def test_worker_failure_resumes_from_the_checkpoint_and_continues_the_same_curve(
        ray_cluster, run_cfg: Config, trained, tmp_path: Path) -> None:
    reference = trained(ModelConfig("lightgcn"))  # the same run, uninterrupted
    # Epoch 1 is checkpointed (checkpoint_every=1); worker 1 dies after computing epoch 2, before reporting it.
    fail = FailOnceAt(epoch=2, marker=tmp_path / "failed")
    # max_failures is not part of the run's identity: --fresh retrains the reference's run from scratch.
    survived = train_model(run_cfg, ModelConfig("lightgcn"), fresh=True, wrap_report=fail,
                           train_cfg=dataclasses.replace(run_cfg.train, fault_tolerance=dataclasses.replace(
                               run_cfg.train.fault_tolerance, max_failures=1)))

    assert fail.marker.exists()  # the failure did happen
    assert survived.resumed_after_epoch == 1  # ... and the second attempt started from epoch 1's checkpoint
    assert [h["epoch"] for h in survived.history] == [1, 2]
    for key in ("loss", "valid/recall@10", "valid/ndcg@10"):
        assert [h[key] for h in survived.history] == [h[key] for h in reference.history]
    assert survived.test == reference.test and survived.best_epoch == reference.best_epoch


def test_worker_failure_without_retries_says_how_to_resume_and_a_rerun_does(
        ray_cluster, run_cfg: Config, trained, tmp_path: Path) -> None:
    reference = trained(ModelConfig("lightgcn"))
    fail = FailOnceAt(epoch=2, marker=tmp_path / "failed")  # epoch 1 is checkpointed, epoch 2 never is
    with pytest.raises(RuntimeError, match="InjectedFailure.*rerun the same command to resume from epoch 1"):
        train_model(run_cfg, ModelConfig("lightgcn"), fresh=True, wrap_report=fail)

    resumed = train_model(run_cfg, ModelConfig("lightgcn"))  # the same command again, as the message says
    assert resumed.resumed_after_epoch == 1 and resumed.run_name == reference.run_name
    assert resumed.test == reference.test


def test_train_with_another_learning_rate_keeps_both_runs_and_a_rerun_trains_nothing(
        ray_cluster, run_cfg: Config, trained, tmp_path: Path) -> None:
    from rmm.cli import main
    from rmm.runs import load_results

    reference = trained(ModelConfig("lightgcn"))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**run_cfg.to_dict(), "stages": ["train"], "model": [{"name": "lightgcn"}]}))
    assert main(["train", str(config)]) == 0  # the reference's inputs: reused, not trained again
    assert main(["train", str(config), "--set", "train.learning_rate=0.02"]) == 0
    runs = {r.config["train"]["learning_rate"]: r for r in load_results(run_cfg.out_dir)}
    assert set(runs) == {0.01, 0.02} and runs[0.01].run_name == reference.run_name
    assert runs[0.01].identity != runs[0.02].identity and runs[0.01].test == reference.test
    written = {name: (run_cfg.out_dir / "runs" / name / RUN_FILE).stat().st_mtime_ns
               for name in (r.run_name for r in runs.values())}

    assert main(["train", str(config), "--set", "train.learning_rate=0.02"]) == 0
    assert main(["train", str(config)]) == 0
    assert {name: (run_cfg.out_dir / "runs" / name / RUN_FILE).stat().st_mtime_ns for name in written} == written
    assert len(load_results(run_cfg.out_dir)) == 2


def test_a_nan_loss_in_a_worker_ends_the_command_in_one_line(ray_cluster, run_cfg: Config, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from rmm.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**run_cfg.to_dict(), "stages": ["train"], "model": [{"name": "lightgcn"}]}))
    # The loss overflows in epoch 1, inside a Ray Train worker: a user error, not a bug.
    assert main(["train", str(config), "--set", "train.learning_rate=1e30"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"rmm: error: run lightgcn-[0-9a-f]{10}: lightgcn: loss is (nan|inf) at epoch 1; lower "
                        r"train\.learning_rate.*", last), last


def test_missing_feature_fails_before_any_worker_starts(run_cfg: Config) -> None:
    with pytest.raises(FileNotFoundError, match="image_missing.*available: \\['image_tiny'\\]"):
        train_model(run_cfg, ModelConfig("vbpr", features=("image_missing",)))
