"""Profile matching against an independent dense reference written from its docstring's equations.

MMRec has no profile model, so ``protocol: mmrec`` must give the same config and the same scores as ``strict``.
The reference averages the (optionally unit-length) history vectors of every user and takes plain cosines in
float64, with 0 for a zero profile or a zero item row; no rmm graph or model code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from rmm.config import build_model_config
from rmm.data.graph import TrainGraph
from rmm.models.profile import ProfileMatching
from tests.models.history import seeded_model

NUM_USERS, NUM_ITEMS = 6, 8
#: User 5 has no train item (scores 0 everywhere); user 4's only items include 3, which has no image vector.
HISTORY = {0: [0, 1, 2, 5], 1: [1, 3, 4, 7], 2: [0, 2, 6, 4], 3: [3, 4, 5, 6], 4: [3, 1, 6, 2]}
CASES = [("strict", ("image",), {}), ("strict", ("image", "text"), {}),
         ("mmrec", ("image",), {}), ("mmrec", ("image", "text"), {}),
         ("strict", ("image", "text"), {"normalize_items": False}),
         ("mmrec", ("image", "text"), {"normalize_items": False})]
IDS = ["strict-image", "strict-both", "mmrec-image", "mmrec-both", "strict-raw", "mmrec-raw"]


def _graph() -> TrainGraph:
    pairs = sorted((u, i) for u, items in HISTORY.items() for i in items)
    return TrainGraph(NUM_USERS, NUM_ITEMS, users=torch.tensor([u for u, _ in pairs]),
                      items=torch.tensor([i for _, i in pairs]))


def _features() -> dict[str, torch.Tensor]:
    """Rows of very different norms (so normalising the items matters); item 3 has no image vector."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.1, 10.0, NUM_ITEMS)[torch.randperm(NUM_ITEMS, generator=generator)].unsqueeze(1)
    features = {"image": scale * torch.randn(NUM_ITEMS, 5, generator=generator),
                "text": scale * torch.randn(NUM_ITEMS, 3, generator=generator)}
    features["image"][3] = 0.0
    return features


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> ProfileMatching:
    features = _features()
    entry = {"name": "profile", "features": list(names), **overrides}
    return seeded_model(ProfileMatching, entry, protocol, _graph(), {n: features[n] for n in names})


# ------------------------------------------------------------------------------------------- dense reference


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of every row of ``a`` with every row of ``b``, 0 where either is zero.

    Shapes: (A, d), (B, d) -> (A, B)."""
    norms = a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]
    return torch.where(norms > 0, a @ b.T / torch.where(norms > 0, norms, 1.0), 0.0)


def reference_scores(names: tuple[str, ...], normalize_items: bool) -> torch.Tensor:
    r""":math:`\hat{y}_{ui} = \frac{1}{M}\sum_m \cos(p^m_u, x^m_i)`, :math:`p^m_u` the mean of the user's
    history vectors (unit-length ones with ``normalize_items``). Shapes: (U, I) float64."""
    total = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=torch.float64)
    for name in names:
        x = _features()[name].double()
        history_x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300) if normalize_items else x
        profiles = torch.zeros(NUM_USERS, x.shape[1], dtype=torch.float64)
        for user, items in HISTORY.items():
            profiles[user] = history_x[items].sum(0) / len(items)
        total += cosine(profiles, x)
    return total / len(names)


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_fidelity_profile_scores_match_the_docstring_equations(protocol: str, names: tuple[str, ...],
                                                               overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    expected = reference_scores(names, model.cfg.normalize_items)
    scores = model.scorer()(torch.arange(NUM_USERS))
    assert scores.shape == (NUM_USERS, NUM_ITEMS)
    assert torch.allclose(scores.double(), expected, atol=1e-5)
    assert torch.equal(scores[5], torch.zeros(NUM_ITEMS))  # no history
    if names == ("image",):
        assert torch.equal(scores[:, 3], torch.zeros(NUM_USERS))  # no vector


def test_fidelity_profile_mmrec_protocol_is_strict() -> None:
    configs = {protocol: build_model_config({"name": "profile", "features": ["image"]}, "model[0]", protocol)
               for protocol in ("strict", "mmrec")}
    assert dataclasses.asdict(configs["mmrec"].params) == dataclasses.asdict(configs["strict"].params)
    raw = reference_scores(("image", "text"), normalize_items=False)
    assert not torch.allclose(raw, reference_scores(("image", "text"), normalize_items=True), atol=1e-3)
