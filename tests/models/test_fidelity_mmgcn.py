"""MMGCN against an independent dense reference of the paper's equations (Wei et al., MM 2019) and, under
``protocol: mmrec``, of MMRec's code: embeddings, full-ranking scores, loss and gradients, on a tiny graph."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from rmm.config import ConfigError, build_model_config
from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch
from rmm.models.mmgcn import MMGCN
from tests.models.history import (
    INTERACTIONS,
    NUM_ITEMS,
    NUM_USERS,
    dense_adjacency,
    gaussian_features,
    history_graph,
    history_pairs,
    seeded_model,
)

BATCH = BPRBatch(users=torch.tensor([0, 1, 2, 3, 4, 5, 1, 5]), pos_items=torch.tensor([2, 3, 4, 6, 5, 0, 1, 3]),
                 neg_items=torch.tensor([7, 0, 1, 5, 7, 2, 6, 4]))
#: What each protocol must build: MMRec's code runs 3 layers, concatenates (``concate='False'`` is a true
#: string), projects only its visual (first) branch, never trains the ID embeddings or preferences, and
#: regularises with the element mean of squares.
SPEC: dict[str, dict[str, Any]] = {
    "strict": {"layers": 2, "concat": False, "project": (True, True), "frozen": False, "reg": "batch"},
    "mmrec": {"layers": 3, "concat": True, "project": (True, False), "frozen": True, "reg": "mmrec"},
}
FROZEN = ("id_embedding", "branches.0.preference", "branches.1.preference")


def _graph() -> TrainGraph:
    return history_graph(INTERACTIONS, NUM_USERS, NUM_ITEMS)


def _features() -> dict[str, Tensor]:
    return gaussian_features(NUM_ITEMS, seed=7)


def _model(protocol: str, **params: Any) -> MMGCN:
    return seeded_model(MMGCN, {"name": "mmgcn", "features": ["image", "text"], **params}, protocol, _graph(),
                        _features())


def _lrelu(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.01 * x)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _params(model: MMGCN, *, requires_grad: bool = False) -> dict[str, Tensor]:
    return {name: p.detach().double().requires_grad_(requires_grad and p.requires_grad)
            for name, p in model.named_parameters()}


def reference_representation(params: dict[str, Tensor], spec: dict[str, Any]) -> Tensor:
    """Eqs. 1-7 per modality with mean aggregation, then the branches' mean: dense (U+I, d)."""
    adj = dense_adjacency(history_pairs(INTERACTIONS))
    mean_adj = adj / adj.sum(1, keepdim=True).clamp_min(1)  # isolated nodes aggregate nothing
    ids = params["id_embedding"]
    outputs = []
    for m, feature in enumerate(_features().values()):
        p = {name.split(".", 2)[2]: value for name, value in params.items() if name.startswith(f"branches.{m}.")}
        feature = feature.double()
        projected = feature @ p["mlp.weight"].T + p["mlp.bias"] if spec["project"][m] else feature
        x = _unit(torch.cat([p["preference"], projected]))
        for layer in range(spec["layers"]):
            h = _lrelu(mean_adj @ (x @ p[f"conv.{layer}.weight"].T))  # Eq. 1, f_avg
            x_hat = _lrelu(x @ p[f"linear.{layer}.weight"].T + p[f"linear.{layer}.bias"]) + ids  # Eq. 5
            weight, bias = p[f"combine.{layer}.weight"], p[f"combine.{layer}.bias"]
            if spec["concat"]:
                x = _lrelu(torch.cat([h, x_hat], dim=1) @ weight.T + bias)  # Eq. 6, g_co
            else:
                x = _lrelu(h @ weight.T + bias + x_hat)  # Eq. 7, g_ele
        outputs.append(x)
    return sum(outputs) / len(outputs)


