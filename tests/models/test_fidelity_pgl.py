"""PGL against an independent dense reference written from the paper and MMRec's ``pgl.py``.

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices: full cosine similarity matrices and a dense top-k per row for the item graph, the dense
normalised adjacency, a full dense SVD of it for the global subgraph, explicit dropout views and InfoNCE (no rmm
model code, no rmm graph helper). The random parts are replayed: the local subgraph's draw from the model's
``(seed, epoch)`` generator (the reference computes the edge probabilities itself), the dropout masks from the
same global torch seed.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rmm.config import build_model_config
from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, build_model, epoch_generator
from rmm.models.hparams.pgl import PGLConfig
from rmm.models.layers import modules_of
from rmm.models.pgl import PGL
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    close,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

#: Small sizes so that k < I matters; embedding_dim 8 gives the global subgraph 8 singular triplets (2 + 2 used).
SIZES = {"knn_k": 3, "embedding_dim": 8}
#: A repeated user (3), the cold item 7 as a positive, a negative equal to another row's positive.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: (protocol, features, explicit keys): both protocols' defaults, global mode, the contrastive term with dropout,
#: one and three modalities.
CASES = [
    ("strict", ("image", "text"), {}),
    ("mmrec", ("image", "text"), {}),
    ("strict", ("image", "text"), {"mode": "global", "reg_weight": 0.3, "dropout": 0.0}),
    ("mmrec", ("image", "text"), {"mode": "global", "reg_weight": 0.7}),
    ("mmrec", ("image", "text"), {"reg_weight": 0.5, "num_mm_layers": 2, "knn_self": False}),
    ("strict", ("image",), {"reg_weight": 0.2, "keep_ratio": 0.6, "num_ui_layers": 1, "temperature": 0.5}),
    ("mmrec", ("image", "text", "audio"), {"modality_weights": [1.0, 2.0, 1.0], "reg_weight": 0.4,
                                           "mode": "global", "svd_rank": 10, "global_threshold": 0.03}),
]
IDS = ["strict", "mmrec", "strict-global-cl", "mmrec-global-cl-dropout", "mmrec-cl-dropout-2mm",
       "strict-one-modality", "mmrec-three-modalities-global"]


def _graph() -> TrainGraph:
    return history_graph(HISTORY, NUM_USERS, NUM_ITEMS)


def _features(names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    features = gaussian_features(NUM_ITEMS, seed=0)
    features["audio"] = torch.randn(NUM_ITEMS, 4, generator=torch.Generator().manual_seed(5))
    return {name: features[name] for name in names}


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> PGL:
    entry = {"name": "pgl", "features": list(names), **SIZES, **overrides}
    return seeded_model(PGL, entry, protocol, _graph(), _features(names))


# ------------------------------------------------------------------------------------------- dense reference


def dense_item_graph(cfg: PGLConfig, names: tuple[str, ...]) -> torch.Tensor:
    r""":math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}`: per modality the unweighted top-k of the cosine row
    (the diagonal a candidate when ``knn_self``), D the row sums; :math:`w` uniform or the given weights
    normalised. Shapes: (I, I) float64."""
    features = _features(names)
    weights = cfg.modality_weights or (1.0,) * len(names)
    total = torch.zeros(NUM_ITEMS, NUM_ITEMS, dtype=torch.float64)
    for weight, name in zip(weights, names, strict=True):
        x = features[name].double()
        unit = x / x.norm(dim=1, keepdim=True)
        sim = unit @ unit.T
        if not cfg.knn_self:
            sim = sim.masked_fill(torch.eye(NUM_ITEMS, dtype=torch.bool), -torch.inf)
        adj = torch.zeros_like(sim).scatter(1, torch.topk(sim, cfg.knn_k, dim=1).indices, 1.0)
        scale = adj.sum(1) ** -0.5
        total = total + weight / sum(weights) * scale[:, None] * adj * scale[None, :]
    return total


def local_subgraph(cfg: PGLConfig, seed: int, epoch: int) -> torch.Tensor:
    r"""MMRec's ``pre_epoch_processing``: :math:`\lfloor 0.3 |E| \rfloor` edges drawn without replacement with
    probability :math:`\propto 1/\sqrt{d_u d_i}` (train degrees; replayed from the model's generator), then
    :math:`D^{-1/2} A D^{-1/2}` with the kept degrees. Shapes: (U+I, U+I) float64."""
    edges = history_pairs(HISTORY)
    user_degree = {u: sum(1 for e in edges if e[0] == u) for u in HISTORY}
    item_degree = {i: sum(1 for e in edges if e[1] == i) for _, i in edges}
    weights = torch.tensor([1.0 / math.sqrt(user_degree[u] * item_degree[i]) for u, i in edges])
    keep = int(len(edges) * cfg.keep_ratio)
    kept = torch.multinomial(weights, keep, replacement=False, generator=epoch_generator(seed, epoch))
    return sym_normalized(dense_adjacency([edges[e] for e in kept.tolist()]))


def global_subgraph(cfg: PGLConfig) -> torch.Tensor:
    r"""MMRec's ``global_subgraph_extraction``: the full SVD :math:`\hat{A} = U \Sigma V^\top` of the dense
    normalised adjacency, :math:`n = \lfloor k / 4 \rfloor` (k: ``svd_rank``, default ``embedding_dim``),
    :math:`G = U_{:, :n}\, \mathrm{diag}(s_{:n} \odot s_{k-n:k})\, V^\top_{:n}`, entries under the threshold
    zeroed. Shapes: (U+I, U+I) float64."""
    full = sym_normalized(dense_adjacency(history_pairs(HISTORY)))
    u, s, vh = torch.linalg.svd(full)  # s descending
    k = cfg.svd_rank or cfg.embedding_dim
    n = int(0.25 * k)
    product = u[:, :n] @ torch.diag(s[:n] * s[k - n:k]) @ vh[:n]
    return product * (product.abs() >= cfg.global_threshold)


def reference_params(model: PGL) -> dict[str, torch.Tensor]:
    """The model's parameters as float64 leaves that record their gradient: user tables ``u<m>``, projections
    (``W<m>``, ``b<m>``) and features ``x<m>`` (recording a gradient only with ``train_features``)."""
    p: dict[str, torch.Tensor] = {}
    for m, table in enumerate(modules_of(model.user_embeddings, torch.nn.Embedding)):
        p[f"u{m}"] = table.weight
    for m, proj in enumerate(modules_of(model.projections, torch.nn.Linear)):
        p[f"W{m}"], p[f"b{m}"] = proj.weight, proj.bias
    for m, x in enumerate(model.features.matrices()):
        p[f"x{m}"] = x
    trains = model.cfg.train_features
    return {k: v.detach().double().requires_grad_(not k.startswith("x") or trains) for k, v in p.items()}


def model_grads(model: PGL) -> dict[str, torch.Tensor | None]:
    grads: dict[str, torch.Tensor | None] = {}
    for m, table in enumerate(modules_of(model.user_embeddings, torch.nn.Embedding)):
        grads[f"u{m}"] = table.weight.grad
    for m, proj in enumerate(modules_of(model.projections, torch.nn.Linear)):
        grads[f"W{m}"], grads[f"b{m}"] = proj.weight.grad, proj.bias.grad
    for m, x in enumerate(model.features.matrices()):
        grads[f"x{m}"] = x.grad if isinstance(x, torch.nn.Parameter) else None
    return grads


def reference_embeddings(p: dict[str, torch.Tensor], cfg: PGLConfig, names: tuple[str, ...],
                         ui_adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Items :math:`[\mathrm{norm}(x_m W_m^\top + b_m)]_m`, users :math:`[E_U^m]_m`;
    :math:`h = S^{L_m} E_I`; LightGCN (mean of layers 0..L) over ``ui_adj``; items :math:`\bar{e}_i + h_i`.
    Shapes: (U, M d), (I, M d)."""
    projected = []
    for m in range(len(names)):
        z = p[f"x{m}"] @ p[f"W{m}"].T + p[f"b{m}"]
        projected.append(z / z.norm(dim=1, keepdim=True))
    items = torch.cat(projected, dim=1)
    users = torch.cat([p[f"u{m}"] for m in range(len(names))], dim=1)
    h = items
    item_graph = dense_item_graph(cfg, names)
    for _ in range(cfg.num_mm_layers):
        h = item_graph @ h
    layers = [torch.cat([users, items])]
    for _ in range(cfg.num_ui_layers):
        layers.append(ui_adj @ layers[-1])
    final = torch.stack(layers).mean(0)
    return final[:NUM_USERS], final[NUM_USERS:] + h


def reference_loss(users: torch.Tensor, items: torch.Tensor, cfg: PGLConfig, dropout_seed: int) -> torch.Tensor:
    r"""BPR plus ``reg_weight`` times the mean of the two InfoNCE terms, each between two dropout views
    (``torch.rand`` masks from ``dropout_seed``: users' view 1, view 2, then the items'), temperature ``cfg``'s:
    :math:`-\frac{1}{B}\sum_b \log \frac{\exp(\hat{a}_b^\top \hat{c}_b / \tau)}{\sum_c \exp(\hat{a}_b^\top
    \hat{c}_c / \tau)}`."""
    u, i, j = users[BATCH.users], items[BATCH.pos_items], items[BATCH.neg_items]
    bpr = -torch.nn.functional.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
    if cfg.reg_weight == 0:
        return bpr
    torch.manual_seed(dropout_seed)

    def view(x: torch.Tensor) -> torch.Tensor:
        if cfg.dropout == 0:
            return x
        mask = torch.rand(x.shape, dtype=torch.float32) >= cfg.dropout
        return x * mask.double() / (1 - cfg.dropout)

    def nce(x: torch.Tensor) -> torch.Tensor:
        a, c = view(x), view(x)
        a, c = a / a.norm(dim=1, keepdim=True), c / c.norm(dim=1, keepdim=True)
        logits = torch.exp(a @ c.T / cfg.temperature)
        return -torch.log(logits.diagonal() / logits.sum(1)).mean()

    return bpr + cfg.reg_weight * (nce(u) + nce(i)) / 2


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_pgl_fidelity_graphs_embeddings_scores_loss_and_gradients(protocol: str, names: tuple[str, ...],
                                                                  overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    cfg = model.cfg
    p = reference_params(model)
    assert close(model.mm_adj.to_dense(), dense_item_graph(cfg, names))

    model.start_epoch(seed=3, epoch=5)
    if cfg.mode == "local":
        train_adj = local_subgraph(cfg, seed=3, epoch=5)
        assert model.masked_adj is not None and close(model.masked_adj.to_dense(), train_adj)
    else:
        train_adj = global_subgraph(cfg)
        assert train_adj.count_nonzero() > 0
        assert model.global_adj is not None and close(model.global_adj.to_dense(), train_adj)
    torch.manual_seed(11)
    loss = model(BATCH)
    loss.backward()
    expected = reference_loss(*reference_embeddings(p, cfg, names, train_adj), cfg, dropout_seed=11)
    expected.backward()
    assert close(loss, expected)
    for name, grad in model_grads(model).items():
        if p[name].requires_grad:
            reference_grad = p[name].grad
            assert grad is not None and reference_grad is not None and close(grad, reference_grad), name
        else:
            assert grad is None, name

    full = sym_normalized(dense_adjacency(history_pairs(HISTORY)))  # scoring: the full graph
    users, items = reference_embeddings(p, cfg, names, full)
    model_users, model_items = model.embeddings()
    assert model_users.shape == (NUM_USERS, len(names) * cfg.embedding_dim)
    assert close(model_users, users) and close(model_items, items)
    assert close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


def test_pgl_fidelity_dropout_views_differ_and_drop_the_rate() -> None:
    """The contrastive term's two views draw independent masks at rate ``dropout`` (so the term is not InfoNCE
    of identical views), scaled by 1 / (1 - dropout)."""
    model = _model("mmrec", ("image", "text"), {"reg_weight": 1.0})
    x = torch.ones(2000, 16)
    torch.manual_seed(0)
    first, second = model.dropout_view(x), model.dropout_view(x)
    assert not torch.equal(first, second)
    dropped = (first == 0).double().mean().item()
    assert abs(dropped - 0.2) < 4.5 * math.sqrt(0.2 * 0.8 / x.numel())
    assert torch.allclose(first[first != 0], torch.tensor(1 / 0.8))


def test_pgl_local_subgraph_is_per_epoch_and_replays() -> None:
    model = _model("strict", ("image", "text"), {})
    graphs = []
    for epoch in (0, 1, 0):
        model.start_epoch(seed=2, epoch=epoch)
        assert model.masked_adj is not None
        graphs.append(model.masked_adj.to_dense())
        assert int((graphs[-1][:NUM_USERS] > 0).sum()) == int(0.3 * len(history_pairs(HISTORY)))
    assert torch.equal(graphs[0], graphs[2]) and not torch.equal(graphs[0], graphs[1])


def test_pgl_protocol_switches_and_errors() -> None:
    strict, mmrec = _model("strict", ("image", "text"), {}), _model("mmrec", ("image", "text"), {})
    assert strict.cfg.modality_weights is None and mmrec.cfg.modality_weights == (0.1, 0.9)
    assert not strict.cfg.knn_self and mmrec.cfg.knn_self
    assert not any(name.startswith("features.") for name in strict.state_dict())
    assert {"features.feature_0", "features.feature_1"} <= set(mmrec.state_dict())
    assert mmrec.cfg.mode == "local" and mmrec.cfg.reg_weight == 0 and mmrec.cfg.dropout == 0.2
    with pytest.raises(ValueError, match=r"mode must be one of"):
        PGLConfig(mode="spectral")
    with pytest.raises(ValueError, match=r"k and k // 4 even"):
        PGLConfig(mode="global", embedding_dim=12)
    with pytest.raises(ValueError, match=r"svd_rank / 2 < min\(num_users, num_items\)"):
        build_model(build_model_config({"name": "pgl", "features": ["image"], "mode": "global", "svd_rank": 16},
                                       "model[0]", "strict"), _graph(), _features(("image",)))
