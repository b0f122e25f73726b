"""FREEDOM against an independent dense reference written from the paper's equations and MMRec's ``freedom.py``.

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices: full cosine similarity matrices, a dense top-k per row, dense normalisations and plain
matrix products (no rmm model code, no rmm graph helper). Degree-sensitive edge pruning is random: the loss test
replays the model's draw (the reference computes the edge probabilities itself and draws from the same
``(seed, epoch)`` generator), and a statistical test checks over many epochs that each edge is kept as often as
its exact inclusion probability under sampling without replacement says.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rmm.config import build_model_config
from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, build_model, epoch_generator
from rmm.models.freedom import FREEDOM
from rmm.models.hparams.freedom import FREEDOMConfig
from rmm.models.layers import bpr_loss, projected_bpr
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    close,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

#: 20 interactions of very different degrees (user 0 has every item, item 0 every user; users 3, 4 and item 7
#: one each), so that degree-sensitive pruning is far from uniform.
SKEWED_HISTORY = {0: list(range(8)), 1: [0, 1, 2, 4], 2: [0, 1, 5], 3: [0], 4: [0], 5: [0, 3, 6]}
#: Image first, then text: the order MMRec's ``mm_image_weight`` (``modality_weights: [0.1, 0.9]``) assumes.
FEATURES = ("image", "text")
#: Small sizes so that k < I matters; a visible reg_weight so that the modality BPR terms are compared too.
SIZES = {"knn_k": 3, "embedding_dim": 8, "reg_weight": 0.3}
#: A repeated user (3) and the cold item as a positive.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: (protocol, explicit keys): both protocols' defaults, and other values of the switches and sizes.
CASES = [("strict", {}), ("mmrec", {}),
         ("strict", {"knn_self": True, "modality_weights": [3.0, 1.0], "num_mm_layers": 2, "dropout": 0.5}),
         ("mmrec", {"knn_self": False, "train_features": False, "num_ui_layers": 1, "dropout": 0.0})]
IDS = ["strict", "mmrec", "strict-self-weighted-2layers", "mmrec-no-self-frozen-no-pruning"]


def _graph(history: dict[int, list[int]] = HISTORY) -> TrainGraph:
    return history_graph(history, NUM_USERS, NUM_ITEMS)


def _features() -> dict[str, torch.Tensor]:
    return gaussian_features(NUM_ITEMS, seed=0)


def _model(protocol: str, overrides: dict[str, Any], history: dict[int, list[int]] = HISTORY) -> FREEDOM:
    entry = {"name": "freedom", "features": list(FEATURES), **SIZES, **overrides}
    return seeded_model(FREEDOM, entry, protocol, _graph(history), _features())


# ------------------------------------------------------------------------------------------- dense reference


def dense_item_graph(cfg: FREEDOMConfig) -> torch.Tensor:
    r""":math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}`: per modality the unweighted top-k of the cosine row
    (the diagonal a candidate when ``knn_self``), D the row sums (k each); :math:`w` uniform, or the given
    weights normalised (MMRec: image 0.1, text 0.9). Shapes: (I, I) float64."""
    features = _features()
    weights = cfg.modality_weights or (1.0,) * len(FEATURES)
    total = 0
    for weight, name in zip(weights, FEATURES, strict=True):
        x = features[name].double()
        unit = x / x.norm(dim=1, keepdim=True)
        sim = unit @ unit.T
        if not cfg.knn_self:
            sim = sim.masked_fill(torch.eye(NUM_ITEMS, dtype=torch.bool), -torch.inf)
        index = torch.topk(sim, cfg.knn_k, dim=1).indices
        adj = torch.zeros_like(sim).scatter(1, index, 1.0)
        scale = adj.sum(1) ** -0.5
        total = total + weight / sum(weights) * scale[:, None] * adj * scale[None, :]
    return total


def keep_probabilities(history: dict[int, list[int]] = HISTORY) -> torch.Tensor:
    r"""Each edge's unnormalised pruning weight :math:`1/\sqrt{d_u d_i}`, train degrees. Shapes: (E,) float64."""
    edges = history_pairs(history)
    user_degree = {u: sum(1 for e in edges if e[0] == u) for u in history}
    item_degree = {i: sum(1 for e in edges if e[1] == i) for _, i in edges}
    return torch.tensor([1.0 / math.sqrt(user_degree[u] * item_degree[i]) for u, i in edges], dtype=torch.float64)


def pruned_edges(cfg: FREEDOMConfig, seed: int, epoch: int) -> list[tuple[int, int]]:
    r"""This epoch's kept edges: :math:`\lfloor(1 - \text{dropout})|E|\rfloor` drawn without replacement with
    probability :math:`\propto 1/\sqrt{d_u d_i}`, from the model's ``(seed, epoch)`` generator (all edges when
    ``dropout`` is 0)."""
    edges = history_pairs(HISTORY)
    if cfg.dropout == 0:
        return edges
    keep = int(len(edges) * (1 - cfg.dropout))
    kept = torch.multinomial(keep_probabilities().float(), keep, replacement=False,
                             generator=epoch_generator(seed, epoch))
    return [edges[e] for e in kept.tolist()]


def reference_params(model: FREEDOM) -> dict[str, torch.Tensor]:
    """The model's parameters as float64 leaves that record their gradient: ID tables, projections (``W``, ``b``
    per modality) and the current features (recording a gradient only with ``train_features``)."""
    p = {"user": model.user_embedding.weight, "item": model.item_embedding.weight}
    for m, proj in enumerate(model.projections):
        p[f"W{m}"], p[f"b{m}"] = proj.weight, proj.bias
    for m, x in enumerate(model.features.matrices()):
        p[f"x{m}"] = x
    trains = model.cfg.train_features
    return {k: v.detach().double().requires_grad_(not k.startswith("x") or trains) for k, v in p.items()}


def reference_embeddings(p: dict[str, torch.Tensor], cfg: FREEDOMConfig,
                         ui_adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\tilde{h} = S^{L_m} \mathbf{E}_{id}`; LightGCN (mean of layers 0..L) over ``ui_adj``; items
    :math:`\bar{\mathbf{e}}_i + \tilde{h}_i`. Shapes: (U, d), (I, d)."""
    h = p["item"]
    item_graph = dense_item_graph(cfg)
    for _ in range(cfg.num_mm_layers):
        h = item_graph @ h
    layers = [torch.cat([p["user"], p["item"]])]
    for _ in range(cfg.num_ui_layers):
        layers.append(ui_adj @ layers[-1])
    final = sum(layers) / len(layers)
    return final[:NUM_USERS], final[NUM_USERS:] + h


def reference_loss(p: dict[str, torch.Tensor], users: torch.Tensor, items: torch.Tensor, batch: BPRBatch,
                   cfg: FREEDOMConfig) -> torch.Tensor:
    r""":math:`\mathcal{L}_{BPR}(\mathbf{e}_u, \mathbf{e}_i) + \lambda \sum_m \mathcal{L}_{BPR}(\mathbf{e}_u,
    W_m f^m_i + b_m)`, :math:`\mathcal{L}_{BPR} = -\overline{\ln\sigma(\hat{y}_{ui} - \hat{y}_{uj})}`; no
    embedding penalty."""
    def bpr(u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return -torch.nn.functional.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()

    u = users[batch.users]
    modal = 0
    for m in range(len(FEATURES)):
        projected = p[f"x{m}"] @ p[f"W{m}"].T + p[f"b{m}"]  # (I, d)
        modal = modal + bpr(u, projected[batch.pos_items], projected[batch.neg_items])
    return bpr(u, items[batch.pos_items], items[batch.neg_items]) + cfg.reg_weight * modal


def model_grads(model: FREEDOM) -> dict[str, torch.Tensor | None]:
    """The model's gradients under the reference's names."""
    grads = {"user": model.user_embedding.weight.grad, "item": model.item_embedding.weight.grad}
    for m, proj in enumerate(model.projections):
        grads[f"W{m}"], grads[f"b{m}"] = proj.weight.grad, proj.bias.grad
    for m, x in enumerate(model.features.matrices()):
        grads[f"x{m}"] = x.grad if isinstance(x, torch.nn.Parameter) else None
    return grads


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_freedom_fidelity_item_graph_embeddings_scores_loss_and_gradients(protocol: str,
                                                                          overrides: dict[str, Any]) -> None:
    model = _model(protocol, overrides)
    cfg = model.cfg
    p = reference_params(model)
    assert close(model.mm_adj.to_dense(), dense_item_graph(cfg))

    model.start_epoch(seed=3, epoch=5)
    pruned = sym_normalized(dense_adjacency(pruned_edges(cfg, seed=3, epoch=5)))  # degrees of the kept edges
    assert close(model.masked_adj.to_dense(), pruned)
    loss = model(BATCH)
    loss.backward()
    expected = reference_loss(p, *reference_embeddings(p, cfg, pruned), BATCH, cfg)
    expected.backward()
    assert close(loss, expected)
    for name, grad in model_grads(model).items():
        if p[name].requires_grad:
            assert grad is not None and close(grad, p[name].grad), name
        else:
            assert grad is None, name

    full = sym_normalized(dense_adjacency(history_pairs(HISTORY)))  # scoring: the full graph
    users, items = reference_embeddings(p, cfg, full)
    model_users, model_items = model.embeddings()
    assert close(model_users, users) and close(model_items, items)
    assert close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


def inclusion_probabilities(weights: list[float], keep: int) -> torch.Tensor:
    r"""Exact probability that each item is among ``keep`` drawn without replacement, each draw picking a remaining
    item with probability proportional to its weight: a dynamic programme over the drawn sets,
    :math:`P(T) = \sum_{e \in T} P(T \setminus e)\, w_e / (W - w(T \setminus e))`."""
    total = sum(weights)
    level = {frozenset(): 1.0}
    for _ in range(keep):
        following: dict[frozenset[int], float] = {}
        for drawn, prob in level.items():
            left = total - sum(weights[e] for e in drawn)
            for e in range(len(weights)):
                if e not in drawn:
                    following[drawn | {e}] = following.get(drawn | {e}, 0.0) + prob * weights[e] / left
        level = following
    inclusion = torch.zeros(len(weights), dtype=torch.float64)
    for drawn, prob in level.items():
        inclusion[list(drawn)] += prob
    return inclusion


@pytest.mark.slow  # thousands of sampled epochs
def test_freedom_fidelity_pruning_keeps_each_edge_with_its_probability() -> None:
    """Degree-sensitive pruning is the same in both protocols (MMRec's ``dropout`` and ``torch.multinomial`` on
    :math:`1/\\sqrt{d_u d_i}`) on a graph of skewed degrees. Over 1500 epochs each edge's keep frequency must
    match its exact inclusion probability within 4.5 standard errors; every epoch keeps exactly
    ``floor((1 - dropout) |E|)`` edges."""
    model = _model("mmrec", {}, SKEWED_HISTORY)
    edges, draws = history_pairs(SKEWED_HISTORY), 1500
    keep = int(len(edges) * (1 - model.cfg.dropout))
    expected = inclusion_probabilities(keep_probabilities(SKEWED_HISTORY).tolist(), keep)
    assert expected.max() - expected.min() > 0.1  # degrees differ enough to tell it from uniform sampling
    users, items = torch.tensor([u for u, _ in edges]), torch.tensor([NUM_USERS + i for _, i in edges])
    counts = torch.zeros(len(edges), dtype=torch.float64)
    for epoch in range(draws):
        model.start_epoch(seed=11, epoch=epoch)
        kept = model.masked_adj.to_dense()[users, items] > 0
        assert int(kept.sum()) == keep
        counts += kept
    frequency = counts / draws
    standard_error = (expected * (1 - expected) / draws).sqrt()
    assert ((frequency - expected).abs() / standard_error).max() < 4.5, (frequency, expected)


def test_freedom_protocol_switches_reach_the_model() -> None:
    strict, mmrec = _model("strict", {}), _model("mmrec", {})
    assert strict.cfg.modality_weights is None and mmrec.cfg.modality_weights == (0.1, 0.9)
    assert not strict.cfg.knn_self and mmrec.cfg.knn_self and strict.item_graph_spec(mmrec.cfg).include_self
    assert not any(name.startswith("features.") for name in strict.state_dict())
    assert {"features.feature_0", "features.feature_1"} <= set(mmrec.state_dict())
    for init, within in (("torch_default", True), ("xavier", False)):  # nn.Linear's default: |w| <= 1/sqrt(5)
        torch.manual_seed(1)
        model = FREEDOM(_graph(), _features(), FREEDOMConfig(projection_init=init))
        assert bool(model.projections[0].weight.abs().max() <= 5 ** -0.5) == within
    with pytest.raises(ValueError, match=r"2 entries for 1 features.*protocol: mmrec defaults it"):
        build_model(build_model_config({"name": "freedom", "features": ["image"]}, "model[0]", "mmrec"), _graph(),
                    {"image": _features()["image"]})


def test_projected_bpr_is_the_bpr_of_both_projections_with_a_zero_bias_gradient() -> None:
    """One projection of the gap x_i - x_j gives the BPR loss and weight gradient of projecting both rows, and
    the bias, which cancels, an exact zero gradient (so it still takes part, as DistributedDataParallel needs)."""
    torch.manual_seed(2)
    proj, x, users = torch.nn.Linear(5, 4).double(), torch.randn(9, 5).double(), torch.randn(6, 4).double()
    pos, neg = torch.tensor([0, 3, 3, 8, 1, 2]), torch.tensor([4, 4, 0, 2, 7, 5])
    loss = projected_bpr(users, proj, x, pos, neg)
    weight_grad, bias_grad = torch.autograd.grad(loss, [proj.weight, proj.bias])
    expected = bpr_loss((users * proj(x[pos])).sum(-1), (users * proj(x[neg])).sum(-1))
    assert torch.allclose(loss, expected)
    assert torch.allclose(weight_grad, torch.autograd.grad(expected, proj.weight)[0])
    assert torch.equal(bias_grad, torch.zeros_like(bias_grad))
