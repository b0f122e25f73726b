"""MGCN against an independent dense reference written from the paper's equations and MMRec's ``mgcn.py``.

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices: full cosine similarity matrices, a dense top-k per row, dense normalisations, explicit
gates, attention and InfoNCE (no rmm model code, no rmm graph or layer helper). MGCN has no randomness, so the
comparison is exact for embeddings, scores, the loss and every gradient.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rmm.config import ModelConfig
from rmm.data.schema import Dataset
from rmm.models.base import BPRBatch, build_model
from rmm.models.hparams.mgcn import MGCNConfig
from rmm.models.mgcn import MGCN
from rmm.train.loop import fit
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
from tests.models.test_zoo import SHORT_FIT, _planted_features, _popularity_recall, planted  # noqa: F401

#: Small sizes so that k < I matters; visible cl and reg weights so that every term of the loss is compared.
SIZES = {"knn_k": 3, "embedding_dim": 8, "cl_weight": 0.3, "reg_weight": 0.05}
#: A repeated user (3), a repeated positive (5) and the cold item (7) as a positive.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 5, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: (protocol, features, explicit keys): both protocols' defaults with MMRec's two modalities, then three and one
#: modalities with the switches and sizes flipped.
CASES = [("strict", ("image", "text"), {}), ("mmrec", ("image", "text"), {}),
         ("strict", ("image", "text", "audio"), {"knn_self": True, "num_mm_layers": 2, "num_ui_layers": 1,
                                                  "projection_init": "torch_default"}),
         ("mmrec", ("text",), {"knn_self": False, "train_features": False, "num_ui_layers": 3, "temperature": 0.5})]
IDS = ["strict", "mmrec", "strict-3-modalities-self-2mm-layers", "mmrec-1-modality-no-self-frozen"]


def _features(names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    features = gaussian_features(NUM_ITEMS, seed=0)
    features["audio"] = torch.randn(NUM_ITEMS, 4, generator=torch.Generator().manual_seed(1))
    return {name: features[name] for name in names}


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> MGCN:
    entry = {"name": "mgcn", "features": list(names), **SIZES, **overrides}
    return seeded_model(MGCN, entry, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS), _features(names))


# ------------------------------------------------------------------------------------------- dense reference


def dense_item_graph(x: torch.Tensor, cfg: MGCNConfig) -> torch.Tensor:
    r""":math:`D^{-1/2} \bar{S} D^{-1/2}`: the top-k cosine similarities of each row kept with their values (the
    diagonal a candidate only with ``knn_self``), D the row sums of what is kept; an item whose kept similarities
    sum to <= 0 (possible with negative cosines) gets a zero row and column (MMRec: NaN). Shapes: (I, I) float64."""
    unit = x / x.norm(dim=1, keepdim=True)
    sim = unit @ unit.T
    if not cfg.knn_self:
        sim = sim.masked_fill(torch.eye(len(x), dtype=torch.bool), -torch.inf)
    top = torch.topk(sim, cfg.knn_k, dim=1)
    kept = torch.zeros_like(sim).scatter(1, top.indices, top.values)
    degree = kept.sum(1)
    scale = torch.where(degree > 0, degree.clamp_min(1e-300) ** -0.5, 0.0)
    return scale[:, None] * kept * scale[None, :]


def reference_params(model: MGCN) -> dict[str, torch.Tensor]:
    """The model's parameters as float64 leaves that record their gradient: ID tables, per modality the
    projection (``W``, ``b``), purifier gate (``G``, ``g``), preference gate (``P``, ``p``) and features (with a
    gradient only when ``train_features``), and the attention (``Wa``, ``ba``, ``q``)."""
    p = {"user": model.user_embedding.weight, "item": model.item_embedding.weight,
         "Wa": model.attention.weight, "ba": model.attention.bias, "q": model.query.weight}
    for m, (proj, purifier, prefer, x) in enumerate(zip(model.projections, model.purifiers, model.preferences,
                                                        model.features.matrices(), strict=True)):
        p[f"W{m}"], p[f"b{m}"], p[f"x{m}"] = proj.weight, proj.bias, x
        p[f"G{m}"], p[f"g{m}"], p[f"P{m}"], p[f"p{m}"] = purifier.weight, purifier.bias, prefer.weight, prefer.bias
    trains = model.cfg.train_features
    return {k: v.detach().double().requires_grad_(not k.startswith("x") or trains) for k, v in p.items()}


def reference_views(p: dict[str, torch.Tensor], cfg: MGCNConfig,
                    features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Behaviour embeddings :math:`\mathbf{E}_{id}` (LightGCN, mean of layers 0..L) and fused modality
    embeddings :math:`\mathbf{E}_s`, users then items. Shapes: (U+I, d), (U+I, d)."""
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)))
    layers = [torch.cat([p["user"], p["item"]])]
    for _ in range(cfg.num_ui_layers):
        layers.append(adj @ layers[-1])
    behaviour = sum(layers) / len(layers)
    r_hat = adj[:NUM_USERS, NUM_USERS:]  # (U, I): 1 / sqrt(d_u d_i) on the train pairs
    modal = []
    for m, x in enumerate(features.values()):
        projected = p[f"x{m}"] @ p[f"W{m}"].T + p[f"b{m}"]  # (I, d)
        items = p["item"] * torch.sigmoid(projected @ p[f"G{m}"].T + p[f"g{m}"])  # the purifier
        graph = dense_item_graph(x.double(), cfg)
        for _ in range(cfg.num_mm_layers):
            items = graph @ items
        modal.append(torch.cat([r_hat @ items, items]))
    logits = torch.stack([torch.tanh(e @ p["Wa"].T + p["ba"]) @ p["q"][0] for e in modal], dim=1)  # (N, M)
    alpha = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    common = sum(alpha[:, m:m + 1] * e for m, e in enumerate(modal))
    specific = sum(torch.sigmoid(behaviour @ p[f"P{m}"].T + p[f"p{m}"]) * (e - common) for m, e in enumerate(modal))
    return behaviour, (common + specific) / (len(modal) + 1)


