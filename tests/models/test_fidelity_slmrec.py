"""SLMRec against an independent dense reference written from the paper's equations and MMRec's ``slmrec.py``.

The reference reads the rmm model's parameters and recomputes everything in float64 with a dense normalised
adjacency, explicit layer sums, concatenations and softmax cross-entropies (no rmm model code, no rmm graph or
loss helper). The ``fd``/``fm`` augmentations are random: the reference replays the model's draws from the same
``(seed, epoch)`` generator in the documented order (the masked branch pair, then the seed of the dropout masks,
drawn view by view, branch by branch, layer by layer), and a statistical test checks the draws' distribution.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rmm.models.base import BPRBatch, epoch_generator
from rmm.models.hparams.slmrec import SLMRecConfig
from rmm.models.slmrec import SLMRec
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

#: Small sizes, visible self-supervised and L2 weights so that every term is compared.
SIZES = {"embedding_dim": 8, "num_layers": 2, "ssl_weight": 0.7, "ssl_temperature": 0.5}
#: A repeated user (3), a repeated positive (5) and the cold item 7 as a positive.
BATCH = BPRBatch(torch.tensor([0, 1, 3, 3, 5, 2]), torch.tensor([1, 4, 5, 7, 5, 0]), torch.tensor([7, 0, 1, 2, 3, 4]))
#: (protocol, features, explicit keys).
CASES = [("strict", ("image", "text"), {}),
         ("mmrec", ("image", "text"), {}),
         ("strict", ("image",), {"reg_weight": 0.3}),
         ("mmrec", ("image",), {"num_layers": 3}),
         ("strict", ("image", "text", "audio"), {"reg_weight": 0.2, "reg_norm": "frobenius"}),
         ("mmrec", ("image", "text", "audio"), {}),
         ("strict", ("image", "text"), {"ssl_task": "fd"}),
         ("mmrec", ("image", "text"), {"ssl_task": "fm"}),
         ("strict", ("text", "image", "audio"), {"ssl_task": "fd+fm", "dropout": 0.5}),
         ("mmrec", ("image",), {"ssl_task": "fd+fm", "reg_weight": 0.1}),
         ("strict", ("image", "text"), {"ssl_task": "fd", "dropout": 0.0})]
IDS = ["strict-fac", "mmrec-fac", "strict-fac-1mod-reg", "mmrec-fac-1mod", "strict-fac-3mod-frobenius",
       "mmrec-fac-3mod", "strict-fd", "mmrec-fm", "strict-fdfm-3mod", "mmrec-fdfm-1mod", "strict-fd-nodropout"]


def _features(names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    features = gaussian_features(NUM_ITEMS, seed=0)
    features["audio"] = torch.randn(NUM_ITEMS, 4, generator=torch.Generator().manual_seed(7))
    features["image"][6] = 0.0  # an item without an image vector
    return {name: features[name] for name in names}


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> SLMRec:
    entry = {"name": "slmrec", "features": list(names), **SIZES, **overrides}
    return seeded_model(SLMRec, entry, protocol, history_graph(HISTORY, NUM_USERS, NUM_ITEMS), _features(names))


# ------------------------------------------------------------------------------------------- dense reference


def reference_params(model: SLMRec) -> dict[str, torch.Tensor]:
    """Every named parameter of the model as a float64 leaf recording its gradient."""
    return {name: p.detach().double().requires_grad_() for name, p in model.named_parameters()}


def linear(p: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def reference_branches(p: dict[str, torch.Tensor], names: tuple[str, ...], cfg: SLMRecConfig,
                       masked: int | None = None, masks: list[torch.Tensor] | None = None,
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    r"""Per branch (ID, then each modality's :math:`W \bar{x} + b`, :math:`\bar{x}` L2-normalised, zeroed when
    ``masked``): the mean of layers 0..L of :math:`\hat{A}^l [E_U; X_I]`, each propagated layer multiplied by the
    next of ``masks`` / keep. Shapes: (U, d), (I, d) per branch."""
    adj = sym_normalized(dense_adjacency(history_pairs(HISTORY)))
    features = _features(names)
    inputs = [p["item_embedding.weight"]]
    for m, name in enumerate(names):
        x = features[name].double()
        norms = x.norm(dim=1, keepdim=True)
        unit = torch.where(norms > 0, x / norms.clamp_min(1e-300), 0.0)
        inputs.append(linear(p, f"projections.{m}", unit))
    pending = iter(masks or [])
    users, items = [], []
    for b, x in enumerate(inputs):
        layer = torch.cat([p["user_embedding.weight"], torch.zeros_like(x) if b == masked else x])
        layers = [layer]
        for _ in range(cfg.num_layers):
            layer = adj @ layer
            if masks is not None:
                layer = layer * next(pending) / (1 - cfg.dropout)
            layers.append(layer)
        final = torch.stack(layers).mean(0)
        users.append(final[:NUM_USERS])
        items.append(final[NUM_USERS:])
    return users, items


def fused(p: dict[str, torch.Tensor], users: list[torch.Tensor],
          items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return linear(p, "user_fusion", torch.cat(users, 1)), linear(p, "item_fusion", torch.cat(items, 1))


def cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log softmax at the diagonal."""
    return (torch.logsumexp(logits, 1) - logits.diagonal()).mean()


