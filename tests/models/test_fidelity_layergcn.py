"""LayerGCN against an independent dense reference written from the paper's equations and MMRec's ``layergcn.py``.

The reference reads the rmm model's ego embeddings and recomputes, in float64 with dense matrices and explicit
formulas (no rmm model, layer or graph code): the pruned graph of the epoch (replaying the model's draw from the
same ``(seed, epoch)`` generator over edge probabilities it computes itself: degree-sensitive, or uniform on odd
epochs under MMRec's alternation), the layer refinement by cosine similarity to the ego layer, the sum readout,
scores on the full graph, the loss and its gradients, under both protocols.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rmm.models.base import BPRBatch, epoch_generator
from rmm.models.layergcn import COSINE_EPS, LayerGCN, _EgoCosineScale
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

#: A repeated user (3), the cold item 7 as a positive and as a negative.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: What each protocol sets (the rest is rmm's defaults).
SWITCHES = {"strict": {"alternate_pruning": False, "loss_reduction": "mean", "reg_norm": "squared", "num_layers": 4},
            "mmrec": {"alternate_pruning": True, "loss_reduction": "sum", "reg_norm": "squared", "num_layers": 4}}
#: (protocol, explicit keys, epoch): defaults on an odd and an even epoch, and other sizes and switches.
CASES = [("strict", {"reg_weight": 0.5}, 5), ("mmrec", {"reg_weight": 0.5}, 5), ("mmrec", {"reg_weight": 0.5}, 4),
         ("strict", {"dropout": 0.5, "num_layers": 1, "embedding_dim": 8, "reg_norm": "frobenius", "reg_weight": 0.2},
          3),
         ("mmrec", {"dropout": 0.0, "num_layers": 2, "alternate_pruning": False, "reg_weight": 0.1}, 1)]
IDS = ["strict-odd", "mmrec-odd-uniform", "mmrec-even-degree", "strict-1layer-half-frobenius", "mmrec-no-pruning"]
SEED = 7


def _model(protocol: str, overrides: dict[str, Any]) -> LayerGCN:
    return seeded_model(LayerGCN, {"name": "layergcn", **overrides}, protocol,
                        history_graph(HISTORY, NUM_USERS, NUM_ITEMS), {})


# ------------------------------------------------------------------------------------------- dense reference


def reference_pruned_adjacency(dropout: float, alternate: bool, seed: int, epoch: int) -> torch.Tensor:
    r"""The epoch's training graph: :math:`\lfloor (1-p)|E| \rfloor` edges drawn without replacement with
    probability :math:`\propto (d_u d_i)^{-1/2}` (or uniformly on odd epochs when alternating), then
    :math:`D^{-1/2} A D^{-1/2}` with the kept degrees. Shapes: (U+I, U+I) float64."""
    pairs = history_pairs(HISTORY)
    if dropout == 0:
        return sym_normalized(dense_adjacency(pairs))
    user_degree = {u: sum(1 for v, _ in pairs if v == u) for u in range(NUM_USERS)}
    item_degree = {i: sum(1 for _, j in pairs if j == i) for i in range(NUM_ITEMS)}
    weights = torch.tensor([(user_degree[u] * item_degree[i]) ** -0.5 for u, i in pairs], dtype=torch.float32)
    keep = int(len(pairs) * (1 - dropout))
    generator = epoch_generator(seed, epoch)
    if alternate and epoch % 2 == 1:
        kept = torch.randperm(len(pairs), generator=generator)[:keep]
    else:
        kept = torch.multinomial(weights, keep, replacement=False, generator=generator)
    return sym_normalized(dense_adjacency([pairs[k] for k in kept.tolist()]))


def reference_embeddings(ego: torch.Tensor, adj: torch.Tensor, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`E^{(l)} = \mathrm{diag}(w^{(l)}) \hat{A} E^{(l-1)}`, :math:`w^{(l)}_v = \cos((\hat{A}E^{(l-1)})_v,
    E^{(0)}_v)`, readout :math:`\sum_{l=1}^{L} E^{(l)}`."""
    layer, total = ego, torch.zeros_like(ego)
    for _ in range(num_layers):
        h = adj @ layer
        norms = (h.norm(dim=1) * ego.norm(dim=1)).clamp_min(1e-8)
        layer = ((h * ego).sum(1) / norms)[:, None] * h
        total = total + layer
    return total[:NUM_USERS], total[NUM_USERS:]