def reference_infonce(view1: torch.Tensor, view2: torch.Tensor, tau: float) -> torch.Tensor:
    """MMRec's ``InfoNCE``: row b of ``view1`` against all rows of ``view2``, row b the positive, mean over b."""
    a = view1 / view1.norm(dim=1, keepdim=True)
    c = view2 / view2.norm(dim=1, keepdim=True)
    positive = torch.exp((a * c).sum(1) / tau)
    total = torch.exp(a @ c.T / tau).sum(1)
    return -torch.log(positive / total).mean()


def reference_loss(p: dict[str, torch.Tensor], cfg: MGCNConfig, features: dict[str, torch.Tensor],
                   batch: BPRBatch) -> torch.Tensor:
    r"""BPR :math:`-\overline{\ln\sigma(\hat{y}_{ui} - \hat{y}_{uj})}` + ``reg_weight`` :math:`\frac{1}{2B}(\lVert
    u\rVert^2 + \lVert i\rVert^2 + \lVert j\rVert^2)` + ``cl_weight`` (InfoNCE of the items + of the users)."""
    behaviour, side = reference_views(p, cfg, features)
    final = behaviour + side
    u, i, j = final[batch.users], final[NUM_USERS + batch.pos_items], final[NUM_USERS + batch.neg_items]
    bpr = -torch.log(torch.sigmoid((u * i).sum(1) - (u * j).sum(1))).mean()
    reg = 0.5 * (u.pow(2).sum() + i.pow(2).sum() + j.pow(2).sum()) / len(batch.users)
    items, users = NUM_USERS + batch.pos_items, batch.users
    cl = (reference_infonce(side[items], behaviour[items], cfg.temperature)
          + reference_infonce(side[users], behaviour[users], cfg.temperature))
    return bpr + cfg.reg_weight * reg + cfg.cl_weight * cl


def model_grads(model: MGCN) -> dict[str, torch.Tensor | None]:
    """The model's gradients under the reference's names."""
    grads = {"user": model.user_embedding.weight.grad, "item": model.item_embedding.weight.grad,
             "Wa": model.attention.weight.grad, "ba": model.attention.bias.grad, "q": model.query.weight.grad}
    for m, (proj, purifier, prefer, x) in enumerate(zip(model.projections, model.purifiers, model.preferences,
                                                        model.features.matrices(), strict=True)):
        grads[f"W{m}"], grads[f"b{m}"] = proj.weight.grad, proj.bias.grad
        grads[f"G{m}"], grads[f"g{m}"], grads[f"P{m}"], grads[f"p{m}"] = (purifier.weight.grad, purifier.bias.grad,
                                                                          prefer.weight.grad, prefer.bias.grad)
        grads[f"x{m}"] = x.grad if isinstance(x, torch.nn.Parameter) else None
    return grads


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_mgcn_fidelity_item_graphs_embeddings_scores_loss_and_gradients(protocol: str, names: tuple[str, ...],
                                                                        overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    cfg, features = model.cfg, _features(names)
    p = reference_params(model)
    for m, x in enumerate(features.values()):
        assert_close(getattr(model, f"item_graph_{m}").to_dense(), dense_item_graph(x.double(), cfg))

    behaviour, side = reference_views(p, cfg, features)
    model_behaviour, model_side = model.views()
    assert_close(model_behaviour, behaviour)
    assert_close(model_side, side)
    users, items = (behaviour + side).split([NUM_USERS, NUM_ITEMS])
    model_users, model_items = model.embeddings()
    assert_close(model_users, users)
    assert_close(model_items, items)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)

    model.start_epoch(seed=3, epoch=5)  # nothing random: a no-op
    loss = model(BATCH)
    loss.backward()
    expected = reference_loss(p, cfg, features, BATCH)
    expected.backward()
    assert_close(loss, expected)
    for name, grad in model_grads(model).items():
        if p[name].requires_grad:
            assert grad is not None, name
            assert_close_grad(grad, p[name].grad, name)
        else:
            assert grad is None, name


