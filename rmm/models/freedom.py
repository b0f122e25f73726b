"""FREEDOM: a frozen item-item kNN graph from the modalities plus a degree-sensitively pruned user-item graph."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rmm.config import require_at_least
from rmm.data.graph import KNNSpec, TrainGraph, combine_graphs, to_csr
from rmm.models.base import DEFAULT_FUSION, BPRBatch, EmbeddingRecommender, epoch_generator, register
from rmm.models.layers import FeatureBank, bpr_loss, projections, propagate, smooth


@dataclass(frozen=True)
class FREEDOMConfig:
    """MMRec's ``FREEDOM.yaml``: d 64, kNN k 10, 1 item-graph layer, 2 user-item layers, ``dropout`` (the
    fraction of user-item edges pruned each epoch) 0.8 and ``reg_weight`` (the weight of the modality BPR
    terms) 1e-4, each from its grid.

    ``modality_weights`` weighs the per-modality kNN graphs in feature order (normalised to sum 1); None is
    uniform. MMRec's ``mm_image_weight: 0.1`` is ``modality_weights: [0.1, 0.9]`` with features
    ``[image, text]``. Modalities are projected to ``embedding_dim`` (MMRec's ``feat_embed_dim``, which must
    equal it there).
    """

    embedding_dim: int = 64
    knn_k: int = 10
    num_mm_layers: int = 1
    num_ui_layers: int = 2
    dropout: float = 0.8
    reg_weight: float = 1e-4
    modality_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        require_at_least(self, 1, "embedding_dim", "knn_k", "num_mm_layers", "num_ui_layers")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        require_at_least(self, 0, "reg_weight")
        if self.modality_weights is not None and (not self.modality_weights or min(self.modality_weights) < 0
                                                  or sum(self.modality_weights) <= 0):
            raise ValueError(f"modality_weights must be non-negative with a positive sum, got "
                             f"{list(self.modality_weights)}")


def mixing_weights(weights: tuple[float, ...] | None, count: int, model: str) -> list[float]:
    """``weights`` normalised to sum 1, or ``1 / count`` each when None; the count must match the features."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{model} modality_weights has {len(weights)} entries for {count} features; give one "
                         f"weight per feature, in feature order")
    return [w / sum(weights) for w in weights]


@register("freedom")
class FREEDOM(EmbeddingRecommender):
    r"""FREEDOM (Zhou & Shen, `A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
    Recommendation <https://arxiv.org/abs/2211.06924>`_, ACM MM 2023).

    The item-item graph :math:`S = \sum_m w_m \tilde{S}^m` is built once from each modality's unweighted kNN
    graph, :math:`\tilde{S}^m = D^{-1/2} S^m D^{-1/2}`, and frozen. The user-item graph is denoised by
    degree-sensitive edge pruning: each epoch keeps a fraction ``1 - dropout`` of the edges, sampled without
    replacement with probability :math:`\propto 1/\sqrt{d_u d_i}`, renormalised. Scoring uses the full graph.
    The kNN graphs exclude the item itself (MMRec's top k include it) and the features are frozen inputs
    (MMRec fine-tunes them).

    .. math:: \tilde{h}_i = (S^{L_m} \mathbf{E}_{id})_i, \quad
              [\mathbf{e}_u; \bar{\mathbf{e}}_i] = \mathrm{LightGCN}(\hat{A}, \mathbf{E}), \quad
              \mathbf{e}_i = \bar{\mathbf{e}}_i + \tilde{h}_i, \quad
              \mathcal{L} = \mathcal{L}_{BPR}(\mathbf{e}_u, \mathbf{e}_i)
                  + \lambda \sum_m \mathcal{L}_{BPR}(\mathbf{e}_u, W_m f^m_i + b_m)

    Shapes:
        mm_adj: sparse (I, I); adj: sparse (U+I, U+I); user/item embeddings: (U, d), (I, d).
    """

    config_class = FREEDOMConfig
    uses_features = True
    fusions = ()

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: FREEDOMConfig, *,
                 fusion: str = DEFAULT_FUSION, item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.features = FeatureBank(features)
        weights = mixing_weights(cfg.modality_weights, len(self.features), type(self).__name__)
        mm_adj = combine_graphs(self.build_item_graphs(features, item_graphs), weights)
        self.register_buffer("mm_adj", to_csr(mm_adj), persistent=False)  # directed: keep the transpose
        self.register_buffer("mm_adj_t", to_csr(mm_adj.t()), persistent=False)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.register_buffer("masked_adj", None, persistent=False)
        self.register_buffer("edge_users", graph.users, persistent=False)
        self.register_buffer("edge_items", graph.items, persistent=False)
        degree = graph.degrees()
        self.register_buffer("edge_weights", (degree[graph.users] * degree[graph.num_users + graph.items]).rsqrt(),
                             persistent=False)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.projections = projections(self.features.dims, cfg.embedding_dim)
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: FREEDOMConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", binary=True, normalization="sym")

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Degree-sensitive edge pruning: this epoch's user-item graph."""
        if self.cfg.dropout == 0:
            self.masked_adj = self.adj
            return
        keep = max(1, int(len(self.edge_weights) * (1.0 - self.cfg.dropout)))
        kept = torch.multinomial(self.edge_weights.cpu(), keep, replacement=False,
                                 generator=epoch_generator(seed, epoch))  # CPU: same draw on every device
        pruned = TrainGraph(self.num_users, self.num_items, self.edge_users.cpu()[kept], self.edge_items.cpu()[kept])
        self.masked_adj = pruned.norm_adj().to(self.adj.device)

    def embeddings(self, adj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final embeddings over user-item graph ``adj`` (the full graph when None, as for scoring)."""
        item_graph = smooth(self.mm_adj, self.item_embedding.weight, self.cfg.num_mm_layers, self.mm_adj_t)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users, items = torch.split(propagate(self.adj if adj is None else adj, ego, self.cfg.num_ui_layers),
                                   [self.num_users, self.num_items])
        return users, items + item_graph

    def loss(self, batch: BPRBatch) -> Tensor:
        if self.masked_adj is None:  # a loop that never calls start_epoch still trains on a pruned graph
            self.start_epoch(0, 0)
        user_emb, item_emb = self.embeddings(self.masked_adj)
        users = user_emb[batch.users]  # (B, d)
        ranking = bpr_loss((users * item_emb[batch.pos_items]).sum(-1), (users * item_emb[batch.neg_items]).sum(-1))
        modal = sum(bpr_loss((users * proj(x[batch.pos_items])).sum(-1), (users * proj(x[batch.neg_items])).sum(-1))
                    for proj, x in zip(self.projections, self.features.matrices()))
        return ranking + self.cfg.reg_weight * modal
