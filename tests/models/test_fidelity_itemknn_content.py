"""ItemKNN-content against an independent dense reference written from ItemKNNCBF's equations and MMRec's
``itemknncbf.py``.

The reference builds the full dense similarity :math:`x_j \\cdot x_i / (\\lVert x_j\\rVert \\lVert x_i\\rVert + s)`
(MMRec's ``build_item_sim_matrix``), keeps every row's top k with ``torch.topk`` (diagonal included for
``knn_self``, as MMRec; excluded for rmm's strict form, where an item without a vector is masked out), averages
the per-modality graphs or builds one of the concatenated features, and scores :math:`R S`; no rmm graph or model
code. Row scales vary, so the own similarity :math:`\\lVert x\\rVert^2 / (\\lVert x\\rVert^2 + s)` wins its row's
top k for some items and not for others.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rmm.config import build_model_config
from rmm.data.graph import TrainGraph
from rmm.models.itemknn_content import ItemKNNContent
from tests.models.history import HISTORY, NUM_ITEMS, NUM_USERS, history_graph, seeded_model

K = 3
#: What each protocol sets (``knn_k`` is given explicitly: MMRec's 10 exceeds this catalogue).
SWITCHES = {"strict": {"knn_self": False, "modality_merge": "graph_mean", "shrink": 10.0},
            "mmrec": {"knn_self": True, "modality_merge": "feature_concat", "shrink": 10.0}}
#: (protocol, features, explicit keys): both protocols on one and two modalities, and the switches crossed.
CASES = [("strict", ("image",), {}), ("strict", ("image", "text"), {}),
         ("mmrec", ("image",), {}), ("mmrec", ("image", "text"), {}),
         ("strict", ("image", "text"), {"knn_self": True}), ("strict", ("image", "text"), {"shrink": 0.0}),
         ("mmrec", ("image", "text"), {"modality_merge": "graph_mean"}),
         ("mmrec", ("image", "text"), {"knn_self": False})]
IDS = ["strict-image", "strict-both", "mmrec-image", "mmrec-both", "strict-self", "strict-no-shrink",
       "mmrec-graph-mean", "mmrec-no-self"]


def _graph() -> TrainGraph:
    return history_graph(HISTORY, NUM_USERS, NUM_ITEMS)


def _features() -> dict[str, torch.Tensor]:
    """Rows of norms from ~0.5 to ~10 against shrink 10; item 3 has no image vector."""
    generator = torch.Generator().manual_seed(2)
    scale = torch.linspace(0.2, 4.0, NUM_ITEMS)[torch.randperm(NUM_ITEMS, generator=generator)].unsqueeze(1)
    features = {"image": scale * torch.randn(NUM_ITEMS, 5, generator=generator),
                "text": scale * torch.randn(NUM_ITEMS, 3, generator=generator)}
    features["image"][3] = 0.0
    return features


def _model(protocol: str, names: tuple[str, ...], overrides: dict[str, Any]) -> ItemKNNContent:
    features = _features()
    entry = {"name": "itemknn_content", "features": list(names), "knn_k": K, **overrides}
    return seeded_model(ItemKNNContent, entry, protocol, _graph(), {n: features[n] for n in names})


# ------------------------------------------------------------------------------------------- dense reference


def reference_graph(x: torch.Tensor, k: int, shrink: float, with_self: bool) -> torch.Tensor:
    r"""Row j: the top k of :math:`C_{ji} = x_j \cdot x_i / (\lVert x_j\rVert \lVert x_i\rVert + s)`, the rest 0.
    Items without a vector neither have nor are neighbours. Shapes: (I, d) -> (I, I) float64."""
    x = x.double()
    norms = x.norm(dim=1)
    sim = x @ x.T / (norms[:, None] * norms[None, :] + shrink)
    valid = norms > 0
    sim[~valid, :] = -torch.inf
    sim[:, ~valid] = -torch.inf
    if not with_self:
        sim.fill_diagonal_(-torch.inf)
    values, columns = torch.topk(sim, k, dim=1)
    graph = torch.zeros_like(sim)
    for row in range(len(x)):
        for value, column in zip(values[row], columns[row], strict=True):
            if torch.isfinite(value):
                graph[row, column] = value
    return graph


def reference_scores(names: tuple[str, ...], k: int, shrink: float, with_self: bool, merge: str) -> torch.Tensor:
    r""":math:`\hat{y}_{ui} = \sum_{j \in N(u)} S_{ji}`: S the mean of the modalities' graphs, or the graph of the
    concatenated modalities. Shapes: (U, I) float64."""
    features = [_features()[name] for name in names]
    if merge == "feature_concat":
        similarity = reference_graph(torch.cat(features, dim=1), k, shrink, with_self)
    else:
        similarity = sum(reference_graph(x, k, shrink, with_self) for x in features) / len(features)
    history = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=torch.float64)
    for user, items in HISTORY.items():
        history[user, items] = 1.0
    return history @ similarity


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("protocol", "names", "overrides"), CASES, ids=IDS)
def test_fidelity_itemknn_content_scores_match_the_dense_reference(protocol: str, names: tuple[str, ...],
                                                                   overrides: dict[str, Any]) -> None:
    model = _model(protocol, names, overrides)
    cfg = model.cfg
    for name, value in {**SWITCHES[protocol], **overrides, "knn_k": K}.items():
        assert getattr(cfg, name) == value, name
    expected = reference_scores(names, K, cfg.shrink, cfg.knn_self, cfg.modality_merge)
    scores = model.scorer()(torch.arange(NUM_USERS))
    assert scores.shape == (NUM_USERS, NUM_ITEMS)
    assert torch.allclose(scores.double(), expected, atol=1e-5)


def test_fidelity_itemknn_content_self_similarity_competes_for_the_top_k() -> None:
    """The case the test data must cover: an item's own similarity is in its top k for some items (MMRec keeps
    k - 1 others) and not for others (a high-norm neighbour beats a low-norm item's own shrunk similarity)."""
    x = torch.cat(list(_features().values()), dim=1)
    with_self = reference_graph(x, K, 10.0, with_self=True)
    self_kept = with_self.diagonal() != 0
    assert 0 < int(self_kept.sum()) < NUM_ITEMS
    others = reference_graph(x, K, 10.0, with_self=False)
    assert not torch.equal(with_self.fill_diagonal_(0.0), others)  # self-edges displace neighbours


def test_fidelity_itemknn_content_mmrec_concatenation_takes_no_prebuilt_graph() -> None:
    cfg = build_model_config({"name": "itemknn_content", "features": ["image"]}, "model[0]", "mmrec").params
    assert ItemKNNContent.item_graph_spec(cfg) is None
    strict = build_model_config({"name": "itemknn_content", "features": ["image"]}, "model[0]", "strict").params
    assert ItemKNNContent.item_graph_spec(strict) is not None