def reference_loss(users_ego: torch.Tensor, items_ego: torch.Tensor, adj: torch.Tensor, cfg: Any) -> torch.Tensor:
    """BPR (``-log sigmoid``) on the final embeddings plus ``reg_weight`` times the ego rows' penalty, as the batch
    mean (rmm) or MMRec's batch sum."""
    users, items = reference_embeddings(torch.cat([users_ego, items_ego]), adj, cfg.num_layers)
    u, p, n = users[BATCH.users], items[BATCH.pos_items], items[BATCH.neg_items]
    size = len(BATCH.users)
    bpr = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).sum()
    rows = (users_ego[BATCH.users], items_ego[BATCH.pos_items], items_ego[BATCH.neg_items])
    if cfg.reg_norm == "squared":
        reg = 0.5 * sum(r.pow(2).sum() for r in rows)
    else:
        reg = sum(r.pow(2).sum().sqrt() for r in rows)
    total = bpr + cfg.reg_weight * reg  # MMRec: sums over the batch
    return total if cfg.loss_reduction == "sum" else total / size


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "overrides", "epoch"), CASES, ids=IDS)
def test_fidelity_layergcn_embeddings_scores_loss_and_gradients(protocol: str, overrides: dict[str, Any],
                                                                epoch: int) -> None:
    model = _model(protocol, overrides)
    for name, value in {**SWITCHES[protocol], **overrides}.items():
        assert getattr(model.cfg, name) == value, name
    users_ego = model.user_embedding.weight.detach().double().requires_grad_()
    items_ego = model.item_embedding.weight.detach().double().requires_grad_()

    full = sym_normalized(dense_adjacency(history_pairs(HISTORY)))
    expected_users, expected_items = reference_embeddings(torch.cat([users_ego, items_ego]), full,
                                                          model.cfg.num_layers)
    users, items = model.embeddings()
    assert_close(users, expected_users)
    assert_close(items, expected_items)
    assert torch.equal(items[7], torch.zeros_like(items[7]))  # a cold item: every refined layer is zero
    assert_close(model.scorer()(torch.arange(NUM_USERS)), expected_users @ expected_items.T)

    model.start_epoch(SEED, epoch)
    pruned = reference_pruned_adjacency(model.cfg.dropout, model.cfg.alternate_pruning, SEED, epoch)
    assert model.masked_adj is not None
    assert_close(model.masked_adj.to_dense(), pruned)
    expected_loss = reference_loss(users_ego, items_ego, pruned, model.cfg)
    expected_loss.backward()
    loss = model(BATCH)
    loss.backward()
    assert_close(loss, expected_loss)
    user_grad, item_grad = model.user_embedding.weight.grad, model.item_embedding.weight.grad
    assert user_grad is not None and item_grad is not None
    assert users_ego.grad is not None and items_ego.grad is not None
    assert_close_grad(user_grad, users_ego.grad, "user embeddings")
    assert_close_grad(item_grad, items_ego.grad, "item embeddings")


def test_fidelity_layergcn_pruning_alternates_only_under_mmrec() -> None:
    """Odd epochs prune uniformly under MMRec's alternation: a kept edge set the degree-sensitive draw of the
    same generator would not give; strict prunes degree-sensitively on every epoch."""
    strict, mmrec = _model("strict", {"dropout": 0.5}), _model("mmrec", {"dropout": 0.5})
    for epoch in (2, 3):
        strict.start_epoch(SEED, epoch)
        mmrec.start_epoch(SEED, epoch)
        assert strict.masked_adj is not None and mmrec.masked_adj is not None
        same = torch.equal(strict.masked_adj.to_dense(), mmrec.masked_adj.to_dense())
        assert same == (epoch % 2 == 0), epoch


def test_fidelity_layergcn_degree_sensitive_pruning_keeps_low_degree_edges_more_often() -> None:
    """Over many epochs, an edge between low-degree nodes is kept more often than one between high-degree nodes."""
    model = _model("strict", {"dropout": 0.5})
    pairs = history_pairs(HISTORY)
    counts = torch.zeros(NUM_USERS + NUM_ITEMS, NUM_USERS + NUM_ITEMS)
    for epoch in range(400):
        model.start_epoch(11, epoch)
        assert model.masked_adj is not None
        counts += (model.masked_adj.to_dense() > 0).float()
    rate = {(u, i): counts[u, NUM_USERS + i].item() / 400 for u, i in pairs}
    assert rate[(4, 1)] > rate[(3, 5)] + 0.1  # degrees 2 x 3 against 4 x 3
    assert rate[(4, 0)] > rate[(0, 2)] + 0.1  # degrees 2 x 3 against 4 x 3


def test_layer_refinement_backward_is_autograd_of_cosine_similarity() -> None:
    """The hand-written backward of the cosine scaling: gradcheck in float64, and the same output and gradients
    as autograd through ``F.cosine_similarity(h, ego) * h`` (MMRec's expression), a zero row included."""
    generator = torch.Generator().manual_seed(0)
    layer = torch.randn(6, 4, dtype=torch.float64, generator=generator)
    layer[2] = 0.0
    layer.requires_grad_(True)
    ego = torch.randn(6, 4, dtype=torch.float64, generator=generator, requires_grad=True)

    def refined(h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return _EgoCosineScale.apply(h, F.normalize(e, dim=1, eps=COSINE_EPS))

    assert torch.autograd.gradcheck(refined, (torch.randn(5, 3, dtype=torch.float64, requires_grad=True),
                                              torch.randn(5, 3, dtype=torch.float64, requires_grad=True)))
    grad = torch.randn(6, 4, dtype=torch.float64, generator=generator)
    expected = F.cosine_similarity(layer, ego, dim=-1).unsqueeze(1) * layer
    got = refined(layer, ego)
    torch.testing.assert_close(got, expected)
    for ours, theirs in zip(torch.autograd.grad(got, (layer, ego), grad),
                            torch.autograd.grad(expected, (layer, ego), grad), strict=True):
        torch.testing.assert_close(ours, theirs)
