"""FREEDOM: a frozen item-item kNN graph from the modalities plus a degree-sensitively pruned user-item graph."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import reduce
from typing import Any

from torch import Tensor, nn

from rmm.data.graph import KNNSpec, TrainGraph, combine_graphs, to_csr
from rmm.models.base import BPRBatch, EmbeddingRecommender, Recommender, epoch_generator
from rmm.models.hparams.freedom import FREEDOMConfig
from rmm.models.layers import (
    EdgePruning,
    FeatureBank,
    bpr_loss,
    lightgcn,
    modules_of,
    projected_bpr,
    projections,
    reset_projections,
    smooth,
)
from rmm.models.registry import register


def mixing_weights(weights: tuple[float, ...] | None, count: int, model: str) -> list[float]:
    """``weights`` normalised to sum 1, or ``1 / count`` each when None; the count must match the features."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{model} modality_weights has {len(weights)} entries for {count} features; give one "
                         f"weight per feature, in feature order (protocol: mmrec defaults it to MMRec's [0.1, 0.9] "
                         f"for features [image, text]; set it explicitly, or to null for uniform, otherwise)")
    return [w / sum(weights) for w in weights]


def register_mixed_item_graph(model: Recommender[Any], features: Mapping[str, Tensor],
                              item_graphs: Mapping[str, Tensor] | None,
                              modality_weights: tuple[float, ...] | None) -> None:
    """FREEDOM's frozen item-item graph on ``model``: its per-modality kNN graphs (``build_item_graphs``) mixed by
    ``modality_weights`` (:func:`mixing_weights`), as the CSR buffers ``mm_adj`` and, the kNN graph being
    directed, its transpose ``mm_adj_t``. Shapes: (I, I) each."""
    weights = mixing_weights(modality_weights, len(features), type(model).__name__)
    mm_adj = combine_graphs(model.build_item_graphs(features, item_graphs), weights)
    model.register_buffer("mm_adj", to_csr(mm_adj), persistent=False)
    model.register_buffer("mm_adj_t", to_csr(mm_adj.t()), persistent=False)


@register("freedom")
class FREEDOM(EmbeddingRecommender[FREEDOMConfig]):
    r"""FREEDOM (Zhou & Shen, `A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
    Recommendation <https://arxiv.org/abs/2211.06924>`_, ACM MM 2023).

    The item-item graph :math:`S = \sum_m w_m \tilde{S}^m` (``modality_weights``) is built once from each
    modality's unweighted cosine kNN graph, :math:`\tilde{S}^m = D^{-1/2} S^m D^{-1/2}` (:math:`D` the row sums),
    and frozen. The user-item graph is denoised by degree-sensitive edge pruning: each epoch keeps
    :math:`\lfloor (1 - \text{dropout}) |E| \rfloor` edges, drawn without replacement with probability
    :math:`\propto 1/\sqrt{d_u d_i}` (train degrees), and :math:`D^{-1/2} A D^{-1/2}`-normalises them with the
    kept degrees. Scoring uses the full graph :math:`\hat{A}`.

    .. math:: \tilde{h}_i = (S^{L_m} \mathbf{E}_{id})_i, \quad
              [\mathbf{e}_u; \bar{\mathbf{e}}_i] = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l \mathbf{E}, \quad
              \mathbf{e}_i = \bar{\mathbf{e}}_i + \tilde{h}_i, \quad
              \mathcal{L} = \mathcal{L}_{BPR}(\mathbf{e}_u, \mathbf{e}_i)
                  + \lambda \sum_m \mathcal{L}_{BPR}(\mathbf{e}_u, W_m f^m_i + b_m)

    Differences from MMRec, each a :class:`FREEDOMConfig` switch (``strict`` value / ``mmrec`` value):
    kNN graphs without / with the item itself (``knn_self``); modality weights uniform / image 0.1, text 0.9
    (``modality_weights``); projections Xavier-normal / ``nn.Linear``'s default (``projection_init``);
    features frozen / fine-tuned (``train_features``). Not switched: items without a feature vector (zero rows)
    get no kNN neighbours (MMRec's cosine is NaN there); degrees carry no ``+1e-7`` (a kept edge's degrees are
    >= 1, so that only moves values by ~1e-7); the pruning draw comes from a generator seeded by
    ``(seed, epoch)`` on the CPU (MMRec: the global RNG on the device), so ranks agree and a resumed run replays.

    Shapes:
        mm_adj: sparse (I, I); adj: sparse (U+I, U+I); user/item embeddings: (U, d), (I, d).
    """

    # Buffers: the item graph and its transpose, the full and this epoch's pruned user-item graphs (the pruning
    # draw: self.pruning).
    mm_adj: Tensor
    mm_adj_t: Tensor
    adj: Tensor
    masked_adj: Tensor | None

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: FREEDOMConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features, trainable=cfg.train_features)
        register_mixed_item_graph(self, features, item_graphs, cfg.modality_weights)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.register_buffer("masked_adj", None, persistent=False)
        self.pruning = EdgePruning(graph, cfg.dropout)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.projections = projections(self.features.dims, cfg.embedding_dim)
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: FREEDOMConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", binary=True, normalization="sym", include_self=cfg.knn_self)

    def reset_parameters(self) -> None:
        self.features.reset_parameters()
        reset_projections(self.projections, self.cfg.projection_init)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Degree-sensitive edge pruning: this epoch's user-item graph."""
        if self.cfg.dropout == 0:
            self.masked_adj = self.adj
            return
        self.masked_adj = self.pruning.adjacency(epoch_generator(seed, epoch))

    def embeddings(self, adj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final embeddings over user-item graph ``adj`` (the full graph when None, as for scoring)."""
        item_graph = smooth(self.mm_adj, self.item_embedding.weight, self.cfg.num_mm_layers, self.mm_adj_t)
        users, items = lightgcn(self.adj if adj is None else adj, self.user_embedding.weight,
                                self.item_embedding.weight, self.cfg.num_ui_layers)
        return users, items + item_graph

    def loss(self, batch: BPRBatch) -> Tensor:
        if self.masked_adj is None:  # a loop that never calls start_epoch still trains on a pruned graph
            self.start_epoch(0, 0)
        user_emb, item_emb = self.embeddings(self.masked_adj)
        users = user_emb[batch.users]  # (B, d)
        ranking = bpr_loss((users * item_emb[batch.pos_items]).sum(-1), (users * item_emb[batch.neg_items]).sum(-1))
        modal = reduce(operator.add, (projected_bpr(users, proj, x, batch.pos_items, batch.neg_items)
                                      for proj, x in zip(modules_of(self.projections, nn.Linear),
                                                         self.features.matrices(), strict=True)))
        return ranking + self.cfg.reg_weight * modal
