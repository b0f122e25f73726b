r"""DualGNN against an independent dense reference written from the paper's equations and MMRec's ``dualgnn.py``.

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices: the normalised bipartite adjacency, the encoders as explicit affine maps, the user-user
co-occurrence counts :math:`R R^\top` with a sorted top-k per user, and the losses written out. The model has no
randomness after its initialisation but MMRec's per-epoch padding of short user-user neighbour lists
(``pad_user_neighbours``), which the reference replays from the model's ``(seed, epoch)`` generator; the comparison
is exact (embeddings, scores, loss and gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from rmm.config import build_model_config
from rmm.data.graph import UserGraphSpec
from rmm.models.base import BPRBatch, build_model, epoch_generator
from rmm.models.dualgnn import DualGNN, DualGraphModel
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    assert_close,
    assert_same_gradients,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

#: Small sizes so that k < the number of co-occurring users matters; a visible reg_weight.
SIZES = {"embedding_dim": 4, "user_knn_k": 3, "reg_weight": 0.3}
#: A repeated user (3) and the cold item (7) as a positive.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: The epoch whose user-graph padding (``pad_user_neighbours``, protocol mmrec) the tests replay.
SEED, EPOCH = 3, 5
#: (protocol, features, explicit keys); with k = 8 every user has fewer neighbours: mmrec pads them (by 3 to 5 slots).
CASES = [("strict", ("image", "text"), {}), ("mmrec", ("image", "text"), {}),
         ("strict", ("text",), {"user_aggregation": "mean", "num_layers": 1, "user_knn_k": 2}),
         ("mmrec", ("image",), {"num_layers": 3, "user_knn_k": 8})]
IDS = ["strict", "mmrec", "strict-text-mean-1layer", "mmrec-image-3layers"]


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> DualGNN:
    features = gaussian_features(NUM_ITEMS, seed=0, missing_image=3)
    entry = {"name": "dualgnn", "features": list(names), **SIZES, **overrides}
    model = seeded_model(DualGNN, entry, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS),
                         {name: features[name] for name in names})
    model.start_epoch(SEED, EPOCH)
    return model


# ------------------------------------------------------------------------------------------- dense reference


def dense_user_weights(k: int, aggregation: str, pad: bool = False) -> Tensor:
    """Row u: weights over the k users sharing the most items with u (> 0 shared, ties to the smaller id), the
    softmax of the shared counts or uniform. With ``pad`` (MMRec), a user with 0 < n < k such users gets a list of
    k: its n neighbours by increasing id, then slot n + j copies slot floor(r_j (n + j)) of the list so far, r the
    row of ``torch.rand(S, k)`` of the padded users (ascending) from the ``(SEED, EPOCH)`` generator the model is
    given; the softmax (or mean) runs over the k slots. Shapes: (U, U) float64."""
    r = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=torch.float64)
    for user, item in history_pairs(HISTORY):
        r[user, item] = 1.0
    shared = r @ r.T
    lists = {}
    for u in range(NUM_USERS):
        ranked = sorted(((float(shared[u, v]), v) for v in range(NUM_USERS) if v != u and shared[u, v] > 0),
                        key=lambda pair: (-pair[0], pair[1]))[:k]
        lists[u] = ranked
    padded = [u for u in range(NUM_USERS) if 0 < len(lists[u]) < k] if pad else []
    draws = torch.rand(len(padded), k, generator=epoch_generator(SEED, EPOCH))
    for s, u in enumerate(padded):
        slots = sorted(lists[u], key=lambda pair: pair[1])  # by increasing user id
        for j in range(k - len(slots)):
            slots.append(slots[int(torch.floor(draws[s, j] * len(slots)))])
        lists[u] = slots
    out = torch.zeros(NUM_USERS, NUM_USERS, dtype=torch.float64)
    for u, ranked in lists.items():
        if not ranked:
            continue
        counts = torch.tensor([count for count, _ in ranked], dtype=torch.float64)
        uniform = torch.full_like(counts, 1 / len(ranked))
        weights = counts.exp() / counts.exp().sum() if aggregation == "softmax" else uniform
        for weight, (_, v) in zip(weights, ranked, strict=True):
            out[u, v] += weight  # a repeated neighbour sums its slots
    return out


def modality_reference(model: DualGraphModel[Any], params: dict[str, Tensor]) -> list[Tensor]:
    r""":math:`H_m = \sum_{l=0}^{L} \hat{A}^l \mathrm{norm}([P_m; W_2\,\mathrm{LeakyReLU}(W_1 f^m + b_1) + b_2])` per
    modality, from ``params`` (float64 copies of the model's parameters). Shapes: M x (U+I, d)."""
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)))
    modal = []
    for m, feature in enumerate(model.features.matrices()):
        z = feature.double() @ params[f"hidden.{m}.weight"].T + params[f"hidden.{m}.bias"]
        z = torch.where(z > 0, z, 0.01 * z)  # LeakyReLU, slope 0.01
        encoded = z @ params[f"output.{m}.weight"].T + params[f"output.{m}.bias"]
        x = torch.cat([params[f"preferences.{m}"], encoded])
        x = x / x.norm(dim=1, keepdim=True)
        modal.append(sum(torch.linalg.matrix_power(adj, layer) @ x for layer in range(model.cfg.num_layers + 1)))
    return modal


