"""SMORE: spectral modality fusion, item-item views per modality and fused, and a modality-aware preference module."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import KNNSpec, TrainGraph, to_csr
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.smore import SMOREConfig
from rmm.models.layers import (
    FeatureBank,
    bpr_loss,
    deferred_init,
    info_nce,
    l2_reg,
    lightgcn,
    modules_of,
    per_distinct,
    projections,
    reset_projections,
    smooth,
    sparse_matmul,
)
from rmm.models.registry import register


def max_pool_graphs(graphs: Sequence[Tensor]) -> Tensor:
    """The element-wise maximum of sparse graphs over the union of their edges (an edge absent from a graph
    does not count there as 0: it takes the maximum of the graphs that have it).

    Shapes:
        M x (N, N) sparse COO -> (N, N) float32 sparse COO, coalesced.
    """
    if not graphs:
        raise ValueError("max_pool_graphs needs at least one graph, got none")
    shape = graphs[0].shape
    coalesced = [g.coalesce() for g in graphs]
    index = torch.cat([g.indices() for g in coalesced], dim=1)
    values = torch.cat([g.values().float() for g in coalesced])
    keys, inverse = torch.unique(index[0] * shape[1] + index[1], return_inverse=True)
    pooled = torch.full((len(keys),), -torch.inf, device=values.device).scatter_reduce(0, inverse, values, "amax")
    return torch.sparse_coo_tensor(torch.stack([keys // shape[1], keys % shape[1]]), pooled, shape,
                                   check_invariants=True).coalesce()


@register("smore")
class SMORE(EmbeddingRecommender[SMOREConfig]):
    r"""SMORE (Ong & Khong, `Spectrum-based Modality Representation Fusion Graph Convolutional Network for
    Multimodal Recommendation <https://arxiv.org/abs/2412.14978>`_, WSDM 2025).

    **Spectral fusion.** Each modality m's features are projected, :math:`P^m = X^m W_m + b_m` (I, d), taken to
    the frequency domain along the embedding axis (:math:`\mathcal{F}`, the orthonormal real DFT, d/2 + 1 bins)
    and filtered there by a learnable complex filter :math:`K_m` (uni-modal denoising); the fused view filters
    the product of all modalities' spectra (a convolution in the embedding domain) by :math:`K_f`:

    .. math:: C^m = \mathcal{F}^{-1}(\mathcal{F}(P^m) \odot K_m), \quad
              C^f = \mathcal{F}^{-1}\big(K_f \odot \textstyle\prod_m \mathcal{F}(P^m)\big)

    **Item-item views.** Each view v (every modality and the fusion) gates the ID embeddings,
    :math:`H^v = \mathbf{E}_I \odot \sigma(C^v G_v + g_v)`, convolves them ``num_mm_layers`` times over its item
    graph (:math:`S^m` the modality's cosine kNN graph, similarity-weighted, :math:`D^{-1/2} S D^{-1/2}` with D
    the row sums; :math:`S^f` the element-wise max of the :math:`S^m` over their union of edges) and gives users
    the :math:`\hat{R}`-weighted sum of their items (:math:`\hat{R}_{ui} = 1/\sqrt{d_u d_i}`, the user-item block
    of the normalised adjacency):

    .. math:: \bar{H}^v = (S^v)^{L_m} H^v, \quad \mathbf{V}^v = [\hat{R} \bar{H}^v; \bar{H}^v]

    **Behaviour and preference.** :math:`\mathbf{E}_c` is LightGCN over the user-item graph (mean of layers
    0..L). Each modality view is re-weighted by an attention over the embedding axis queried by the fusion view,
    then every view by a behaviour-driven preference gate (dropout ``dropout`` in training):

    .. math:: \mathbf{A}^m = \mathrm{softmax}_d\big(\tanh(\mathbf{V}^f Q_m + q_m) Q'_m\big) \odot \mathbf{V}^m,
              \quad \mathbf{E}_s = \frac{1}{M+1}\Big(\sum_m \sigma(\mathbf{E}_c T_m + t_m) \odot \mathbf{A}^m
              + \sigma(\mathbf{E}_c T_f + t_f) \odot \mathbf{V}^f\Big), \quad \mathbf{E} = \mathbf{E}_c
              + \mathbf{E}_s

    **Loss**: BPR on :math:`\mathbf{E}` + ``reg_weight`` x ``reg_norm``'s penalty of the batch's final user,
    positive and negative embeddings + ``cl_weight`` x (InfoNCE(:math:`\mathbf{E}_s`, :math:`\mathbf{E}_c`) over
    the batch's positive items + the same over its users), each the batch mean of cosine / ``temperature``
    logits against the batch's own rows.

    Differences from MMRec, each a :class:`SMOREConfig` switch (``strict`` / ``mmrec``): kNN graphs without /
    with the item itself (``knn_self``); projections Xavier-normal / ``nn.Linear``'s default
    (``projection_init``); features frozen / fine-tuned (``train_features``). Not switched: MMRec needs exactly
    an image and a text modality; here any number >= 1 works (the fused spectrum is the product of all of them,
    the fused graph the maximum of all), and two modalities listed image first are MMRec's model. One ``knn_k``
    for every modality (MMRec has ``image_knn_k`` and ``text_knn_k``). Items without a feature vector get no kNN
    neighbours (MMRec's cosine is NaN there), and an item whose kept similarities sum to <= 0 gets zero weights
    (MMRec: NaN). The preference gates' dropout draws from torch's global generator in each step, as MMRec's.

    Shapes:
        adj: sparse (U+I, U+I); interactions :math:`\hat{R}`: sparse (U, I); item graphs: M + 1 sparse (I, I)
        (modalities, then the fusion); filters: (M + 1, d // 2 + 1, 2) real views of complex weights.
    """

    # Buffers: the user-item graph, R-hat and its transpose; the item graphs item_adj_<v> and their transposes
    # item_adj_t_<v>, v = 0..M (M the fusion), registered by name.
    adj: Tensor
    interactions: Tensor
    interactions_t: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: SMOREConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features, trainable=cfg.train_features)
        modal = self.build_item_graphs(features, item_graphs)
        self.num_views = len(modal) + 1
        for v, item_adj in enumerate([*modal, max_pool_graphs(modal)]):
            self.register_buffer(f"item_adj_{v}", to_csr(item_adj), persistent=False)  # directed: keep the transpose
            self.register_buffer(f"item_adj_t_{v}", to_csr(item_adj.t()), persistent=False)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        degree = graph.degrees()
        weights = (degree[graph.users] * degree[graph.num_users + graph.items]).rsqrt()
        r_hat = torch.sparse_coo_tensor(torch.stack([graph.users, graph.items]), weights,
                                        (self.num_users, self.num_items), check_invariants=True)
        self.register_buffer("interactions", to_csr(r_hat), persistent=False)
        self.register_buffer("interactions_t", to_csr(r_hat.t()), persistent=False)
        d, views = cfg.embedding_dim, self.num_views
        self.user_embedding = nn.Embedding(self.num_users, d)
        self.item_embedding = nn.Embedding(self.num_items, d)
        self.projections = projections(self.features.dims, d)
        self.filters = nn.Parameter(torch.empty(views, d // 2 + 1, 2))
        self.item_gates = deferred_init(lambda: nn.ModuleList(nn.Linear(d, d) for _ in range(views)))
        self.queries = deferred_init(lambda: nn.ModuleList(
            nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False)) for _ in range(views - 1)))
        self.preference_gates = deferred_init(lambda: nn.ModuleList(nn.Linear(d, d) for _ in range(views)))
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: SMOREConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", normalization="sym", include_self=cfg.knn_self)

    def reset_parameters(self) -> None:
        self.features.reset_parameters()
        reset_projections(self.projections, self.cfg.projection_init)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        nn.init.normal_(self.filters)
        for module in (*self.item_gates, *self.queries, *self.preference_gates):
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    def spectral_views(self) -> list[Tensor]:
        """The filtered projections of every modality, then the filtered product of their spectra.

        Shapes: M + 1 x (I, d)."""
        d = self.cfg.embedding_dim
        spectra = [torch.fft.rfft(proj(x), dim=1, norm="ortho")  # (I, d // 2 + 1) complex
                   for proj, x in zip(modules_of(self.projections, nn.Linear), self.features.matrices(), strict=True)]
        filters = torch.view_as_complex(self.filters)  # (M + 1, d // 2 + 1)
        return [torch.fft.irfft(spectrum * kernel, n=d, dim=1, norm="ortho")
                for spectrum, kernel in zip([*spectra, reduce(operator.mul, spectra)], filters, strict=True)]

    def encode(self) -> tuple[Tensor, list[Tensor]]:
        r"""Behavioural embeddings :math:`\mathbf{E}_c` and the views :math:`\mathbf{V}^v` (modalities, then the
        fusion), users then items: everything that needs the whole graph. Shapes: (U+I, d), M + 1 x (U+I, d)."""
        item_id = self.item_embedding.weight
        content = torch.cat(lightgcn(self.adj, self.user_embedding.weight, item_id, self.cfg.num_ui_layers))
        views = []
        for v, (gate, conv) in enumerate(zip(modules_of(self.item_gates, nn.Linear), self.spectral_views(),
                                             strict=True)):
            items = smooth(getattr(self, f"item_adj_{v}"), item_id * torch.sigmoid(gate(conv)),
                           self.cfg.num_mm_layers, getattr(self, f"item_adj_t_{v}"))  # (I, d)
            views.append(torch.cat([sparse_matmul(self.interactions, items, self.interactions_t), items]))
        return content, views

    def gate_dropout(self, num_rows: int) -> list[Tensor] | None:
        """The preference gates' training dropout as multiplicative masks (kept: 1 / (1 - p), else 0), one per
        view, over all U+I rows: drawn in the shape and order MMRec draws them, whichever rows are then used.
        None when ``dropout`` is 0. Shapes: M + 1 x (U+I, d)."""
        if self.cfg.dropout == 0:
            return None
        ones = torch.ones(num_rows, self.cfg.embedding_dim, device=self.item_embedding.weight.device)
        return [F.dropout(ones, self.cfg.dropout, training=True) for _ in range(self.num_views)]

    def side(self, content: Tensor, views: Sequence[Tensor], masks: Sequence[Tensor] | None) -> Tensor:
        r""":math:`\mathbf{E}_s` of some rows from their :math:`\mathbf{E}_c`, views and gate masks (row-wise:
        any subset of the U+I rows). Shapes: (n, d), M + 1 x (n, d), M + 1 x (n, d) or None -> (n, d)."""
        fusion = views[-1]
        gates = [torch.sigmoid(pref(content)) for pref in modules_of(self.preference_gates, nn.Linear)]
        if masks is not None:
            gates = [gate * mask for gate, mask in zip(gates, masks, strict=True)]
        terms = [gate * torch.softmax(query(fusion), dim=-1) * view
                 for gate, query, view in zip(gates[:-1], modules_of(self.queries, nn.Sequential), views[:-1],
                                              strict=True)]
        return reduce(operator.add, [*terms, gates[-1] * fusion]) / self.num_views

    def embeddings(self) -> tuple[Tensor, Tensor]:
        content, views = self.encode()
        final = content + self.side(content, views, None)
        return final[: self.num_users], final[self.num_users:]

    def loss(self, batch: BPRBatch) -> Tensor:
        r"""The batch's losses from :math:`\mathbf{E}_c` and :math:`\mathbf{E}_s` of its own rows only: the
        gates, queries and mixing are row-wise, so they run on the batch's distinct users and items, not on all
        U+I rows as MMRec computes them (the same numbers)."""
        content, views = self.encode()
        masks = self.gate_dropout(len(content)) if self.training else None
        size = len(batch.users)

        def both(rows: Tensor) -> Tensor:  # (n,) -> (n, 2d): E_c | E_s
            picked = content.index_select(0, rows)
            return torch.cat([picked, self.side(picked, [view.index_select(0, rows) for view in views],
                                                None if masks is None else [m.index_select(0, rows) for m in masks])],
                             dim=1)

        rows = torch.cat([batch.users, self.num_users + batch.pos_items, self.num_users + batch.neg_items])
        behaviour, side = per_distinct(rows, both).split(self.cfg.embedding_dim, dim=1)  # (3B, d) each
        users, pos, neg = (behaviour + side).split(size)
        ranking = bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))
        reg = l2_reg(users, pos, neg, norm=self.cfg.reg_norm)
        contrast = torch.zeros((), device=users.device)
        for part in (slice(size, 2 * size), slice(0, size)):  # the positive items, then the users
            contrast = contrast + info_nce(side[part], behaviour[part], behaviour[part], self.cfg.temperature) / size
        return ranking + self.cfg.reg_weight * reg + self.cfg.cl_weight * contrast
