"""LGMRec against an independent dense reference written from the paper's equations and MMRec's ``lgmrec.py``.

The reference reads the rmm model's parameters by name and recomputes everything with dense float64 matrices
and explicit formulas (no rmm model code, no rmm graph helper). The hyperedge memberships are random (Gumbel
noise, then dropout in training): the reference replays the model's draws from the same seed, in the model's
order, per modality: the items' Gumbel noise (``-log`` of an ``exponential_`` draw over a float32 (I, H) tensor,
as ``F.gumbel_softmax`` draws it), the items' dropout mask (``bernoulli_(keep_rate)``, as ``F.dropout`` on the
CPU), then the same two for the users.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.hparams.lgmrec import LGMRecConfig
from rmm.models.layers import info_nce, low_rank_info_nce
from rmm.models.lgmrec import LGMRec
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    assert_close,
    assert_close_grad,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

FEATURES = ("image", "text")  # MMRec's order: the image side is the contrastive anchor
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: (protocol, explicit model keys): both protocols' defaults, then other values of every switch and size, with
#: contrastive and regularisation weights large enough to show in the loss.
CASES = [("strict", {}), ("mmrec", {}),
         ("strict", {"reg_norm": "squared", "keep_rate": 1.0, "num_hyper_layers": 2, "num_hyperedges": 3,
                     "num_ui_layers": 1, "num_mm_layers": 3, "alpha": 0.6, "cl_weight": 0.5, "reg_weight": 0.1,
                     "temperature": 0.5, "embedding_dim": 16}),
         ("mmrec", {"cl_weight": 1.0, "reg_weight": 0.01, "keep_rate": 0.7})]
IDS = ["strict", "mmrec", "strict-squared-variant", "mmrec-weighted"]


def _graph() -> TrainGraph:
    return history_graph(HISTORY, NUM_USERS, NUM_ITEMS)


def _features() -> dict[str, torch.Tensor]:
    return gaussian_features(NUM_ITEMS, seed=0, missing_image=3)


def _model(protocol: str, overrides: dict[str, Any], features: tuple[str, ...] = FEATURES) -> LGMRec:
    return seeded_model(LGMRec, {"name": "lgmrec", "features": list(features), **overrides}, protocol, _graph(),
                        {name: _features()[name] for name in features})


# ------------------------------------------------------------------------------------------- dense reference


def dense_interactions() -> torch.Tensor:
    """The binary interaction matrix R. Shapes: (U, I) float64."""
    r = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=torch.float64)
    for user, items in HISTORY.items():
        r[user, items] = 1.0
    return r


def row_normalize(x: torch.Tensor) -> torch.Tensor:
    """Every row divided by its L2 norm; a zero row stays zero (``F.normalize``'s convention)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def reference_params(model: LGMRec) -> dict[str, torch.Tensor]:
    """Every trainable parameter of ``model``, by name, as a float64 leaf that records its gradient."""
    return {name: p.detach().double().requires_grad_() for name, p in model.named_parameters()}


def relax(logits: torch.Tensor, cfg: LGMRecConfig, train: bool) -> torch.Tensor:
    """Row-wise hyperedge memberships: Gumbel-softmax at ``temperature`` (in training, and when scoring under
    ``eval_gumbel``), else the plain softmax of ``logits / temperature``; then, in training, dropout keeping
    ``keep_rate``. Replays the model's draws."""
    if train or cfg.eval_gumbel:
        gumbel = -torch.empty(logits.shape).exponential_().log().double()
        soft = torch.softmax((logits + gumbel) / cfg.temperature, dim=1)
    else:
        soft = torch.softmax(logits / cfg.temperature, dim=1)
    if train and cfg.keep_rate < 1:
        mask = torch.empty(logits.shape).bernoulli_(cfg.keep_rate).double()
        soft = soft * mask / cfg.keep_rate
    return soft


def reference_forward(p: dict[str, torch.Tensor], features: dict[str, torch.Tensor], cfg: LGMRecConfig,
                      train: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Final user and item embeddings, and every modality's hypergraph user and item embeddings."""
    r = dense_interactions()
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)), degree_eps=1e-7)  # MMRec's +1e-7
    # Collaborative graph embedding: LightGCN, the mean of layers 0..L.
    layer = torch.cat([p["user_embedding.weight"], p["item_embedding.weight"]])
    total = layer
    for _ in range(cfg.num_ui_layers):
        layer = adj @ layer
        total = total + layer
    cge = total / (cfg.num_ui_layers + 1)
    local, hyper_users, hyper_items = cge, [], []
    for m, name in enumerate(features):
        x = features[name].double()
        # Modality graph embedding: projected item features, users as the mean of their items, L_m convolutions.
        item_feats = x @ p[f"projections.{m}.weight"].T
        user_feats = (r @ item_feats) / (r.sum(1, keepdim=True) + 1e-7)
        mge = torch.cat([user_feats, item_feats])
        for _ in range(cfg.num_mm_layers):
            mge = adj @ mge
        local = local + row_normalize(mge)
        # Global hypergraph embedding: item memberships from the features, users' summed over their items.
        item_logits = x @ p[f"hyperedges.{m}.weight"].T  # (I, H)
        user_logits = r @ item_logits  # (U, H)
        item_h = relax(item_logits, cfg, train)
        user_h = relax(user_logits, cfg, train)
        items = cge[NUM_USERS:]
        for _ in range(cfg.num_hyper_layers):
            hyperedges = item_h.T @ items  # (H, d)
            items, users = item_h @ hyperedges, user_h @ hyperedges
        hyper_users.append(users)
        hyper_items.append(items)
    ghe = torch.cat([sum(hyper_users), sum(hyper_items)])
    final = local + cfg.alpha * row_normalize(ghe)
    return final[:NUM_USERS], final[NUM_USERS:], hyper_users, hyper_items


