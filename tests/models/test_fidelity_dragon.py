"""DRAGON against an independent dense reference written from the paper's equations and MMRec's ``dragon.py``.

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices: the per-modality user-item convolutions of the DualGNN reference
(:mod:`tests.models.test_fidelity_dualgnn`), full cosine similarity matrices with a dense top-k per row for the
item-item graph, the dense co-occurrence top-k for the user-user graph, and the losses written out. MMRec's
per-epoch padding of short user neighbour lists (protocol mmrec) is replayed from the model's ``(seed, epoch)``
generator; the comparison is exact (graphs, embeddings, scores, loss and gradients).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from rmm.models.dragon import DRAGON
from rmm.models.hparams.dragon import DRAGONConfig
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    assert_close,
    assert_same_gradients,
    gaussian_features,
    history_graph,
    seeded_model,
)
from tests.models.test_fidelity_dualgnn import (
    BATCH,
    EPOCH,
    SEED,
    _params,
    dense_user_weights,
    modality_reference,
    reference_loss,
)

#: Small sizes so that k < I and k < the co-occurring users matter; a visible reg_weight.
SIZES = {"embedding_dim": 4, "user_knn_k": 3, "knn_k": 3, "reg_weight": 0.3}
#: Item 3 has no image vector: no kNN neighbours in the image graph, and nobody's neighbour there.
MISSING_IMAGE = 3
#: (protocol, features, explicit keys).
CASES = [("strict", ("image", "text"), {}), ("mmrec", ("image", "text"), {}),
         ("strict", ("image", "text"), {"knn_self": True, "modality_weights": [3.0, 1.0], "num_mm_layers": 2,
                                        "user_aggregation": "mean", "num_layers": 1}),
         ("mmrec", ("text",), {"modality_weights": None, "knn_self": False, "user_knn_k": 5})]
IDS = ["strict", "mmrec", "strict-self-weighted-2mmlayers-mean", "mmrec-text-no-self"]


def _features() -> dict[str, Tensor]:
    return gaussian_features(NUM_ITEMS, seed=0, missing_image=MISSING_IMAGE)


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> DRAGON:
    features = _features()
    entry = {"name": "dragon", "features": list(names), **SIZES, **overrides}
    model = seeded_model(DRAGON, entry, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS),
                         {name: features[name] for name in names})
    model.start_epoch(SEED, EPOCH)
    return model


# ------------------------------------------------------------------------------------------- dense reference


def dense_item_graph(cfg: DRAGONConfig, names: tuple[str, ...]) -> Tensor:
    r""":math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}`: per modality the unweighted top-k of the cosine row (the
    diagonal a candidate when ``knn_self``; items without a vector neither rows nor candidates), D the row sums;
    :math:`w` uniform or the given weights normalised. Shapes: (I, I) float64."""
    features = _features()
    weights = cfg.modality_weights or (1.0,) * len(names)
    total = torch.zeros(NUM_ITEMS, NUM_ITEMS, dtype=torch.float64)
    for weight, name in zip(weights, names, strict=True):
        x = features[name].double()
        norms = x.norm(dim=1)
        valid = norms > 0
        sim = (x @ x.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-300)
        sim = sim.masked_fill(~(valid[:, None] & valid[None, :]), -torch.inf)
        if not cfg.knn_self:
            sim = sim.masked_fill(torch.eye(NUM_ITEMS, dtype=torch.bool), -torch.inf)
        adj = torch.zeros_like(sim)
        for i in range(NUM_ITEMS):
            ranked = sorted((-float(sim[i, j]), j) for j in range(NUM_ITEMS))[:cfg.knn_k]
            for negative, j in ranked:
                if negative < torch.inf:
                    adj[i, j] = 1.0
        degree = adj.sum(1)
        scale = torch.where(degree > 0, degree.clamp_min(1e-12) ** -0.5, 0.0)
        total = total + weight / sum(weights) * scale[:, None] * adj * scale[None, :]
    return total


def reference(model: DRAGON, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Final user and item embeddings from ``params``: modalities concatenated (users scaled by alpha), then the
    item-item graph's smoothing added to items and one user-user aggregation step to users."""
    cfg = model.cfg
    modal = modality_reference(model, params)
    items = torch.cat([h[NUM_USERS:] for h in modal], dim=1)
    if len(modal) == 1:
        users = modal[0][:NUM_USERS]
    else:
        alpha = params["modality_weights"]
        users = torch.cat([alpha[:, m:m + 1] * h[:NUM_USERS] for m, h in enumerate(modal)], dim=1)
    names = tuple(model.features.names)
    items = items + torch.linalg.matrix_power(dense_item_graph(cfg, names), cfg.num_mm_layers) @ items
    users = users + dense_user_weights(cfg.user_knn_k, cfg.user_aggregation, cfg.pad_user_neighbours) @ users
    return users, items


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_dragon_fidelity_graphs_embeddings_and_scores(protocol: str, names: tuple[str, ...],
                                                      overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    assert_close(model.mm_adj.to_dense(), dense_item_graph(model.cfg, names))
    users, items = reference(model, _params(model))
    got_users, got_items = model.embeddings()
    assert got_users.shape == (NUM_USERS, len(names) * model.cfg.embedding_dim)
    assert_close(got_users, users)
    assert_close(got_items, items)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_dragon_fidelity_loss_and_gradients(protocol: str, names: tuple[str, ...],
                                            overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    params = _params(model)
    expected = reference_loss(model, params, reference)
    expected.backward()
    loss = model.loss(BATCH)
    loss.backward()
    assert_close(loss, expected)
    assert_same_gradients(model, params)


def test_dragon_fidelity_protocol_switches() -> None:
    strict, mmrec = _model("strict", ("image", "text"), {}), _model("mmrec", ("image", "text"), {})
    assert (strict.cfg.knn_self, strict.cfg.modality_weights, strict.cfg.log2_bpr) == (False, None, False)
    assert (mmrec.cfg.knn_self, mmrec.cfg.modality_weights, mmrec.cfg.log2_bpr) == (True, (0.1, 0.9), True)
    assert mmrec.cfg.projection_init == "torch_default" and mmrec.cfg.user_knn_k == 3
    before = {name: p.detach().clone() for name, p in strict.named_parameters()}
    torch.manual_seed(0)
    strict.reset_parameters()
    assert all(torch.equal(p, before[name]) for name, p in strict.named_parameters())
