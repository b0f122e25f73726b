"""Item-kNN on content: a user's score for an item is its content similarity to the user's history items."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from rmm.data.graph import KNNSpec, TrainGraph, combine_graphs, to_csr
from rmm.models.base import TrainingFreeRecommender
from rmm.models.hparams.itemknn_content import ItemKNNContentConfig
from rmm.models.registry import register


@register("itemknn_content")
class ItemKNNContent(TrainingFreeRecommender[ItemKNNContentConfig]):
    r"""Content-based item kNN (ItemKNNCBF in Ferrari Dacrema et al., `Are We Really Making Much Progress? A
    Worrying Analysis of Recent Neural Recommendation Approaches <https://arxiv.org/abs/1907.06902>`_,
    RecSys 2019; MMRec's ``ItemKNNCBF``), training-free.

    .. math:: \hat{y}_{ui} = \sum_{j \in N(u)} S_{ji}, \qquad
              S = \frac{1}{M} \sum_m \mathrm{topk}_k\big(C(x^m)\big), \qquad
              C(x)_{ji} = \frac{x_j \cdot x_i}{\lVert x_j\rVert \lVert x_i\rVert + s}

    where :math:`N(u)` is the user's distinct train items and :math:`\mathrm{topk}_k` keeps the k largest
    entries of every row j (its neighbours i) and zeroes the rest. With ``modality_merge: feature_concat`` there
    is one graph, :math:`S = \mathrm{topk}_k(C([x^1; \dots; x^M]))`. Without ``knn_self`` the diagonal is left
    out of the top k (an item is never its own neighbour); with it, :math:`C_{jj}` competes like any entry.
    An item without a vector (an all-zero row) has no neighbours and is nobody's neighbour; an item with fewer
    than k others keeps all of them.

    Differences from MMRec's code, each with its switch (``strict`` / ``mmrec``; see
    :class:`ItemKNNContentConfig`):

    - ``knn_self`` (False / True): the item itself may be one of its k neighbours.
    - ``modality_merge`` (``graph_mean`` / ``feature_concat``): average per-modality graphs, or one graph of
      the concatenated features.

    And without a switch, for items without a vector only: MMRec gives them similarity 0 to everyone
    (``0 / (0 + s)``; NaN when ``s`` = 0), so they fill a row's top k ahead of negative similarities, adding 0
    where rmm adds the negative neighbour; it only differs for an item with fewer than k non-negative
    similarities.

    Shapes:
        similarity_t: sparse (I, I), the transposed average graph; scores: (B, I).
    """

    similarity_t: Tensor  # buffer: the transposed item graph

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: ItemKNNContentConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg)
        if cfg.modality_merge == "feature_concat":
            if item_graphs is not None:
                raise ValueError(f"ItemKNNContent with modality_merge 'feature_concat' builds its own graph of the "
                                 f"concatenated features, got item_graphs for {sorted(item_graphs)}")
            merged = torch.cat([m.float() for m in features.values()], dim=1)  # (I, sum of d_m)
            graphs = [_knn_spec(cfg).build(merged, name="+".join(features))]
        else:
            graphs = self.build_item_graphs(features, item_graphs)
        similarity = combine_graphs(graphs, [1.0 / len(graphs)] * len(graphs))
        self.register_buffer("similarity_t", to_csr(similarity.t()), persistent=False)
        self.history = graph.user_items()

    @classmethod
    def item_graph_spec(cls, cfg: ItemKNNContentConfig) -> KNNSpec | None:
        """The per-modality graph (None with ``feature_concat``: the model builds its one graph itself)."""
        return _knn_spec(cfg) if cfg.modality_merge == "graph_mean" else None

    def scorer(self) -> Callable[[Tensor], Tensor]:
        def score(users: Tensor) -> Tensor:
            history = self.history.mask(users).to(device=self.similarity_t.device, dtype=torch.float32)  # (B, I)
            return torch.sparse.mm(self.similarity_t, history.T).T  # (B, I): R_B S

        return score


def _knn_spec(cfg: ItemKNNContentConfig) -> KNNSpec:
    return KNNSpec(k=cfg.knn_k, similarity="cosine", shrink=cfg.shrink, normalization="none",
                   include_self=cfg.knn_self)
