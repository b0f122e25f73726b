"""SelfCF (SELFCF_ed, LightGCN encoder) against an independent dense reference written from the paper's equations
and MMRec's ``selfcfed_lgn.py`` (with its LightGCN encoder).

The reference reads the rmm model's embeddings and predictor and recomputes, in float64 with a dense normalised
adjacency and explicit formulas (no rmm model, layer or graph code): the layer-mean encoder, the predictor, the
scores, the loss and its gradients, under both protocols. The randomness (the encoder's per-step edge dropout under
``mmrec``, the target views' dropout) is replayed: the reference re-seeds torch and draws what the model draws, in
the model's order (the rate, one uniform per stored entry of the row-major adjacency, then the user and the item
masks, each ``bernoulli_(1 - p)`` over a float32 ``(B, d)`` tensor, as ``F.dropout`` draws them on the CPU).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rmm.models.base import BPRBatch
from rmm.models.selfcf import SelfCF
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    assert_close,
    assert_close_grad,
    dense_adjacency,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

#: A repeated user (3) and the cold item 7 as a positive (its negatives are never read).
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: What each protocol sets (the rest is rmm's defaults).
SWITCHES = {"strict": {"reg_reduction": "mean", "edge_dropout": 0.0, "reg_norm": "squared", "embedding_dim": 64},
            "mmrec": {"reg_reduction": "sum", "edge_dropout": 1.0, "reg_norm": "squared", "embedding_dim": 64}}
#: (protocol, explicit keys): both protocols' defaults with a visible penalty, and other sizes and switches.
CASES = [("strict", {"reg_weight": 0.5}), ("mmrec", {"reg_weight": 0.05}),
         ("strict", {"reg_weight": 0.2, "num_layers": 1, "dropout": 0.0, "embedding_dim": 8}),
         ("mmrec", {"reg_weight": 0.3, "num_layers": 3, "dropout": 0.5, "edge_dropout": 0.5, "reg_reduction": "mean",
                    "reg_norm": "frobenius"})]
IDS = ["strict", "mmrec", "strict-1layer-no-dropout-d8", "mmrec-3layers-half-edge-dropout-mean-frobenius"]


def _model(protocol: str, overrides: dict[str, Any]) -> SelfCF:
    return seeded_model(SelfCF, {"name": "selfcf", **overrides}, protocol,
                        history_graph(HISTORY, NUM_USERS, NUM_ITEMS), {})


# ------------------------------------------------------------------------------------------- dense reference


def full_adjacency() -> torch.Tensor:
    r""":math:`\hat{A} = D^{-1/2} A D^{-1/2}` over users then items. Shapes: (U+I, U+I) float64."""
    return sym_normalized(dense_adjacency(history_pairs(HISTORY)))


def dropped_adjacency(edge_dropout: float) -> torch.Tensor:
    r"""MMRec's encoder dropout, replayed: rate :math:`r = \mathcal{U}[0,1) \cdot` ``edge_dropout``, each stored
    entry (row-major) kept iff its uniform is :math:`\ge r`, kept entries scaled by :math:`1/(1-r)`."""
    adj = full_adjacency()
    if edge_dropout == 0:
        return adj
    rate = float(torch.rand(())) * edge_dropout
    rows, cols = adj.nonzero(as_tuple=True)  # row-major, as the stored entries
    kept = torch.rand(len(rows)) >= rate
    dropped = torch.zeros_like(adj)
    dropped[rows[kept], cols[kept]] = adj[rows[kept], cols[kept]] / (1.0 - rate)
    return dropped


def encoder(p: dict[str, torch.Tensor], adj: torch.Tensor, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l E^{(0)}`, split into users and items."""
    layers = [torch.cat([p["users"], p["items"]])]
    for _ in range(num_layers):
        layers.append(adj @ layers[-1])
    final = torch.stack(layers).sum(0) / (num_layers + 1)
    return final[:NUM_USERS], final[NUM_USERS:]


