"""Model-zoo specifics: shared layers, per-epoch state, prebuilt item graphs, training-free baselines, short fits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rmm.config import (
    ConfigError,
    EvalConfig,
    FaultToleranceConfig,
    ModelConfig,
    ScalingConfig,
    TrainConfig,
    build_model_config,
)
from rmm.data.graph import TrainGraph, knn_graph, normalize_graph
from rmm.data.schema import TEST, TRAIN, Dataset, load_dataset
from rmm.models import MODELS, get_model_class
from rmm.models.base import BPRBatch, build_model
from rmm.models.hparams.freedom import FREEDOMConfig
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
    assert torch.allclose(model.scorer()(torch.arange(NUM_USERS)), history @ similarity, atol=1e-6)
    assert not list(model.parameters())  # fitted when built: nothing to train


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
    assert torch.allclose(model.scorer()(torch.arange(NUM_USERS)), expected / 2, atol=1e-6)


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


def _popularity_recall(data: Dataset, k: int) -> float:
    """Test recall@k of ranking every user's candidates by train popularity (ties: lower item id first), with
    train and valid items masked as ``fit`` tests: the baseline a model must beat to have learned anything."""
    frame = data.interactions
    popularity = torch.bincount(torch.tensor(frame.loc[frame["split"] == TRAIN, "item_id"].to_numpy()),
                                minlength=data.num_items).double()
    recalls = []
    for _, rows in frame.groupby("user_id"):
        truth = set(rows.loc[rows["split"] == TEST, "item_id"])
        if not truth:
            continue
        scores = popularity.clone()
        scores[torch.tensor(rows.loc[rows["split"] != TEST, "item_id"].to_numpy())] = -torch.inf
        order = sorted(range(data.num_items), key=lambda item: (-scores[item].item(), item))
        recalls.append(len(truth & set(order[:k])) / len(truth))
    return sum(recalls) / len(recalls)


#: Every registered model: a new one is fitted as soon as it has its registry line.
FITTED = tuple(sorted(MODELS))
#: Hyperparameters a model needs on this 33-item catalogue, and why. MVGAE's decoder ranks each positive against
#: the hardest negative of the whole batch; among 33 items that is almost always an item the user likes, so
#: the loss works against the ranking (recall 0.36 after 10 epochs); its per-positive negative learns (0.93).
PLANTED_PARAMS = {"mvgae": {"negatives": "paired"}}
SHORT_FIT = TrainConfig(epochs=10, batch_size=128, learning_rate=0.01,
                        eval=EvalConfig(topk=(5, 10), metric="recall@10", every=1, patience=10),
                        scaling=ScalingConfig(num_workers=1), fault_tolerance=FaultToleranceConfig(checkpoint_every=10))


@pytest.mark.slow  # a 10-epoch fit of every model
@pytest.mark.parametrize("name", FITTED)
def test_short_fit_on_planted_data_learns_the_groups(name: str, planted: Dataset) -> None:
    """Ranking the user's group first puts the test item (1 of ~3 group candidates among ~33) in the top 10, far
    above popularity (~0.3). Recall alone cannot tell a graph model that did not train: propagating random
    embeddings over this block-structured graph already ranks the group first (recall 0.8-1.0 at a learning
    rate of 1e-9), so a trainable model must also have cut its training loss."""
    features = _planted_features(planted) if MODELS[name].uses_features else {}
    params = MODELS[name].config_class(**PLANTED_PARAMS.get(name, {}))
    result = fit(ModelConfig(name, features=tuple(features), params=params), SHORT_FIT, planted, features)
    losses = [h["loss"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    baseline = _popularity_recall(planted, 10)
    assert 0.2 < baseline < 0.4  # the planted groups are equally popular: popularity is no better than chance
    assert result.test["recall@10"] > baseline + 0.5, f"{name} ranks no better than popularity"
    if get_model_class(name).trainable:
        # The epoch-mean loss varies by ~5% between epochs with frozen weights (fresh negatives, dropout).
        # By 15% of its size: some losses are negative (SelfCF's is a negative cosine).
        assert losses[-1] < losses[0] - 0.15 * abs(losses[0]), f"{name} did not reduce its training loss: {losses}"
    else:
        # Content knows the groups: a user's test item (1 of ~3 candidates of its group among 33) ranks high.
        assert result.test["recall@10"] > 0.9


#: Every model rmm ships: one dropped from the registry by mistake fails here.
SHIPPED = (*ZOO, "bprmf", "lightgcn", "vbpr", "layergcn", "selfcf", "mgcn", "slmrec", "smore", "mvgae", "dualgnn",
           "dragon", "damrs", "pgl", "mmgcf", "mentor", "cohesion")


def test_every_shipped_model_is_registered() -> None:
    assert set(SHIPPED) <= set(MODELS)
    assert dataclasses.is_dataclass(MODELS["lgmrec"].config_class)


def test_every_registered_model_is_in_the_readmes_model_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("### Models", 1)[1].split("\n### ", 1)[0]
    listed = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    assert listed == set(MODELS)
