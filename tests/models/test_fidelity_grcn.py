"""GRCN against an independent dense reference of the paper's equations (Wei et al., MM 2020) and, under
``protocol: mmrec``, of MMRec's code: the refined graph, embeddings, full-ranking scores, loss and gradients, on a
tiny graph."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from rmm.config import build_model_config
from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.grcn import GRCN
from tests.models.history import (
    INTERACTIONS,
    NUM_ITEMS,
    NUM_USERS,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
)

BATCH = BPRBatch(users=torch.tensor([0, 1, 2, 3, 4, 5, 1, 5]), pos_items=torch.tensor([2, 3, 4, 6, 5, 0, 1, 3]),
                 neg_items=torch.tensor([7, 0, 1, 5, 7, 2, 6, 4]))
#: What each protocol must build: MMRec's routing messages go user -> item and only the user rows are kept,
#: so its preferences are never routed; it regularises with the element mean of squares.
SPEC: dict[str, dict[str, Any]] = {
    "strict": {"routing": 3, "route_users": True, "reg": "batch"},
    "mmrec": {"routing": 3, "route_users": False, "reg": "mmrec"},
}


def _graph() -> TrainGraph:
    return history_graph(INTERACTIONS, NUM_USERS, NUM_ITEMS)


def _features() -> dict[str, Tensor]:
    return gaussian_features(NUM_ITEMS, seed=7)


def _model(protocol: str, **params: Any) -> GRCN:
    return seeded_model(GRCN, {"name": "grcn", "features": ["image", "text"], **params}, protocol, _graph(),
                        _features())


def _lrelu(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.01 * x)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Row-wise softmax over the True entries (rows without any: zeros). Logits here are cosines, in [-1, 1]."""
    exp = logits.exp() * mask
    return exp / exp.sum(1, keepdim=True).clamp_min(1e-30)


def _params(model: GRCN, *, requires_grad: bool = False) -> dict[str, Tensor]:
    return {name: p.detach().double().requires_grad_(requires_grad) for name, p in model.named_parameters()}


def reference_graph(params: dict[str, Tensor], spec: dict[str, Any]) -> tuple[Tensor, list[Tensor]]:
    """The refined graph ``W[v, j]`` (weight of edge j -> v, (U+I, U+I)) and every modality's content
    representation (U+I, latent)."""
    adj = dense_adjacency(history_pairs(INTERACTIONS)).bool()
    user_items = adj[:NUM_USERS, NUM_USERS:]  # (U, I)
    attentions, contents = [], []
    for m, feature in enumerate(_features().values()):
        p = {name.split(".", 2)[2]: value for name, value in params.items() if name.startswith(f"branches.{m}.")}
        content = _unit(_lrelu(feature.double() @ p["mlp.weight"].T + p["mlp.bias"]))  # (I, latent)
        preference = _unit(p["preference"])
        for _ in range(spec["routing"]):
            if spec["route_users"]:  # the paper: each user attends over its items' content
                alpha = _masked_softmax(preference @ content.T, user_items)  # (U, I)
                preference = _unit(preference + alpha @ content)
            else:  # MMRec: messages user -> item, aggregated at the items; the user rows receive none
                alpha = _masked_softmax(content @ preference.T, user_items.T)  # (I, U)
                out = torch.cat([torch.zeros_like(preference), alpha @ preference])  # (U+I, latent)
                preference = _unit(preference + out[:NUM_USERS])
        x = torch.cat([preference, content])
        attention = _masked_softmax(x @ x.T, adj)  # [v, j]: over v's neighbours j
        attentions.append(attention)
        contents.append(x + attention @ x)
    confidence = params["confidence"]  # (U+I, M), of the edge's source j
    scored = torch.stack([a * confidence[:, m][None, :] for m, a in enumerate(attentions)])  # (M, N, N)
    weights = torch.relu(scored.max(0).values) * adj  # confidence-weighted max, pruned by the ReLU
    return weights, contents


def reference_representation(params: dict[str, Tensor], spec: dict[str, Any]) -> Tensor:
    weights, contents = reference_graph(params, spec)
    x = _unit(params["id_embedding"])
    hop1 = weights @ x
    hop2 = weights @ hop1
    return torch.cat([x + hop1 + hop2, *contents], dim=1)


