"""MGCN: modality features purified by the item IDs, a user-item and an item-item view, a behaviour-aware fuser and a
contrastive auxiliary task."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from rmm.data.graph import KNNSpec, TrainGraph, to_csr
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.mgcn import MGCNConfig
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


@register("mgcn")
class MGCN(EmbeddingRecommender[MGCNConfig]):
    r"""MGCN (Yu et al., `Multi-View Graph Convolutional Network for Multimedia Recommendation
    <https://arxiv.org/abs/2308.03588>`_, ACM MM 2023).

    **Behaviour-guided purifier**: each modality m is projected to d and gates the item ID embeddings,
    :math:`\dot{\mathbf{E}}_m = \mathbf{E}_{I} \odot \sigma\big(W^g_m (W_m X^m + b_m) + b^g_m\big)`.
    **User-item view**: LightGCN over :math:`\hat{A} = D^{-1/2} A D^{-1/2}`,
    :math:`\mathbf{E}_{id} = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^l [\mathbf{E}_U; \mathbf{E}_I]`.
    **Item-item view**: per modality a weighted cosine kNN graph :math:`S^m = D^{-1/2} \bar{S}^m D^{-1/2}` (the
    top-k similarities of each row, D their row sums; frozen), then users aggregate their items with the
    user-item block of :math:`\hat{A}`:

    .. math:: \ddot{\mathbf{E}}_{I,m} = (S^m)^{L_m} \dot{\mathbf{E}}_m, \quad
              \ddot{\mathbf{E}}_{U,m} = \hat{R}\, \ddot{\mathbf{E}}_{I,m}, \quad
              \hat{R}_{ui} = 1/\sqrt{d_u d_i}, \quad \mathbf{E}_m = [\ddot{\mathbf{E}}_{U,m}; \ddot{\mathbf{E}}_{I,m}]

    **Behaviour-aware fuser**: attention over the modalities gives the common part, each modality's remainder is
    its specific part, gated by the node's behaviour embedding:

    .. math:: \alpha_m = \mathrm{softmax}_m\big(q^\top \tanh(W_a \mathbf{e}_m + b_a)\big), \quad
              \mathbf{e}_c = \sum_m \alpha_m \mathbf{e}_m, \quad
              \mathbf{e}_s = \frac{1}{M+1}\Big(\mathbf{e}_c + \sum_m \sigma(W^p_m \mathbf{e}_{id} + b^p_m)
              \odot (\mathbf{e}_m - \mathbf{e}_c)\Big), \quad \mathbf{e} = \mathbf{e}_{id} + \mathbf{e}_s

    **Loss**: BPR on :math:`\mathbf{e}` + ``reg_weight`` x the squared L2 of the batch's final user, positive
    and negative embeddings over 2B + ``cl_weight`` x the self-supervised task: InfoNCE (cosine /
    :math:`\tau`) of :math:`\mathbf{e}_s` against :math:`\mathbf{e}_{id}`, the other rows of the batch the
    negatives, averaged over the batch, once for the batch's users and once for its positive items (MMRec's
    in-batch form; repeated rows stay repeated). Scoring: :math:`\mathbf{e}_u^\top \mathbf{e}_i`, no randomness.

    Any number M >= 1 of modalities, in feature order: MMRec hard-codes image + text with a divisor of 3; this is
    its M = 2 case (the attention and the divisor are symmetric in the modalities, so their order does not
    matter). With M = 1 the common part is the modality itself, its specific part zero, :math:`\mathbf{e}_s =
    \mathbf{e}_1 / 2`.

    Differences from MMRec, each a :class:`~rmm.models.hparams.mgcn.MGCNConfig` switch (``strict`` / ``mmrec``):
    kNN graphs without / with the item itself (``knn_self``); projections Xavier-normal / ``nn.Linear``'s
    default (``projection_init``); features frozen / fine-tuned (``train_features``). Not switched: items
    without a feature vector (zero rows) get no kNN neighbours and an item whose kept similarities sum to <= 0
    (negative cosines) a zero row and column (MMRec: NaN everywhere); the penalty divides by the batch's size
    (MMRec: the configured ``train_batch_size``, which differs on an epoch's last, smaller batch).

    Shapes:
        adj: sparse (U+I, U+I); item graphs: sparse (I, I) each; embeddings: (U, d), (I, d); projections
        d_m -> d, gates and attention d -> d, query d -> 1.
    """

    # Buffer: the normalised user-item graph (the item graphs are buffers item_graph_{m}, item_graph_t_{m}).
    adj: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: MGCNConfig, *,
                 item_graphs: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features, trainable=cfg.train_features)
        for m, item_graph in enumerate(self.build_item_graphs(features, item_graphs)):
            self.register_buffer(f"item_graph_{m}", to_csr(item_graph), persistent=False)
            self.register_buffer(f"item_graph_t_{m}", to_csr(item_graph.t()), persistent=False)  # directed
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        d, count = cfg.embedding_dim, len(self.features)
        self.user_embedding = nn.Embedding(self.num_users, d)
        self.item_embedding = nn.Embedding(self.num_items, d)
        self.projections = projections(self.features.dims, d)
        self.purifiers = deferred_init(lambda: nn.ModuleList(nn.Linear(d, d) for _ in range(count)))
        self.preferences = deferred_init(lambda: nn.ModuleList(nn.Linear(d, d) for _ in range(count)))
        self.attention = deferred_init(lambda: nn.Linear(d, d))
        self.query = deferred_init(lambda: nn.Linear(d, 1, bias=False))
        self.reset_parameters()

    @classmethod
    def item_graph_spec(cls, cfg: MGCNConfig) -> KNNSpec:
        return KNNSpec(k=cfg.knn_k, similarity="cosine", normalization="sym", include_self=cfg.knn_self)

    def reset_parameters(self) -> None:
        self.features.reset_parameters()
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        reset_projections(self.projections, self.cfg.projection_init)
        for layer in (*modules_of(self.purifiers, nn.Linear), *modules_of(self.preferences, nn.Linear),
                      self.attention, self.query):
            layer.reset_parameters()

    def views(self, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The user-item view's embeddings :math:`\\mathbf{E}_{id}` and the fused modality embeddings
        :math:`\\mathbf{E}_s` of node rows ``rows`` (users then items; every node when None). The graph
        convolutions cover every node; the fuser after them is row-wise, so a batch's loss fuses only its own
        rows (at Baby size ~5k of 26k: the fuser's attention, gates and their elementwise work were a third of a
        step). Shapes: (n,) -> (n, d), (n, d)."""
        cfg, items_id = self.cfg, self.item_embedding.weight
        users, items = lightgcn(self.adj, self.user_embedding.weight, items_id, cfg.num_ui_layers)
        behaviour = torch.cat([users, items])  # (U+I, d)
        item_views = []
        for m, (proj, purifier, x) in enumerate(zip(modules_of(self.projections, nn.Linear),
                                                    modules_of(self.purifiers, nn.Linear),
                                                    self.features.matrices(), strict=True)):
            purified = items_id * torch.sigmoid(purifier(proj(x)))  # (I, d)
            item_views.append(smooth(getattr(self, f"item_graph_{m}"), purified, cfg.num_mm_layers,
                                     getattr(self, f"item_graph_t_{m}")))
        # Users: the user-item block of adj times every modality's items at once (adj's item-item block is 0).
        stacked = torch.cat(item_views, dim=1)  # (I, M*d)
        user_views = sparse_matmul(self.adj, torch.cat([stacked.new_zeros(self.num_users, stacked.shape[1]),
                                                        stacked]))[: self.num_users]  # (U, M*d)
        per_modality = [torch.cat([u, i]) for u, i in zip(user_views.split(cfg.embedding_dim, dim=1), item_views,
                                                          strict=True)]  # M x (U+I, d)
        if rows is not None:
            behaviour, per_modality = behaviour.index_select(0, rows), [e.index_select(0, rows) for e in per_modality]
        modal = torch.stack(per_modality, dim=1)  # (n, M, d)
        weights = torch.softmax(self.query(torch.tanh(self.attention(modal))), dim=1)  # (n, M, 1)
        common = (weights * modal).sum(1)  # (n, d)
        fused = common
        for m, gate in enumerate(modules_of(self.preferences, nn.Linear)):
            fused = fused + torch.sigmoid(gate(behaviour)) * (modal[:, m] - common)
        return behaviour, fused / (len(item_views) + 1)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        behaviour, side = self.views()
        users, items = torch.split(behaviour + side, [self.num_users, self.num_items])
        return users, items

    def loss(self, batch: BPRBatch) -> Tensor:
        nodes = torch.cat([batch.users, self.num_users + batch.pos_items, self.num_users + batch.neg_items])
        behaviour, side = per_distinct(nodes, lambda rows: torch.cat(self.views(rows), dim=1)).split(
            self.cfg.embedding_dim, dim=1)  # (3B, d) each
        users, pos, neg = (behaviour + side).split(len(batch.users))  # (B, d) each
        ranking = bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))
        contrast = torch.zeros((), device=users.device)
        sides, behaviours = side.split(len(batch.users)), behaviour.split(len(batch.users))  # users', pos', neg'
        for part in (1, 0):  # the positive items' rows, then the users'
            contrast = contrast + info_nce(sides[part], behaviours[part], behaviours[part],
                                           self.cfg.temperature) / len(batch.users)
        reg = l2_reg(users, pos, neg, norm=self.cfg.reg_norm)
        return ranking + self.cfg.cl_weight * contrast + self.cfg.reg_weight * reg
