"""DRAGON: DualGNN's modality graphs with concatenated modalities, plus a frozen item-item kNN graph."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from rmm.data.graph import KNNSpec, TrainGraph
from rmm.models.dualgnn import DualGraphModel
from rmm.models.freedom import register_mixed_item_graph
from rmm.models.hparams.dragon import DRAGONConfig
from rmm.models.layers import smooth
from rmm.models.registry import register


@register("dragon")
class DRAGON(DualGraphModel[DRAGONConfig]):
    r"""DRAGON (Zhou et al., `Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal Recommendation
    <https://arxiv.org/abs/2301.12097>`_, ECAI 2023), as MMRec's ``dragon.py``.

    The heterogeneous part is DualGNN's (:class:`~rmm.models.dualgnn.DualGraphModel`): per modality m,
    :math:`H_m = \sum_{l=0}^{L} \hat{A}^l \,\mathrm{norm}([P_m; g_m(f^m)])`. Modalities are concatenated, the
    users' scaled by free per-user weights :math:`\alpha_{um}` (none with a single modality); the homogeneous
    graphs then smooth items over the frozen item-item graph :math:`S = \sum_m w_m D_m^{-1/2} S^m D_m^{-1/2}`
    (each modality's unweighted cosine kNN graph, as FREEDOM's; ``modality_weights``) and users over the
    user-user co-occurrence graph :math:`W` (each user's ``user_knn_k`` users sharing the most train items,
    weighted by the softmax of the shared counts):

    .. math:: \bar{\mathbf{e}}_i = \Vert_m H_{m,i}, \quad \bar{\mathbf{e}}_u = \Vert_m \alpha_{um} H_{m,u}, \quad
              \mathbf{e}_i = \bar{\mathbf{e}}_i + (S^{L_m} \bar{E}_I)_i, \quad
              \mathbf{e}_u = \bar{\mathbf{e}}_u + (W \bar{E}_U)_u

    Loss: BPR plus :math:`\lambda (\sum_m \overline{P_{m,B}^2} + \overline{\alpha^2})`; scores
    :math:`\mathbf{e}_u^\top \mathbf{e}_i` (width M d).

    Differences from MMRec, as :class:`DRAGONConfig` switches (``strict`` / ``mmrec``): kNN graphs without /
    with the item itself (``knn_self``), modality weights uniform / image 0.1, text 0.9 (``modality_weights``),
    encoder init (``projection_init``), natural-log / base-2 BPR (``log2_bpr``), short user neighbour lists kept /
    padded to k with random repeats each epoch (``pad_user_neighbours``, as DualGNN's). Not switched: the
    unused ``weight_i``, item-drop edge lists and trainable copies of the features (MMRec builds them, the forward
    pass never reads them) are left out; the kNN degrees carry no ``+1e-7``; items without a feature vector get
    no kNN neighbours.

    Shapes:
        adj: sparse (U+I, U+I); mm_adj: sparse (I, I); user_graph: sparse (U, U); final embeddings (U, M d),
        (I, M d).
    """

    mm_adj: Tensor
    mm_adj_t: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: DRAGONConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None, user_graph: Tensor | None = None) -> None:
        super().__init__(graph, features, cfg, user_graph=user_graph)
        register_mixed_item_graph(self, features, item_graphs, cfg.modality_weights)

    @classmethod
    def item_graph_spec(cls, cfg: DRAGONConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", binary=True, normalization="sym", include_self=cfg.knn_self)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user and item embeddings. Shapes: (U, M d), (I, M d)."""
        modal = self.modality_embeddings()
        items = torch.cat([h[self.num_users:] for h in modal], dim=1)  # (I, M d)
        if self.modality_weights is None:
            users = modal[0][: self.num_users]
        else:
            users = torch.cat([self.modality_weights[:, m:m + 1] * h[: self.num_users] for m, h in enumerate(modal)],
                              dim=1)  # (U, M d)
        return self.user_graph_step(users), items + smooth(self.mm_adj, items, self.cfg.num_mm_layers, self.mm_adj_t)