def reference_loss(params: dict[str, Tensor], spec: dict[str, Any], reg_weight: float) -> Tensor:
    rep = reference_representation(params, spec)
    ids, prefs = params["id_embedding"], [params["branches.0.preference"], params["branches.1.preference"]]
    if spec["reg"] == "mmrec":  # MMRec's calculate_loss, literally
        user_tensor = BATCH.users.repeat_interleave(2)
        item_tensor = torch.stack([BATCH.pos_items, BATCH.neg_items]).t().reshape(-1) + NUM_USERS
        score = (rep[user_tensor] * rep[item_tensor]).sum(1).view(-1, 2)
        ranking = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]], dtype=torch.float64))).mean()
        reg_embedding = (ids[user_tensor] ** 2 + ids[item_tensor] ** 2).mean() + (prefs[0] ** 2).mean()
        reg_content = sum((pref[user_tensor] ** 2).mean() for pref in prefs)
        return ranking + reg_weight * (reg_embedding + reg_content)
    users, items = rep[BATCH.users], rep[NUM_USERS:]
    gap = (users * items[BATCH.pos_items]).sum(1) - (users * items[BATCH.neg_items]).sum(1)
    rows = [ids[BATCH.users], ids[NUM_USERS + BATCH.pos_items], ids[NUM_USERS + BATCH.neg_items],
            *(pref[BATCH.users] for pref in prefs)]
    reg = sum((row ** 2).sum() for row in rows) / (2 * len(BATCH.users))
    return -torch.log(torch.sigmoid(gap)).mean() + reg_weight * reg


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_grcn_embeddings_and_scores(protocol: str) -> None:
    model, spec = _model(protocol), SPEC[protocol]
    params = _params(model)
    weights, _ = reference_graph(params, spec)
    on_edges = weights[dense_adjacency(history_pairs(INTERACTIONS)).bool()]
    assert (on_edges == 0).any() and (on_edges > 0).any()  # some edges pruned, some kept: both paths checked
    expected = reference_representation(params, spec)

    users, items = model.embeddings()
    assert torch.allclose(torch.cat([users, items]).double(), expected, atol=1e-5)
    scores = model.scorer()(torch.arange(NUM_USERS)).double()
    assert torch.allclose(scores, expected[:NUM_USERS] @ expected[NUM_USERS:].T, atol=1e-5)


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_grcn_loss_and_gradients(protocol: str) -> None:
    model, spec = _model(protocol, reg_weight=0.1), SPEC[protocol]  # a large weight: the regulariser shows
    params = _params(model, requires_grad=True)
    expected = reference_loss(params, spec, 0.1)
    expected.backward()

    loss = model.loss(BATCH)
    loss.backward()
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad.double(), params[name].grad, atol=1e-6, rtol=1e-4), name
    assert not any(name.startswith("features") for name, _ in model.named_parameters())  # frozen inputs


@pytest.mark.slow  # trains for several steps
@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_grcn_refined_graph_updates_with_training(protocol: str) -> None:
    """One Adam step moves the confidences and preferences, hence the refined graph, and the model still
    matches the reference built from its new parameters."""
    model, spec = _model(protocol), SPEC[protocol]
    before = reference_graph(_params(model), spec)[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.loss(BATCH).backward()
    optimizer.step()

    params = _params(model)
    assert not torch.allclose(reference_graph(params, spec)[0], before)
    users, items = model.embeddings()
    assert torch.allclose(torch.cat([users, items]).double(), reference_representation(params, spec), atol=1e-5)


def test_grcn_mmrec_routing_leaves_preferences_unrouted() -> None:
    """Under ``mmrec`` the routing count changes nothing (MMRec's routing never reaches the users); under
    ``strict`` it does."""
    for protocol, same in (("mmrec", True), ("strict", False)):
        one, three = (_model(protocol, num_routing=r).embeddings()[0] for r in (1, 3))
        assert torch.allclose(one, three, atol=1e-6) == same, protocol


def test_grcn_protocol_defaults() -> None:
    mmrec = build_model_config({"name": "grcn", "features": ["image"]}, "model[0]", "mmrec").params
    assert (mmrec.embedding_dim, mmrec.latent_dim, mmrec.num_routing, mmrec.route_preferences, mmrec.regulariser,
            mmrec.reg_norm) == (64, 64, 3, False, "mmrec", "squared")
