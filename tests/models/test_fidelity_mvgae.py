"""MVGAE against an independent dense float64 reference of its equations (Yi & Chen, TMM 2021, as the authors'
and MMRec's code compute them): embeddings, full-ranking scores, loss and gradients on a tiny graph, with the
dropout masks and reparameterisation noise replayed from the epoch generator."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from rmm.config import build_model_config
from rmm.models.base import BPRBatch, epoch_generator
from rmm.models.mvgae import MVGAE
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
)

N = NUM_USERS + NUM_ITEMS
BATCH = BPRBatch(users=torch.tensor([0, 1, 2, 3, 4, 5, 1]), pos_items=torch.tensor([0, 3, 6, 4, 1, 2, 4]),
                 neg_items=torch.tensor([7, 0, 1, 2, 6, 3, 7]))
#: What each protocol must build: MMRec keeps the preferences and collaborative input fixed, its loss reads
#: node row i (not num_users + i) for item i, and it decodes and scores the sigmoid of the latents.
SPEC: dict[str, dict[str, Any]] = {"strict": {"frozen": False, "offset": NUM_USERS, "squash": False},
                                   "mmrec": {"frozen": True, "offset": 0, "squash": True}}
SEED, EPOCH = 5, 2


def _features(modalities: int = 2) -> dict[str, Tensor]:
    return dict(list(gaussian_features(NUM_ITEMS, seed=3).items())[:modalities])


def _model(protocol: str, modalities: int = 2, **params: Any) -> MVGAE:
    features = _features(modalities)
    return seeded_model(MVGAE, {"name": "mvgae", "features": list(features), "embedding_dim": 6, "latent_dim": 5,
                                **params}, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS), features)


def _params(model: MVGAE) -> dict[str, Tensor]:
    return {name: p.detach().double().requires_grad_(p.requires_grad) for name, p in model.named_parameters()}


def _lrelu(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.01 * x)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class Replay:
    """The model's random stream, drawn in its documented order: float32 CPU draws, used in float64."""

    def __init__(self, seed: int, epoch: int) -> None:
        self.generator = epoch_generator(seed, epoch)

    def mask(self, shape: torch.Size, p: float) -> Tensor:
        return (torch.rand(shape, generator=self.generator) >= p).double() / (1 - p)

    def noise(self, shape: torch.Size) -> Tensor:
        return torch.randn(shape, generator=self.generator).double()


def reference_expert(p: dict[str, Tensor], k: int, items: Tensor, layers: int, dropout: float,
                     replay: Replay | None) -> tuple[Tensor, Tensor]:
    """Expert k's encoder: mean over neighbours and self, row L2 normalisation, dropout, leaky ReLU."""
    adj = dense_adjacency(history_pairs(HISTORY)) + torch.eye(N, dtype=torch.float64)
    mean_adj = adj / adj.sum(1, keepdim=True)

    def w(name: str) -> tuple[Tensor, Tensor]:
        return p[f"experts.{k}.{name}.weight"], p[f"experts.{k}.{name}.bias"]

    def conv(name: str, x: Tensor) -> Tensor:
        weight, bias = w(name)
        out = _unit(mean_adj @ x @ weight.T + bias)  # bias after the mean: rows of mean_adj sum to 1
        if replay is not None:
            out = out * replay.mask(out.shape, dropout)
        return _lrelu(out)

    mlp_w, mlp_b = w("mlp")
    x = _unit(torch.cat([p[f"experts.{k}.preference"], items @ mlp_w.T + mlp_b]))
    for layer in range(layers):
        cw, cb = w(f"combine.{layer}")
        x = _lrelu(conv(f"conv.{layer}", x) @ cw.T + cb)
    heads = []
    for head in range(2):  # mean, then log-variance
        cw, cb = w(f"combine.{layers + head}")
        sw, sb = w(f"skip.{head}")
        heads.append(conv(f"conv.{layers + head}", x) @ cw.T + cb + _lrelu(x @ sw.T + sb))
    return heads[0], heads[1]


def reference_poe(mus: list[Tensor], logvars: list[Tensor]) -> tuple[Tensor, Tensor]:
    precision = [1 / (torch.exp(lv) + 1e-8) for lv in logvars]
    total = torch.stack(precision).sum(0)
    fused = torch.stack([m * t for m, t in zip(mus, precision, strict=True)]).sum(0) / total
    return fused, torch.log(1 / total)


def reference_gaussians(p: dict[str, Tensor], modalities: int, layers: int, dropout: float,
                        replay: Replay | None) -> list[tuple[Tensor, Tensor]]:
    """[fused, modality experts..., collaborative]."""
    inputs = [x.double() for x in _features(modalities).values()] + [p["collaborative"]]
    experts = [reference_expert(p, k, x, layers, dropout, replay) for k, x in enumerate(inputs)]
    modal = reference_poe([mu for mu, _ in experts[:-1]], [lv for _, lv in experts[:-1]])
    fused = reference_poe([modal[0], experts[-1][0]], [modal[1], experts[-1][1]])
    return [fused, *experts]


