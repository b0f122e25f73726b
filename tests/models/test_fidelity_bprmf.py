"""BPR-MF against an independent dense reference written from the paper's equations and MMRec's ``bpr.py``.

The reference reads the rmm model's two factor tables and recomputes scores and the loss in float64 with
explicit formulas (MMRec's ``BPRLoss`` and ``EmbLoss`` for ``mmrec``; no rmm model or layer code), under both
protocols; the initialisation switch is checked on the distribution of a large table.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.bprmf import BPRMF
from tests.models.history import HISTORY, NUM_ITEMS, NUM_USERS, history_graph, seeded_model

#: A repeated user (3) and repeated items, negatives that are someone's positives.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 6, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 7]))
#: What each protocol sets (the rest of the config is rmm's defaults).
SWITCHES = {"strict": {"reg_norm": "squared", "init": "xavier_uniform", "embedding_dim": 64},
            "mmrec": {"reg_norm": "frobenius", "init": "xavier_normal", "embedding_dim": 64}}
#: A weight large enough for the regulariser to show in the loss at float tolerance.
REG_WEIGHT = 0.5


def _graph(num_users: int = NUM_USERS, num_items: int = NUM_ITEMS) -> TrainGraph:
    return history_graph(HISTORY, num_users, num_items)


def _model(protocol: str, overrides: dict[str, Any], graph: TrainGraph | None = None) -> BPRMF:
    return seeded_model(BPRMF, {"name": "bprmf", **overrides}, protocol, graph or _graph(), {})


# ------------------------------------------------------------------------------------------- dense reference


def reference_loss(users: torch.Tensor, items: torch.Tensor, batch: BPRBatch, reg_weight: float,
                   reg_norm: str) -> torch.Tensor:
    r"""MMRec's ``BPR.calculate_loss``: :math:`-\frac{1}{B}\sum \ln(10^{-10} + \sigma(\hat y_{ui} - \hat y_{uj}))`
    plus ``reg_weight`` times the batch rows' regulariser: ``frobenius`` :math:`\frac{1}{B}\sum_t \lVert
    E_t\rVert_F` (``EmbLoss``), ``squared`` :math:`\frac{1}{2B}\sum_t \lVert E_t\rVert_F^2`."""
    u, p, n = users[batch.users], items[batch.pos_items], items[batch.neg_items]  # (B, d) each
    ranking = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    if reg_norm == "frobenius":
        reg = sum(t.pow(2).sum().sqrt() for t in (u, p, n)) / len(u)
    else:
        reg = sum(t.pow(2).sum() for t in (u, p, n)) / (2 * len(u))
    return ranking + reg_weight * reg


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_bprmf_scores_and_loss_match_the_dense_reference(protocol: str) -> None:
    model = _model(protocol, {"reg_weight": REG_WEIGHT})
    for name, value in SWITCHES[protocol].items():
        assert getattr(model.cfg, name) == value, name
    users = model.user_embedding.weight.detach().double().requires_grad_()
    items = model.item_embedding.weight.detach().double().requires_grad_()

    expected_scores = users @ items.T  # (U, I)
    expected_loss = reference_loss(users, items, BATCH, REG_WEIGHT, model.cfg.reg_norm)
    expected_loss.backward()
    loss = model(BATCH)
    loss.backward()

    user_emb, item_emb = model.embeddings()
    assert torch.allclose(user_emb.double(), users, atol=1e-6) and torch.allclose(item_emb.double(), items, atol=1e-6)
    assert torch.allclose(model.scorer()(torch.arange(NUM_USERS)).double(), expected_scores, atol=1e-5)
    assert torch.allclose(loss.double(), expected_loss, atol=1e-5)
    assert torch.allclose(model.user_embedding.weight.grad.double(), users.grad, atol=1e-5)
    assert torch.allclose(model.item_embedding.weight.grad.double(), items.grad, atol=1e-5)


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_bprmf_initialisation_follows_the_protocol(protocol: str) -> None:
    """Both draws have the Xavier variance 2 / (n + d); only the uniform one is bounded by sqrt(3) std."""
    num_users, dim = 2000, 64
    model = _model(protocol, {"embedding_dim": dim}, _graph(num_users=num_users))
    weight = model.user_embedding.weight.detach()
    std = math.sqrt(2.0 / (num_users + dim))
    assert weight.std().item() == pytest.approx(std, rel=0.02)
    beyond = (weight.abs() > math.sqrt(3.0) * std).float().mean().item()
    if protocol == "mmrec":  # normal: P(|z| > sqrt 3) = 0.083
        assert beyond == pytest.approx(0.0833, abs=0.01)
    else:
        assert beyond == 0.0
