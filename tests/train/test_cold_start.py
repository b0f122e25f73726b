"""Cold-start items end to end without Ray: ``dataset.cold_items`` holds items out of training, ``fit`` never
trains on them and tests them apart, and a content model scores them where an ID-only model cannot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rmm.config import DatasetConfig, EvalConfig, FaultToleranceConfig, ModelConfig, ScalingConfig, TrainConfig
from rmm.data.graph import TrainGraph
from rmm.data.preprocess import RawData, Skips, cold_item_ids, preprocess
from rmm.data.schema import TEST, TRAIN, VALID, Dataset, load_dataset, write_dataset
from rmm.models.base import build_model
from rmm.train.loop import fit
from tests.train.planted import write_planted_dataset

GROUPS = 4
TRAIN_CFG = TrainConfig(epochs=6, batch_size=64, learning_rate=0.01, eval=EvalConfig(topk=(5, 10), metric="recall@10"),
                        scaling=ScalingConfig(num_workers=1), fault_tolerance=FaultToleranceConfig(checkpoint_every=6))


def planted_raw(num_users: int = 120, num_items: int = 80, per_user: int = 10, seed: int = 0) -> RawData:
    """User u interacts with ``per_user`` items of group ``u % GROUPS`` (item i is in group ``i % GROUPS``)."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{user:03d}", f"i{item:03d}", t) for user in range(num_users)
            for t, item in enumerate(rng.choice(np.arange(user % GROUPS, num_items, GROUPS), per_user, replace=False))]
    items = pd.DataFrame({"source_id": [f"i{i:03d}" for i in range(num_items)], "title": "", "text": "",
                          "image_source": None})
    return RawData(items=items, interactions=pd.DataFrame(rows, columns=["user", "item", "timestamp"]))


def group_features(num_items: int, permute: bool = False) -> dict[str, torch.Tensor]:
    """One-hot item groups plus a little noise; ``permute`` shuffles the groups across items (no signal left)."""
    generator = torch.Generator().manual_seed(0)
    groups = torch.arange(num_items) % GROUPS
    if permute:
        groups = groups[torch.randperm(num_items, generator=generator)]
    noise = 0.05 * torch.randn(num_items, GROUPS, generator=generator)
    return {"image": torch.nn.functional.one_hot(groups, GROUPS).float() + noise}


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The planted data with a quarter of the items cold, split 8:1:1 at random otherwise."""
    cfg = DatasetConfig(name="cold", user_core=0, item_core=0, split="random_ratio", cold_items=0.25, seed=1)
    prepared = preprocess(planted_raw(), cfg, Skips())
    items = prepared.items.drop(columns=["image_source"]).assign(image_path=None)
    root = write_dataset(tmp_path_factory.mktemp("cold"), items, prepared.interactions, prepared.users,
                         prepared.info)
    return load_dataset(root)


def cold_test_users(data: Dataset) -> set[int]:
    test = data.split(TEST)
    return set(test.loc[test["item_id"].isin(cold_item_ids(data.info)), "user_id"].tolist())


@pytest.mark.slow  # model fits
def test_content_model_scores_cold_items_an_id_only_model_cannot(cold: Dataset) -> None:
    features = group_features(cold.num_items)
    content = fit(ModelConfig("vbpr", features=("image",)), TRAIN_CFG, cold, features)
    id_only = fit(ModelConfig("bprmf"), TRAIN_CFG, cold, {})
    shuffled = group_features(cold.num_items, permute=True)
    blind = fit(ModelConfig("vbpr", features=("image",)), TRAIN_CFG, cold, shuffled)

    # A user's cold test items are among the ~70 items it has not trained on: random Recall@10 is about 1/7.
    # VBPR's content term places a cold item in its group; BPR-MF's cold embeddings are their random init.
    assert content.test_cold["recall@10"] > 0.7
    assert id_only.test_cold["recall@10"] < 0.3
    assert blind.test_cold["recall@10"] < 0.35  # the gain is the features' group signal, not VBPR itself
    for result in (content, id_only, blind):
        assert set(result.test_cold) == set(result.test)
        assert set(result.test_cold_per_user["user_id"]) == cold_test_users(cold) != set()
        assert result.test_cold["ndcg@10"] == pytest.approx(result.test_cold_per_user["ndcg@10"].mean())
        assert len(result.test_per_user) == cold.split(TEST)["user_id"].nunique()  # test: all test items, as before
    assert len(cold_test_users(cold)) == cold.info["cold_items"]["users"]["test"]


@pytest.mark.slow  # model fits
def test_training_never_touches_a_cold_item(cold: Dataset) -> None:
    # Neither a positive nor a negative: BPR-MF's cold item rows get no gradient and keep their initial values.
    result = fit(ModelConfig("bprmf"), dataclasses.replace(TRAIN_CFG, epochs=3), cold, {})
    torch.manual_seed(TRAIN_CFG.seed)  # as fit seeds before building the model
    initial = build_model(ModelConfig("bprmf"), TrainGraph.from_dataset(cold), {}).state_dict()
    ids = torch.from_numpy(cold_item_ids(cold.info))
    warm = torch.from_numpy(np.setdiff1d(np.arange(cold.num_items), ids.numpy()))
    trained, start = result.best_state["item_embedding.weight"], initial["item_embedding.weight"]
    assert result.best_epoch >= 1
    assert torch.equal(trained[ids], start[ids])
    assert not torch.isclose(trained[warm], start[warm]).all(dim=1).any()


def test_without_cold_items_there_are_no_cold_metrics(tmp_path: Path) -> None:
    planted = load_dataset(write_planted_dataset(tmp_path))
    features = group_features(planted.num_items)
    result = fit(ModelConfig("itemknn_content", features=("image",)), TRAIN_CFG, planted, features)
    assert result.test and result.test_cold == {} and result.test_cold_per_user.empty


def test_cold_items_without_a_test_interaction_give_no_metric_not_nan(cold: Dataset, tmp_path: Path) -> None:
    # Move every cold test interaction to valid: there is no cold test user, so no cold metric at all.
    frame = cold.interactions.copy()
    frame.loc[frame["item_id"].isin(cold_item_ids(cold.info)) & (frame["split"] == TEST), "split"] = VALID
    assert (frame["split"] == TEST).any() and (frame["split"] == TRAIN).any()
    moved = load_dataset(write_dataset(tmp_path, cold.items, frame, cold.users, dict(cold.info)))
    features = group_features(moved.num_items)
    result = fit(ModelConfig("itemknn_content", features=("image",)), TRAIN_CFG, moved, features)
    assert result.test and result.test_cold == {} and result.test_cold_per_user.empty
