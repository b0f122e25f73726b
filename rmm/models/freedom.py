"""FREEDOM: a frozen item-item kNN graph from the modalities plus a degree-sensitively pruned user-item graph."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rmm.validation import require_at_least
from rmm.data.graph import KNNSpec, TrainGraph, combine_graphs, to_csr
from rmm.models.base import DEFAULT_FUSION, BPRBatch, EmbeddingConfig, EmbeddingRecommender, epoch_generator, register
from rmm.models.layers import PROJECTION_INITS, FeatureBank, bpr_loss, projected_bpr, projections, propagate, smooth


@dataclass(frozen=True)
class FREEDOMConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`FREEDOM`.

    Attributes:
        embedding_dim: ID embedding width d, also the width the modalities are projected to (MMRec
            ``embedding_size`` and ``feat_embed_dim``, 64 each, which must be equal there).
        knn_k: neighbours per item in each modality's kNN graph (MMRec 10).
        num_mm_layers: item-graph convolutions (MMRec ``n_mm_layers`` 1).
        num_ui_layers: LightGCN layers over the user-item graph (MMRec ``n_ui_layers`` 2).
        dropout: the fraction of user-item edges pruned each epoch; MMRec searches ``[0.8, 0.9]``.
        reg_weight: weight :math:`\lambda` of the modality BPR terms; MMRec searches ``[0.0, 1e-5, 1e-4, 1e-3]``.
        modality_weights: weights of the per-modality kNN graphs, in feature order (``model.features``),
            normalised to sum 1. ``strict`` None: uniform, since rmm takes any list of modalities. ``mmrec``
            ``[0.1, 0.9]``: MMRec's ``mm_image_weight: 0.1`` (image 0.1, text 0.9), which assumes the parity
            config lists exactly two features, **image first, then text**; with other feature lists set it
            explicitly (one weight per feature, or null for uniform).
        knn_self: whether an item is a candidate neighbour of itself in the kNN graphs. ``strict`` False: the k
            nearest *other* items, the paper's neighbourhood. ``mmrec`` True: MMRec's dense ``topk`` of the full
            similarity row keeps the item itself (cosine 1): a self term and ``k - 1`` others.
        projection_init: initialisation of the modality projections (:func:`rmm.models.layers.projections`).
            ``strict`` ``xavier`` (Xavier-normal, rmm's shared projection); ``mmrec`` ``torch_default``
            (``nn.Linear``'s Kaiming-uniform).
        train_features: whether the raw modality features are trained. ``strict`` False: frozen inputs, so a
            model's features stay those of the feature store it names. ``mmrec`` True: MMRec fine-tunes them
            (``nn.Embedding.from_pretrained(..., freeze=False)``) through the modality BPR terms; they are then
            saved with the model. The item graph stays that of the initial features, in both.
        reg_norm: unused: FREEDOM, like MMRec's, puts no penalty on the embeddings (its ``reg_weight`` weighs
            the modality BPR terms).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields (MMRec's ``FREEDOM.yaml`` and
            code); explicit values win. Not a config key.
    """

    embedding_dim: int = 64
    knn_k: int = 10
    num_mm_layers: int = 1
    num_ui_layers: int = 2
    dropout: float = 0.8
    reg_weight: float = 1e-4
    modality_weights: tuple[float, ...] | None = None
    knn_self: bool = False
    projection_init: str = "xavier"
    train_features: bool = False
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"modality_weights": (0.1, 0.9), "knn_self": True, "projection_init": "torch_default",
                  "train_features": True, "embedding_dim": 64, "knn_k": 10, "num_mm_layers": 1,
                  "num_ui_layers": 2},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "knn_k", "num_mm_layers", "num_ui_layers")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        require_at_least(self, 0, "reg_weight")
        if self.modality_weights is not None and (not self.modality_weights or min(self.modality_weights) < 0
                                                  or sum(self.modality_weights) <= 0):
            raise ValueError(f"modality_weights must be non-negative with a positive sum, got "
                             f"{list(self.modality_weights)}")
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(f"projection_init must be one of {list(PROJECTION_INITS)}, got {self.projection_init!r}")


def mixing_weights(weights: tuple[float, ...] | None, count: int, model: str) -> list[float]:
    """``weights`` normalised to sum 1, or ``1 / count`` each when None; the count must match the features."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{model} modality_weights has {len(weights)} entries for {count} features; give one "
                         f"weight per feature, in feature order (protocol: mmrec defaults it to MMRec's [0.1, 0.9] "
                         f"for features [image, text]; set it explicitly, or to null for uniform, otherwise)")
    return [w / sum(weights) for w in weights]


@register("freedom")
class FREEDOM(EmbeddingRecommender):
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

    config_class = FREEDOMConfig
    uses_features = True
    fusions = ()

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: FREEDOMConfig, *,
                 fusion: str = DEFAULT_FUSION, item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.features = FeatureBank(features, trainable=cfg.train_features)
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
        self.projections = projections(self.features.dims, cfg.embedding_dim, init=cfg.projection_init)
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: FREEDOMConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", binary=True, normalization="sym", include_self=cfg.knn_self)

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
        modal = sum(projected_bpr(users, proj, x, batch.pos_items, batch.neg_items)
                    for proj, x in zip(self.projections, self.features.matrices()))
        return ranking + self.cfg.reg_weight * modal
