"""DA-MRS against an independent dense reference written from the paper's equations and MMRec's ``damrs.py``.

The reference reads the rmm model's parameters (and the features and history it was given) and recomputes
everything with dense float64 matrices: full cosine matrices, their means, the cross-modal masks, a per-row sort,
the dense co-occurrence :math:`R^\\top R`, dense normalisations, plain matrix products, and the losses as MMRec
writes them (``log(sigmoid)``, ``p log p``) rather than rmm's log-sigmoid forms. No rmm model or graph code runs
on the reference side. DA-MRS has no randomness, so every comparison is deterministic.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rmm.models import layers
from rmm.models.base import BPRBatch
from rmm.models.damrs import DAMRS, symmetric_bernoulli_kl
from rmm.models.hparams.damrs import DAMRSConfig
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

#: Small sizes so that k < I and 2n < I matter, and visible alignment weights so that every term is compared.
SIZES = {"knn_k": 3, "embedding_dim": 8, "num_pseudo_positives": 2, "neighbor_weight": 0.5, "kl_weight": 0.7}
#: A repeated user (3) and the cold item as a positive.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: (protocol, features, item without an image vector, explicit keys).
CASES: list[tuple[str, tuple[str, ...], int | None, dict[str, Any]]] = [
    ("strict", ("image", "text"), None, {}),
    ("mmrec", ("image", "text"), None, {}),
    ("strict", ("image", "text", "audio"), 3, {"knn_self": True, "num_mm_layers": 2, "behaviour_k": 1}),
    ("mmrec", ("text",), None, {"knn_self": False, "num_ui_layers": 1, "behaviour_min_count": 1, "temperature": 0.5}),
    ("mmrec", ("image", "text"), 3, {"num_pseudo_positives": 10, "knn_k": 5}),
]
IDS = ["strict", "mmrec", "strict-3-modalities-missing-self-2layers", "mmrec-1-modality-no-self",
       "mmrec-missing-image-clamped-n"]


def _features(names: tuple[str, ...], missing_image: int | None) -> dict[str, torch.Tensor]:
    """Correlated modalities (each a noisy view of one latent), so that the cross-modal filter keeps edges."""
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(NUM_ITEMS, 4, generator=generator)
    widths = {"image": 5, "text": 3, "audio": 4}
    features = {}
    for name in names:
        mix = torch.randn(4, widths[name], generator=generator)
        features[name] = latent @ mix + 0.5 * torch.randn(NUM_ITEMS, widths[name], generator=generator)
    if missing_image is not None and "image" in features:
        features["image"][missing_image] = 0.0
    return features


def _model(protocol: str, names: tuple[str, ...], missing: int | None, overrides: dict[str, Any]) -> DAMRS:
    entry = {"name": "damrs", "features": list(names), **SIZES, **overrides}
    return seeded_model(DAMRS, entry, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS), _features(names, missing))


# ------------------------------------------------------------------------------------------- dense reference


def dense_modality_graphs(features: dict[str, torch.Tensor], cfg: DAMRSConfig) -> list[torch.Tensor]:
    """Per modality: the top knn_k of the cosine row among items whose cosine reaches the mean cosine in every
    modality where both have a vector (the item itself a candidate when knn_self), unweighted,
    D^-1/2 S D^-1/2 (row sums). Shapes: M x (I, I) float64."""
    sims, valids, means = [], [], []
    for x in features.values():
        x = x.double()
        valid = x.norm(dim=1) > 0
        unit = torch.where(valid[:, None], x / x.norm(dim=1, keepdim=True).clamp_min(1e-300), 0.0)
        sim = unit @ unit.T
        pair = valid[:, None] & valid[None, :]
        sims.append(sim)
        valids.append(pair)
        means.append(sim[pair].mean())
    rejected = torch.zeros(NUM_ITEMS, NUM_ITEMS, dtype=torch.bool)
    for sim, pair, mean in zip(sims, valids, means, strict=True):
        rejected |= pair & (sim < mean)
    graphs = []
    for sim, pair in zip(sims, valids, strict=True):
        adj = torch.zeros(NUM_ITEMS, NUM_ITEMS, dtype=torch.float64)
        for i in range(NUM_ITEMS):
            kept = [j for j in range(NUM_ITEMS)
                    if pair[i, j] and not rejected[i, j] and (cfg.knn_self or j != i)]
            for j in sorted(kept, key=lambda j: -sim[i, j].item())[:cfg.knn_k]:
                adj[i, j] = 1.0
        graphs.append(_row_sym(adj))
    return graphs


def dense_behaviour_graph(cfg: DAMRSConfig) -> torch.Tensor:
    """Each item with itself and its behaviour_k items sharing the most (>= behaviour_min_count) train users, ties
    towards the smaller id; unweighted, D^-1/2 S D^-1/2 (row sums). Shapes: (I, I) float64."""
    r = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=torch.float64)
    for user, item in history_pairs(HISTORY):
        r[user, item] = 1.0
    shared = r.T @ r
    adj = torch.eye(NUM_ITEMS, dtype=torch.float64)
    for i in range(NUM_ITEMS):
        others = [j for j in range(NUM_ITEMS) if j != i and shared[i, j] >= cfg.behaviour_min_count]
        for j in sorted(others, key=lambda j: (-shared[i, j].item(), j))[:cfg.behaviour_k]:
            adj[i, j] = 1.0
    return _row_sym(adj)


def _row_sym(adj: torch.Tensor) -> torch.Tensor:
    degree = adj.sum(1)
    scale = torch.where(degree > 0, degree.clamp_min(1e-12) ** -0.5, 0.0)
    return scale[:, None] * adj * scale[None, :]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class Reference:
    """DA-MRS in dense float64 from copies of the model's weights (leaves, so that gradients can be compared)."""

    def __init__(self, model: DAMRS, features: dict[str, torch.Tensor]) -> None:
        self.cfg = model.cfg
        self.user = model.user_embedding.weight.detach().double().clone().requires_grad_()
        self.item = model.item_embedding.weight.detach().double().clone().requires_grad_()
        self.graphs = dense_modality_graphs(features, model.cfg) + [dense_behaviour_graph(model.cfg)]
        self.adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        layer = torch.cat([self.user, self.item])
        layers = [layer]
        for _ in range(self.cfg.num_ui_layers):
            layer = self.adj @ layer
            layers.append(layer)
        mean = torch.stack(layers).mean(0)
        views = []
        for graph in self.graphs:
            h = self.item
            for _ in range(self.cfg.num_mm_layers):
                h = graph @ h
            views.append(h)
        return mean[:NUM_USERS], mean[NUM_USERS:], views

    def scores(self) -> torch.Tensor:
        users, items, views = self.propagate()
        return users @ (items + torch.stack(views).mean(0)).T

    def loss(self, batch: BPRBatch) -> torch.Tensor:
        users, items, views = self.propagate()
        content = torch.stack(views).mean(0)
        u_ids = torch.unique(batch.users)
        i_ids = torch.unique(torch.cat([batch.pos_items, batch.neg_items]))
        # Alignment guided by graded item relations.
        n = min(self.cfg.num_pseudo_positives, NUM_ITEMS // 2)
        predictions = [torch.softmax(_unit(h[i_ids]) @ _unit(h).T, dim=1).detach() for h in views]
        relation = torch.zeros((), dtype=torch.float64)
        for v, h in enumerate(views):
            positive = torch.stack(predictions).sum(0) + predictions[v]
            multi = positive.topk(n, dim=1).indices
            rest = predictions[v].clone()
            for row in range(len(i_ids)):
                rest[row, multi[row]] = 0.0
            single = rest.topk(n, dim=1).indices
            anchor, keys = _unit(h[i_ids]), _unit(h)
            multi_score = torch.exp((anchor[:, None, :] * keys[multi]).sum(-1) / self.cfg.temperature).sum(1)
            single_score = torch.exp((anchor[:, None, :] * keys[single]).sum(-1) / self.cfg.temperature).sum(1)
            every = torch.exp(anchor @ keys.T / self.cfg.temperature).sum(1)
            relation = relation + torch.mean(-torch.log(multi_score / every + 1e-9)
                                             - torch.log(single_score / (every - multi_score) + 1e-9))
        relation = relation / len(views)
        # Alignment guided by user preference: symmetric Bernoulli KL.
        p = torch.sigmoid(users[u_ids] @ _unit(items[i_ids]).T)
        q = torch.sigmoid(users[u_ids] @ _unit(content[i_ids]).T)

        def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * torch.log(a) - a * torch.log(b) + (1 - a) * torch.log(1 - a) - (1 - a) * torch.log(1 - b)

        preference = torch.mean(kl(p, q) + kl(q, p))
        # Denoised BPR.
        u = users[batch.users]
        pos_p = torch.stack([torch.sigmoid((u * _unit(h[batch.pos_items])).sum(1)) for h in views]).detach()
        neg_p = torch.stack([torch.sigmoid((u * _unit(h[batch.neg_items])).sum(1)) for h in views]).detach()
        pos_mean, neg_mean = pos_p.mean(0), neg_p.mean()
        pos_weight = torch.clamp(pos_mean * torch.exp(-pos_p.var(0)) ** 2, 0, 1)
        neg_weight = torch.clamp((pos_p.max(0).values - neg_mean) * (pos_mean < neg_mean).double(), 0, 1)
        final = items + content
        gap = (u * final[batch.pos_items]).sum(1) - (u * final[batch.neg_items]).sum(1)
        ranking = -torch.mean(torch.log(torch.sigmoid(gap)) * pos_weight + torch.log(torch.sigmoid(-gap)) * neg_weight)
        return ranking + self.cfg.neighbor_weight * relation + self.cfg.kl_weight * preference


# ----------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "names", "missing", "overrides"), CASES, ids=IDS)
def test_damrs_fidelity_graphs_embeddings_scores(protocol: str, names: tuple[str, ...], missing: int | None,
                                                 overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, missing, overrides)
    reference = Reference(model, _features(names, missing))
    for v, expected in enumerate(reference.graphs):
        assert_close(model.get_buffer(f"view_adj_{v}").to_dense(), expected)
    assert any(graph[~torch.eye(NUM_ITEMS, dtype=torch.bool)].abs().sum() > 0 for graph in reference.graphs[:-1])
    users, items, views = model.propagate()
    ref_users, ref_items, ref_views = reference.propagate()
    assert_close(users, ref_users)
    assert_close(items, ref_items)
    for view, ref_view in zip(views, ref_views, strict=True):
        assert_close(view, ref_view)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), reference.scores())


