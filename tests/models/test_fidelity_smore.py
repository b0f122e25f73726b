"""SMORE against an independent dense reference written from the paper's equations and MMRec's ``smore.py``.

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices: full cosine similarity matrices with a dense top-k per row, dense normalisations and the
max-pooled fusion graph, the real DFT as explicit sums of complex exponentials, and plain matrix products (no rmm
model code, no rmm graph helper). The preference gates' dropout is replayed: the reference draws its masks from
torch's global generator seeded as the model's was, in the model's order (the modalities', then the fusion's).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.hparams.smore import SMOREConfig
from rmm.models.smore import SMORE
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    assert_close_grad,
    close,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

#: Small sizes so that k < I matters; visible regulariser and contrastive weights so that both are compared.
SIZES = {"knn_k": 3, "embedding_dim": 8, "reg_weight": 0.3, "cl_weight": 0.5}
#: A repeated user (3) and the cold item as a positive.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: (protocol, features, explicit keys): both protocols' defaults on MMRec's two modalities, then one and three
#: modalities, an odd width (the DFT without a Nyquist bin), two item-graph layers and the dropout replayed.
CASES = [("strict", ("image", "text"), {}), ("mmrec", ("image", "text"), {}),
         ("strict", ("image", "text", "audio"), {"knn_self": True, "num_mm_layers": 2, "dropout": 0.3,
                                                 "embedding_dim": 7, "num_ui_layers": 2}),
         ("mmrec", ("text",), {"knn_self": False, "dropout": 0.1, "temperature": 0.5}),
         ("mmrec", ("image", "text"), {"dropout": 0.1, "train_features": False, "num_ui_layers": 1})]
IDS = ["strict", "mmrec", "strict-3-modalities-self-2layers-odd-dim-dropout", "mmrec-1-modality-no-self-dropout",
       "mmrec-frozen-dropout-1layer"]
DROPOUT_SEED = 17


def _graph() -> TrainGraph:
    return history_graph(HISTORY, NUM_USERS, NUM_ITEMS)


def _features(names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    features = gaussian_features(NUM_ITEMS, seed=0)
    features["audio"] = torch.randn(NUM_ITEMS, 4, generator=torch.Generator().manual_seed(5))
    return {name: features[name] for name in names}


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> SMORE:
    entry = {"name": "smore", "features": list(names), **SIZES, **overrides}
    return seeded_model(SMORE, entry, protocol, _graph(), _features(names))


# ------------------------------------------------------------------------------------------- dense reference


def dense_knn_graph(x: torch.Tensor, cfg: SMOREConfig) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One modality's graph :math:`D^{-1/2} S D^{-1/2}`: S keeps each row's top-k cosine similarities (the
    diagonal a candidate when ``knn_self``) with their values, D the row sums (a node whose sum is not positive
    gets zero weights); and the mask of kept edges.
    Shapes: (I, I) float64, (I, I) bool."""
    unit = x.double() / x.double().norm(dim=1, keepdim=True)
    sim = unit @ unit.T
    candidates = sim if cfg.knn_self else sim.masked_fill(torch.eye(NUM_ITEMS, dtype=torch.bool), -torch.inf)
    index = torch.topk(candidates, cfg.knn_k, dim=1).indices
    mask = torch.zeros_like(sim, dtype=torch.bool).scatter(1, index, True)
    adj = torch.where(mask, sim, 0.0)
    degree = adj.sum(1)  # cosine weights: a row may sum to <= 0; its node then gets weight 0 (MMRec: NaN)
    scale = torch.where(degree > 0, degree.clamp_min(1e-12) ** -0.5, 0.0)
    return scale[:, None] * adj * scale[None, :], mask


def dense_item_graphs(names: tuple[str, ...], cfg: SMOREConfig) -> list[torch.Tensor]:
    """Every modality's graph, then the fusion graph: on each edge kept by some modality, the largest of those
    modalities' normalised weights (MMRec's max pooling, absent edges -inf). Shapes: M + 1 x (I, I)."""
    graphs, masks = zip(*(dense_knn_graph(x, cfg) for x in _features(names).values()), strict=True)
    fused = torch.stack([torch.where(m, g, -torch.inf) for g, m in zip(graphs, masks, strict=True)]).amax(0)
    return [*graphs, torch.where(fused == -torch.inf, 0.0, fused)]


