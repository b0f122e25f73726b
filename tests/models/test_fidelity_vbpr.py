"""VBPR against an independent dense reference written from the paper's equations and MMRec's ``vbpr.py``.

The reference reads the rmm model's parameters by name and recomputes item rows
:math:`[\\gamma_i; E f_i + b]`, scores, the loss and its gradient in float64 with explicit formulas (no rmm model,
fusion or layer code), under both protocols, for one modality, two concatenated (MMRec's form) and two projected
and averaged (rmm's ``mean`` fusion); the projection's initialisation switch is checked on its distribution.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.vbpr import VBPR
from tests.models.history import HISTORY, NUM_ITEMS, NUM_USERS, gaussian_features, history_graph, seeded_model

#: A repeated user (3), repeated items, the item without an image vector (3) as positive and negative.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 3, 5, 6, 2, 0]), torch.tensor([7, 0, 1, 3, 3, 7]))
#: What each protocol sets (the rest of the config is rmm's defaults).
SWITCHES = {"strict": {"reg_norm": "squared", "projection_init": "pytorch", "embedding_dim": 64},
            "mmrec": {"reg_norm": "frobenius", "projection_init": "xavier_normal", "embedding_dim": 64}}
#: (features, fusion): one modality, MMRec's concatenation of two, rmm's mean of two projections.
INPUTS = [(("image",), "concat"), (("image", "text"), "concat"), (("image", "text"), "mean")]
#: A weight large enough for the regulariser to show in the loss at float tolerance.
REG_WEIGHT = 0.5


def _graph() -> TrainGraph:
    return history_graph(HISTORY, NUM_USERS, NUM_ITEMS)


def _features() -> dict[str, torch.Tensor]:
    return gaussian_features(NUM_ITEMS, seed=0, missing_image=3)


def _model(protocol: str, names: tuple[str, ...], fusion: str, overrides: dict[str, Any],
           features: dict[str, torch.Tensor] | None = None) -> VBPR:
    features = features or _features()
    entry = {"name": "vbpr", "features": list(names), "fusion": fusion, **overrides}
    return seeded_model(VBPR, entry, protocol, _graph(), {n: features[n] for n in names})


# ------------------------------------------------------------------------------------------- dense reference


def reference_params(model: VBPR) -> dict[str, torch.Tensor]:
    """Every trainable parameter of ``model``, by name, as a float64 leaf that records its gradient."""
    return {name: p.detach().double().requires_grad_() for name, p in model.named_parameters()}


def reference_items(p: dict[str, torch.Tensor], names: tuple[str, ...], fusion: str) -> torch.Tensor:
    r"""Item rows :math:`[\gamma_i; E f_i + b]`: ``concat`` maps the concatenated modalities with one linear map
    (MMRec's ``item_linear``); ``mean`` averages one linear map per modality. Shapes: (I, 2d)."""
    x = [_features()[name].double() for name in names]
    if fusion == "concat":
        content = torch.cat(x, dim=1) @ p["fusion.proj.weight"].T + p["fusion.proj.bias"]
    else:
        content = sum(x[m] @ p[f"fusion.projs.{m}.weight"].T + p[f"fusion.projs.{m}.bias"]
                      for m in range(len(x))) / len(x)
    return torch.cat([p["item_embedding.weight"], content], dim=1)


def reference_loss(users: torch.Tensor, items: torch.Tensor, batch: BPRBatch, reg_weight: float,
                   reg_norm: str) -> torch.Tensor:
    r"""MMRec's ``VBPR.calculate_loss``: BPR (``-ln(1e-10 + sigmoid)``) on the final rows plus ``reg_weight``
    times their regulariser (``EmbLoss`` :math:`\frac{1}{B}\sum\lVert\cdot\rVert_F`, or squared norms over 2B)."""
    u, pos, neg = users[batch.users], items[batch.pos_items], items[batch.neg_items]  # (B, 2d) each
    ranking = -torch.log(1e-10 + torch.sigmoid((u * pos).sum(1) - (u * neg).sum(1))).mean()
    if reg_norm == "frobenius":
        reg = sum(t.pow(2).sum().sqrt() for t in (u, pos, neg)) / len(u)
    else:
        reg = sum(t.pow(2).sum() for t in (u, pos, neg)) / (2 * len(u))
    return ranking + reg_weight * reg


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("names", "fusion"), INPUTS, ids=["image", "concat", "mean"])
@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_vbpr_item_rows_scores_loss_and_gradient_match_the_dense_reference(
        protocol: str, names: tuple[str, ...], fusion: str) -> None:
    model = _model(protocol, names, fusion, {"reg_weight": REG_WEIGHT})
    for name, value in SWITCHES[protocol].items():
        assert getattr(model.cfg, name) == value, name
    p = reference_params(model)
    expected_items = reference_items(p, names, fusion)
    expected_loss = reference_loss(p["user_embedding.weight"], expected_items, BATCH, REG_WEIGHT, model.cfg.reg_norm)
    expected_loss.backward()
    loss = model(BATCH)
    loss.backward()

    users, items = model.embeddings()
    assert users.shape == (NUM_USERS, 128) and items.shape == (NUM_ITEMS, 128)
    assert torch.allclose(items.double(), expected_items, atol=1e-5)
    expected_scores = p["user_embedding.weight"] @ expected_items.T  # (U, I)
    assert torch.allclose(model.scorer()(torch.arange(NUM_USERS)).double(), expected_scores, atol=1e-5)
    assert torch.allclose(loss.double(), expected_loss, atol=1e-5)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad.double(), p[name].grad, atol=1e-5), name


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_vbpr_projection_initialisation_follows_the_protocol(protocol: str) -> None:
    """mmrec: Xavier-normal weights (std sqrt(2 / (in + out))) and zero biases, as MMRec's
    ``xavier_normal_initialization``; strict: PyTorch's default (weights uniform with std 1 / sqrt(3 in))."""
    generator = torch.Generator().manual_seed(1)
    features = {"image": torch.randn(NUM_ITEMS, 150, generator=generator),
                "text": torch.randn(NUM_ITEMS, 50, generator=generator)}
    model = _model(protocol, ("image", "text"), "concat", {}, features)
    weight, bias = model.fusion.proj.weight.detach(), model.fusion.proj.bias.detach()  # (64, 200), (64,)
    if protocol == "mmrec":
        assert weight.std().item() == pytest.approx(math.sqrt(2.0 / (200 + 64)), rel=0.05)
        assert torch.equal(bias, torch.zeros_like(bias))
    else:
        assert weight.std().item() == pytest.approx(1.0 / math.sqrt(3.0 * 200), rel=0.05)
        assert weight.abs().max().item() <= 1.0 / math.sqrt(200) and bias.abs().sum() > 0
