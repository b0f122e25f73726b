"""LightGCN against an independent dense reference written from the paper's equations and MMRec's ``lightgcn.py``.

The reference reads the rmm model's layer-0 table and recomputes the dense normalised adjacency, the layer mean,
scores, the loss and its gradient in float64 with explicit formulas (no rmm model, layer or graph code), under
both protocols; the initialisation switch is checked on the bounds of large tables.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.lightgcn import LightGCN
from tests.models.history import dense_adjacency, history_graph, history_pairs, seeded_model, sym_normalized

NUM_USERS, NUM_ITEMS = 6, 8
#: 20 train interactions; user 5 and item 7 have none (zero rows of the normalised adjacency).
HISTORY = {0: [0, 1, 2, 5], 1: [1, 3, 4], 2: [0, 2, 6, 4], 3: [3, 4, 5, 6], 4: [0, 1, 2, 3, 5]}
#: A repeated user (3), the edgeless user and item, negatives that are someone's positives.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: What each protocol sets (the rest of the config is rmm's defaults).
SWITCHES = {"strict": {"reg_norm": "squared", "init_per_table": False, "embedding_dim": 64, "num_layers": 3},
            "mmrec": {"reg_norm": "frobenius", "init_per_table": True, "embedding_dim": 64, "num_layers": 3}}
#: (protocol, explicit keys): both protocols' defaults with a regulariser large enough to show at float
#: tolerance, and other layer counts.
CASES = [("strict", {"reg_weight": 0.5}), ("mmrec", {"reg_weight": 0.5}),
         ("strict", {"reg_weight": 0.1, "num_layers": 1, "reg_norm": "frobenius"}),
         ("mmrec", {"reg_weight": 0.1, "num_layers": 4, "embedding_dim": 8})]
IDS = ["strict", "mmrec", "strict-1layer-frobenius", "mmrec-4layers-d8"]


def _graph(num_users: int = NUM_USERS, num_items: int = NUM_ITEMS) -> TrainGraph:
    return history_graph(HISTORY, num_users, num_items)


def _model(protocol: str, overrides: dict[str, Any], graph: TrainGraph | None = None) -> LightGCN:
    return seeded_model(LightGCN, {"name": "lightgcn", **overrides}, protocol, graph or _graph(), {})


# ------------------------------------------------------------------------------------------- dense reference


def reference_embeddings(ego: torch.Tensor, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`E = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l E^{(0)}`, split into users and items."""
    # D^{-1/2} A D^{-1/2}; an edgeless node's row and column stay zero (MMRec: +1e-7 on its degree, times zeros)
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY), NUM_USERS, NUM_ITEMS))
    layers = [ego]
    for _ in range(num_layers):
        layers.append(adj @ layers[-1])
    final = sum(layers) / (num_layers + 1)
    return final[:NUM_USERS], final[NUM_USERS:]


def reference_loss(ego: torch.Tensor, num_layers: int, batch: BPRBatch, reg_weight: float,
                   reg_norm: str) -> torch.Tensor:
    r"""MMRec's ``LightGCN.calculate_loss``: BPR on the final embeddings (``-ln(1e-10 + sigmoid)``) plus
    ``reg_weight`` times the batch's *layer-0* rows' regulariser (``EmbLoss``, or squared norms over 2B)."""
    users, items = reference_embeddings(ego, num_layers)
    u, p, n = users[batch.users], items[batch.pos_items], items[batch.neg_items]
    ranking = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    ego_rows = (ego[batch.users], ego[NUM_USERS + batch.pos_items], ego[NUM_USERS + batch.neg_items])
    if reg_norm == "frobenius":
        reg = sum(t.pow(2).sum().sqrt() for t in ego_rows) / len(batch.users)
    else:
        reg = sum(t.pow(2).sum() for t in ego_rows) / (2 * len(batch.users))
    return ranking + reg_weight * reg


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_fidelity_lightgcn_embeddings_scores_loss_and_gradient_match_the_dense_reference(
        protocol: str, overrides: dict[str, Any]) -> None:
    model = _model(protocol, overrides)
    for name, value in {**SWITCHES[protocol], **overrides}.items():
        assert getattr(model.cfg, name) == value, name
    ego = model.embedding.weight.detach().double().requires_grad_()
    num_layers = model.cfg.num_layers

    expected_users, expected_items = reference_embeddings(ego, num_layers)
    expected_loss = reference_loss(ego, num_layers, BATCH, model.cfg.reg_weight, model.cfg.reg_norm)
    expected_loss.backward()
    loss = model(BATCH)
    loss.backward()

    users, items = model.embeddings()
    assert torch.allclose(users.double(), expected_users, atol=1e-6)
    assert torch.allclose(items.double(), expected_items, atol=1e-6)
    assert torch.allclose(users[5], model.embedding.weight[5] / (num_layers + 1))  # edgeless: only its layer 0
    assert torch.allclose(model.scorer()(torch.arange(NUM_USERS)).double(), expected_users @ expected_items.T,
                          atol=1e-5)
    assert torch.allclose(loss.double(), expected_loss, atol=1e-5)
    assert torch.allclose(model.embedding.weight.grad.double(), ego.grad, atol=1e-5)


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_lightgcn_initialisation_follows_the_protocol(protocol: str) -> None:
    """Xavier-uniform bounds sqrt(6 / (n + d)): one for the stacked (U+I, d) table (strict), or each table's own
    (mmrec, as MMRec and the reference code)."""
    num_users, num_items, dim = 3000, 200, 64
    model = _model(protocol, {"embedding_dim": dim}, _graph(num_users, num_items))
    users, items = model.embedding.weight.detach().split([num_users, num_items])
    joint = math.sqrt(6.0 / (num_users + num_items + dim))
    bounds = ((math.sqrt(6.0 / (num_users + dim)), math.sqrt(6.0 / (num_items + dim))) if protocol == "mmrec"
              else (joint, joint))
    for table, bound in zip((users, items), bounds, strict=True):
        assert table.abs().max().item() <= bound
        assert table.abs().max().item() > 0.98 * bound
        assert table.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.03)