def reference_loss(params: dict[str, Tensor], spec: dict[str, Any], reg_weight: float) -> Tensor:
    rep = reference_representation(params, spec)
    ids, prefs = params["id_embedding"], [params["branches.0.preference"], params["branches.1.preference"]]
    if spec["reg"] == "mmrec":  # MMRec's calculate_loss, literally
        user_tensor = BATCH.users.repeat_interleave(2)
        item_tensor = torch.stack([BATCH.pos_items, BATCH.neg_items]).t().reshape(-1) + NUM_USERS
        score = (rep[user_tensor] * rep[item_tensor]).sum(1).view(-1, 2)
        ranking = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]], dtype=torch.float64))).mean()
        reg = (ids[user_tensor] ** 2 + ids[item_tensor] ** 2).mean() + (prefs[0] ** 2).mean()
        return ranking + reg_weight * reg
    users, items = rep[BATCH.users], rep[NUM_USERS:]
    gap = (users * items[BATCH.pos_items]).sum(1) - (users * items[BATCH.neg_items]).sum(1)
    rows = [ids[BATCH.users], ids[NUM_USERS + BATCH.pos_items], ids[NUM_USERS + BATCH.neg_items],
            *(pref[BATCH.users] for pref in prefs)]
    reg = sum((row ** 2).sum() for row in rows) / (2 * len(BATCH.users))
    return -torch.log(torch.sigmoid(gap)).mean() + reg_weight * reg


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_mmgcn_embeddings_and_scores(protocol: str) -> None:
    model, spec = _model(protocol), SPEC[protocol]
    expected = reference_representation(_params(model), spec)

    users, items = model.embeddings()
    assert torch.allclose(torch.cat([users, items]).double(), expected, atol=1e-5)
    scores = model.scorer()(torch.arange(NUM_USERS)).double()
    assert torch.allclose(scores, expected[:NUM_USERS] @ expected[NUM_USERS:].T, atol=1e-5)
    assert len(model.branches[0].conv) == spec["layers"]
    assert (model.branches[1].mlp is not None) == spec["project"][1]
    if not spec["project"][1]:  # MMRec's text branch: preferences at the raw feature width
        assert model.branches[1].preference.shape == (NUM_USERS, 3)


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_mmgcn_loss_and_gradients(protocol: str) -> None:
    model, spec = _model(protocol, reg_weight=0.1), SPEC[protocol]  # a large weight: the regulariser shows
    params = _params(model, requires_grad=True)
    expected = reference_loss(params, spec, 0.1)
    expected.backward()

    loss = model.loss(BATCH)
    loss.backward()
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    for name, p in model.named_parameters():
        frozen = spec["frozen"] and name in FROZEN
        assert p.requires_grad != frozen, name
        if frozen:
            assert p.grad is None, name
        else:
            assert torch.allclose(p.grad.double(), params[name].grad, atol=1e-6, rtol=1e-4), name
    assert not any(name.startswith("features") for name, _ in model.named_parameters())  # frozen inputs


@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_mmgcn_after_a_training_step(protocol: str) -> None:
    """One Adam step: every trained weight moves, MMRec's frozen tables do not, and the model still matches."""
    model, spec = _model(protocol), SPEC[protocol]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.loss(BATCH).backward()
    optimizer.step()

    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved != (spec["frozen"] and name in FROZEN), name
    users, items = model.embeddings()
    assert torch.allclose(torch.cat([users, items]).double(), reference_representation(_params(model), spec),
                          atol=1e-5)


def test_mmgcn_protocol_defaults_and_explicit_values() -> None:
    mmrec = build_model_config({"name": "mmgcn", "features": ["image"]}, "model[0]", "mmrec").params
    assert (mmrec.embedding_dim, mmrec.latent_dim, mmrec.num_layers, mmrec.combination, mmrec.combine_init,
            mmrec.reg_norm) == (64, 256, 3, "concat", "torch_default", "squared")
    explicit = build_model_config({"name": "mmgcn", "features": ["image"], "num_layers": 2, "combination": "sum"},
                                  "model[0]", "mmrec").params
    assert (explicit.num_layers, explicit.combination) == (2, "sum")
    with pytest.raises(ConfigError, match="combination must be one of"):
        build_model_config({"name": "mmgcn", "features": ["image"], "combination": "max"}, "model[0]")


def test_mmgcn_later_combination_layers_keep_torch_init_under_mmrec() -> None:
    """MMRec Xavier-initialises only ``g_layer1``: later combination weights stay within ``nn.Linear``'s
    Kaiming-uniform bound ``1 / sqrt(fan_in)``, where Xavier-normal draws exceed it."""
    for protocol, inside in (("mmrec", True), ("strict", False)):
        layer = _model(protocol, embedding_dim=16).branches[0].combine[1]
        bound = layer.weight.shape[1] ** -0.5
        assert bool((layer.weight.abs() <= bound).all()) == inside, protocol
