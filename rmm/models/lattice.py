"""LATTICE: an item-item graph learned from projected modality features, anchored to the frozen kNN graphs."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import (
    KNNSpec,
    TrainGraph,
    combine_graphs,
    knn_edges,
    normalize_edges,
    to_csr,
    unit_rows,
)
from rmm.models.base import EmbeddingRecommender, inner_product_scorer
from rmm.models.hparams.lattice import LATTICEConfig
from rmm.models.layers import (
    FeatureBank,
    aggregate,
    lightgcn,
    projections,
    reset_projections,
    smooth,
    sparse_matmul,
)
from rmm.models.registry import register


@register("lattice")
class LATTICE(EmbeddingRecommender[LATTICEConfig]):
    r"""LATTICE (Zhang et al., `Mining Latent Structures for Multimedia Recommendation
    <https://arxiv.org/abs/2104.09036>`_, ACM MM 2021), with the LightGCN backbone.

    Per modality m, the frozen graph :math:`\tilde{S}^m_0` is the sym-normalised cosine kNN graph of the raw
    features :math:`f^m`; the learned graph :math:`\hat{S}^m` the kNN graph of the projected features
    :math:`\tilde{f}^m = W_m f^m + b_m`, weighted by their cosine. With :math:`\alpha = \mathrm{softmax}(w)`:

    .. math:: S = (1 - \lambda)\, \mathcal{N}\big(\textstyle\sum_m \alpha_m \hat{S}^m\big)
                  + \lambda \textstyle\sum_m \alpha_m \tilde{S}^m_0, \quad
              \mathbf{h} = S^{L} \mathbf{E}_{id}, \quad
              \mathbf{e}_i = \bar{\mathbf{e}}_i + \frac{\mathbf{h}_i}{\lVert \mathbf{h}_i \rVert}, \quad
              \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i

    where :math:`\mathcal{N}(X) = D^{-1/2} X D^{-1/2}` (:math:`D` the row sums) and
    :math:`[\mathbf{e}_u; \bar{\mathbf{e}}_i] = \frac{1}{L_{ui}+1}\sum_{l=0}^{L_{ui}} \hat{A}^l \mathbf{E}` is
    LightGCN over the user-item graph :math:`\hat{A}` (``ui_normalization``). Loss: BPR on
    :math:`\hat{y}` plus ``reg_weight`` times :math:`\frac{1}{2B}\sum \lVert e \rVert^2` (``reg_norm: squared``,
    both protocols, as MMRec's LATTICE) of the batch's final :math:`\mathbf{e}_u, \mathbf{e}_i, \mathbf{e}_j`.

    Which pairs are neighbours in :math:`\hat{S}^m` is refreshed every epoch (``start_epoch``, as MMRec rebuilds
    the graph at each epoch's first batch) and when scoring. Their weights, and :math:`\alpha`, are computed from
    the current projections with a gradient at the epoch's first step and held (detached) for its other steps, as
    in the reference code; ``graph_update: step`` recomputes them with a gradient at every step. The learned
    graph is built in chunks and kept sparse (MMRec's is a dense I x I matrix), and propagated edge-wise
    (:func:`~rmm.models.layers.aggregate`).

    Differences from MMRec, each a :class:`LATTICEConfig` switch (``strict`` value / ``mmrec`` value):
    kNN graphs without / with the item itself (``knn_self``); user-item graph :math:`D^{-1/2} A D^{-1/2}` /
    :math:`(D + I)^{-1}(A + I)` (``ui_normalization``); projections Xavier-normal / ``nn.Linear``'s default
    (``projection_init``); features frozen / fine-tuned (``train_features``). Not switched: items without a
    feature vector (zero rows) get no kNN neighbours (MMRec's cosine is NaN there); a row sum
    :math:`\le 0` of the learned graph gives zero weights instead of NaN; the regulariser divides by the batch's
    length (MMRec by ``train_batch_size``, which differs on an epoch's last, shorter batch).

    Difference from the paper (both protocols follow the reference code, CRIPAC-DIG/LATTICE and MMRec): the
    paper's Sec. 3.1 normalises each learned :math:`\hat{S}^m` and mixes
    :math:`(1 - \lambda)\mathcal{N}(\hat{S}^m) + \lambda \tilde{S}^m_0` per modality before weighting by
    :math:`\alpha`; the code normalises the :math:`\alpha`-weighted sum of the learned graphs, as above.

    Shapes:
        adj: sparse (U+I, U+I); frozen graphs: sparse (I, I) per modality; embeddings: (U, d), (I, d).
    """

    # Buffers: the user-item graph and its transpose (None when symmetric); the frozen item graphs are
    # ``frozen_{m}`` / ``frozen_t_{m}``.
    adj: Tensor
    adj_t: Tensor | None

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: LATTICEConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features, trainable=cfg.train_features)
        for m, frozen in enumerate(self.build_item_graphs(features, item_graphs)):
            self.register_buffer(f"frozen_{m}", to_csr(frozen), persistent=False)
            self.register_buffer(f"frozen_t_{m}", to_csr(frozen.t()), persistent=False)
        self.learned_index: list[Tensor] | None = None  # per modality (2, E); rebuilt, never checkpointed
        # This epoch's item graph once its weights are held (graph_update "epoch"): one constant sparse matrix and
        # its transpose, so that the epoch's other steps propagate it with one CSR product per layer.
        self.held: tuple[Tensor, Tensor] | None = None
        self.register_buffer("adj", graph.adjacency(cfg.ui_normalization), persistent=False)
        # The transpose, for propagate's backward; None when the normalisation is symmetric.
        self.register_buffer("adj_t", None if cfg.ui_normalization == "sym"
                             else graph.adjacency(cfg.ui_normalization, transpose=True), persistent=False)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.projections = projections(self.features.dims, cfg.feat_embed_dim)
        self.modal_weight = nn.Parameter(torch.empty(len(self.features)))
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: LATTICEConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", normalization="sym", include_self=cfg.knn_self)

    def reset_parameters(self) -> None:
        self.features.reset_parameters()
        reset_projections(self.projections, self.cfg.projection_init)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        nn.init.constant_(self.modal_weight, 1.0 / len(self.features))  # MMRec: [0.5, 0.5]

    @property
    def has_unused_parameters(self) -> bool:
        # With graph_update "epoch", the projections, modality weights (and trained features) get no gradient after
        # an epoch's first step; with "step" every parameter has one at every step.
        return self.cfg.graph_update == "epoch"

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Re-learn which item pairs are neighbours from the current projections."""
        self._relearn()

    def _relearn(self) -> list[Tensor]:
        """Learn this epoch's pairs (:meth:`_learned_structure`), dropping the held graph; returns them."""
        self.learned_index, self.held = self._learned_structure(), None
        return self.learned_index

    def _learned_structure(self) -> list[Tensor]:
        """The kNN pairs of each modality's projected features (no gradient). Shapes: (2, E_m) each."""
        with torch.no_grad():
            return [knn_edges(proj(x), self.cfg.knn_k, valid=valid, name=f"{name} (projected)",
                              include_self=self.cfg.knn_self)[0]
                    for proj, x, valid, name in zip(self.projections, self.features.matrices(),
                                                    self.features.valid(), self.features.names, strict=True)]

    def _learned_weights(self, learned_index: list[Tensor]) -> tuple[Tensor, Tensor]:
        r"""The learned graph's edge weights, :math:`(1 - \lambda)\,\mathcal{N}(\sum_m \alpha_m \hat{S}^m)` on
        ``torch.cat(learned_index, 1)``, and :math:`\alpha`; differentiable in the projections and :math:`w`.

        Shapes:
            (E,), (M,).
        """
        alpha = torch.softmax(self.modal_weight, dim=0)  # (M,)
        cosines = []
        for m, (proj, x) in enumerate(zip(self.projections, self.features.matrices(), strict=True)):
            z = unit_rows(proj(x))  # (I, feat_embed_dim); scale-safe: features of 1e30 do not become zeros
            index = learned_index[m]
            cosines.append(alpha[m] * (z[index[0]] * z[index[1]]).sum(-1))  # cosine of each kept pair
        index = torch.cat(learned_index, dim=1)
        values = normalize_edges(index, torch.cat(cosines).float(), self.num_items, "sym")  # fp32 under autocast
        return (1.0 - self.cfg.lambda_coeff) * values, alpha

    def _item_graph_conv(self, learned_index: list[Tensor], weights: tuple[Tensor, Tensor]) -> Tensor:
        r""":math:`S^L \mathbf{E}_{id}` with the learned graph on ``learned_index`` weighted by ``weights``."""
        values, alpha = weights
        index = torch.cat(learned_index, dim=1)
        h = self.item_embedding.weight
        for _ in range(self.cfg.num_layers):
            frozen = sum(alpha[m] * sparse_matmul(getattr(self, f"frozen_{m}"), h, getattr(self, f"frozen_t_{m}"))
                         for m in range(len(self.features)))
            # Edge-wise, not torch.sparse.mm: the weights need a gradient, and sparse.mm's would be a dense I x I.
            h = aggregate(index[1], index[0], values, h, self.num_items) + self.cfg.lambda_coeff * frozen
        return h

    def _constant_graph(self, learned_index: list[Tensor], weights: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        r"""The item graph :math:`S` of ``_item_graph_conv`` with ``weights`` detached, as one sparse matrix: the
        learned edges plus :math:`\lambda \alpha_m` times each frozen graph, for the steps whose weights are held.

        Shapes:
            (I, I) float32 sparse CSR, and its transpose.
        """
        values, alpha = (w.detach().float() for w in weights)
        learned = torch.sparse_coo_tensor(torch.cat(learned_index, dim=1), values, (self.num_items,) * 2,
                                          check_invariants=False)  # indices from knn_edges
        frozen = [getattr(self, f"frozen_{m}").to_sparse_coo() for m in range(len(self.features))]
        graph = combine_graphs([learned, *frozen], [1.0, *(self.cfg.lambda_coeff * alpha)])
        return to_csr(graph), to_csr(graph.t())

    def embeddings(self, learned_index: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Final embeddings with the learned graph on ``learned_index`` (this epoch's pairs when None)."""
        if learned_index is None:
            current = self.learned_index
            if current is None or current[0].device != self.adj.device:
                current = self._relearn()  # a loop that never calls start_epoch (or a moved model): learn them now
            if self.held is not None:
                h = smooth(self.held[0], self.item_embedding.weight, self.cfg.num_layers, self.held[1])
            else:
                weights = self._learned_weights(current)
                if self.cfg.graph_update == "epoch":
                    self.held = self._constant_graph(current, weights)
                h = self._item_graph_conv(current, weights)
        else:
            h = self._item_graph_conv(learned_index, self._learned_weights(learned_index))
        users, items = lightgcn(self.adj, self.user_embedding.weight, self.item_embedding.weight,
                                self.cfg.num_ui_layers, self.adj_t)
        return users, items + F.normalize(h, dim=1)

    def scorer(self) -> Callable[[Tensor], Tensor]:
        # As MMRec's full_sort_predict: the learned graph is rebuilt from the current projections.
        return inner_product_scorer(*self.embeddings(self._learned_structure()))