def test_mgcn_fidelity_contrastive_and_penalty_terms_are_weighted_as_configured() -> None:
    """Each loss term alone (the others weighted 0) matches the reference, so no term hides behind another."""
    for overrides in ({"cl_weight": 0.0, "reg_weight": 0.0}, {"cl_weight": 2.0, "reg_weight": 0.0},
                      {"cl_weight": 0.0, "reg_weight": 3.0}):
        model = _model("mmrec", ("image", "text"), overrides)
        features = _features(("image", "text"))
        assert_close(model(BATCH), reference_loss(reference_params(model), model.cfg, features, BATCH))


def test_mgcn_protocol_switches_reach_the_model() -> None:
    strict, mmrec = _model("strict", ("image", "text"), {}), _model("mmrec", ("image", "text"), {})
    assert not strict.cfg.knn_self and mmrec.cfg.knn_self and mmrec.item_graph_spec(mmrec.cfg).include_self
    assert strict.cfg.projection_init == "xavier" and mmrec.cfg.projection_init == "torch_default"
    assert strict.cfg.reg_norm == mmrec.cfg.reg_norm == "squared"
    assert not any(name.startswith("features.") for name in strict.state_dict())
    assert {"features.feature_0", "features.feature_1"} <= set(mmrec.state_dict())
    diagonal = torch.arange(NUM_ITEMS)
    assert (mmrec.item_graph_0.to_dense()[diagonal, diagonal] > 0).all()
    assert (strict.item_graph_0.to_dense()[diagonal, diagonal] == 0).all()
    # Negative cosines: an image row's kept similarities sum to < 0, so the fidelity test covers a zero row.
    assert (strict.item_graph_0.to_dense().abs().sum(1) == 0).any()


def test_mgcn_uses_prebuilt_item_graphs_of_its_spec() -> None:
    """``item_graph_spec`` is what the kNN cache builds; graphs handed in are the model's graphs."""
    features = _features(("image", "text"))
    cfg = MGCNConfig(knn_k=3, embedding_dim=8)
    spec = MGCN.item_graph_spec(cfg)
    assert not spec.binary and spec.normalization == "sym" and spec.k == 3
    given = {name: 2.0 * spec.build(x) for name, x in features.items()}
    model = MGCN(history_graph(HISTORY, NUM_USERS, NUM_ITEMS), features, cfg, item_graphs=given)
    assert torch.allclose(model.item_graph_1.to_dense(), given["text"].to_dense())


@pytest.mark.slow  # a 10-epoch fit
def test_mgcn_short_fit_on_planted_data_learns_the_groups(planted: Dataset) -> None:  # noqa: F811
    """The zoo's short fit (``tests/models/test_zoo.py``) with MGCN's defaults: it ranks the planted groups far
    above popularity and cuts its training loss."""
    features = _planted_features(planted)
    result = fit(ModelConfig("mgcn", features=tuple(features)), SHORT_FIT, planted, features)
    losses = [h["loss"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert result.test["recall@10"] > _popularity_recall(planted, 10) + 0.5
    assert losses[-1] < 0.85 * losses[0], losses


def test_mgcn_builds_from_the_registry_with_defaults() -> None:
    features = _features(("image",))
    model = build_model(ModelConfig("mgcn", features=("image",)), history_graph(HISTORY, NUM_USERS, NUM_ITEMS),
                        features)
    assert isinstance(model, MGCN) and model.cfg == MGCNConfig()