def cosine_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return cross_entropy(a @ b.T / temperature)


def reference_fac(p: dict[str, torch.Tensor], items: list[torch.Tensor], cfg: SLMRecConfig) -> torch.Tensor:
    r"""ID rows climb :math:`h_k = g_k(h_{k-1})`; modality m's space (level m, except that with 2+ modalities
    the last is the text space, one level higher when MMRec's audio space is kept) aligns :math:`h` with
    :math:`f_m(V^{m+1})` by raw dot products / :math:`\tau_{ssl}`. Widths d, ..., d, d/2 (checked by the
    weights' shapes)."""
    num_modalities, d = len(items) - 1, cfg.embedding_dim
    aligned = list(range(num_modalities))
    if num_modalities >= 2 and cfg.audio_level:
        aligned.insert(num_modalities - 1, -1)  # MMRec's audio space: passed through, nothing aligned
    h, total, head = items[0], torch.zeros((), dtype=torch.float64), 0
    for level, modality in enumerate(aligned):
        width = d // 2 if num_modalities >= 2 and level == len(aligned) - 1 else d
        assert p[f"id_heads.{level}.weight"].shape[0] == width
        h = linear(p, f"id_heads.{level}", h)
        if modality >= 0:
            z = linear(p, f"modality_heads.{head}", items[modality + 1])
            total = total + cross_entropy(h @ z.T / cfg.ssl_temperature)
            head += 1
    return total


