"""Ray Train wiring: 2-worker runs write the run record; sharded evaluation equals one worker's exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmm.config import Config, ModelConfig, OutputConfig, TrainConfig
from rmm.data.schema import TEST, load_dataset
from rmm.features.store import write_feature
from rmm.train.ray_trainer import PER_USER_FILE, RUN_FILE, train_model
from tests.train.planted import write_planted_dataset

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cfg = Config(output=OutputConfig(dir=str(tmp_path_factory.mktemp("out"))),
                 train=TrainConfig(epochs=2, batch_size=64, learning_rate=0.01, topk=(5, 10), metric="recall@10",
                                   num_workers=2, cpus_per_worker=0.5, checkpoint_every=1))
    dataset = load_dataset(write_planted_dataset(cfg.dataset_dir))
    matrix = np.random.default_rng(0).normal(size=(dataset.num_items, 8))
    write_feature(cfg.feature_root, "image_tiny", matrix, {"kind": "test"})
    return cfg


@pytest.mark.parametrize("model_cfg", [ModelConfig("lightgcn"), ModelConfig("vbpr", features=("image_tiny",))],
                         ids=lambda m: m.name)
def test_two_worker_run_returns_and_writes_the_record(ray_cluster, run_cfg: Config, model_cfg: ModelConfig) -> None:
    record = train_model(run_cfg, model_cfg, run_name=f"test-{model_cfg.name}")

    assert {"model", "features", "fusion", "config", "best_epoch", "valid", "test", "train_seconds", "history",
            "run_dir"} <= set(record)
    assert record["model"] == model_cfg.name and record["features"] == list(model_cfg.features)
    assert record["fusion"] is None  # one feature: nothing fused
    assert {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "map@10"} <= set(record["test"])
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert record["valid"]["recall@10"] == record["history"][record["best_epoch"] - 1]["valid/recall@10"]
    run_dir = Path(record["run_dir"])
    saved = json.loads((run_dir / RUN_FILE).read_text())
    assert saved["test"] == record["test"] and saved["seed"] == run_cfg.train.seed and "torch" in saved[
        "library_versions"]
    per_user = pd.read_parquet(run_dir / PER_USER_FILE)
    assert len(per_user) == load_dataset(run_cfg.dataset_dir).split(TEST)["user_id"].nunique()
    assert per_user["recall@10"].mean() == pytest.approx(record["test"]["recall@10"])
    assert (run_dir / "config.yaml").exists()


def test_two_workers_evaluate_a_fixed_model_exactly_like_one(ray_cluster, run_cfg: Config,
                                                             tmp_path: Path) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

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

    trainer = TorchTrainer(evaluate_both_ways, train_loop_config={"dataset_dir": str(run_cfg.dataset_dir)},
                           scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           run_config=ray.train.RunConfig(name="eval-equality", storage_path=str(tmp_path)))
    sharded, single = trainer.fit().return_value
    pd.testing.assert_frame_equal(sharded, single, check_exact=True)


def test_missing_feature_fails_before_any_worker_starts(run_cfg: Config) -> None:
    with pytest.raises(FileNotFoundError, match="image_missing.*available: \\['image_tiny'\\]"):
        train_model(run_cfg, ModelConfig("vbpr", features=("image_missing",)), run_name="never")
