r"""COHESION against an independent dense reference written from the paper's equations and the official
``cohesion.py``.

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices and explicit loops: the normalised bipartite adjacency, the branch encoders as affine maps,
the early fusion :math:`\sqrt{(e_{id}^2 + g(c)^2)/2 + 10^{-8}}`, the cosine-gated layers one at a time, full
cosine similarity matrices with a sorted top-k per row for the item-item graph, the co-occurrence top-k for the
user-user graph (:func:`tests.models.test_fidelity_dualgnn.dense_user_weights`, which replays MMRec's per-epoch
padding from the model's ``(seed, epoch)`` generator under protocol mmrec), and the adaptively weighted loss. The
model has no other randomness after initialisation, so the comparison is exact: graphs, embeddings, scores, loss
and gradients (including which parameters get none: the ID branch under ``detach_id``).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from rmm.models.cohesion import COHESION
from rmm.models.hparams.cohesion import COHESIONConfig
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
from tests.models.test_fidelity_dualgnn import BATCH, EPOCH, SEED, dense_user_weights

#: Small sizes so that k < I and k < the co-occurring users matter; a visible reg_weight.
SIZES = {"embedding_dim": 4, "user_knn_k": 3, "knn_k": 3, "reg_weight": 0.3}
#: Item 3 has no image vector: no kNN neighbours in the image graph, and nobody's neighbour there.
MISSING_IMAGE = 3
#: (protocol, features, explicit keys).
CASES = [("strict", ("image", "text"), {}), ("mmrec", ("image", "text"), {}),
         ("strict", ("image", "text", "audio"), {"knn_self": True, "modality_weights": [3.0, 1.0, 2.0],
                                                 "num_mm_layers": 2, "num_layers": 3, "detach_id": True}),
         ("mmrec", ("text",), {"modality_weights": None, "knn_self": False, "user_knn_k": 5, "num_layers": 1,
                               "detach_id": False, "log2_bpr": False})]
IDS = ["strict", "mmrec", "strict-3features-self-weighted-2mm-3layers-detached", "mmrec-text-1layer-trained-id"]


def _features() -> dict[str, Tensor]:
    features = gaussian_features(NUM_ITEMS, seed=0, missing_image=MISSING_IMAGE)
    features["audio"] = torch.randn(NUM_ITEMS, 2, generator=torch.Generator().manual_seed(7))
    return features


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> COHESION:
    features = _features()
    entry = {"name": "cohesion", "features": list(names), **SIZES, **overrides}
    model = seeded_model(COHESION, entry, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS),
                         {name: features[name] for name in names})
    model.start_epoch(SEED, EPOCH)
    return model


def _params(model: COHESION) -> dict[str, Tensor]:
    return {name: p.detach().double().clone().requires_grad_(True) for name, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------- dense reference


def dense_item_graph(cfg: COHESIONConfig, names: tuple[str, ...]) -> Tensor:
    r""":math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}`: per modality a 1 for each of the k largest cosines of a
    row (the item itself a candidate only with ``knn_self``; an item without a vector neither has nor is a
    neighbour), D the row sums; w uniform or the given weights over their sum. Shapes: (I, I) float64."""
    features = _features()
    weights = cfg.modality_weights or (1.0,) * len(names)
    total = torch.zeros(NUM_ITEMS, NUM_ITEMS, dtype=torch.float64)
    for weight, name in zip(weights, names, strict=True):
        x = features[name].double()
        valid = [float(x[i].norm()) > 0 for i in range(NUM_ITEMS)]
        adj = torch.zeros(NUM_ITEMS, NUM_ITEMS, dtype=torch.float64)
        for i in range(NUM_ITEMS):
            if not valid[i]:
                continue
            cosines = [(-float(x[i] @ x[j] / (x[i].norm() * x[j].norm())), j) for j in range(NUM_ITEMS)
                       if valid[j] and (cfg.knn_self or j != i)]
            for _, j in sorted(cosines)[:cfg.knn_k]:
                adj[i, j] = 1.0
        degree = adj.sum(1)
        scale = torch.tensor([d ** -0.5 if d > 0 else 0.0 for d in degree.tolist()], dtype=torch.float64)
        total = total + weight / sum(weights) * scale[:, None] * adj * scale[None, :]
    return total


def branch_reference(model: COHESION, params: dict[str, Tensor]) -> list[Tensor]:
    r"""Per branch (ID first, then the features in order) :math:`H_b = \sum_{l \le L} H^{(l)}_b`, each layer the
    normalised-graph product of the last gated row by row by its cosine with :math:`X_b`. Shapes: (M+1) x (U+I, d)."""
    cfg = model.cfg
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)))
    ids = params["id_embedding"]
    contents = [ids, *(feature.double() for feature in model.features.matrices())]
    out = []
    for b, content in enumerate(contents):
        z = content @ params[f"hidden.{b}.weight"].T + params[f"hidden.{b}.bias"]
        z = torch.where(z > 0, z, 0.01 * z)  # LeakyReLU, slope 0.01
        encoded = z @ params[f"output.{b}.weight"].T + params[f"output.{b}.bias"]
        refined = ((ids * ids + encoded * encoded) / 2 + 1e-8) ** 0.5
        x = torch.cat([params[f"preferences.{b}"], refined])
        x = x / x.norm(dim=1, keepdim=True)
        if b == 0 and cfg.detach_id:
            x = x.detach()
        layers, h = [x], x
        for _ in range(cfg.num_layers):
            spread = adj @ h
            rows = []
            for n in range(len(spread)):
                norms = spread[n].norm() * x[n].norm()
                cosine = spread[n] @ x[n] / norms if float(norms.detach()) > 1e-8 else spread[n].sum() * 0.0
                rows.append(cosine * spread[n])
            h = torch.stack(rows)
            layers.append(h)
        out.append(sum(layers[1:], layers[0]))
    return out


def reference(model: COHESION, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Final embeddings: branches concatenated, items plus their item-item smoothing, users plus one user-user
    aggregation step."""
    cfg = model.cfg
    h = torch.cat(branch_reference(model, params), dim=1)
    users, items = h[:NUM_USERS], h[NUM_USERS:]
    items = items + torch.linalg.matrix_power(dense_item_graph(cfg, tuple(model.features.names)),
                                              cfg.num_mm_layers) @ items
    users = users + dense_user_weights(cfg.user_knn_k, "softmax", cfg.pad_user_neighbours) @ users
    return users, items


def reference_loss(model: COHESION, params: dict[str, Tensor]) -> Tensor:
    r"""BPR on the branch scores weighted by :math:`1 - \mathrm{softmax}` of their margins (constants), natural or
    base-2 log, plus reg_weight times the mean squares of the batch users' preferences (the ID branch's only when
    it is trained)."""
    cfg = model.cfg
    users, items = reference(model, params)
    branches = len(model.features) + 1
    total = torch.zeros((), dtype=torch.float64)
    for u, i, j in zip(BATCH.users.tolist(), BATCH.pos_items.tolist(), BATCH.neg_items.tolist(), strict=True):
        pos = [users[u, b * cfg.embedding_dim:(b + 1) * cfg.embedding_dim]
               @ items[i, b * cfg.embedding_dim:(b + 1) * cfg.embedding_dim] for b in range(branches)]
        neg = [users[u, b * cfg.embedding_dim:(b + 1) * cfg.embedding_dim]
               @ items[j, b * cfg.embedding_dim:(b + 1) * cfg.embedding_dim] for b in range(branches)]
        margins = [float((p - n).detach()) for p, n in zip(pos, neg, strict=True)]
        exps = [math.exp(m) for m in margins]
        weights = [1 - e / sum(exps) for e in exps]
        diff = sum(w * (p - n) for w, p, n in zip(weights, pos, neg, strict=True))
        log_sigmoid = -torch.log1p(torch.exp(-diff))
        total = total - (log_sigmoid / math.log(2.0) if cfg.log2_bpr else log_sigmoid)
    ranking = total / len(BATCH.users)
    first = 1 if cfg.detach_id else 0
    reg = sum(params[f"preferences.{b}"][BATCH.users].pow(2).mean() for b in range(first, branches))
    return ranking + cfg.reg_weight * reg


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_cohesion_fidelity_graphs_embeddings_and_scores(protocol: str, names: tuple[str, ...],
                                                        overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    assert_close(model.mm_adj.to_dense(), dense_item_graph(model.cfg, names))
    users, items = reference(model, _params(model))
    got_users, got_items = model.embeddings()
    assert got_users.shape == (NUM_USERS, (len(names) + 1) * model.cfg.embedding_dim)
    assert_close(got_users, users)
    assert_close(got_items, items)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_cohesion_fidelity_loss_and_gradients(protocol: str, names: tuple[str, ...],
                                              overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    params = _params(model)
    expected = reference_loss(model, params)
    expected.backward()
    loss = model.loss(BATCH)
    loss.backward()
    assert_close(loss, expected)
    def detached(name: str) -> bool:  # MMRec's id_rep.data: the ID branch's preference and encoder
        return model.cfg.detach_id and (name == "preferences.0" or name.startswith(("hidden.0.", "output.0.")))

    assert_same_gradients(model, params, no_gradient=detached)
    assert all(p.grad is None for name, p in model.named_parameters() if detached(name))
    assert model.has_unused_parameters == model.cfg.detach_id


def test_cohesion_fidelity_protocol_switches() -> None:
    strict, mmrec = _model("strict", ("image", "text"), {}), _model("mmrec", ("image", "text"), {})
    assert (strict.cfg.knn_self, strict.cfg.modality_weights, strict.cfg.log2_bpr, strict.cfg.detach_id,
            strict.cfg.pad_user_neighbours, strict.cfg.projection_init) == (False, None, False, False, False, "xavier")
    assert (mmrec.cfg.knn_self, mmrec.cfg.modality_weights, mmrec.cfg.log2_bpr, mmrec.cfg.detach_id,
            mmrec.cfg.pad_user_neighbours, mmrec.cfg.projection_init) == (True, (0.1, 0.9), True, True, True,
                                                                          "torch_default")
    assert mmrec.cfg.user_knn_k == 3 and COHESIONConfig().user_knn_k == 40  # explicit values win
    before = {name: p.detach().clone() for name, p in strict.named_parameters()}
    torch.manual_seed(0)
    strict.reset_parameters()
    assert all(torch.equal(p, before[name]) for name, p in strict.named_parameters())


def test_cohesion_fidelity_late_fusion_weighs_the_weakest_branch_most() -> None:
    """The adaptive weights are 1 - softmax of the per-branch margins: dropping them (plain BPR on the summed
    scores) gives another loss, so the reference comparison above would catch a model that ignored them."""
    model = _model("strict", ("image", "text"), {"reg_weight": 0.0})
    params = _params(model)
    users, items = reference(model, params)
    u = users[BATCH.users]
    plain = -torch.log(torch.sigmoid((u * items[BATCH.pos_items]).sum(1) - (u * items[BATCH.neg_items]).sum(1)))
    assert not math.isclose(plain.mean().item(), model.loss(BATCH).item(), rel_tol=1e-3)
    assert_close(model.loss(BATCH), reference_loss(model, params))
