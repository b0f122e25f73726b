"""fit in plain torch on a tiny planted dataset: learning, NaN guard, early stopping, exact resume."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch

from rmm.config import EvalConfig, FaultToleranceConfig, ModelConfig, ScalingConfig, TrainConfig
from rmm.data.graph import TrainGraph
from rmm.data.schema import TEST, VALID, Dataset, load_dataset
from rmm.train.loop import BPRSampler, EvalSplit, epoch_learning_rate, fit
from tests.train.planted import write_planted_dataset

TRAIN = TrainConfig(epochs=8, batch_size=64, learning_rate=0.01, eval=EvalConfig(topk=(5, 10), metric="recall@10"),
                    scaling=ScalingConfig(num_workers=1), fault_tolerance=FaultToleranceConfig(checkpoint_every=2))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return load_dataset(write_planted_dataset(tmp_path_factory.mktemp("planted")))


@pytest.mark.slow  # model fits
def test_fit_learns_planted_structure_and_reports(planted: Dataset) -> None:
    reports = []
    result = fit(ModelConfig("bprmf"), TRAIN, planted, {}, report=lambda m, c: reports.append((m, c)))

    # A user's one test item is among the 33 items it has not seen: random Recall@5 is about 5/33.
    assert result.test["recall@5"] > 0.6
    assert result.valid["recall@10"] == max(h["valid/recall@10"] for h in result.history)
    assert [h["epoch"] for h in result.history] == list(range(1, 9))
    assert [m for m, _ in reports] == result.history
    assert [c is not None for _, c in reports] == [False, True, False, True, False, True, False, True]
    assert len(result.test_per_user) == planted.num_users
    assert result.test["recall@5"] == pytest.approx(result.test_per_user["recall@5"].mean())
    assert result.train_seconds > 0


def test_nan_loss_names_model_and_epoch(planted: Dataset) -> None:
    features = {"image": torch.full((planted.num_items, 4), float("nan"))}
    with pytest.raises(FloatingPointError, match=r"vbpr\[image\]: loss is nan at epoch 1"):
        fit(ModelConfig("vbpr", features=("image",)), TRAIN, planted, features)


@pytest.mark.slow  # model fits
def test_early_stopping_after_patience_evaluations_without_gain(planted: Dataset) -> None:
    patient = dataclasses.replace(TRAIN.eval, patience=2)
    frozen = dataclasses.replace(TRAIN, epochs=50, learning_rate=1e-12, eval=patient)  # the ranking never moves
    result = fit(ModelConfig("lightgcn"), frozen, planted, {})
    assert result.best_epoch == 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


@pytest.mark.slow  # model fits
@pytest.mark.parametrize("model", [ModelConfig("lightgcn"), ModelConfig("bm3", features=("image",)),
                                   ModelConfig("lgmrec", features=("image",))], ids=lambda m: m.name)
def test_resume_from_checkpoint_replays_the_uninterrupted_run(model: ModelConfig, planted: Dataset,
                                                               tmp_path: Path) -> None:
    # BM3 (dropout) and LGMRec (Gumbel noise) draw from torch's global generator: the checkpoint must hold it
    features = {"image": torch.randn(planted.num_items, 8, generator=torch.Generator().manual_seed(0))}

    def keep_epoch_2(metrics: dict, checkpoint: str | None) -> None:
        if metrics["epoch"] == 2:
            shutil.copytree(checkpoint, tmp_path / "epoch2")

    short = dataclasses.replace(TRAIN, epochs=4)
    features = {name: x for name, x in features.items() if name in model.features}
    full = fit(model, short, planted, features, report=keep_epoch_2)
    torch.manual_seed(12345)  # the resumed process's generator starts elsewhere
    resumed = fit(model, short, planted, features, resume_from=tmp_path / "epoch2")

    assert resumed.test == full.test
    assert [h["valid/recall@10"] for h in resumed.history] == [h["valid/recall@10"] for h in full.history]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_sampler_shards_one_epoch_evenly_and_never_samples_a_train_item() -> None:
    graph = TrainGraph(3, 5, users=torch.tensor([0, 0, 0, 1, 2, 2, 2]), items=torch.tensor([0, 1, 2, 4, 1, 3, 4]))
    sampler = BPRSampler(graph)
    whole = sampler.epoch(seed=1, epoch=1, batch_size=4)
    shards = [sampler.epoch(seed=1, epoch=1, batch_size=4, rank=r, world_size=2) for r in range(2)]

    assert len(shards[0]) == len(shards[1]) == len(whole) == 2
    seen = set(zip(graph.users.tolist(), graph.items.tolist(), strict=True))
    triples = [t for b in whole for t in zip(b.users.tolist(), b.pos_items.tolist(), b.neg_items.tolist(), strict=True)]
    assert {(u, i) for u, i, _ in triples} == seen
    assert all((u, j) not in seen for u, _, j in triples)
    shard_triples = {t for s in shards for b in s for t in zip(b.users.tolist(), b.pos_items.tolist(),
                                                                b.neg_items.tolist(), strict=True)}
    assert shard_triples == set(triples)  # the shards split the same global epoch (plus one wrapped repeat)


def test_training_free_model_is_evaluated_once_and_knn_graphs_are_cached(planted: Dataset, tmp_path: Path) -> None:
    features = {"image": torch.nn.functional.one_hot(torch.arange(planted.num_items) % 4, 4).float()}
    result = fit(ModelConfig("itemknn_content", features=("image",)), TRAIN, planted, features,
                 knn_cache_dir=tmp_path)
    assert [h["epoch"] for h in result.history] == [1] and result.test["recall@5"] > 0.6
    assert len(list(tmp_path.glob("knn-*.pt"))) == 1


@pytest.mark.slow  # model fits
def test_bf16_precision_trains_with_float32_weights(planted: Dataset) -> None:
    features = {"image": torch.nn.functional.one_hot(torch.arange(planted.num_items) % 4, 4).float()}
    bf16 = dataclasses.replace(TRAIN, epochs=2, precision="bf16")
    result = fit(ModelConfig("freedom", features=("image",)), bf16, planted, features)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert all(v.dtype == torch.float32 for v in result.best_state.values() if v.is_floating_point())


def test_train_items_negatives_never_draw_an_item_without_train_interactions() -> None:
    # item 5 has no train interaction (only valid/test ones elsewhere): MMRec's sampler never offers it
    graph = TrainGraph(3, 6, users=torch.tensor([0, 0, 1, 2, 2]), items=torch.tensor([0, 1, 4, 1, 3]))
    for negatives, allowed in (("train_items", {0, 1, 3, 4}), ("all_items", {0, 1, 2, 3, 4, 5})):
        drawn = {j for epoch in range(1, 40)
                 for batch in BPRSampler(graph, negatives).epoch(seed=0, epoch=epoch, batch_size=8)
                 for j in batch.neg_items.tolist()}
        assert drawn <= allowed and len(drawn) >= len(allowed) - 1, (negatives, drawn)


def test_test_masking_of_valid_items_is_a_switch(planted: Dataset) -> None:
    strict, mmrec = (EvalSplit.from_dataset(planted, TEST, mask_valid=m) for m in (True, False))
    valid = EvalSplit.from_dataset(planted, VALID)
    user = strict.users[:1]
    masked_strict, masked_mmrec = (set(s.exclude.entries(user)[1].tolist()) for s in (strict, mmrec))
    assert masked_strict - masked_mmrec == set(valid.truth.entries(user)[1].tolist()) != set()  # only valid's


def test_lr_decay_follows_mmrecs_lambda_schedule() -> None:
    train = dataclasses.replace(TRAIN, learning_rate=0.01, lr_decay=(0.96, 50))
    assert epoch_learning_rate(train, 1) == pytest.approx(0.01)
    assert epoch_learning_rate(train, 51) == pytest.approx(0.01 * 0.96)
    assert epoch_learning_rate(TRAIN, 500) == TRAIN.learning_rate  # [1.0, 50]: constant


def test_sampler_never_draws_a_cold_item_in_either_mode() -> None:
    # items 2 and 5 are cold (held out of training): neither mode may offer them as negatives
    graph = TrainGraph(3, 6, users=torch.tensor([0, 0, 1, 2, 2]), items=torch.tensor([0, 1, 4, 1, 3]))
    cold = torch.tensor([2, 5])
    for negatives in ("train_items", "all_items"):
        sampler = BPRSampler(graph, negatives, cold_items=cold)
        drawn = {j for epoch in range(1, 40) for batch in sampler.epoch(seed=0, epoch=epoch, batch_size=8)
                 for j in batch.neg_items.tolist()}
        assert drawn == {0, 1, 3, 4}, (negatives, drawn)
    assert set(BPRSampler(graph, "all_items").candidates.tolist()) == set(range(6))  # without cold items: all
