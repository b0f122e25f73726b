"""BM3 against an independent dense reference written from the paper's equations and MMRec's ``bm3.py``.

The reference reads the rmm model's parameters by name and recomputes everything with dense float64 matrices
and explicit formulas (no rmm model code, no rmm graph helper). The target views' dropout is random: the reference
replays the model's draws from the same seed, in the model's order (users' rows, items' rows, then each modality's
rows, each ``bernoulli_(1 - p)`` over a float32 ``(B, d)`` tensor, as ``F.dropout`` draws them on the CPU).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.bm3 import BM3
from rmm.models.hparams.bm3 import BM3Config
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

FEATURES = ("image", "text")
#: A repeated user (3) and the cold item as a positive: the reference must agree on both.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: (protocol, explicit model keys): both protocols' defaults, and other values of every switch and size.
CASES = [("strict", {}), ("mmrec", {}),
         ("strict", {"reg_norm": "squared", "num_layers": 2, "dropout": 0.3, "embedding_dim": 16}),
         ("mmrec", {"reg_norm": "squared", "dropout": 0.0, "reg_weight": 0.01, "cl_weight": 0.5})]
IDS = ["strict", "mmrec", "strict-squared-2layers", "mmrec-squared-no-dropout"]


def _graph() -> TrainGraph:
    return history_graph(HISTORY, NUM_USERS, NUM_ITEMS)


def _features() -> dict[str, torch.Tensor]:
    return gaussian_features(NUM_ITEMS, seed=0, missing_image=3)


def _model(protocol: str, overrides: dict[str, Any]) -> BM3:
    return seeded_model(BM3, {"name": "bm3", "features": list(FEATURES), **overrides}, protocol, _graph(), _features())


# ------------------------------------------------------------------------------------------- dense reference


def reference_params(model: BM3) -> dict[str, torch.Tensor]:
    """Every trainable parameter of ``model``, by name, as a float64 leaf that records its gradient."""
    return {name: p.detach().double().requires_grad_() for name, p in model.named_parameters()}


def reference_online(p: dict[str, torch.Tensor], cfg: BM3Config) -> tuple[torch.Tensor, torch.Tensor]:
    """LightGCN over the user-item graph (mean of layers 0..L), item ID embedding added back. Shapes: (U, d), (I, d)."""
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)), degree_eps=1e-7)  # MMRec's +1e-7
    layer = torch.cat([p["user_embedding.weight"], p["item_embedding.weight"]])
    total = layer
    for _ in range(cfg.num_layers):
        layer = adj @ layer
        total = total + layer
    mean = total / (cfg.num_layers + 1)
    return mean[:NUM_USERS], mean[NUM_USERS:] + p["item_embedding.weight"]


def predictor(p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    return h @ p["predictor.weight"].T + p["predictor.bias"]


def negative_cosine(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r""":math:`1 - \cos`, averaged over the rows."""
    cos = (online * target).sum(1) / (online.norm(dim=1) * target.norm(dim=1))
    return (1.0 - cos).mean()


def target_view(h: torch.Tensor, dropout: float) -> torch.Tensor:
    """The stop-gradient dropout view, replaying ``F.dropout``'s draw (none when ``dropout`` is 0)."""
    if dropout == 0:
        return h.detach()
    keep = 1.0 - dropout
    mask = torch.empty(h.shape).bernoulli_(keep).double()  # float32 draw, as the model's
    return (h * mask / keep).detach()


def reference_loss(p: dict[str, torch.Tensor], features: dict[str, torch.Tensor], cfg: BM3Config,
                   batch: BPRBatch) -> torch.Tensor:
    user_emb, item_emb = reference_online(p, cfg)
    users, items = user_emb[batch.users], item_emb[batch.pos_items]
    user_target, item_target = target_view(users, cfg.dropout), target_view(items, cfg.dropout)
    loss = negative_cosine(predictor(p, users), item_target) + negative_cosine(predictor(p, items), user_target)
    for m, name in enumerate(FEATURES):
        x = p.get(f"feature_tables.{m}", features[name].double())  # fine-tuned tables or frozen inputs
        h = x[batch.pos_items] @ p[f"projections.{m}.weight"].T + p[f"projections.{m}.bias"]
        h_target = target_view(h, cfg.dropout)
        online = predictor(p, h)
        loss = loss + cfg.cl_weight * (negative_cosine(online, item_target) + negative_cosine(online, h_target))
    if cfg.reg_norm == "frobenius":  # MMRec's EmbLoss(u_online_ori, i_online_ori): / the last tensor's rows
        reg = (user_emb.norm() + item_emb.norm()) / NUM_ITEMS
    else:
        reg = (user_emb.pow(2).sum() + item_emb.pow(2).sum()) / (2 * NUM_ITEMS)
    return loss + cfg.reg_weight * reg


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_fidelity_bm3_embeddings_and_scores(protocol: str, overrides: dict[str, Any]) -> None:
    model = _model(protocol, overrides)
    p = reference_params(model)
    user_online, item_online = reference_online(p, model.cfg)

    users, items = model.online()
    assert_close(users, user_online)
    assert_close(items, item_online)
    final_users, final_items = model.embeddings()
    assert_close(final_users, predictor(p, user_online))
    assert_close(final_items, predictor(p, item_online))
    model.eval()
    with torch.no_grad():
        scores = model.scorer()(torch.arange(NUM_USERS))
    assert_close(scores, predictor(p, user_online) @ predictor(p, item_online).T)


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_fidelity_bm3_loss_and_gradients(protocol: str, overrides: dict[str, Any]) -> None:
    """The loss, and the gradient of every trainable parameter: the stop-gradients sit where the reference's do."""
    model = _model(protocol, overrides)
    p = reference_params(model)
    torch.manual_seed(123)
    loss = model.loss(BATCH)
    loss.backward()
    torch.manual_seed(123)
    expected = reference_loss(p, _features(), model.cfg, BATCH)
    expected.backward()

    assert_close(loss, expected)
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert_close_grad(param.grad, p[name].grad, name)