def reference(model: DualGraphModel[Any], params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Final user and item embeddings from ``params``: modalities summed (users weighted by alpha), then one
    user-user aggregation step."""
    cfg = model.cfg
    modal = modality_reference(model, params)
    items = torch.stack([h[NUM_USERS:] for h in modal]).sum(0)
    if len(modal) == 1:
        users = modal[0][:NUM_USERS]
    else:
        alpha = params["modality_weights"]
        users = torch.stack([alpha[:, m:m + 1] * h[:NUM_USERS] for m, h in enumerate(modal)]).sum(0)
    users = users + dense_user_weights(cfg.user_knn_k, cfg.user_aggregation, cfg.pad_user_neighbours) @ users
    return users, items


def reference_loss(model: DualGraphModel[Any], params: dict[str, Tensor],
                   embeddings: Callable[[Any, dict[str, Tensor]], tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """BPR (natural or base-2 log) plus reg_weight times the mean squares of the batch users' preferences and of
    the modality weights; ``embeddings`` is the reference of the final embeddings (DualGNN's by default)."""
    users, items = (embeddings or reference)(model, params)
    u = users[BATCH.users]
    diff = (u * items[BATCH.pos_items]).sum(1) - (u * items[BATCH.neg_items]).sum(1)
    log = torch.log2 if model.cfg.log2_bpr else torch.log
    ranking = -log(torch.sigmoid(diff)).mean()
    reg = sum(params[f"preferences.{m}"][BATCH.users].pow(2).mean() for m in range(len(model.features)))
    if "modality_weights" in params:
        reg = reg + params["modality_weights"].pow(2).mean()
    return ranking + model.cfg.reg_weight * reg


def _params(model: DualGraphModel[Any]) -> dict[str, Tensor]:
    return {name: p.detach().double().clone().requires_grad_(True) for name, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_dualgnn_fidelity_embeddings_and_scores(protocol: str, names: tuple[str, ...],
                                                overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    users, items = reference(model, _params(model))
    got_users, got_items = model.embeddings()
    assert_close(got_users, users)
    assert_close(got_items, items)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_dualgnn_fidelity_loss_and_gradients(protocol: str, names: tuple[str, ...],
                                             overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    params = _params(model)
    expected = reference_loss(model, params)
    expected.backward()
    loss = model.loss(BATCH)
    loss.backward()
    assert_close(loss, expected)
    assert_same_gradients(model, params)


def test_dualgnn_fidelity_protocol_switches() -> None:
    strict, mmrec = _model("strict", ("image", "text"), {}), _model("mmrec", ("image", "text"), {})
    assert (strict.cfg.projection_init, strict.cfg.log2_bpr) == ("xavier", False)
    assert (mmrec.cfg.projection_init, mmrec.cfg.log2_bpr) == ("torch_default", True)
    assert mmrec.modality_weights is not None
    assert math.isclose(float(mmrec.modality_weights.detach().sum(1).mean()), 1.0, rel_tol=1e-6)
    # reset_parameters is the one init site: re-seeding and resetting reproduces the built weights
    before = {name: p.detach().clone() for name, p in strict.named_parameters()}
    torch.manual_seed(0)
    strict.reset_parameters()
    assert all(torch.equal(p, before[name]) for name, p in strict.named_parameters())


def test_dualgnn_fidelity_prebuilt_user_graph_is_used_and_checked() -> None:
    graph = history_graph(HISTORY, NUM_USERS, NUM_ITEMS)
    features = {"text": gaussian_features(NUM_ITEMS, seed=0)["text"]}
    config = build_model_config({"name": "dualgnn", "features": ["text"], **SIZES}, "model[0]", "strict")
    built = build_model(config, graph, features)
    assert isinstance(built, DualGNN) and built.user_graph_spec(built.cfg) == UserGraphSpec(3)
    # a prebuilt graph replaces the one built in memory: an empty one leaves every user without neighbours
    empty = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (NUM_USERS, NUM_USERS),
                                    check_invariants=True)
    model = build_model(config, graph, features, user_graph=empty)
    assert isinstance(model, DualGNN) and model.user_graph is not None and built.user_graph is not None
    assert model.user_graph._nnz() == 0 and built.user_graph._nnz() > 0
    with pytest.raises(ValueError, match="user_graph must be a sparse COO"):
        build_model(config, graph, features, user_graph=torch.zeros(NUM_USERS, NUM_USERS))
    with pytest.raises(ValueError, match="reads no user-user graph"):
        build_model(build_model_config({"name": "lightgcn"}, "model[0]", "strict"), graph, {}, user_graph=empty)


def test_dualgnn_fidelity_padding_is_per_epoch_and_deterministic() -> None:
    model = _model("mmrec", ("image",), {"user_knn_k": 8})
    assert model.user_graph is not None
    graphs = []
    for epoch in (EPOCH, EPOCH + 1, EPOCH):
        model.start_epoch(SEED, epoch)
        assert model.user_graph is not None
        graphs.append(model.user_graph.to_dense())
    assert torch.equal(graphs[0], graphs[2])
    assert not torch.equal(graphs[0], graphs[1])
    torch.testing.assert_close(graphs[0].sum(1), torch.ones(NUM_USERS))
    strict = _model("strict", ("image",), {"user_knn_k": 8})
    assert strict.user_graph is not None
    before = strict.user_graph.to_dense()
    strict.start_epoch(SEED, EPOCH + 1)  # no padding: the graph never changes
    assert torch.equal(strict.user_graph.to_dense(), before)