def info_nce_sum(anchor: torch.Tensor, positive: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    r""":math:`-\sum_b \log \frac{\exp(\cos(a_b, p_b) / \tau)}{\sum_c \exp(\cos(a_b, c) / \tau)}`, written out;
    the cosines are dot products of row-normalised vectors, so a zero row (all memberships dropped) has cosine 0
    with everything, as in MMRec's ``ssl_triple_loss``."""
    anchor, positive, candidates = row_normalize(anchor), row_normalize(positive), row_normalize(candidates)
    total = torch.zeros((), dtype=torch.float64)
    for a, pos in zip(anchor, positive, strict=True):
        cos = torch.stack([a @ c for c in candidates])
        total = total - torch.log(torch.exp(a @ pos / tau) / torch.exp(cos / tau).sum())
    return total


def reference_loss(p: dict[str, torch.Tensor], features: dict[str, torch.Tensor], cfg: LGMRecConfig,
                   batch: BPRBatch) -> torch.Tensor:
    user_emb, item_emb, hyper_users, hyper_items = reference_forward(p, features, cfg, train=True)
    users, pos, neg = user_emb[batch.users], item_emb[batch.pos_items], item_emb[batch.neg_items]
    bpr = -torch.log(torch.sigmoid((users * pos).sum(1) - (users * neg).sum(1))).mean()
    contrast = torch.zeros((), dtype=torch.float64)
    for a in range(len(hyper_users)):
        for b in range(a + 1, len(hyper_users)):
            contrast = contrast + info_nce_sum(hyper_users[a][batch.users], hyper_users[b][batch.users],
                                               hyper_users[b], cfg.temperature)
            contrast = contrast + info_nce_sum(hyper_items[a][batch.pos_items], hyper_items[b][batch.pos_items],
                                               hyper_items[b], cfg.temperature)
    size = len(batch.users)
    if cfg.reg_norm == "frobenius":  # MMRec's reg_loss: non-squared norms over the batch size
        reg = (users.norm() + pos.norm() + neg.norm()) / size
    else:
        reg = (users.pow(2).sum() + pos.pow(2).sum() + neg.pow(2).sum()) / (2 * size)
    return bpr + cfg.cl_weight * contrast + cfg.reg_weight * reg


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_fidelity_lgmrec_scoring_embeddings_and_scores(protocol: str, overrides: dict[str, Any]) -> None:
    """Scoring: noise-free memberships under strict, MMRec's Gumbel noise (no dropout) under mmrec."""
    model = _model(protocol, overrides)
    p = reference_params(model)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(7)
        users, items = model.embeddings()
        torch.manual_seed(7)
        scores = model.scorer()(torch.arange(NUM_USERS))
    torch.manual_seed(7)
    ref_users, ref_items, _, _ = reference_forward(p, _features(), model.cfg, train=False)

    assert_close(users, ref_users)
    assert_close(items, ref_items)
    assert_close(scores, ref_users @ ref_items.T)


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_fidelity_lgmrec_training_forward(protocol: str, overrides: dict[str, Any]) -> None:
    """The training pass (Gumbel noise and membership dropout): final and per-modality hypergraph embeddings."""
    model = _model(protocol, overrides)
    p = reference_params(model)
    torch.manual_seed(11)
    users, items, hypergraphs = model.forward_embeddings(train=True)
    hyper_users = [user_h @ latent for user_h, _, latent in hypergraphs]
    hyper_items = [item_h @ latent for _, item_h, latent in hypergraphs]
    torch.manual_seed(11)
    ref_users, ref_items, ref_hyper_users, ref_hyper_items = reference_forward(p, _features(), model.cfg, train=True)

    assert_close(users, ref_users)
    assert_close(items, ref_items)
    for m in range(len(FEATURES)):
        assert_close(hyper_users[m], ref_hyper_users[m])
        assert_close(hyper_items[m], ref_hyper_items[m])


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_fidelity_lgmrec_loss_and_gradients(protocol: str, overrides: dict[str, Any]) -> None:
    model = _model(protocol, overrides)
    p = reference_params(model)
    torch.manual_seed(123)
    loss = model.loss(BATCH)
    loss.backward()
    torch.manual_seed(123)
    expected = reference_loss(p, _features(), model.cfg, BATCH)
    expected.backward()

    assert_close(loss, expected)
    assert not any(name.startswith("features") for name, _ in model.named_parameters())  # frozen, as MMRec's
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert_close_grad(param.grad, p[name].grad, name)


def test_fidelity_lgmrec_contrast_and_regulariser_show_in_the_loss() -> None:
    """With large weights, the contrastive and regularisation terms are a visible part of the loss that the
    reference matches (they are not lost under the defaults' 1e-4 and 1e-6)."""
    overrides = {"cl_weight": 1.0, "reg_weight": 1.0}
    model = _model("strict", overrides)
    p = reference_params(model)
    torch.manual_seed(3)
    with_terms = model.loss(BATCH).item()
    torch.manual_seed(3)
    without = _model("strict", {"cl_weight": 0.0, "reg_weight": 0.0}).loss(BATCH).item()
    torch.manual_seed(3)
    expected = reference_loss(p, _features(), model.cfg, BATCH).item()
    assert abs(with_terms - without) > 1.0
    assert abs(with_terms - expected) < 1e-4


def test_fidelity_lgmrec_one_modality_has_no_contrast() -> None:
    model = _model("strict", {"cl_weight": 1.0}, features=("image",))
    p = reference_params(model)
    torch.manual_seed(4)
    loss = model.loss(BATCH)
    torch.manual_seed(4)
    assert_close(loss, reference_loss(p, {"image": _features()["image"]}, model.cfg, BATCH))


def test_fidelity_lgmrec_scoring_noise_only_under_mmrec() -> None:
    strict, mmrec = _model("strict", {}), _model("mmrec", {})
    for model in (strict, mmrec):
        model.eval()
    with torch.no_grad():
        assert torch.equal(strict.scorer()(torch.arange(NUM_USERS)), strict.scorer()(torch.arange(NUM_USERS)))
        assert not torch.equal(mmrec.scorer()(torch.arange(NUM_USERS)), mmrec.scorer()(torch.arange(NUM_USERS)))


def test_fidelity_lgmrec_membership_dropout_statistics() -> None:
    """Over many training draws, a membership is zeroed with probability 1 - keep_rate and survivors are scaled
    by 1 / keep_rate, so the mean stays the Gumbel-softmax mean (checked on a user's memberships, which sum to 1
    per draw before the dropout)."""
    model = _model("mmrec", {"keep_rate": 0.6})
    logits = torch.randn(1, 4).expand(20000, 4)
    torch.manual_seed(9)
    with torch.no_grad():
        memberships = model._memberships(logits, train=True)
    zero = (memberships == 0).float().mean().item()
    assert abs(zero - 0.4) < 0.01
    assert abs(memberships.sum(1).mean().item() - 1.0) < 0.02


def test_fidelity_lgmrec_protocol_defaults_follow_mmrec_yaml() -> None:
    strict, mmrec = _model("strict", {}).cfg, _model("mmrec", {}).cfg
    yaml = {"embedding_dim": 64, "num_ui_layers": 2, "num_mm_layers": 2, "num_hyper_layers": 1, "num_hyperedges": 4,
            "keep_rate": 0.5, "alpha": 0.3, "cl_weight": 1e-4, "reg_weight": 1e-6, "temperature": 0.2}
    for key, value in yaml.items():
        assert getattr(mmrec, key) == getattr(strict, key) == value, key
    assert (strict.reg_norm, mmrec.reg_norm) == ("frobenius", "frobenius")
    assert (strict.eval_gumbel, mmrec.eval_gumbel) == (False, True)
    assert _model("mmrec", {"eval_gumbel": False}).cfg.eval_gumbel is False  # explicit values win


def test_fidelity_lgmrec_initialisation() -> None:
    """MMRec's initialisation: every weight Xavier-uniform (the projections' and hyperedges' as (d_m, d) and
    (d_m, H) matrices there, which has the same bound), no biases."""
    model = _model("mmrec", {})
    for name, weight in model.named_parameters():
        bound = math.sqrt(6.0 / sum(weight.shape))
        assert weight.dim() == 2, name
        assert weight.abs().max() <= bound, name
        if weight.numel() >= 64:
            assert weight.abs().max() > 0.8 * bound, name


@pytest.mark.slow  # up to 40,000 candidates
@pytest.mark.parametrize("num_candidates", [11, 40_000])
def test_low_rank_info_nce_equals_info_nce_on_the_product_and_its_gradients(num_candidates: int) -> None:
    """The factored contrastive loss (logits through the H-dim memberships, in blocks of rows: 40,000 candidates
    make several) is InfoNCE against the candidates ``memberships @ latent``, loss and gradients, including a zero
    membership row (a zero candidate)."""
    generator = torch.Generator().manual_seed(5)
    anchor, positive = torch.randn(60, 8, generator=generator), torch.randn(60, 8, generator=generator)
    memberships = torch.rand(num_candidates, 3, generator=generator)
    latent = torch.randn(3, 8, generator=generator)
    memberships[4] = 0.0
    inputs = [t.double().requires_grad_() for t in (anchor, positive, memberships, latent)]
    factored = low_rank_info_nce(*inputs, 0.2)
    grads = torch.autograd.grad(factored, inputs)
    a, p, h, lat = inputs
    direct = info_nce(a, p, h @ lat, 0.2)
    assert torch.allclose(factored, direct)
    for got, expected in zip(grads, torch.autograd.grad(direct, inputs), strict=True):
        assert torch.allclose(got, expected)
