"""MMGCF against an independent dense reference written from MMRec's ``mmgcf.py`` (the paper's code).

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything in float64
with dense matrices and explicit formulas (no rmm model, layer or graph code): the epoch's pruned graph (replaying
the model's draw from the same ``(seed, epoch)`` generator over edge probabilities it computes itself), LightGCN's
layer mean, the projections, every fusion mode under every weighting, the scores on the full graph, the loss and
the gradients of every parameter, under both protocols and for one, two and three modalities.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rmm.config import build_model_config
from rmm.models.base import BPRBatch, build_model, epoch_generator
from rmm.models.hparams.mmgcf import FUSION_MODES, WEIGHTINGS, MMGCFConfig
from rmm.models.mmgcf import MMGCF
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    assert_close,
    assert_same_gradients,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

#: Small widths; a visible reg_weight so that the penalty is compared too.
SIZES = {"embedding_dim": 8, "feat_embed_dim": 8, "reg_weight": 0.3}
#: A repeated user (3), the cold item 7 as a positive and as a negative, item 3 (no image vector) as both.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 3]), torch.tensor([7, 0, 3, 2, 3, 4]))
#: Image first, then text, then a third modality: the feature lists of the cases are prefixes of it.
MODALITIES = ("image", "text", "audio")
SEED, EPOCH = 3, 5
#: (protocol, number of modalities, explicit keys): every fusion mode under every weighting with two modalities
#: in both protocols, then one and three modalities, concat with f != d, other depths, no pruning, EmbLoss's norm.
CASES: list[tuple[str, int, dict[str, Any]]] = [
    (protocol, 2, {"fusion_mode": fusion, "weighting": weighting})
    for protocol in ("strict", "mmrec") for fusion in FUSION_MODES for weighting in WEIGHTINGS
] + [
    ("strict", 1, {"fusion_mode": "concat", "weighting": "equal"}),
    ("mmrec", 1, {"fusion_mode": "mean", "weighting": "equal"}),
    ("strict", 1, {"fusion_mode": "sum", "weighting": "normalized"}),
    ("mmrec", 1, {"fusion_mode": "concat", "weighting": "alpha"}),
    ("strict", 3, {"fusion_mode": "concat", "weighting": "equal", "num_ui_layers": 3}),
    ("mmrec", 3, {"fusion_mode": "mean", "weighting": "normalized"}),
    ("strict", 3, {"fusion_mode": "sum", "weighting": "alpha", "num_ui_layers": 1}),
    ("strict", 2, {"fusion_mode": "concat", "weighting": "equal", "feat_embed_dim": 5}),
    ("mmrec", 2, {"fusion_mode": "concat", "weighting": "alpha", "feat_embed_dim": 3}),
    ("strict", 3, {"fusion_mode": "concat", "weighting": "normalized", "feat_embed_dim": 4}),
    ("mmrec", 2, {"dropout": 0.0}),
    ("strict", 2, {"dropout": 0.8, "reg_norm": "frobenius"}),
]
IDS = [f"{protocol}-{count}mod-" + "-".join(f"{k}={v}" for k, v in keys.items()) for protocol, count, keys in CASES]


def _features(count: int) -> dict[str, torch.Tensor]:
    """``count`` modalities of widths 5, 3, 4; item 3 has no image vector (a zero row)."""
    features = gaussian_features(NUM_ITEMS, seed=0, missing_image=3)
    features["audio"] = torch.randn(NUM_ITEMS, 4, generator=torch.Generator().manual_seed(1))
    return {name: features[name] for name in MODALITIES[:count]}


def _model(protocol: str, count: int, overrides: dict[str, Any]) -> MMGCF:
    entry = {"name": "mmgcf", "features": list(MODALITIES[:count]), **SIZES, **overrides}
    model = seeded_model(MMGCF, entry, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS), _features(count))
    if model.alpha_logit is not None:
        with torch.no_grad():  # away from sigmoid(0) = 1/2, where alpha and 1 - alpha could be swapped unseen
            model.alpha_logit.fill_(0.8)
    return model


# ------------------------------------------------------------------------------------------- dense reference


def pruned_adjacency(dropout: float, seed: int, epoch: int) -> torch.Tensor:
    r"""The epoch's training graph: :math:`\lfloor (1-p)|E| \rfloor` edges drawn without replacement with
    probability :math:`\propto (d_u d_i)^{-1/2}` from the model's ``(seed, epoch)`` generator, then
    :math:`D^{-1/2} A D^{-1/2}` with the kept degrees (the full graph when ``dropout`` is 0).
    Shapes: (U+I, U+I) float64."""
    pairs = history_pairs(HISTORY)
    if dropout == 0:
        return sym_normalized(dense_adjacency(pairs))
    user_degree = {u: sum(1 for v, _ in pairs if v == u) for u in range(NUM_USERS)}
    item_degree = {i: sum(1 for _, j in pairs if j == i) for i in range(NUM_ITEMS)}
    weights = torch.tensor([1 / math.sqrt(user_degree[u] * item_degree[i]) for u, i in pairs], dtype=torch.float32)
    keep = int(len(pairs) * (1 - dropout))
    kept = torch.multinomial(weights, keep, replacement=False, generator=epoch_generator(seed, epoch))
    return sym_normalized(dense_adjacency([pairs[k] for k in kept.tolist()]))


def reference_params(model: MMGCF) -> dict[str, torch.Tensor]:
    """Every parameter of the model, by its name, as a float64 leaf recording its gradient."""
    return {name: p.detach().double().requires_grad_() for name, p in model.named_parameters()}


def fuse(rows: list[torch.Tensor], mode: str, p: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """MMRec's ``_apply_fusion``: mean, sum, or concat-layer ``layer`` (``W [t_1; ...; t_n] + b``)."""
    if mode == "mean":
        return torch.stack(rows).mean(0)
    if mode == "sum":
        return torch.stack(rows).sum(0)
    return torch.cat(rows, dim=1) @ p[f"concat_layers.{layer}.proj.weight"].T + p[f"concat_layers.{layer}.proj.bias"]


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def reference_embeddings(p: dict[str, torch.Tensor], cfg: MMGCFConfig, count: int,
                         adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""LightGCN (mean of layers 0..L over ``adj``), then the items fused with :math:`h^m = x^m W_m^T + b_m` by
    ``weighting`` and ``fusion_mode``. Concat layers as the model numbers them: under ``equal`` the modality stage
    first (when M > 1), then the ID stage; otherwise one layer. Shapes: (U, d), (I, d)."""
    layers = [torch.cat([p["user_embedding.weight"], p["item_embedding.weight"]])]
    for _ in range(cfg.num_ui_layers):
        layers.append(adj @ layers[-1])
    final = torch.stack(layers).mean(0)
    users, items = final[:NUM_USERS], final[NUM_USERS:]
    features = _features(count)
    modal = [features[name].double() @ p[f"projections.{m}.weight"].T + p[f"projections.{m}.bias"]
             for m, name in enumerate(MODALITIES[:count])]
    mode = cfg.fusion_mode
    if cfg.weighting == "equal":
        if count == 1:
            return users, fuse([items, modal[0]], mode, p, 0)
        return users, fuse([items, fuse(modal, mode, p, 0)], mode, p, 1)
    if cfg.weighting == "alpha":
        alpha = 1 / (1 + torch.exp(-p["alpha_logit"]))
        return users, fuse([alpha * items] + [(1 - alpha) * h for h in modal], mode, p, 0)
    return users, fuse([count * unit_rows(items)] + [unit_rows(h) for h in modal], mode, p, 0)


def reference_loss(p: dict[str, torch.Tensor], cfg: MMGCFConfig, count: int, adj: torch.Tensor) -> torch.Tensor:
    r"""Mean :math:`-\ln\sigma(\hat{y}_{ui} - \hat{y}_{uj})` plus ``reg_weight`` times
    :math:`\frac{1}{2B}\sum\lVert e^{(0)}\rVert^2` of the batch's layer-0 ID rows (``frobenius``: the
    non-squared norms over B)."""
    users, items = reference_embeddings(p, cfg, count, adj)
    u, i, j = users[BATCH.users], items[BATCH.pos_items], items[BATCH.neg_items]
    bpr = -F.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
    rows = (p["user_embedding.weight"][BATCH.users], p["item_embedding.weight"][BATCH.pos_items],
            p["item_embedding.weight"][BATCH.neg_items])
    size = len(BATCH.users)
    if cfg.reg_norm == "squared":
        reg = sum(r.pow(2).sum() for r in rows) / (2 * size)
    else:
        reg = sum(r.pow(2).sum().sqrt() for r in rows) / size
    return bpr + cfg.reg_weight * reg


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "count", "overrides"), CASES, ids=IDS)
def test_fidelity_mmgcf_embeddings_scores_loss_and_gradients(protocol: str, count: int,
                                                             overrides: dict[str, Any]) -> None:
    model = _model(protocol, count, overrides)
    cfg = model.cfg
    for name, value in {**SIZES, **overrides}.items():
        assert getattr(cfg, name) == value, name
    p = reference_params(model)

    full = sym_normalized(dense_adjacency(history_pairs(HISTORY)))  # scoring: the full graph
    expected_users, expected_items = reference_embeddings(p, cfg, count, full)
    users, items = model.embeddings()
    assert_close(users, expected_users)
    assert_close(items, expected_items)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), expected_users @ expected_items.T)

    model.start_epoch(SEED, EPOCH)
    pruned = pruned_adjacency(cfg.dropout, SEED, EPOCH)
    assert model.masked_adj is not None
    assert_close(model.masked_adj.to_dense(), pruned)
    loss = model(BATCH)
    loss.backward()
    expected = reference_loss(p, cfg, count, pruned)
    expected.backward()
    assert_close(loss, expected)
    assert_same_gradients(model, p)  # every parameter has a gradient (DDP-safe) and it is the reference's


def test_fidelity_mmgcf_builds_the_concat_layers_its_weighting_uses() -> None:
    """Concat under ``equal``: a modality stage (M f -> f, only when M > 1) and an ID stage (d + f -> d); under
    ``alpha``/``normalized`` one layer (d + M f -> d); none for mean/sum; the alpha gate only under ``alpha``."""
    shapes = {(1, "equal"): [(4, 9)], (2, "equal"): [(5, 10), (4, 9)], (3, "equal"): [(5, 15), (4, 9)],
              (2, "alpha"): [(4, 14)], (3, "normalized"): [(4, 19)]}
    for (count, weighting), expected in shapes.items():
        model = _model("strict", count, {"fusion_mode": "concat", "weighting": weighting, "embedding_dim": 4,
                                         "feat_embed_dim": 5})
        weights = [p for name, p in model.concat_layers.named_parameters() if name.endswith("proj.weight")]
        assert [tuple(weight.shape) for weight in weights] == expected
        assert (model.alpha_logit is not None) == (weighting == "alpha")
    assert not _model("strict", 2, {"fusion_mode": "sum", "weighting": "alpha"}).concat_layers


def test_fidelity_mmgcf_pruning_is_deterministic_per_epoch_and_scoring_uses_the_full_graph() -> None:
    model = _model("strict", 2, {})
    model.start_epoch(SEED, 1)
    first = model.masked_adj.to_dense() if model.masked_adj is not None else None
    model.start_epoch(SEED, 2)
    other = model.masked_adj.to_dense() if model.masked_adj is not None else None
    model.start_epoch(SEED, 1)
    assert first is not None and other is not None and model.masked_adj is not None
    assert torch.equal(model.masked_adj.to_dense(), first) and not torch.equal(first, other)
    kept = int((first[:NUM_USERS] > 0).sum())
    assert kept == int(len(history_pairs(HISTORY)) * (1 - model.cfg.dropout))
    users, items = model.embeddings()
    full_users, full_items = model.embeddings(model.adj)
    assert torch.equal(users, full_users) and torch.equal(items, full_items)


def test_mmgcf_protocol_switches_and_defaults() -> None:
    strict, mmrec = MMGCFConfig(), build_model_config({"name": "mmgcf", "features": ["image"]}, "model[0]",
                                                      "mmrec").params
    assert isinstance(mmrec, MMGCFConfig)
    assert (strict.weighting, strict.fusion_mode, strict.num_ui_layers, strict.dropout, strict.reg_weight) == (
        "equal", "mean", 2, 0.5, 1e-4)
    assert strict.projection_init == "xavier" and mmrec.projection_init == "torch_default"
    assert strict.reg_norm == mmrec.reg_norm == "squared"
    assert (mmrec.embedding_dim, mmrec.feat_embed_dim) == (64, 64)
    for protocol, within in (("mmrec", True), ("strict", False)):  # nn.Linear's default: |w| <= 1/sqrt(fan_in)
        weight = _model(protocol, 1, {}).projections.get_parameter("0.weight")
        assert bool(weight.abs().max() <= 5 ** -0.5) == within
    features = _features(1)
    graph = history_graph(HISTORY, NUM_USERS, NUM_ITEMS)
    built = build_model(build_model_config({"name": "mmgcf", "features": ["image"]}, "model[0]"), graph, features)
    assert not any(name.startswith("features.") for name in built.state_dict())  # frozen inputs, not state


@pytest.mark.parametrize(("keys", "message"), [
    ({"fusion_mode": "prod"}, "fusion_mode must be one of"),
    ({"weighting": "learned"}, "weighting must be one of"),
    ({"feat_embed_dim": 32}, "feat_embed_dim must equal embedding_dim"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"num_ui_layers": 0}, "num_ui_layers must be >= 1"),
    ({"projection_init": "kaiming"}, "projection_init must be one of"),
])
def test_mmgcf_config_rejects_bad_values(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MMGCFConfig(**keys)
    MMGCFConfig(fusion_mode="concat", feat_embed_dim=32)  # concat takes any widths


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("fusion_mode", FUSION_MODES)
def test_mmgcf_reset_draws_every_parameter_and_bf16_steps_stay_finite(fusion_mode: str, weighting: str) -> None:
    """What the shared tests check on the defaults, for every fusion mode and weighting: ``reset_parameters``
    redraws every parameter (the alpha gate back to 0) and a bf16-autocast step gives finite float32 gradients."""
    model = _model("strict", 2, {"fusion_mode": fusion_mode, "weighting": weighting})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(7.0)
    model.reset_parameters()
    assert not [name for name, value in model.named_parameters() if (value == 7.0).all()]
    if model.alpha_logit is not None:
        assert model.alpha_logit.item() == 0.0
    model.start_epoch(SEED, EPOCH)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(BATCH)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())