def reference_recon(z: Tensor, protocol: str, paired: bool = False) -> Tensor:
    """MMRec's ``recon_loss`` literally (its amazon branch squashes the latents), items read at ``offset + i``."""
    offset = SPEC[protocol]["offset"]
    z = torch.sigmoid(z) if SPEC[protocol]["squash"] else z
    users, pos, neg = BATCH.users, BATCH.pos_items + offset, BATCH.neg_items + offset
    pos_scores = torch.sigmoid(torch.sum(z[users] * z[pos], dim=1))
    re_users = users.unsqueeze(1).repeat(1, neg.size(0))
    neg_scores = torch.sigmoid(torch.sum(z[re_users] * z[neg], -1).max(dim=-1).values)
    if paired:  # each positive against its own negative
        neg_scores = torch.sigmoid(torch.sum(z[users] * z[neg], dim=1))
    return -torch.sum(torch.log2(torch.sigmoid(pos_scores - neg_scores)))


def reference_loss(p: dict[str, Tensor], protocol: str, modalities: int = 2, *, layers: int = 1, beta: float = 0.1,
                   dropout: float = 0.1, scale: float = 0.1, sample: bool = True, paired: bool = False) -> Tensor:
    replay = Replay(SEED, EPOCH) if sample else None
    gaussians = reference_gaussians(p, modalities, layers, dropout, replay)
    total = torch.zeros((), dtype=torch.float64)
    for mu, logvar in gaussians:
        logvar_c = logvar.clamp(max=10)
        z = mu + scale * replay.noise(mu.shape) * torch.exp(0.5 * logvar_c) if replay is not None else mu
        kl = -0.5 * torch.mean(torch.sum(1 + logvar_c - mu ** 2 - logvar_c.exp(), dim=1))
        total = total + reference_recon(z, protocol, paired) + beta * kl
    return total


@pytest.mark.parametrize("modalities", [1, 2])
@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_mvgae_embeddings_and_scores(protocol: str, modalities: int) -> None:
    model = _model(protocol, modalities)
    mu, _ = reference_gaussians(_params(model), modalities, 1, 0.1, None)[0]
    expected = torch.sigmoid(mu) if SPEC[protocol]["squash"] else mu

    users, items = model.embeddings()
    assert_close(torch.cat([users, items]), expected)
    assert_close(model.scorer()(torch.arange(NUM_USERS)), expected[:NUM_USERS] @ expected[NUM_USERS:].T)


@pytest.mark.parametrize(("modalities", "layers"), [(2, 1), (1, 2)])
@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_mvgae_sampled_loss_and_gradients(protocol: str, modalities: int, layers: int) -> None:
    """Training mode: dropout masks and noise replayed from the (seed, epoch) generator."""
    model = _model(protocol, modalities, num_layers=layers, beta=0.5, dropout=0.2, noise_scale=0.3)
    params = _params(model)
    expected = reference_loss(params, protocol, modalities, layers=layers, beta=0.5, dropout=0.2, scale=0.3)
    expected.backward()

    model.start_epoch(SEED, EPOCH)
    loss = model.loss(BATCH)
    loss.backward()
    assert_close(loss, expected)
    frozen = {"collaborative", *(f"experts.{k}.preference" for k in range(modalities + 1))}
    for name, p in model.named_parameters():
        if SPEC[protocol]["frozen"] and name in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            expected_grad = params[name].grad
            assert p.grad is not None and expected_grad is not None, name
            assert_close_grad(p.grad, expected_grad, name)


@pytest.mark.parametrize("negatives", ["batch_hardest", "paired"])
@pytest.mark.parametrize("protocol", ["strict", "mmrec"])
def test_fidelity_mvgae_deterministic_loss_in_eval_mode(protocol: str, negatives: str) -> None:
    """Without sampling (eval mode) the latents are the means and no dropout applies."""
    model = _model(protocol, negatives=negatives)
    model.eval()
    expected = reference_loss(_params(model), protocol, sample=False, paired=negatives == "paired")
    assert_close(model.loss(BATCH), expected)


def test_mvgae_randomness_is_per_epoch_and_replayable() -> None:
    model = _model("strict")
    losses: dict[int, list[float]] = {}
    for epoch in (1, 2, 1):
        model.start_epoch(SEED, epoch)
        losses.setdefault(epoch, []).append(model.loss(BATCH).item())
    assert losses[1][0] == losses[1][1] != losses[2][0]


def test_mvgae_protocol_defaults_and_explicit_values() -> None:
    mmrec = build_model_config({"name": "mvgae", "features": ["image"]}, "model[0]", "mmrec").params
    strict = build_model_config({"name": "mvgae", "features": ["image"]}, "model[0]").params
    assert (mmrec.train_embeddings, mmrec.loss_item_rows, mmrec.sigmoid_latents) == (False, "raw_ids", True)
    assert (strict.train_embeddings, strict.loss_item_rows, strict.sigmoid_latents) == (True, "items", False)
    assert (strict.embedding_dim, strict.latent_dim, strict.num_layers, strict.beta) == (64, 128, 1, 0.1)
    explicit = build_model_config({"name": "mvgae", "features": ["image"], "loss_item_rows": "items"},
                                  "model[0]", "mmrec").params
    assert explicit.loss_item_rows == "items"