@pytest.mark.parametrize(("protocol", "names", "missing", "overrides"), CASES, ids=IDS)
def test_damrs_fidelity_loss_and_gradients(protocol: str, names: tuple[str, ...], missing: int | None,
                                           overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, missing, overrides)
    reference = Reference(model, _features(names, missing))
    loss = model(BATCH)
    expected = reference.loss(BATCH)
    assert_close(loss, expected)
    loss.backward()
    expected.backward()
    assert model.user_embedding.weight.grad is not None and model.item_embedding.weight.grad is not None
    assert reference.user.grad is not None and reference.item.grad is not None
    assert_close_grad(model.user_embedding.weight.grad, reference.user.grad, "user_embedding")
    assert_close_grad(model.item_embedding.weight.grad, reference.item.grad, "item_embedding")


def test_damrs_fidelity_relation_alignment_by_blocks_of_two_anchors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pseudo-positives and their scores go through blocks of anchor rows (two rows each here: the batch's
    items span several blocks, the last one short), in the forward pass and in the backward, with the same
    loss and gradients as the dense reference."""
    monkeypatch.setattr(layers, "_BLOCK_ELEMENTS", 2 * NUM_ITEMS)
    test_damrs_fidelity_loss_and_gradients("mmrec", ("image", "text"), 3, {"num_pseudo_positives": 3})


def test_damrs_fidelity_protocol_defaults() -> None:
    """strict: the k nearest *other* items; mmrec: MMRec's DAMRS.yaml values and the item itself a neighbour."""
    strict, mmrec = (_model(p, ("image", "text"), None, {}).cfg for p in ("strict", "mmrec"))
    assert not strict.knn_self and mmrec.knn_self
    for cfg in (strict, mmrec):
        assert (cfg.num_mm_layers, cfg.num_ui_layers, cfg.behaviour_k, cfg.behaviour_min_count) == (1, 2, 2, 2)
    assert DAMRSConfig().kl_weight == 1.0 and DAMRSConfig().neighbor_weight == 1e-3
    assert DAMRSConfig().temperature == 0.2 and DAMRSConfig().num_pseudo_positives == 10


