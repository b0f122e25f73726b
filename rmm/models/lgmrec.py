"""LGMRec: local graph embeddings (collaborative and per-modality) plus global hypergraph embeddings."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph
from rmm.models.base import BPRBatch, EmbeddingRecommender
from rmm.models.hparams.lgmrec import LGMRecConfig
from rmm.models.layers import (
    FeatureBank,
    bpr_loss,
    l2_reg,
    lightgcn,
    low_rank_info_nce,
    modules_of,
    smooth,
    sparse_matmul,
)
from rmm.models.registry import register


@register("lgmrec")
class LGMRec(EmbeddingRecommender[LGMRecConfig]):
    r"""LGMRec (Guo et al., `LGMRec: Local and Global Graph Learning for Multimodal Recommendation
    <https://arxiv.org/abs/2312.16400>`_, AAAI 2024).

    **Local embeddings** decouple a collaborative part, LightGCN on the ID embeddings (the mean of layers
    0..L), from one part per modality m: items are their projected features :math:`X^m W_m` (no bias), users the
    mean of their train items' (:math:`D_U^{-1} R X^m W_m`), and both are convolved ``num_mm_layers`` times
    without ID embeddings (the last layer, no mean):

    .. math:: \mathbf{E}_{cge} = \frac{1}{L+1} \sum_{l=0}^{L} \tilde{A}^l \mathbf{E}^{(0)}, \quad
              \mathbf{E}^m_{mge} = \tilde{A}^{L_m} [D_U^{-1} R X^m W_m; X^m W_m], \quad
              \mathbf{E}_{lge} = \mathbf{E}_{cge} + \textstyle\sum_m \mathrm{norm}(\mathbf{E}^m_{mge})

    **Global embeddings** come from a hypergraph per modality with H learnable hyperedges: item memberships
    :math:`H^m_I = \mathrm{relax}(X^m V_m)` and user memberships :math:`H^m_U = \mathrm{relax}(R X^m V_m)` (the
    logits summed over the user's items), relaxed row-wise by a Gumbel-softmax at temperature :math:`\tau`
    (then dropout, keeping ``keep_rate``) in training. Each hypergraph layer gathers the collaborative item
    embeddings into the hyperedges and spreads them back:

    .. math:: \Lambda = {H^m_I}^\top \mathbf{E}^{(k)}_I, \quad \mathbf{E}^{(k+1)}_I = H^m_I \Lambda, \quad
              \mathbf{E}^m_{U} = H^m_U \Lambda \quad (\mathbf{E}^{(0)}_I = \mathbf{E}_{cge, I}), \qquad
              \mathbf{E} = \mathbf{E}_{lge} + \alpha\, \mathrm{norm}\big(\textstyle\sum_m [\mathbf{E}^m_U;
              \mathbf{E}^m_I]\big)

    with :math:`\mathrm{norm}` the row-wise L2 normalisation. **Loss**: BPR on :math:`\mathbf{E}` + ``cl_weight``
    x InfoNCE (cosine / :math:`\tau`, summed over the batch) between the hypergraph embeddings of every pair
    of modalities a < b, the first listed the anchor, the second's whole table the candidates, for the batch's
    users and its positive items + ``reg_weight`` x ``reg_norm``'s regulariser of the batch's final user,
    positive and negative embeddings. All weights are Xavier-uniform; the features are frozen, as in MMRec.

    Differences from MMRec's code, each with its switch (``strict`` / ``mmrec``):

    - ``eval_gumbel`` (False / True): scoring uses the noise-free :math:`\mathrm{softmax}(h / \tau)`
      memberships; MMRec samples Gumbel noise at evaluation too (no dropout).
    - ``reg_norm`` (``squared`` / ``frobenius``): squared norms of the batch's embeddings, or MMRec's
      non-squared ones.

    Without a switch: MMRec needs exactly an image and a text modality (it degenerates to the collaborative
    embeddings otherwise), with the image side the contrastive anchor; here any number >= 1 works, and two
    modalities listed image first reproduce MMRec (with one there is no contrastive term). Random draws happen in
    another order than MMRec's (independent draws, so the same distribution).

    Computed with fewer operations than written, same values: the projection and the hyperedge logits of a
    modality in one product with the features, and the contrastive logits through the memberships (rank H, see
    :func:`~rmm.models.layers.low_rank_info_nce`) instead of the (U, d) and (I, d) hypergraph tables.

    Shapes:
        adj: sparse (U+I, U+I); interactions R: sparse (U, I); hyperedge memberships: (U, H), (I, H);
        projections: d_m -> d and d_m -> H per modality.
    """

    # Buffers: the normalised user-item graph, the interactions R and R^T, and 1 / user degree.
    adj: Tensor
    interactions: Tensor
    interactions_t: Tensor
    inv_user_degree: Tensor

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: LGMRecConfig) -> None:
        super().__init__(graph, features, cfg)
        self.features = FeatureBank(features)
        self.register_buffer("adj", graph.norm_adj(), persistent=False)
        self.register_buffer("interactions", graph.interactions(), persistent=False)
        self.register_buffer("interactions_t", graph.interactions(transpose=True), persistent=False)
        user_degree = graph.degrees()[: self.num_users]
        self.register_buffer("inv_user_degree", (1.0 / (user_degree + 1e-7)).unsqueeze(1), persistent=False)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.projections = nn.ModuleList(nn.Linear(d, cfg.embedding_dim, bias=False) for d in self.features.dims)
        self.hyperedges = nn.ModuleList(nn.Linear(d, cfg.num_hyperedges, bias=False) for d in self.features.dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in (self.user_embedding.weight, self.item_embedding.weight,
                       *(p.weight for p in modules_of(self.projections, nn.Linear)),
                       *(h.weight for h in modules_of(self.hyperedges, nn.Linear))):
            nn.init.xavier_uniform_(weight)

    def _memberships(self, logits: Tensor, train: bool) -> Tensor:
        """Soft hyperedge memberships: Gumbel-softmax plus dropout in training; for scoring, the noise-free
        softmax (or, with ``eval_gumbel``, the Gumbel-softmax without dropout). Shapes: (N, H) -> (N, H)."""
        tau = self.cfg.temperature
        if train:
            soft = F.gumbel_softmax(logits, tau=tau, hard=False, dim=1)
            return F.dropout(soft, 1.0 - self.cfg.keep_rate, training=True)
        if self.cfg.eval_gumbel:
            return F.gumbel_softmax(logits, tau=tau, hard=False, dim=1)
        return torch.softmax(logits / tau, dim=1)

    def forward_embeddings(self, train: bool) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        """Final user and item embeddings, and every modality's hypergraph embeddings as factors: user and item
        memberships and the last layer's hyperedge embeddings, whose products are the hypergraph user and item
        embeddings (rank H, which the contrastive loss exploits); ``train`` draws the training noise (see
        ``_memberships``).

        Shapes:
            (U, d), (I, d), M x ((U, H), (I, H), (H, d)).
        """
        user_cge, item_cge = lightgcn(self.adj, self.user_embedding.weight, self.item_embedding.weight,
                                      self.cfg.num_ui_layers)
        local = torch.cat([user_cge, item_cge])  # (U+I, d): the modality embeddings add to it node-wise
        hypergraphs: list[tuple[Tensor, Tensor, Tensor]] = []
        ghe: list[Tensor] = []  # per modality: the hypergraph embeddings [E^m_U; E^m_I]
        d = self.cfg.embedding_dim
        for proj, hyper, x in zip(modules_of(self.projections, nn.Linear), modules_of(self.hyperedges, nn.Linear),
                                  self.features.matrices(), strict=True):
            # Both maps of the features in one product: one pass over the (I, d_m) matrix, one sparse product.
            item_both = F.linear(x, torch.cat([proj.weight, hyper.weight]))  # (I, d + H)
            user_both = sparse_matmul(self.interactions, item_both, self.interactions_t)  # (U, d + H)
            (item_feats, item_logits), (user_sums, user_logits) = item_both.split(d, 1), user_both.split(d, 1)
            mge = smooth(self.adj, torch.cat([user_sums * self.inv_user_degree, item_feats]), self.cfg.num_mm_layers)
            local = local + F.normalize(mge, dim=1)
            item_h, user_h = self._memberships(item_logits, train), self._memberships(user_logits, train)
            items = item_cge
            for _ in range(self.cfg.num_hyper_layers - 1):
                items = item_h @ (item_h.T @ items)
            latent = item_h.T @ items  # (H, d): the last layer's hyperedge embeddings
            items = item_h @ latent
            hypergraphs.append((user_h, item_h, latent))
            ghe.append(torch.cat([user_h @ latent, items]))
        final = local + self.cfg.alpha * F.normalize(reduce(operator.add, ghe), dim=1)
        users, items = torch.split(final, [self.num_users, self.num_items])
        return users, items, hypergraphs

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items, _ = self.forward_embeddings(train=False)
        return users, items

    def loss(self, batch: BPRBatch) -> Tensor:
        user_emb, item_emb, hypergraphs = self.forward_embeddings(train=True)
        users, pos, neg = user_emb[batch.users], item_emb[batch.pos_items], item_emb[batch.neg_items]
        ranking = bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))
        tau, contrast = self.cfg.temperature, torch.zeros((), device=users.device)
        for a, (users_a, items_a, latent_a) in enumerate(hypergraphs):
            for users_b, items_b, latent_b in hypergraphs[a + 1:]:
                for rows, h_a, h_b in ((batch.users, users_a, users_b), (batch.pos_items, items_a, items_b)):
                    contrast = contrast + low_rank_info_nce(h_a[rows] @ latent_a, h_b[rows] @ latent_b, h_b,
                                                            latent_b, tau)
        reg = l2_reg(users, pos, neg, norm=self.cfg.reg_norm)
        return ranking + self.cfg.cl_weight * contrast + self.cfg.reg_weight * reg