def predictor(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return x @ p["weight"].T + p["bias"]


def target_view(h: torch.Tensor, dropout: float) -> torch.Tensor:
    """The stop-gradient dropout copy, replaying ``F.dropout``'s draw (none when ``dropout`` is 0)."""
    if dropout == 0:
        return h.detach()
    keep = 1.0 - dropout
    mask = torch.empty(h.shape).bernoulli_(keep).double()  # float32 draw, as the model's
    return (h * mask / keep).detach()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


def reference_loss(p: dict[str, torch.Tensor], cfg: Any) -> torch.Tensor:
    r""":math:`-\frac{1}{2}\cos(h(u), \dot{i}) - \frac{1}{2}\cos(h(i), \dot{u})` (batch means) plus ``reg_weight``
    times the batch's online rows' penalty, over B (rmm) or summed (MMRec's ``L2Loss``)."""
    user_emb, item_emb = encoder(p, dropped_adjacency(cfg.edge_dropout), cfg.num_layers)
    users, items = user_emb[BATCH.users], item_emb[BATCH.pos_items]
    user_target, item_target = target_view(users, cfg.dropout), target_view(items, cfg.dropout)
    align = -cosine(predictor(p, users), item_target).mean() / 2 - cosine(predictor(p, items), user_target).mean() / 2
    if cfg.reg_norm == "squared":
        reg = 0.5 * (users.pow(2).sum() + items.pow(2).sum())
    else:
        reg = users.pow(2).sum().sqrt() + items.pow(2).sum().sqrt()
    return align + cfg.reg_weight * (reg if cfg.reg_reduction == "sum" else reg / len(BATCH.users))


def _parameters(model: SelfCF) -> dict[str, torch.Tensor]:
    tensors = {"users": model.user_embedding.weight, "items": model.item_embedding.weight,
               "weight": model.predictor.weight, "bias": model.predictor.bias}
    return {name: t.detach().double().requires_grad_() for name, t in tensors.items()}


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_fidelity_selfcf_embeddings_and_scores(protocol: str, overrides: dict[str, Any]) -> None:
    model = _model(protocol, overrides)
    for name, value in {**SWITCHES[protocol], **overrides}.items():
        assert getattr(model.cfg, name) == value, name
    p = _parameters(model)
    users, items = encoder(p, full_adjacency(), model.cfg.num_layers)
    online_users, online_items = model.online()
    assert_close(online_users, users)
    assert_close(online_items, items)
    expected = predictor(p, users) @ items.T + users @ predictor(p, items).T  # (U, I)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), expected)
    assert_close(model.scorer()(torch.tensor([4, 1])), expected[[4, 1]])


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_fidelity_selfcf_loss_and_gradients(protocol: str, overrides: dict[str, Any]) -> None:
    model = _model(protocol, overrides)
    p = _parameters(model)
    torch.manual_seed(123)
    loss = model(BATCH)
    loss.backward()
    torch.manual_seed(123)
    expected = reference_loss(p, model.cfg)
    expected.backward()
    assert_close(loss, expected)
    actual = {"users": model.user_embedding.weight.grad, "items": model.item_embedding.weight.grad,
              "weight": model.predictor.weight.grad, "bias": model.predictor.bias.grad}
    for name, grad in actual.items():
        expected_grad = p[name].grad
        assert grad is not None and expected_grad is not None, name
        assert_close_grad(grad, expected_grad, name)


def test_fidelity_selfcf_ignores_negatives_and_its_draws_matter() -> None:
    model = _model("mmrec", {})
    other_negatives = BPRBatch(BATCH.users, BATCH.pos_items, torch.tensor([0, 1, 2, 3, 4, 5]))
    torch.manual_seed(1)
    first = model(BATCH)
    torch.manual_seed(1)
    assert torch.equal(model(other_negatives), first)
    torch.manual_seed(2)
    assert not torch.allclose(model(BATCH), first)


def test_fidelity_selfcf_edge_dropout_keeps_the_expected_adjacency() -> None:
    """Statistically: the rate is uniform on [0, 1) and kept entries are rescaled by 1/(1-r), so each entry keeps
    its expectation; the mean of many dropped graphs approaches the full one."""
    model = _model("mmrec", {"edge_dropout": 0.5})
    torch.manual_seed(0)
    total = torch.zeros(NUM_USERS + NUM_ITEMS, NUM_USERS + NUM_ITEMS, dtype=torch.float64)
    draws = 2000
    for _ in range(draws):
        adj, adj_t = model.dropped_graph()
        dense = adj.to_dense().double()
        assert torch.equal(adj_t.to_dense().double(), dense.T)
        total += dense
    torch.testing.assert_close(total / draws, full_adjacency(), atol=0.03, rtol=0.0)