def test_fidelity_bm3_dropout_draws_matter() -> None:
    """The replay is what makes the loss agree: another draw gives another loss (the test is not vacuous)."""
    model = _model("strict", {})
    p = reference_params(model)
    torch.manual_seed(1)
    loss = model.loss(BATCH).item()
    torch.manual_seed(2)
    assert abs(loss - reference_loss(p, _features(), model.cfg, BATCH).item()) > 1e-4


def test_fidelity_bm3_protocol_defaults_follow_mmrec_yaml() -> None:
    strict, mmrec = _model("strict", {}).cfg, _model("mmrec", {}).cfg
    # BM3.yaml's single values (the grids n_layers [1, 2], dropout [0.3, 0.5], reg_weight [0.1, 0.01] keep
    # rmm's defaults under both protocols).
    assert (mmrec.embedding_dim, mmrec.cl_weight) == (64, 2.0)
    assert (mmrec.num_layers, mmrec.dropout, mmrec.reg_weight) == (strict.num_layers, strict.dropout,
                                                                     strict.reg_weight) == (1, 0.5, 0.1)
    assert (strict.reg_norm, mmrec.reg_norm) == ("frobenius", "frobenius")  # both: the authors' EmbLoss
    assert (strict.train_features, mmrec.train_features) == (False, True)
    explicit = _model("mmrec", {"train_features": False, "reg_norm": "squared"}).cfg
    assert (explicit.train_features, explicit.reg_norm) == (False, "squared")  # explicit values win


def test_fidelity_bm3_features_are_fine_tuned_only_under_mmrec() -> None:
    """MMRec trains the feature tables (``freeze=False``): one SGD step moves the batch's positive items' rows,
    by the reference's gradient, and nothing else; strict's features are buffers, never parameters."""
    strict = _model("strict", {})
    assert not any(name.startswith("feature_tables") for name, _ in strict.named_parameters())

    model = _model("mmrec", {})
    p = reference_params(model)
    for table, x in zip(model.feature_tables, _features().values(), strict=True):
        assert torch.equal(table.detach(), x)  # they start as the extracted features
    torch.manual_seed(5)
    model.loss(BATCH).backward()
    torch.manual_seed(5)
    reference_loss(p, _features(), model.cfg, BATCH).backward()
    lr = 10.0
    torch.optim.SGD(model.parameters(), lr=lr).step()

    touched = torch.zeros(NUM_ITEMS, dtype=torch.bool)
    touched[BATCH.pos_items] = True
    for m, x in enumerate(_features().values()):
        moved = model.feature_tables[m].detach()
        assert_close(moved, x.double() - lr * p[f"feature_tables.{m}"].grad)
        assert not torch.equal(moved[touched], x[touched]) and torch.equal(moved[~touched], x[~touched])
        assert torch.equal(model.features.matrices()[m], x)  # the frozen inputs stay as extracted


def test_fidelity_bm3_initialisation() -> None:
    """MMRec's initialisation: ID embeddings Xavier-uniform, predictor and projection weights Xavier-normal,
    biases PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    model = _model("mmrec", {})
    d = model.cfg.embedding_dim

    def xavier_bound(weight: torch.Tensor) -> float:
        return math.sqrt(6.0 / sum(weight.shape))

    for table in (model.user_embedding.weight, model.item_embedding.weight):
        bound = xavier_bound(table)
        assert table.abs().max() <= bound and table.abs().max() > 0.9 * bound
    for layer in (model.predictor, *model.projections):
        weight = layer.weight.detach()
        std = math.sqrt(2.0 / sum(weight.shape))
        assert abs(float(weight.std()) / std - 1) < 0.25
        assert weight.abs().max() > xavier_bound(weight)  # normal: tails beyond the uniform's bound
        assert layer.bias.abs().max() <= 1 / math.sqrt(weight.shape[1])
    assert model.predictor.weight.shape == (d, d)
