"""LGMRec: local graph embeddings (collaborative and per-modality) plus global hypergraph embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.config import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import DEFAULT_FUSION, BPRBatch, EmbeddingRecommender, register
from rmm.models.layers import FeatureBank, bpr_loss, emb_norm_loss, info_nce, propagate, smooth, sparse_matmul


@dataclass(frozen=True)
class LGMRecConfig:
    """MMRec's ``LGMRec.yaml`` (its Baby settings): d 64 (the modalities are projected to it, MMRec's
    ``feat_embed_dim``), 2 user-item layers, 2 modality layers, 1 hypergraph layer, 4 hyperedges
    (``hyper_num``), ``keep_rate`` 0.5, ``alpha`` 0.3, ``cl_weight`` 1e-4, ``reg_weight`` 1e-6 (multiplying
    MMRec's norm regulariser, :func:`~rmm.models.layers.emb_norm_loss`), temperature 0.2 (its ``tau``)."""

    embedding_dim: int = 64
    num_ui_layers: int = 2
    num_mm_layers: int = 2
    num_hyper_layers: int = 1
    num_hyperedges: int = 4
    keep_rate: float = 0.5
    alpha: float = 0.3
    cl_weight: float = 1e-4
    reg_weight: float = 1e-6
    temperature: float = 0.2

    def __post_init__(self) -> None:
        require_at_least(self, 1, "embedding_dim", "num_ui_layers", "num_mm_layers", "num_hyper_layers",
                         "num_hyperedges")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"keep_rate must be in (0, 1], got {self.keep_rate}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        require_at_least(self, 0, "alpha", "cl_weight", "reg_weight")


@register("lgmrec")
class LGMRec(EmbeddingRecommender):
    r"""LGMRec (Guo et al., `LGMRec: Local and Global Graph Learning for Multimodal Recommendation
    <https://arxiv.org/abs/2312.16400>`_, AAAI 2024).

    Local embeddings decouple a collaborative part (LightGCN on ID embeddings) from one modality part per
    modality (projected item features, users as the mean of their items, propagated without ID embeddings).
    Global embeddings come from a hypergraph per modality whose item memberships :math:`H^m_I` are learned from
    the features and whose user memberships are :math:`H^m_U = R H^m_I`, both relaxed by Gumbel-softmax:

    .. math:: \mathbf{E}_{lge} = \mathbf{E}_{cge} + \sum_m \mathrm{norm}(\mathbf{E}^m_{mge}), \quad
              \mathbf{E}^m_{ghe} = [H^m_U; H^m_I]\, {H^m_I}^\top \mathbf{E}_{cge, I}, \quad
              \mathbf{E} = \mathbf{E}_{lge} + \alpha\, \mathrm{norm}\big(\textstyle\sum_m \mathbf{E}^m_{ghe}\big)

    Loss: BPR + ``cl_weight`` x InfoNCE between the hypergraph embeddings of every pair of modalities (users
    and positive items; none with one modality) + ``reg_weight`` x the norm regulariser. Training samples
    Gumbel noise and drops hyperedge memberships (``keep_rate``); scoring uses the noise-free softmax.

    Shapes:
        adj: sparse (U+I, U+I); interactions R: sparse (U, I); hyperedge memberships: (U, H), (I, H).
    """

    config_class = LGMRecConfig
    uses_features = True
    fusions = ()

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: LGMRecConfig, *,
                 fusion: str = DEFAULT_FUSION) -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
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
                       *(p.weight for p in self.projections), *(h.weight for h in self.hyperedges)):
            nn.init.xavier_uniform_(weight)

    def _memberships(self, logits: Tensor, stochastic: bool) -> Tensor:
        """Soft hyperedge memberships: Gumbel-softmax plus dropout when training, softmax when scoring."""
        if not stochastic:
            return torch.softmax(logits / self.cfg.temperature, dim=1)
        soft = F.gumbel_softmax(logits, tau=self.cfg.temperature, hard=False, dim=1)
        return F.dropout(soft, 1.0 - self.cfg.keep_rate, training=True)

    def forward_embeddings(self, stochastic: bool) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Final user and item embeddings, and every modality's hypergraph user and item embeddings.

        Shapes:
            (U, d), (I, d), M x (U, d), M x (I, d).
        """
        cge = propagate(self.adj, torch.cat([self.user_embedding.weight, self.item_embedding.weight]),
                        self.cfg.num_ui_layers)  # (U+I, d)
        item_cge = cge[self.num_users:]
        local, hyper_users, hyper_items = cge, [], []
        for proj, hyper, x in zip(self.projections, self.hyperedges, self.features.matrices()):
            item_feats = proj(x)  # (I, d)
            user_feats = sparse_matmul(self.interactions, item_feats, self.interactions_t) * self.inv_user_degree
            mge = smooth(self.adj, torch.cat([user_feats, item_feats]), self.cfg.num_mm_layers)
            local = local + F.normalize(mge, dim=1)
            item_logits = hyper(x)  # (I, H)
            user_logits = sparse_matmul(self.interactions, item_logits, self.interactions_t)  # (U, H)
            item_h, user_h = self._memberships(item_logits, stochastic), self._memberships(user_logits, stochastic)
            items = item_cge
            for _ in range(self.cfg.num_hyper_layers):
                latent = item_h.T @ items  # (H, d)
                items, users = item_h @ latent, user_h @ latent
            hyper_users.append(users)
            hyper_items.append(items)
        ghe = torch.cat([sum(hyper_users), sum(hyper_items)])
        final = local + self.cfg.alpha * F.normalize(ghe, dim=1)
        users, items = torch.split(final, [self.num_users, self.num_items])
        return users, items, hyper_users, hyper_items

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items, _, _ = self.forward_embeddings(stochastic=False)
        return users, items

    def loss(self, batch: BPRBatch) -> Tensor:
        user_emb, item_emb, hyper_users, hyper_items = self.forward_embeddings(stochastic=True)
        users, pos, neg = user_emb[batch.users], item_emb[batch.pos_items], item_emb[batch.neg_items]
        ranking = bpr_loss((users * pos).sum(-1), (users * neg).sum(-1))
        tau, contrast = self.cfg.temperature, torch.zeros((), device=users.device)
        for a in range(len(hyper_users)):
            for b in range(a + 1, len(hyper_users)):
                contrast = contrast + info_nce(hyper_users[a][batch.users], hyper_users[b][batch.users],
                                               hyper_users[b], tau)
                contrast = contrast + info_nce(hyper_items[a][batch.pos_items], hyper_items[b][batch.pos_items],
                                               hyper_items[b], tau)
        return ranking + self.cfg.cl_weight * contrast + self.cfg.reg_weight * emb_norm_loss(users, pos, neg)