def rfft(x: torch.Tensor) -> torch.Tensor:
    r"""Orthonormal real DFT along the rows: :math:`X_k = n^{-1/2} \sum_t x_t e^{-2\pi i k t / n}`,
    :math:`k = 0..\lfloor n/2 \rfloor`. Shapes: (N, n) -> (N, n // 2 + 1) complex128."""
    n = x.shape[1]
    k, t = torch.arange(n // 2 + 1, dtype=torch.float64), torch.arange(n, dtype=torch.float64)
    basis = torch.exp(-2j * math.pi * k[:, None] * t[None, :] / n)  # (n // 2 + 1, n)
    return x.to(torch.complex128) @ basis.T / math.sqrt(n)


def irfft(spectrum: torch.Tensor, n: int) -> torch.Tensor:
    r"""Its inverse for a real signal: the Hermitian extension :math:`X_{n-k} = \bar{X}_k` of the half spectrum,
    then :math:`x_t = \mathrm{Re}\, n^{-1/2} \sum_{k<n} X_k e^{2\pi i k t / n}` (the imaginary parts of the
    real bins drop out). Shapes: (N, n // 2 + 1) -> (N, n) float64."""
    full = torch.cat([spectrum, spectrum[:, 1: n - n // 2].flip(1).conj()], dim=1)  # (N, n)
    k, t = torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64)
    basis = torch.exp(2j * math.pi * k[:, None] * t[None, :] / n)  # (n, n)
    return (full @ basis / math.sqrt(n)).real


def reference_params(model: SMORE) -> dict[str, torch.Tensor]:
    """Every model parameter as a float64 leaf recording its gradient, by its name, plus the frozen features
    (``features.feature_<m>``, no gradient) when they are not parameters."""
    p = {name: w.detach().double().requires_grad_() for name, w in model.named_parameters()}
    for m, x in enumerate(model.features.matrices()):
        p.setdefault(f"features.feature_{m}", x.detach().double())
    return p


def linear(p: dict[str, torch.Tensor], name: str, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    return x @ p[f"{name}.weight"].T + (p[f"{name}.bias"] if bias else 0)


def reference_embeddings(p: dict[str, torch.Tensor], names: tuple[str, ...], cfg: SMOREConfig,
                         masks: list[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Behavioural :math:`\mathbf{E}_c` and side :math:`\mathbf{E}_s` embeddings (users then items), the
    preference gates multiplied by ``masks`` (dropout) when given. Shapes: (U+I, d), (U+I, d)."""
    num_modalities, d = len(names), cfg.embedding_dim
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)))
    r_hat = adj[:NUM_USERS, NUM_USERS:]  # (U, I): 1 / sqrt(d_u d_i)
    layers = [torch.cat([p["user_embedding.weight"], p["item_embedding.weight"]])]
    for _ in range(cfg.num_ui_layers):
        layers.append(adj @ layers[-1])
    content = torch.stack(layers).mean(0)

    spectra = [rfft(linear(p, f"projections.{m}", p[f"features.feature_{m}"])) for m in range(num_modalities)]
    fused = spectra[0]
    for spectrum in spectra[1:]:
        fused = fused * spectrum
    filters = p["filters"][..., 0] + 1j * p["filters"][..., 1]  # (M + 1, d // 2 + 1)
    views = []
    for v, (spectrum, item_graph) in enumerate(zip([*spectra, fused], dense_item_graphs(names, cfg), strict=True)):
        conv = irfft(spectrum * filters[v], d)  # (I, d)
        items = p["item_embedding.weight"] * torch.sigmoid(linear(p, f"item_gates.{v}", conv))
        for _ in range(cfg.num_mm_layers):
            items = item_graph @ items
        views.append(torch.cat([r_hat @ items, items]))

    fusion = views[-1]
    terms = []
    for v in range(num_modalities + 1):
        prefer = torch.sigmoid(linear(p, f"preference_gates.{v}", content))
        if masks is not None:
            prefer = prefer * masks[v]
        if v < num_modalities:
            query = linear(p, f"queries.{v}.2", torch.tanh(linear(p, f"queries.{v}.0", fusion)), bias=False)
            terms.append(prefer * torch.softmax(query, dim=1) * views[v])
        else:
            terms.append(prefer * fusion)
    return content, torch.stack(terms).mean(0)


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """MMRec's InfoNCE: cosine logits / temperature of each row of ``view1`` against every row of ``view2``, the
    same row the positive; the batch mean of -log(softmax)."""
    a, b = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    positive = torch.exp((a * b).sum(1) / temperature)
    total = torch.exp(a @ b.T / temperature).sum(1)
    return -torch.log(positive / total).mean()


def reference_loss(content: torch.Tensor, side: torch.Tensor, cfg: SMOREConfig) -> torch.Tensor:
    r"""BPR + reg_weight :math:`\frac{1}{2B}\sum \lVert e \rVert^2` of the batch's final rows + cl_weight (InfoNCE of
    the side against the behavioural embeddings of the positive items, plus of the users)."""
    final = content + side
    u = final[BATCH.users]
    i, j = final[NUM_USERS + BATCH.pos_items], final[NUM_USERS + BATCH.neg_items]
    bpr = -F.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
    reg = (u.pow(2).sum() + i.pow(2).sum() + j.pow(2).sum()) / (2 * len(BATCH.users))
    items, users = NUM_USERS + BATCH.pos_items, BATCH.users
    cl = (info_nce(side[items], content[items], cfg.temperature)
          + info_nce(side[users], content[users], cfg.temperature))
    return bpr + cfg.reg_weight * reg + cfg.cl_weight * cl


def dropout_masks(num_views: int, rows: int, cfg: SMOREConfig) -> list[torch.Tensor] | None:
    """The preference gates' dropout masks (kept / (1 - p), else 0), drawn as the model draws them."""
    if cfg.dropout == 0:
        return None
    torch.manual_seed(DROPOUT_SEED)
    ones = torch.ones(rows, cfg.embedding_dim)
    return [F.dropout(ones, cfg.dropout, training=True).double() for _ in range(num_views)]


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_smore_fidelity_graphs_embeddings_scores_loss_and_gradients(protocol: str, names: tuple[str, ...],
                                                                    overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    cfg = model.cfg
    p = reference_params(model)
    for v, expected in enumerate(dense_item_graphs(names, cfg)):
        assert close(getattr(model, f"item_adj_{v}").to_dense(), expected), v

    torch.manual_seed(DROPOUT_SEED)
    loss = model(BATCH)
    loss.backward()
    masks = dropout_masks(len(names) + 1, NUM_USERS + NUM_ITEMS, cfg)
    expected = reference_loss(*reference_embeddings(p, names, cfg, masks), cfg)
    expected.backward()
    assert close(loss, expected)
    for name, weight in model.named_parameters():
        reference = p[name].grad
        assert weight.grad is not None and reference is not None, name
        assert_close_grad(weight.grad, reference, name)

    content, side = reference_embeddings(p, names, cfg, None)  # scoring: no dropout
    final = content + side
    users, items = final[:NUM_USERS], final[NUM_USERS:]
    model_users, model_items = model.embeddings()
    assert close(model_users, users) and close(model_items, items)
    assert close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


def test_smore_protocol_switches_reach_the_model() -> None:
    strict, mmrec = _model("strict", ("image", "text"), {}), _model("mmrec", ("image", "text"), {})
    assert not strict.cfg.knn_self and mmrec.cfg.knn_self and strict.item_graph_spec(mmrec.cfg).include_self
    assert not any(name.startswith("features.") for name in strict.state_dict())
    assert {"features.feature_0", "features.feature_1"} <= set(mmrec.state_dict())
    assert strict.cfg.projection_init == "xavier" and mmrec.cfg.projection_init == "torch_default"
    assert strict.cfg.reg_norm == mmrec.cfg.reg_norm == "squared"


def test_smore_dropout_only_in_training() -> None:
    """Scoring draws no dropout (the same scores twice); training losses differ with the dropout draw."""
    model = _model("strict", ("image", "text"), {"dropout": 0.5})
    assert torch.equal(model.scorer()(torch.arange(NUM_USERS)), model.scorer()(torch.arange(NUM_USERS)))
    losses = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        losses.append(model(BATCH).item())
    assert losses[0] == losses[1] != losses[2]
    with pytest.raises(ValueError, match="dropout must be in"):
        SMOREConfig(dropout=1.0)