def test_damrs_fidelity_candidate_pool_bounds_the_filter() -> None:
    """With fewer candidates than the filter needs, a row keeps only the survivors among its candidates (a
    subset of the full-row graph's edges), never an edge the full row would not have."""
    full = _model("mmrec", ("image", "text"), None, {})
    narrow = _model("mmrec", ("image", "text"), None, {"knn_candidates": 3})
    wide_edges = full.get_buffer("view_adj_0").to_dense() > 0
    narrow_edges = narrow.get_buffer("view_adj_0").to_dense() > 0
    assert bool((narrow_edges <= wide_edges).all())


def test_symmetric_bernoulli_kl_is_the_sum_of_both_kls() -> None:
    """The closed form (sigma(a) - sigma(b))(a - b) against KL(p||q) + KL(q||p) written out in float64."""
    a = torch.linspace(-6, 6, 25, dtype=torch.float64).unsqueeze(1)
    b = torch.linspace(-5, 7, 25, dtype=torch.float64).unsqueeze(0)
    p, q = torch.sigmoid(a), torch.sigmoid(b)

    def kl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * torch.log(x / y) + (1 - x) * torch.log((1 - x) / (1 - y))

    torch.testing.assert_close(symmetric_bernoulli_kl(a, b), kl(p, q) + kl(q, p))
