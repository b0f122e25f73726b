"""Model-zoo specifics: shared layers, per-epoch state, prebuilt item graphs, training-free baselines, short fits."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from rmm.config import ConfigError, ModelConfig, TrainConfig, build_model_config
from rmm.data.graph import TrainGraph, knn_graph, normalize_graph
from rmm.data.schema import Dataset, load_dataset
from rmm.models import MODELS
from rmm.models.base import BPRBatch, build_model
from rmm.models.freedom import FREEDOMConfig
from rmm.models.layers import info_nce, segment_softmax, sparse_matmul
from rmm.train.loop import fit
from tests.train.planted import write_planted_dataset

NUM_USERS, NUM_ITEMS = 9, 13
ZOO = ("mmgcn", "grcn", "lattice", "freedom", "bm3", "lgmrec", "itemknn_content", "profile")


def _graph() -> TrainGraph:
    keys = torch.unique(torch.randint(NUM_USERS * NUM_ITEMS, (40,), generator=torch.Generator().manual_seed(3)))
    return TrainGraph(NUM_USERS, NUM_ITEMS, users=keys // NUM_ITEMS, items=keys % NUM_ITEMS)


def _features(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = {"image": torch.randn(NUM_ITEMS, 5, generator=generator),
                "text": torch.randn(NUM_ITEMS, 3, generator=generator)}
    features["image"][2] = 0.0
    return features


def test_sparse_matmul_gradient_uses_the_given_transpose() -> None:
    adj = knn_graph(torch.randn(6, 3), 2).double()  # directed: not symmetric
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: sparse_matmul(adj, e, adj.t().coalesce()), (x,))


def test_segment_softmax_normalises_within_each_group() -> None:
    logits, index = torch.randn(7), torch.tensor([2, 0, 2, 2, 0, 3, 3])
    out = segment_softmax(logits, index, 4)
    for group in index.unique():
        assert torch.allclose(out[index == group], torch.softmax(logits[index == group], 0))


def test_info_nce_matches_its_definition() -> None:
    anchor, candidates = torch.randn(3, 4), torch.randn(5, 4)
    positive = candidates[[1, 4, 0]]
    logits = F.normalize(anchor, dim=1) @ F.normalize(candidates, dim=1).T / 0.2
    expected = -(logits.softmax(1)[torch.arange(3), torch.tensor([1, 4, 0])]).log().sum()
    assert torch.allclose(info_nce(anchor, positive, candidates, 0.2), expected, atol=1e-5)


def test_freedom_prunes_per_epoch_deterministically_and_scores_on_the_full_graph() -> None:
    graph = _graph()
    model = build_model(ModelConfig("freedom", features=("image", "text")), graph, _features())
    model.start_epoch(seed=1, epoch=3)
    first = model.masked_adj.to_dense()
    model.start_epoch(seed=1, epoch=4)
    other = model.masked_adj.to_dense()
    model.start_epoch(seed=1, epoch=3)

    assert torch.equal(model.masked_adj.to_dense(), first) and not torch.equal(first, other)
    assert torch.allclose(first, first.T)
    assert int((first > 0).sum()) == 2 * int(len(graph.users) * (1 - FREEDOMConfig().dropout))
    users, _ = model.embeddings()
    full_users, _ = model.embeddings(graph.norm_adj())
    assert torch.allclose(users, full_users)


def test_prebuilt_item_graphs_are_used_and_checked() -> None:
    features = {"image": _features()["image"]}
    prebuilt = {"image": normalize_graph(knn_graph(features["image"], 3), "sym", binary=True)}
    model = build_model(ModelConfig("freedom", features=("image",), params=FREEDOMConfig(knn_k=3)), _graph(),
                        features, item_graphs=prebuilt)
    assert torch.allclose(model.mm_adj.to_dense(), prebuilt["image"].to_dense())
    with pytest.raises(ValueError, match="no graph for feature 'image'"):
        build_model(ModelConfig("lattice", features=("image",)), _graph(), features,
                    item_graphs={"text": prebuilt["image"]})
    with pytest.raises(ValueError, match="reads no item-item graph"):
        build_model(ModelConfig("bm3", features=("image",)), _graph(), features, item_graphs=prebuilt)


def test_per_modality_models_take_no_fusion_and_check_modality_weights() -> None:
    with pytest.raises(ConfigError, match="one branch per modality"):
        build_model_config({"name": "lattice", "features": ["image", "text"], "fusion": "gated"}, "model[0]")
    assert build_model_config({"name": "lattice", "features": ["image", "text"]}, "model[0]").fusion == "concat"
    with pytest.raises(ValueError, match="modality_weights has 1 entries for 2 features"):
        build_model(ModelConfig("freedom", features=("image", "text"), params=FREEDOMConfig(modality_weights=(1.0,))),
                    _graph(), _features())


def test_lattice_learns_its_graph_from_the_projections() -> None:
    model = build_model(ModelConfig("lattice", features=("image", "text")), _graph(), _features())
    model.start_epoch(seed=0, epoch=1)
    assert not (model.learned_index[0] == 2).any()  # item 2 has no image vector: no learned image edges
    batch = BPRBatch(torch.tensor([0, 1, 2]), torch.tensor([0, 3, 5]), torch.tensor([1, 4, 6]))
    model(batch).backward()
    assert model.modal_weight.grad.abs().sum() > 0
    assert all(p.weight.grad.abs().sum() > 0 for p in model.projections)


def test_itemknn_content_scores_are_history_times_similarity() -> None:
    graph, features = _graph(), _features()
    model = build_model(ModelConfig("itemknn_content", features=("image", "text")), graph, features)
    similarity = sum(knn_graph(x, 10, shrink=10.0).to_dense() for x in features.values()) / 2
    history = torch.zeros(NUM_USERS, NUM_ITEMS)
    history[graph.users, graph.items] = 1.0
    assert torch.allclose(model.score_users(torch.arange(NUM_USERS)), history @ similarity, atol=1e-6)
    assert model(BPRBatch(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))) == 0.0


def test_profile_scores_are_cosines_to_the_mean_history_vector() -> None:
    graph, features = _graph(), _features()
    model = build_model(ModelConfig("profile", features=("image", "text")), graph, features)
    history = torch.zeros(NUM_USERS, NUM_ITEMS)
    history[graph.users, graph.items] = 1.0
    expected = 0
    for x in features.values():
        unit = F.normalize(x, dim=1)
        profile = history @ unit / history.sum(1, keepdim=True).clamp_min(1)
        expected = expected + F.normalize(profile, dim=1) @ unit.T
    assert torch.allclose(model.score_users(torch.arange(NUM_USERS)), expected / 2, atol=1e-6)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return load_dataset(write_planted_dataset(tmp_path_factory.mktemp("planted")))


def _planted_features(data: Dataset) -> dict[str, torch.Tensor]:
    """An image-like modality that knows each item's group (``item % 4``), a text-like one that is noise;
    item 0 has no image vector."""
    generator = torch.Generator().manual_seed(0)
    groups = torch.arange(data.num_items) % 4
    image = F.one_hot(groups, 4).float() + 0.1 * torch.randn(data.num_items, 4, generator=generator)
    image[0] = 0.0
    return {"image": image, "text": torch.randn(data.num_items, 6, generator=generator)}


@pytest.mark.parametrize("name", ZOO)
def test_short_fit_on_planted_data(name: str, planted: Dataset) -> None:
    features = _planted_features(planted)
    train = TrainConfig(epochs=2, batch_size=128, learning_rate=0.01, topk=(5, 10), metric="recall@10",
                        num_workers=1, checkpoint_every=2)
    result = fit(ModelConfig(name, features=tuple(features)), train, planted, features)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert 0.0 <= result.test["recall@10"] <= 1.0
    if not MODELS[name].trainable:
        # Content knows the groups: a user's test item (1 of ~8 candidates of its group among 33) ranks high.
        assert result.test["recall@10"] > 0.9


def test_every_new_model_is_registered() -> None:
    assert set(ZOO) <= set(MODELS)
    assert dataclasses.is_dataclass(MODELS["lgmrec"].config_class)
