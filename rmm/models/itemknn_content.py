"""Item-kNN on content: a user's score for an item is its content similarity to the user's history items."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from rmm.config import require_at_least
from rmm.data.graph import KNNSpec, TrainGraph, combine_graphs, to_csr
from rmm.models.base import DEFAULT_FUSION, TrainingFreeRecommender, register


@dataclass(frozen=True)
class ItemKNNContentConfig:
    """MMRec's ``ItemKNNCBF.yaml``: 10 neighbours per item, cosine shrinkage 10."""

    knn_k: int = 10
    shrink: float = 10.0

    def __post_init__(self) -> None:
        require_at_least(self, 1, "knn_k")
        require_at_least(self, 0, "shrink")


@register("itemknn_content")
class ItemKNNContent(TrainingFreeRecommender):
    r"""Content-based item kNN (ItemKNNCBF in Ferrari Dacrema et al., `Are We Really Making Much Progress? A
    Worrying Analysis of Recent Neural Recommendation Approaches <https://arxiv.org/abs/1907.06902>`_,
    RecSys 2019; MMRec's ``ItemKNNCBF``), training-free.

    .. math:: \hat{y}_{ui} = \sum_{j \in N(u)} S_{ji}, \qquad
              S = \frac{1}{M} \sum_m \mathrm{topk}_k\Big(\frac{x^m_j \cdot x^m_i}
                  {\lVert x^m_j\rVert \lVert x^m_i\rVert + s}\Big)

    Each modality gets its own sparse top-k graph (an item is never its own neighbour) and the graphs are
    averaged; MMRec concatenates the modalities instead, which lets the one with the larger norm dominate.

    Shapes:
        similarity_t: sparse (I, I), the transposed average graph; scores: (B, I).
    """

    config_class = ItemKNNContentConfig

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: ItemKNNContentConfig, *,
                 fusion: str = DEFAULT_FUSION, item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        graphs = self.build_item_graphs(features, item_graphs)
        similarity = combine_graphs(graphs, [1.0 / len(graphs)] * len(graphs))
        self.register_buffer("similarity_t", to_csr(similarity.t()), persistent=False)
        self.history = graph.user_items()

    @classmethod
    def item_graph_spec(cls, cfg: ItemKNNContentConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", shrink=cfg.shrink, normalization="none")

    def score_users(self, users: Tensor) -> Tensor:
        history = self.history.mask(users).to(device=self.similarity_t.device, dtype=torch.float32)  # (B, I)
        return torch.sparse.mm(self.similarity_t, history.T).T  # (B, I): R_B S
