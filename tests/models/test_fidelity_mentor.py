r"""MENTOR against an independent dense reference written from the paper's equations and its official code
(``mentor.py``, an MMRec fork).

The reference reads the rmm model's parameters (and the features it was given) and recomputes everything with
dense float64 matrices: the normalised bipartite adjacency and its powers, the encoders as explicit affine maps,
full cosine similarity matrices with a sorted top-k per row for the item-item graph, every view written out (the
repeated guide and modality views materialised), ``torch.var`` for the alignment statistics, the full (N, N)
InfoNCE logits and the masking loss. The per-step randomness (perturbation noise, masking dropout) is replayed
from the model's ``(seed, epoch)`` generator in the documented draw order; the comparison is exact (graph,
embeddings, scores, loss and gradients).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import Tensor

from rmm.models.base import BPRBatch, epoch_generator
from rmm.models.hparams.mentor import MENTORConfig
from rmm.models.layers import all_pairs_info_nce
from rmm.models.mentor import MENTOR
from tests.models.history import (
    HISTORY,
    NUM_ITEMS,
    NUM_USERS,
    assert_close,
    assert_close_grad,
    assert_same_gradients,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
    sym_normalized,
)

#: Small sizes so that k < I matters; visible weights for every loss term.
SIZES = {"embedding_dim": 4, "knn_k": 3, "reg_weight": 0.3, "mask_weight_g": 0.5, "align_weight": 0.7,
         "perturb_eps": 0.3}
#: A repeated user (3) and the cold item (7) as a positive.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 2, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
SEED, EPOCH = 3, 5
#: Item 3 has no image vector: no kNN neighbours in the image graph, and nobody's neighbour there.
MISSING_IMAGE = 3
#: (protocol, features, explicit keys).
CASES = [("strict", ("image", "text"), {}), ("mmrec", ("image", "text"), {}),
         ("strict", ("text",), {"num_layers": 1, "knn_self": True, "num_mm_layers": 2, "dropout": 0.0,
                                "temperature": 0.6}),
         ("mmrec", ("image", "text", "audio"), {"modality_weights": [1.0, 2.0, 3.0], "num_layers": 3,
                                                "knn_self": False, "mask_weight_g": 0.0}),
         ("strict", ("audio", "image"), {"mask_weight_f": 0.0, "align_weight": 0.0, "mask_gradient": False})]
IDS = ["strict", "mmrec", "strict-text-1layer-self-2mm", "mmrec-3modalities-no-perturbation",
       "strict-no-mask-no-align"]


def _features() -> dict[str, Tensor]:
    features = gaussian_features(NUM_ITEMS, seed=0, missing_image=MISSING_IMAGE)
    features["audio"] = torch.randn(NUM_ITEMS, 6, generator=torch.Generator().manual_seed(7))
    return features


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> MENTOR:
    features = _features()
    entry = {"name": "mentor", "features": list(names), **SIZES, **overrides}
    model = seeded_model(MENTOR, entry, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS),
                         {name: features[name] for name in names})
    model.start_epoch(SEED, EPOCH)
    return model


def _params(model: MENTOR) -> dict[str, Tensor]:
    return {name: p.detach().double().clone().requires_grad_(True) for name, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------- dense reference


def dense_item_graph(cfg: MENTORConfig, names: tuple[str, ...]) -> Tensor:
    r""":math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}`: per modality the unweighted top-k of the cosine row (the
    diagonal a candidate when ``knn_self``; items without a vector neither rows nor candidates), D the row sums;
    :math:`w` uniform or the given weights normalised. Shapes: (I, I) float64."""
    features = _features()
    weights = cfg.modality_weights or (1.0,) * len(names)
    total = torch.zeros(NUM_ITEMS, NUM_ITEMS, dtype=torch.float64)
    for weight, name in zip(weights, names, strict=True):
        x = features[name].double()
        norms = x.norm(dim=1)
        valid = norms > 0
        sim = (x @ x.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-300)
        sim = sim.masked_fill(~(valid[:, None] & valid[None, :]), -torch.inf)
        if not cfg.knn_self:
            sim = sim.masked_fill(torch.eye(NUM_ITEMS, dtype=torch.bool), -torch.inf)
        adj = torch.zeros_like(sim)
        for i in range(NUM_ITEMS):
            for negative, j in sorted((-float(sim[i, j]), j) for j in range(NUM_ITEMS))[:cfg.knn_k]:
                if negative < torch.inf:
                    adj[i, j] = 1.0
        degree = adj.sum(1)
        scale = torch.where(degree > 0, degree.clamp_min(1e-12) ** -0.5, 0.0)
        total = total + weight / sum(weights) * scale[:, None] * adj * scale[None, :]
    return total


def encoder_inputs(params: dict[str, Tensor], prefix: str, items: list[Tensor]) -> list[Tensor]:
    r"""Per input m the L2-normalised rows of :math:`[P_m; W_2\,\mathrm{LeakyReLU}(W_1 x_m + b_1) + b_2]`.
    Shapes: M x (U+I, d)."""
    out = []
    for m, x in enumerate(items):
        z = x.double() @ params[f"{prefix}.hidden.{m}.weight"].T + params[f"{prefix}.hidden.{m}.bias"]
        z = torch.where(z > 0, z, 0.01 * z)
        encoded = z @ params[f"{prefix}.output.{m}.weight"].T + params[f"{prefix}.output.{m}.bias"]
        rows = torch.cat([params[f"{prefix}.preferences.{m}"], encoded])
        out.append(rows / rows.norm(dim=1, keepdim=True))
    return out


def convolve(x: Tensor, num_layers: int, noise: list[Tensor] | None = None, eps: float = 0.0) -> Tensor:
    r""":math:`\sum_{l=0}^{L} h_l`, :math:`h_l = \hat{A} h_{l-1} + \epsilon\,\mathrm{sign}(\cdot) \odot
    \Delta_l / \lVert \Delta_l \rVert` (rows) when ``noise`` gives :math:`\Delta_l`. Shapes: (U+I, d)."""
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)))
    total, h = x, x
    for layer in range(num_layers):
        h = adj @ h
        if noise is not None:
            delta = noise[layer].double()
            h = h + eps * torch.sign(h) * delta / delta.norm(dim=1, keepdim=True)
        total = total + h
    return total


def view(users_blocks: list[Tensor], items_blocks: list[Tensor], cfg: MENTORConfig, names: tuple[str, ...],
         alpha: Tensor | None) -> tuple[Tensor, Tensor]:
    """Users (blocks scaled by alpha when given) and items (concatenated, plus the item-item smoothing)."""
    if alpha is not None:
        users_blocks = [alpha[:, m:m + 1] * block for m, block in enumerate(users_blocks)]
    items = torch.cat(items_blocks, dim=1)
    items = items + torch.linalg.matrix_power(dense_item_graph(cfg, names), cfg.num_mm_layers) @ items
    return torch.cat(users_blocks, dim=1), items


def reference(model: MENTOR, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The fused view: final user and item embeddings."""
    cfg, names = model.cfg, tuple(model.features.names)
    modal = [convolve(x, cfg.num_layers) for x in encoder_inputs(params, "modal", model.features.matrices())]
    alpha = params.get("modality_weights")
    return view([h[:NUM_USERS] for h in modal], [h[NUM_USERS:] for h in modal], cfg, names, alpha)


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    logits = a @ b.T / temperature
    return -(logits.diag().exp() / logits.exp().sum(1)).log().mean()


def reference_loss(model: MENTOR, params: dict[str, Tensor]) -> Tensor:
    cfg, names = model.cfg, tuple(model.features.names)
    count, d = len(names), cfg.embedding_dim
    features = model.features.matrices()
    alpha = params.get("modality_weights")
    # the step's draws: a seed from the epoch generator, then a generator of that seed (the model's device: CPU)
    seed = int(torch.randint(2**62, (1,), generator=epoch_generator(SEED, EPOCH)))
    draws = torch.Generator().manual_seed(seed)

    modal = [convolve(x, cfg.num_layers) for x in encoder_inputs(params, "modal", features)]
    guide = convolve(encoder_inputs(params, "guide", [params["id_features"]])[0], cfg.num_layers)
    users, items = view([h[:NUM_USERS] for h in modal], [h[NUM_USERS:] for h in modal], cfg, names, alpha)
    u = users[BATCH.users]
    diff = (u * items[BATCH.pos_items]).sum(1) - (u * items[BATCH.neg_items]).sum(1)
    log = torch.log2 if cfg.log2_bpr else torch.log
    loss = -log(torch.sigmoid(diff)).mean()
    reg = sum(params[f"modal.preferences.{m}"][BATCH.users].pow(2).mean() for m in range(count))
    if alpha is not None:
        reg = reg + alpha.pow(2).mean()
    loss = loss + cfg.reg_weight * reg

    if cfg.mask_weight_g > 0:
        noise = [torch.rand(NUM_USERS + NUM_ITEMS, 2, count, d, generator=draws) for _ in range(cfg.num_layers)]
        perturbed = []
        for v in range(2):
            inputs = encoder_inputs(params, f"perturbed.{v}", features)
            hs = [convolve(x, cfg.num_layers, [n[:, v, m] for n in noise], cfg.perturb_eps)
                  for m, x in enumerate(inputs)]
            perturbed.append(view([h[:NUM_USERS] for h in hs], [h[NUM_USERS:] for h in hs], cfg, names, alpha))
        (u1, i1), (u2, i2) = perturbed
        loss = loss + cfg.mask_weight_g * (info_nce(u1, u2, cfg.temperature) + info_nce(i1, i2, cfg.temperature))

    if cfg.mask_weight_f > 0:
        with torch.set_grad_enabled(cfg.mask_gradient):
            keep = 1.0 - cfg.dropout
            masking = torch.zeros((), dtype=torch.float64)
            for x in (users, items):
                target = x.detach()
                if cfg.dropout > 0:
                    target = target * (torch.rand(x.shape, generator=draws) < keep) / keep
                online = x @ params["mask_mlp.0.weight"].T + params["mask_mlp.0.bias"]
                cosine = (target * online).sum(1) / (target.norm(dim=1) * online.norm(dim=1)).clamp_min(1e-8)
                masking = masking + 1.0 - cosine.mean()
        loss = loss + cfg.mask_weight_f * masking

    if cfg.align_weight > 0:
        views = [torch.cat([users, items])]
        for h in [*modal, guide]:  # each modality and the guide, repeated M times (users unweighted)
            repeated = view([h[:NUM_USERS]] * count, [h[NUM_USERS:]] * count, cfg, names, None)
            views.append(torch.cat(repeated))
        stats = [(x.mean(), x.var()) for x in views]
        align = sum((var_a - var_b).abs() + (mean_a - mean_b).abs()
                    for (mean_a, var_a), (mean_b, var_b) in itertools.combinations(stats, 2))
        assert len(stats) == count + 2
        loss = loss + cfg.align_weight * align
    return loss


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_mentor_fidelity_graph_embeddings_and_scores(protocol: str, names: tuple[str, ...],
                                                     overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    assert_close(model.mm_adj.to_dense(), dense_item_graph(model.cfg, names))
    users, items = reference(model, _params(model))
    got_users, got_items = model.embeddings()
    assert got_users.shape == (NUM_USERS, len(names) * model.cfg.embedding_dim)
    assert_close(got_users, users)
    assert_close(got_items, items)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_mentor_fidelity_loss_and_gradients(protocol: str, names: tuple[str, ...],
                                            overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    params = _params(model)
    expected = reference_loss(model, params)
    expected.backward()
    loss = model.loss(BATCH)
    loss.backward()
    assert_close(loss, expected)
    # the masking MLP without mask_gradient (or unused) gets no gradient, as in the reference
    assert_same_gradients(model, params, no_gradient=lambda name: params[name].grad is None)
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert bool(unused) <= model.has_unused_parameters, unused


def test_mentor_fidelity_randomness_is_per_seed_and_epoch() -> None:
    """The same (seed, epoch) replays a step's noise and dropout; another epoch or the next step draws anew."""
    model = _model("strict", ("image", "text"), {})
    first = model.loss(BATCH).item()
    second = model.loss(BATCH).item()  # the epoch generator moved on: a new step seed
    model.start_epoch(SEED, EPOCH)
    assert model.loss(BATCH).item() == first
    model.start_epoch(SEED, EPOCH + 1)
    other = model.loss(BATCH).item()
    assert len({first, second, other}) == 3
    # without perturbation and dropout the loss is deterministic
    quiet = _model("strict", ("image", "text"), {"perturb_eps": 0.0, "dropout": 0.0})
    values = {quiet.loss(BATCH).item() for _ in range(2)}
    quiet.start_epoch(SEED, EPOCH + 1)
    values.add(quiet.loss(BATCH).item())
    assert len(values) == 1


def test_mentor_fidelity_protocol_switches() -> None:
    strict, mmrec = _model("strict", ("image", "text"), {}), _model("mmrec", ("image", "text"), {})
    assert (strict.cfg.knn_self, strict.cfg.modality_weights, strict.cfg.log2_bpr) == (False, None, False)
    assert (strict.cfg.projection_init, strict.cfg.mask_gradient) == ("xavier", True)
    assert (mmrec.cfg.knn_self, mmrec.cfg.modality_weights, mmrec.cfg.log2_bpr) == (True, (0.1, 0.9), True)
    assert (mmrec.cfg.projection_init, mmrec.cfg.mask_gradient) == ("torch_default", False)
    assert not strict.has_unused_parameters and mmrec.has_unused_parameters
    defaults = MENTORConfig()
    assert (defaults.embedding_dim, defaults.knn_k, defaults.reg_weight, defaults.dropout) == (64, 10, 1e-3, 0.5)
    assert (defaults.mask_weight_f, defaults.mask_weight_g, defaults.align_weight, defaults.temperature) == (
        1.5, 1e-4, 0.1, 0.2)
    assert mmrec.modality_weights is not None
    assert math.isclose(float(mmrec.modality_weights.detach().sum(1).mean()), 1.0, rel_tol=1e-6)
    # reset_parameters is the one init site: re-seeding and resetting reproduces the built weights
    before = {name: p.detach().clone() for name, p in strict.named_parameters()}
    torch.manual_seed(0)
    strict.reset_parameters()
    assert all(torch.equal(p, before[name]) for name, p in strict.named_parameters())
    with pytest.raises(ValueError, match="modality_weights has 2 entries for 1 features"):
        _model("mmrec", ("text",), {})


def test_mentor_fidelity_blockwise_info_nce_over_many_rows() -> None:
    """The InfoNCE over all rows, computed block by block (3,000 rows: several blocks), is the dense one, with
    its gradients."""
    generator = torch.Generator().manual_seed(1)
    anchor, positive = torch.randn(3000, 8, generator=generator), torch.randn(3000, 8, generator=generator)
    a, p = anchor.double().requires_grad_(True), positive.double().requires_grad_(True)
    expected = info_nce(a, p, 0.3)
    expected.backward()
    anchor.requires_grad_(True)
    positive.requires_grad_(True)
    got = all_pairs_info_nce(anchor, positive, 0.3)
    got.backward()
    assert_close(got, expected)
    assert anchor.grad is not None and positive.grad is not None and a.grad is not None and p.grad is not None
    assert_close_grad(anchor.grad, a.grad, "anchor")
    assert_close_grad(positive.grad, p.grad, "positive")
