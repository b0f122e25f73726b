"""LATTICE against an independent dense reference written from the paper's equations and MMRec's ``lattice.py``.

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices: full cosine similarity matrices, a dense top-k per row, dense normalisations and plain
matrix products (no rmm model code, no rmm graph helper). It covers both protocols, the learned item graph with
its gradient, and its update over epochs: rmm and the reference are trained side by side with SGD, the
reference holding its learned graph (detached) after each epoch's first step exactly as MMRec's
``build_item_graph`` does, and rebuilding it from the current projections at every epoch and for scoring.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.hparams.lattice import LATTICEConfig
from rmm.models.lattice import LATTICE
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    close,
    dense_adjacency,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

FEATURES = ("image", "text")
#: Small sizes so that k < I matters; a visible reg_weight so that the regulariser is compared too.
SIZES = {"knn_k": 3, "embedding_dim": 8, "feat_embed_dim": 4, "reg_weight": 0.05}
#: A repeated user (3) and the cold item as a positive.
BATCHES = [BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]),
                    torch.tensor([7, 0, 1, 2, 3, 4])),
           BPRBatch(torch.tensor([4, 2, 0]), torch.tensor([0, 6, 5]), torch.tensor([3, 1, 6])),
           BPRBatch(torch.tensor([5, 1, 3, 0]), torch.tensor([6, 3, 4, 2]), torch.tensor([0, 5, 7, 3]))]
#: SGD step sizes of the update test: ID embeddings, and the learned graph's parameters.
LR_ID, LR_GRAPH = 0.5, 50.0
#: (protocol, explicit keys): both protocols' defaults, and the other values of the switches that change maths.
CASES = [("strict", {}), ("mmrec", {}),
         ("strict", {"knn_self": True, "ui_normalization": "row_self_loops", "num_layers": 2, "lambda_coeff": 0.5}),
         ("mmrec", {"knn_self": False, "train_features": False, "reg_norm": "frobenius", "num_ui_layers": 1})]
IDS = ["strict", "mmrec", "strict-mmrec-graphs-2layers", "mmrec-no-self-frozen-frobenius"]


def _graph() -> TrainGraph:
    return history_graph(HISTORY, NUM_USERS, NUM_ITEMS)


def _features() -> dict[str, torch.Tensor]:
    """Non-negative, as CNN or bag-of-words features: every cosine (so every frozen row sum) is positive."""
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.rand(NUM_ITEMS, 5, generator=generator),
            "text": torch.rand(NUM_ITEMS, 3, generator=generator)}


def _model(protocol: str, overrides: dict[str, Any]) -> LATTICE:
    entry = {"name": "lattice", "features": list(FEATURES), **SIZES, **overrides}
    return seeded_model(LATTICE, entry, protocol, _graph(), _features())


# ------------------------------------------------------------------------------------------- dense reference


def dense_knn(x: torch.Tensor, k: int, include_self: bool) -> torch.Tensor:
    """Cosine similarity matrix kept at each row's top k (the diagonal a candidate when ``include_self``),
    differentiable in the kept values. Shapes: (I, d) -> (I, I)."""
    unit = x / x.norm(dim=1, keepdim=True)
    sim = unit @ unit.T
    if not include_self:
        sim = sim.masked_fill(torch.eye(len(x), dtype=torch.bool), -torch.inf)
    values, index = torch.topk(sim, k, dim=1)
    return torch.zeros_like(sim).scatter(1, index, values)


def sym_norm(adj: torch.Tensor) -> torch.Tensor:
    r""":math:`D^{-1/2} A D^{-1/2}`, D the row sums (all positive here, else MMRec's would be NaN)."""
    degree = adj.sum(1)
    assert (degree > 0).all(), "a non-positive row sum: pick another seed, the comparison would be meaningless"
    scale = degree ** -0.5
    return scale[:, None] * adj * scale[None, :]


def dense_ui_adj(normalization: str) -> torch.Tensor:
    r"""The bipartite graph, users then items: :math:`D^{-1/2} A D^{-1/2}` (``sym``, zero-degree rows zero) or
    MMRec LATTICE's :math:`(D + I)^{-1}(A + I)`. Shapes: (U+I, U+I) float64."""
    adj = dense_adjacency(history_pairs(HISTORY))
    if normalization == "row_self_loops":
        adj = adj + torch.eye(len(adj), dtype=torch.float64)
        return adj / adj.sum(1, keepdim=True)
    return sym_normalized(adj)


def reference_params(model: LATTICE) -> dict[str, torch.Tensor]:
    """The model's parameters as float64 leaves that record their gradient: ID tables, projections (``W``, ``b``
    per modality), modality weights, and the current features (recording a gradient only with
    ``train_features``)."""
    cfg = model.cfg
    p = {"user": model.user_embedding.weight, "item": model.item_embedding.weight, "modal": model.modal_weight}
    for m, proj in enumerate(model.projections):
        p[f"W{m}"], p[f"b{m}"] = proj.weight, proj.bias
    for m, x in enumerate(model.features.matrices()):
        p[f"x{m}"] = x
    return {k: v.detach().double().requires_grad_(not k.startswith("x") or cfg.train_features) for k, v in p.items()}


def reference_item_graph(p: dict[str, torch.Tensor], cfg: LATTICEConfig) -> torch.Tensor:
    r""":math:`S = (1-\lambda) \mathcal{N}(\sum_m \alpha_m \hat{S}^m) + \lambda \sum_m \alpha_m \tilde{S}^m_0`, the
    learned graphs from the current projections of the current features, the frozen ones from the initial
    features. Shapes: (I, I) float64, differentiable in the projections, :math:`w` and trained features."""
    alpha = torch.softmax(p["modal"], dim=0)
    initial = _features()
    learned = frozen = 0
    for m, name in enumerate(FEATURES):
        projected = p[f"x{m}"] @ p[f"W{m}"].T + p[f"b{m}"]  # (I, feat_embed_dim)
        learned = learned + alpha[m] * dense_knn(projected, cfg.knn_k, cfg.knn_self)
        frozen = frozen + alpha[m] * sym_norm(dense_knn(initial[name].double(), cfg.knn_k, cfg.knn_self))
    return (1 - cfg.lambda_coeff) * sym_norm(learned) + cfg.lambda_coeff * frozen


def reference_embeddings(p: dict[str, torch.Tensor], cfg: LATTICEConfig,
                         item_graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\mathbf{h} = S^L \mathbf{E}_{id}`; LightGCN (mean of layers 0..L) over the user-item graph; items
    :math:`\bar{\mathbf{e}}_i + \mathbf{h}_i / \lVert \mathbf{h}_i \rVert`. Shapes: (U, d), (I, d)."""
    h = p["item"]
    for _ in range(cfg.num_layers):
        h = item_graph @ h
    adj = dense_ui_adj(cfg.ui_normalization)
    layers = [torch.cat([p["user"], p["item"]])]
    for _ in range(cfg.num_ui_layers):
        layers.append(adj @ layers[-1])
    final = sum(layers) / len(layers)
    return final[:NUM_USERS], final[NUM_USERS:] + h / h.norm(dim=1, keepdim=True)


def reference_loss(users: torch.Tensor, items: torch.Tensor, batch: BPRBatch, cfg: LATTICEConfig) -> torch.Tensor:
    r"""BPR :math:`-\overline{\ln\sigma(\hat{y}_{ui} - \hat{y}_{uj})}` plus ``reg_weight`` times the penalty of the
    batch's final embeddings: :math:`\frac{1}{2B}\sum\lVert e\rVert^2` (MMRec LATTICE's own ``bpr_loss``) or
    :math:`\frac{1}{B}\sum\lVert E\rVert_F` (``EmbLoss``)."""
    u, i, j = users[batch.users], items[batch.pos_items], items[batch.neg_items]
    bpr = -torch.nn.functional.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
    if cfg.reg_norm == "squared":
        reg = sum((e ** 2).sum() for e in (u, i, j)) / (2 * len(u))
    else:
        reg = sum(e.norm() for e in (u, i, j)) / len(u)
    return bpr + cfg.reg_weight * reg


def model_grads(model: LATTICE) -> dict[str, torch.Tensor | None]:
    """The model's gradients under the reference's names."""
    grads = {"user": model.user_embedding.weight.grad, "item": model.item_embedding.weight.grad,
             "modal": model.modal_weight.grad}
    for m, proj in enumerate(model.projections):
        grads[f"W{m}"], grads[f"b{m}"] = proj.weight.grad, proj.bias.grad
    for m, x in enumerate(model.features.matrices()):
        grads[f"x{m}"] = x.grad if isinstance(x, torch.nn.Parameter) else None
    return grads


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "overrides"), CASES, ids=IDS)
def test_lattice_fidelity_embeddings_scores_loss_and_gradients(protocol: str, overrides: dict[str, Any]) -> None:
    model = _model(protocol, overrides)
    cfg = model.cfg
    p = reference_params(model)
    model.start_epoch(seed=0, epoch=0)

    loss = model(BATCHES[0])  # the epoch's first step: the learned graph's weights carry a gradient
    loss.backward()
    users, items = reference_embeddings(p, cfg, reference_item_graph(p, cfg))
    expected = reference_loss(users, items, BATCHES[0], cfg)
    expected.backward()
    assert close(loss, expected)
    for name, grad in model_grads(model).items():
        if p[name].requires_grad:
            assert grad is not None and close(grad, p[name].grad), name
        else:
            assert grad is None, name
    assert p["W0"].grad.abs().sum() > 0 and p["modal"].grad.abs().sum() > 0  # the learned graph is trained

    model_users, model_items = model.embeddings()
    assert close(model_users, users) and close(model_items, items)
    assert close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


@pytest.mark.slow  # trains over several epochs
@pytest.mark.parametrize(("protocol", "overrides"), [*CASES, ("strict", {"graph_update": "step"})],
                         ids=[*IDS, "strict-graph-update-step"])
def test_lattice_fidelity_learned_graph_update_over_epochs(protocol: str, overrides: dict[str, Any]) -> None:
    """Three epochs of three SGD steps, rmm and the reference side by side from the same parameters. The reference
    builds its learned graph at each epoch's first step from the current projections (and features), with a
    gradient, and holds it detached for the epoch's other steps (``graph_update: step``: rebuilds it at every
    step); its losses, its parameters after every step and its final full-ranking scores must be rmm's."""
    model = _model(protocol, overrides)
    cfg = model.cfg
    p = reference_params(model)
    # The learned graph's parameters get ~1% of the gradient (its share is 1 - lambda, and h is normalised): a
    # large step for them, so that the learned neighbours do change between epochs.
    model_opt = torch.optim.SGD([
        {"params": [model.user_embedding.weight, model.item_embedding.weight], "lr": LR_ID},
        {"params": [v for name, v in model.named_parameters() if "_embedding." not in name], "lr": LR_GRAPH}])
    reference_opt = torch.optim.SGD([
        {"params": [p["user"], p["item"]], "lr": LR_ID},
        {"params": [v for name, v in p.items() if name not in ("user", "item") and v.requires_grad], "lr": LR_GRAPH}])
    structures = []
    for epoch in range(3):
        model.start_epoch(seed=0, epoch=epoch)
        structures.append([index.clone() for index in model.learned_index])
        held = None
        for step, batch in enumerate(BATCHES):
            model_opt.zero_grad()
            loss = model(batch)
            loss.backward()
            reference_opt.zero_grad()
            if held is None or cfg.graph_update == "step":
                graph = reference_item_graph(p, cfg)
                held = graph.detach()
            else:
                graph = held
            expected = reference_loss(*reference_embeddings(p, cfg, graph), batch, cfg)
            expected.backward()
            assert close(loss, expected), (epoch, step)
            if step > 0 and cfg.graph_update == "epoch":  # held graph: the projections learn once per epoch
                assert all(grad is None for name, grad in model_grads(model).items() if name not in ("user", "item"))
            model_opt.step()
            reference_opt.step()
            for name, value in reference_params(model).items():
                assert close(value, p[name]), (epoch, step, name)
    changed = any(not torch.equal(a, b) for a, b in zip(structures[0], structures[-1], strict=True))
    assert changed, "the learned neighbours never changed: the update path is not exercised"
    users, items = reference_embeddings(p, cfg, reference_item_graph(p, cfg))  # rebuilt for scoring, as MMRec
    assert close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


def test_lattice_protocol_switches_reach_the_model() -> None:
    strict, mmrec = _model("strict", {}), _model("mmrec", {})
    assert strict.cfg.ui_normalization == "sym" and mmrec.cfg.ui_normalization == "row_self_loops"
    assert not strict.cfg.knn_self and mmrec.cfg.knn_self and strict.item_graph_spec(mmrec.cfg).include_self
    assert mmrec.cfg.lambda_coeff == 0.9 and mmrec.cfg.reg_norm == "squared"
    # frozen inputs vs fine-tuned features: buffers outside the state dict vs parameters inside it
    assert not any(name.startswith("features.") for name in strict.state_dict())
    assert {"features.feature_0", "features.feature_1"} <= set(mmrec.state_dict())
    assert all(isinstance(x, torch.nn.Parameter) for x in mmrec.features.matrices())
    # nn.Linear's default: |w| <= 1/sqrt(fan_in); Xavier-normal (std sqrt(2 / (5 + 64)) here) goes beyond
    for init, within in (("torch_default", True), ("xavier", False)):
        torch.manual_seed(1)
        model = LATTICE(_graph(), _features(), LATTICEConfig(projection_init=init))
        assert bool(model.projections[0].weight.abs().max() <= 5 ** -0.5) == within
    with pytest.raises(ValueError, match="projection_init must be one of"):
        LATTICEConfig(projection_init="kaiming")
    with pytest.raises(ValueError, match="ui_normalization must be"):
        LATTICEConfig(ui_normalization="none")