def reference_loss(p: dict[str, torch.Tensor], names: tuple[str, ...], cfg: SLMRecConfig, batch: BPRBatch,
                   seed: int, epoch: int) -> torch.Tensor:
    users, items = reference_branches(p, names, cfg)
    u, v = fused(p, users, items)
    main = cosine_nce(u[batch.users], v[batch.pos_items], cfg.temperature)
    if cfg.ssl_task == "fac":
        ssl = reference_fac(p, [x[batch.pos_items] for x in items], cfg)
    else:
        generator = epoch_generator(seed, epoch)
        masked: list[int | None] = [None, None]
        if "fm" in cfg.ssl_task:
            masked = torch.randperm(len(names) + 1, generator=generator)[:2].tolist()
        view_masks: list[list[torch.Tensor] | None] = [None, None]
        if "fd" in cfg.ssl_task and cfg.dropout > 0:
            mask_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            shape = (NUM_USERS + NUM_ITEMS, cfg.embedding_dim)
            per_view = (len(names) + 1) * cfg.num_layers
            view_masks = [[(torch.rand(shape, generator=mask_generator) < 1 - cfg.dropout).double()
                           for _ in range(per_view)] for _ in range(2)]
        views = [fused(p, *reference_branches(p, names, cfg, masked[v], view_masks[v])) for v in range(2)]
        (u1, v1), (u2, v2) = views
        ssl = (cosine_nce(u1[batch.users], u2[batch.users], cfg.ssl_temperature)
               + cosine_nce(v1[batch.pos_items], v2[batch.pos_items], cfg.ssl_temperature))
    rows = [p["user_embedding.weight"][batch.users], p["item_embedding.weight"][batch.pos_items]]
    if cfg.reg_norm == "squared":
        reg = sum(r.pow(2).sum() for r in rows) / (2 * len(batch.users))
    else:
        reg = sum(r.pow(2).sum().sqrt() for r in rows) / len(batch.users)
    return main + cfg.ssl_weight * ssl + cfg.reg_weight * reg


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_slmrec_fidelity_embeddings_scores_loss_and_gradients(protocol: str, names: tuple[str, ...],
                                                              overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    cfg = model.cfg
    p = reference_params(model)

    users, items = fused(p, *reference_branches(p, names, cfg))
    model_users, model_items = model.embeddings()
    assert close(model_users, users) and close(model_items, items)
    assert close(model.scorer()(torch.arange(NUM_USERS)), users @ items.T)

    model.start_epoch(seed=3, epoch=5)
    loss = model(BATCH)
    loss.backward()
    expected = reference_loss(p, names, cfg, BATCH, seed=3, epoch=5)
    expected.backward()
    assert close(loss, expected), (loss.item(), expected.item())
    for name, param in model.named_parameters():
        expected_grad = p[name].grad
        assert param.grad is not None and expected_grad is not None and close(param.grad, expected_grad), name
    assert not model.has_unused_parameters


@pytest.mark.slow  # hundreds of sampled epochs
def test_slmrec_fidelity_augmentation_draws() -> None:
    """Over 600 epochs ``fm`` masks each ordered pair of distinct branches (3 branches: 6 pairs) about equally
    often, and ``fd`` keeps each embedding entry with probability 1 - dropout (within 4.5 standard errors)."""
    model = _model("strict", ("image", "text"), {"ssl_task": "fd+fm", "dropout": 0.3})
    counts: dict[tuple[int, ...], int] = {}
    seen: list[torch.Tensor] = []
    kept = [0.0, 0.0]  # entries kept, entries drawn
    original = model.encode

    def spy(inputs: list[torch.Tensor], drop: Any = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        seen.append(torch.tensor([bool((x == 0).all()) for x in inputs]))  # which branch input is zeroed
        if drop is not None and len(seen) == 2:  # the first view: one extra mask drawn on ones
            ones = drop(torch.ones(NUM_USERS + NUM_ITEMS, 8))
            kept[0], kept[1] = kept[0] + float((ones > 0).sum()), kept[1] + ones.numel()
        return original(inputs, drop)

    model.encode = spy  # type: ignore[method-assign]
    draws = 600
    for epoch in range(draws):
        model.start_epoch(seed=1, epoch=epoch)
        seen.clear()
        with torch.no_grad():
            model(BATCH)
        masked = tuple(int(view.nonzero()[0]) for view in seen[1:])  # seen[0]: the unaugmented main pass
        counts[masked] = counts.get(masked, 0) + 1
    assert sorted(counts) == [(a, b) for a in range(3) for b in range(3) if a != b]
    share = torch.tensor(list(counts.values()), dtype=torch.float64) / draws
    assert ((share - 1 / 6).abs() / (1 / 6 * 5 / 6 / draws) ** 0.5).max() < 4.5, counts
    rate = kept[0] / kept[1]
    assert abs(rate - 0.7) / (0.7 * 0.3 / kept[1]) ** 0.5 < 4.5, rate


def test_slmrec_protocol_switches_and_draw_replay() -> None:
    strict, mmrec = _model("strict", ("image", "text"), {}), _model("mmrec", ("image", "text"), {})
    assert not strict.cfg.audio_level and mmrec.cfg.audio_level
    assert [w for w, _ in strict.levels] == [8, 4] and [w for w, _ in mmrec.levels] == [8, 8, 4]
    assert SLMRecConfig().ssl_task == "fac" and SLMRecConfig().temperature == 0.2
    model = _model("strict", ("image",), {"ssl_task": "fd"})
    model.start_epoch(seed=2, epoch=0)
    first = model(BATCH)
    model.start_epoch(seed=2, epoch=0)
    assert torch.equal(model(BATCH), first)  # the same (seed, epoch) replays the same views
    model.start_epoch(seed=2, epoch=1)
    assert not torch.equal(model(BATCH), first)
    with pytest.raises(ValueError, match="ssl_task"):
        SLMRecConfig(ssl_task="FAC")
