"""Every registered model trains data-parallel through Ray Train with 2 workers, on the synthetic dataset and on
an MMRec-format one (``.inter`` + ``image_feat.npy`` / ``text_feat.npy``), each prepared by the data stage.

A worker group costs ~10 s to start, so one ``TorchTrainer`` trains every (dataset, model) run in turn:
each is :func:`rmm.train.ray_trainer.fit_in_worker`, exactly what ``train_model``'s workers run (inputs read
from disk, DDP via ``prepare_model``, sharded BPR sampling and evaluation, ``ray.train.report`` with
checkpoints), minus the restore of a previous attempt's checkpoint, which belongs to one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rmm.config import (
    Config,
    DatasetConfig,
    EvalConfig,
    FaultToleranceConfig,
    ModelConfig,
    OutputConfig,
    ScalingConfig,
    SyntheticConfig,
    TrainConfig,
)
from rmm.data.prepare import prepare_dataset
from rmm.data.schema import load_dataset
from rmm.features.store import write_feature
from rmm.models import MODELS, get_model_class
from rmm.stages import run_data
from rmm.train.worker import worker_config
from tests.train.planted import write_mmrec_folder

pytestmark = pytest.mark.ray

TRAIN = TrainConfig(epochs=2, batch_size=128, learning_rate=0.01,
                    eval=EvalConfig(every=2, topk=(5, 10), metric="recall@10"),
                    scaling=ScalingConfig(num_workers=2, cpus_per_worker=0.5),
                    fault_tolerance=FaultToleranceConfig(checkpoint_every=2))


def _synthetic(root: Path) -> tuple[Config, tuple[str, ...]]:
    """The built-in synthetic dataset, small, with two content features written from its latent attributes:
    ``image_attrs`` (category, colour, pattern one-hot plus noise; item 0 missing) and ``text_attrs``
    (category, material, style)."""
    cfg = Config(dataset=DatasetConfig(name="synthetic", source="synthetic", user_core=2, item_core=2,
                                       synthetic=SyntheticConfig(num_users=60, num_items=40,
                                                                 interactions_per_user=10, image_size=8)),
                 output=OutputConfig(dir=str(root)), train=TRAIN)
    dataset = load_dataset(prepare_dataset(cfg).root)
    items = dataset.items
    rng = np.random.default_rng(0)
    for name, attributes in (("image_attrs", ["category", "colour", "pattern"]),
                             ("text_attrs", ["category", "material", "style"])):
        matrix = pd.get_dummies(items[attributes]).to_numpy(np.float32)
        matrix += 0.05 * rng.standard_normal(matrix.shape).astype(np.float32)
        missing = {0: "no image"} if name == "image_attrs" else {}
        matrix[list(missing)] = 0.0
        write_feature(cfg.feature_root, name, matrix, {"kind": "test", "items_sha256": dataset.items_sha256},
                      missing=missing)
    return cfg, ("image_attrs", "text_attrs")


def _mmrec(root: Path) -> tuple[Config, tuple[str, ...]]:
    """The MMRec-format fixture (:func:`tests.train.planted.write_mmrec_folder`), prepared with its x_label."""
    folder = write_mmrec_folder(root / "mmrec")
    cfg = Config(dataset=DatasetConfig(name="baby", source="mmrec", path=str(folder), user_core=0, item_core=0,
                                       split="predefined"),
                 output=OutputConfig(dir=str(root / "out")), train=TRAIN)
    run_data(cfg)  # the data stage: the dataset, and its shipped features into the store
    return cfg, ("mmrec_image", "mmrec_text")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """``"<dataset>/<model>"`` -> the worker config of one run: every registered model (content models read
    both features) on both datasets."""
    out = {}
    for dataset, build in (("synthetic", _synthetic), ("mmrec", _mmrec)):
        cfg, features = build(tmp_path_factory.mktemp(dataset))
        for name, spec in sorted(MODELS.items()):
            model_cfg = ModelConfig(name, features=features if spec.uses_features else ())
            out[f"{dataset}/{name}"] = worker_config(cfg, model_cfg, name=name, train_cfg=TRAIN)
    return out


def test_every_model_trains_with_two_ray_train_workers_on_synthetic_and_mmrec_data(
        ray_cluster, runs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    def train_every_model(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        import hashlib

        import torch.distributed as dist

        from rmm.train.ray_trainer import fit_in_worker

        results = {}
        for key, run in config["runs"].items():
            fitted = fit_in_worker(run)
            weights = hashlib.sha256(b"".join(v.numpy().tobytes() for v in fitted.best_state.values())).hexdigest()
            every_rank = [None] * dist.get_world_size()
            dist.all_gather_object(every_rank, weights)
            results[key] = {"history": fitted.history, "test": fitted.test, "world_size": dist.get_world_size(),
                            "ranks_agree": len(set(every_rank)) == 1}
        return results

    trainer = TorchTrainer(train_every_model, train_loop_config={"runs": runs},
                           scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           run_config=ray.train.RunConfig(name="zoo", storage_path=str(tmp_path),
                                                          checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    results = trainer.fit().return_value

    assert sorted(results) == sorted(runs) and len(results) == 2 * len(MODELS)
    for key, result in results.items():
        model = key.split("/")[1]
        assert result["world_size"] == 2, key
        assert result["ranks_agree"], f"{key}: DDP replicas diverged"  # gradients were all-reduced every step
        assert [h["epoch"] for h in result["history"]] == ([2] if get_model_class(model).trainable else [1]), key
        loss = result["history"][-1]["loss"]
        assert np.isfinite(loss) and (loss != 0) == get_model_class(model).trainable, key  # SelfCF: negative
        assert all(0.0 <= value <= 1.0 for value in result["test"].values()), key
